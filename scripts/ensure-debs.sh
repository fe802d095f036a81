#!/usr/bin/env bash
# Make sure the named Debian packages' programs are present; install the missing ones with apt-get
# as root or with passwordless sudo, else stop with the one command to run.
# Usage: scripts/ensure-debs.sh PACKAGE...   (the packages this script knows how to check, below)
set -euo pipefail

present() {
  case "$1" in
    redis-server) command -v redis-server >/dev/null ;;  # the suite looks it up on PATH
    rabbitmq-server) [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || command -v rabbitmq-server >/dev/null ;;
    python3-venv) python3 -c 'import ensurepip' 2>/dev/null ;;  # what `python3 -m venv` needs
    *) echo "$0: does not know how to check for $1" >&2; exit 2 ;;
  esac
}

missing=()
for pkg in "$@"; do present "$pkg" || missing+=("$pkg"); done
[ ${#missing[@]} -eq 0 ] && exit 0

install="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo=(sudo)
else
  command -v sudo >/dev/null && as_root=(sudo sh -c) || as_root=(su -c)
  echo "Missing: ${missing[*]}. Install with this command, then run make again:" >&2
  echo "  ${as_root[*]} '$install'" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "Missing: ${missing[*]}, and there is no apt-get here: install it with your package manager." >&2
  exit 1
fi
echo "Installing ${missing[*]} with apt-get" >&2
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
for pkg in "${missing[@]}"; do
  present "$pkg" || { echo "$pkg is installed but its program is still not found" >&2; exit 1; }
done
