"""Run every example of this folder that works today, each in its own process, and report.

Run from the repository root: ``python -m examples.seeds.run_all`` (exit status 0 when all pass).
``--pending`` also runs those waiting for canvas or beat, which are expected to fail until then.

The ``rpc://`` examples need a RabbitMQ and nothing else: they run when ``$AQUEUE_BROKER_URL`` is
an ``amqp://`` URL (skipped otherwise); ``--amqp`` runs only them.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time

# Modules that run in one process on memory:// (or, for configs, check themselves).
WORKS_TODAY = [
    "trigger",
    "results",
    "base_task",
    "bind_request",
    "progress",
    "then_callback",
    "page_info_link",
    "task_options",
    "apply_async_options",
    "signatures",
    "routing",
    "rate_limits",
    "celeryconfig",
    "configuration",
    "web_config",
    "flask_app",
    "proj",
    "page_info_chain",
    "canvas",
    "rpc_celeryconfig",
]
# Results over rpc:// on RabbitMQ alone: run against $AQUEUE_BROKER_URL when it is AMQP.
NEEDS_RABBITMQ = ["rpc_results", "rpc_then"]
PENDING = ["periodic"]  # needs beat
NEEDS_MODULE = {"flask_app": "flask"}


def run(name: str) -> tuple[str, float, str]:
    needed = NEEDS_MODULE.get(name)
    if needed and importlib.util.find_spec(needed) is None:
        return "skip", 0.0, f"{needed} is not installed"
    if name in NEEDS_RABBITMQ and not _rabbitmq():
        return "skip", 0.0, "needs RabbitMQ: set AQUEUE_BROKER_URL=amqp://..."
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", f"examples.seeds.{name}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "FAIL", time.monotonic() - started, "timed out after 60 s"
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return "FAIL", elapsed, f"exit {proc.returncode}: {last}"
    return "ok", elapsed, ""


def _rabbitmq() -> bool:
    url = os.environ.get("AQUEUE_BROKER_URL", "")
    return url.partition("://")[0].lower() in ("amqp", "amqps", "pyamqp")


def main() -> int:
    if "--amqp" in sys.argv[1:]:
        if not _rabbitmq():
            print("--amqp: set AQUEUE_BROKER_URL to a RabbitMQ, e.g. amqp://guest:guest@host:5672/")
            return 2
        names = list(NEEDS_RABBITMQ)
    else:
        names = WORKS_TODAY + NEEDS_RABBITMQ + (PENDING if "--pending" in sys.argv[1:] else [])
    failed = 0
    for name in names:
        status, elapsed, detail = run(name)
        failed += status == "FAIL" and name not in PENDING
        print(f"{status:<5} {name:<22} {elapsed:5.1f}s  {detail}".rstrip())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
