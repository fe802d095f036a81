"""``--pidfile PATH`` of ``aqueue worker`` and ``aqueue beat``, with Celery's rules.

The file holds the process id and a newline. It is written when the command starts and removed
when it exits. A file that names a live process stops the new one from starting (exit code 1:
"already running?"); a file left by a process that is gone (or that names this very process,
as after a container restart) is stale, and is replaced with a warning. The file appears with
its content in one step (written aside, then hard-linked into place), so two commands started
together never both run, and neither reads a half-written file.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import typer

__all__ = ["PidfileTaken", "acquire", "hold_pidfile", "read_pid", "release"]

logger = logging.getLogger("aqueue.cli")

_ATTEMPTS = 3  # a stale file removed, then the race for the name lost at most twice more


class PidfileTaken(Exception):
    """The pidfile names a running process."""

    def __init__(self, path: Path, pid: int) -> None:
        super().__init__(
            f"pidfile {path} names process {pid}, which is running: already started? "
            f"Stop that process, or remove the file if it is not this program"
        )
        self.path = path
        self.pid = pid


def read_pid(path: Path) -> int | None:
    """The process id in ``path``; ``None`` if the file is missing, empty or not a number."""
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def acquire(path: Path) -> None:
    """Write this process's id to ``path``, replacing a stale file.

    Raises:
        PidfileTaken: ``path`` names another live process.
        OSError: the file cannot be written (a missing directory, no permission).
    """
    path = path.absolute()
    spare = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    spare.write_text(f"{os.getpid()}\n", encoding="ascii")
    try:
        for _ in range(_ATTEMPTS):
            try:
                _place(spare, path)
                return
            except FileExistsError:
                _remove_if_stale(path)
        pid = read_pid(path)
        raise PidfileTaken(path, pid or 0)
    finally:
        spare.unlink(missing_ok=True)


def _place(spare: Path, path: Path) -> None:
    """Give ``spare`` the name ``path``, failing with ``FileExistsError`` if it is taken."""
    try:
        os.link(spare, path)  # atomic, content included, and never over an existing name
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: create-exclusive, then write
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(f"{os.getpid()}\n")


def _remove_if_stale(path: Path) -> None:
    pid = read_pid(path)
    if pid is not None and pid != os.getpid() and _running(pid):
        raise PidfileTaken(path, pid)
    logger.warning(
        "removing stale pidfile %s (%s)",
        path,
        "no process id in it" if pid is None else f"process {pid} is not running",
    )
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def release(path: Path) -> None:
    """Remove ``path`` if it still holds this process's id."""
    path = path.absolute()
    if read_pid(path) == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def hold_pidfile(path: Path | None) -> Iterator[None]:
    """Hold ``path`` (if given) as this process's pidfile for the ``with`` block.

    Raises:
        typer.Exit: code 1 when the file names a live process, 2 when it cannot be written; the
            reason is printed on stderr.
    """
    if path is None:
        yield
        return
    try:
        acquire(path)
    except PidfileTaken as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except OSError as exc:
        typer.echo(f"error: --pidfile {path}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        yield
    finally:
        release(path)
