"""What every ``aqueue`` command shares: the ``-A`` app (given before or after the command),
loading it, logging (``-l``, ``--logfile``), printing errors, and running the event loop.

``-A`` takes ``module`` or ``module:attribute``; with a module alone, the one :class:`Aqueue`
instance in it is used, as Celery's ``-A`` does. The current directory is importable. As with
Celery, ``aqueue -A proj worker`` and ``aqueue worker -A proj`` are the same; an ``-A`` nearer the
command wins.

Exit codes, for every command: 0 on success, 1 when the work itself failed (a task, no worker
replying), 2 on a usage or configuration error.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import typer

from aqueue import logs, signals
from aqueue import loops as aqueue_loop
from aqueue.app import Aqueue
from aqueue.exceptions import AqueueError, ConfigurationError

__all__ = [
    "app_spec",
    "fail",
    "load",
    "load_app",
    "remember_app",
    "run",
    "run_with_app",
    "setup_logging",
    "split",
    "use_log_format",
]

T = TypeVar("T")

#: Where the ``-A`` given before the command waits for the command (``ctx.meta`` is shared by
#: a context and all of its sub-contexts).
_APP_KEY = "aqueue.app"


# -- the app -------------------------------------------------------------------------------------


def remember_app(ctx: typer.Context, spec: str | None) -> None:
    """Keep an ``-A`` given before a command (``aqueue -A proj worker``) for that command."""
    if spec:
        ctx.meta[_APP_KEY] = spec


def app_spec(ctx: typer.Context, spec: str | None) -> str:
    """The ``-A`` value: the command's own, else one given before the command.

    Raises:
        typer.Exit: (code 2) neither was given; the message shows both forms.
    """
    found = spec or ctx.meta.get(_APP_KEY)
    if not isinstance(found, str) or not found:
        command = ctx.command_path.partition(" ")[2] or "worker"
        typer.echo(
            f"error: -A/--app is required, e.g. aqueue {command} -A proj.tasks "
            f"(or aqueue -A proj.tasks {command})",
            err=True,
        )
        raise typer.Exit(2)
    return found


def load_app(spec: str) -> Aqueue:
    """Import the app named by ``spec`` (``module`` or ``module:attribute``).

    Raises:
        ConfigurationError: the module is not found, or was found but its import failed (the
            error and where it was raised; a syntax error with its file, line and caret), the
            attribute is missing or is not an Aqueue, or a module alone holds no Aqueue or
            several; the message says what was tried.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = spec.partition(":")
    module = _import(spec, module_name)
    if attr:
        return _attribute(spec, module, attr)
    return _only_app(spec, module)


def load(ctx: typer.Context, spec: str | None) -> Aqueue:
    """The app of this command's ``-A`` (see :func:`app_spec`); an error exits with code 2."""
    try:
        return load_app(app_spec(ctx, spec))
    except AqueueError as exc:
        raise fail(exc) from exc


def _import(spec: str, module_name: str) -> ModuleType:
    if not module_name or module_name.startswith("."):
        raise ConfigurationError(f"-A {spec}: give a module name, e.g. -A proj.tasks")
    try:
        return importlib.import_module(module_name)
    except Exception as exc:  # whatever the module's own code raised while it was imported
        raise ConfigurationError(_import_error(spec, module_name, exc)) from exc


def _import_error(spec: str, module_name: str, exc: Exception) -> str:
    """Why importing ``module_name`` failed: not found, or found and failed (and where)."""
    missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
    if missing and f"{module_name}.".startswith(f"{missing}."):  # it, or a package above it
        return (
            f"-A {spec}: module {module_name!r} not found (run from the directory that "
            f"contains it, or set PYTHONPATH)"
        )
    head = f"-A {spec}: module {module_name!r} was found but its import failed: "
    if isinstance(exc, SyntaxError):  # file, line and caret, as Python prints them
        *where, last = traceback.format_exception_only(exc)
        return head + last.rstrip() + "\n" + "".join(where).rstrip()
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    where = traceback.format_list(frames[-1:])  # the line that raised it
    return head + f"{type(exc).__name__}: {exc}" + ("\n" + "".join(where).rstrip() if where else "")


def _attribute(spec: str, module: ModuleType, attr: str) -> Aqueue:
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, Aqueue):
        raise ConfigurationError(
            f"-A {spec}: {module.__name__}.{attr} is "
            f"{'missing' if obj is None else type(obj)}, not an Aqueue app"
        )
    return obj


def _only_app(spec: str, module: ModuleType) -> Aqueue:
    apps = {id(v): (k, v) for k, v in vars(module).items() if isinstance(v, Aqueue)}
    if len(apps) == 1:
        return next(iter(apps.values()))[1]
    name = module.__name__
    if not apps:
        raise ConfigurationError(
            f"-A {spec}: module {name!r} has no Aqueue app; define one "
            f"(app = Aqueue(...)) or name it as -A {name}:attribute"
        )
    names = ", ".join(sorted(k for k, _ in apps.values()))
    raise ConfigurationError(
        f"-A {spec}: module {name!r} has several Aqueue apps ({names}); "
        f"choose one with -A {name}:NAME"
    )


# -- errors, logging, the loop -------------------------------------------------------------------


def fail(exc: AqueueError) -> typer.Exit:
    """Print ``error: <exc>`` on stderr; return the exit (code 2) for the caller to raise."""
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


def use_log_format(log_format: str | None) -> None:
    """Make ``--log-format`` the process's ``AQUEUE_LOG_FORMAT`` (``None``: leave it as is), so
    :func:`setup_logging` here and in the ``--processes`` children read it."""
    if log_format is not None:
        os.environ["AQUEUE_LOG_FORMAT"] = log_format


def setup_logging(
    loglevel: str, logfile: Path | None = None, log_format: str | None = None
) -> None:
    """Log at ``loglevel`` (checked by :func:`check_loglevel`) to stderr, or append to
    ``logfile``; lines written inside a task carry its name and id (:mod:`aqueue.logs`).

    ``log_format``: ``"text"`` (Celery's default line formats, :data:`aqueue.logs.LOG_FORMAT`
    and :data:`aqueue.logs.TASK_LOG_FORMAT`) or ``"json"`` (one JSON object per line);
    ``None`` reads the ``AQUEUE_LOG_FORMAT`` environment variable, else text. When a receiver
    is connected to the :data:`aqueue.signals.setup_logging` signal, it is sent instead and
    logging is left to it (as in Celery).

    Raises:
        typer.Exit: (code 2) ``logfile`` cannot be opened for appending, or ``log_format`` is
            neither ``text`` nor ``json``.
    """
    log_format = (log_format or os.environ.get("AQUEUE_LOG_FORMAT") or "text").lower()
    if log_format not in ("text", "json"):
        typer.echo(f"error: log format must be text or json, not {log_format!r}", err=True)
        raise typer.Exit(2)
    if signals.setup_logging.receivers:
        signals.setup_logging.send_sync(
            None, loglevel=loglevel, logfile=logfile, format=log_format, colorize=False
        )
        return
    handler: logging.Handler
    if logfile is not None:
        try:
            handler = logging.FileHandler(logfile, encoding="utf-8")
        except OSError as exc:
            typer.echo(f"error: --logfile {logfile}: {exc.strerror or exc}", err=True)
            raise typer.Exit(2) from exc
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(logs.JsonFormatter() if log_format == "json" else logs.TaskFormatter())
    logging.basicConfig(level=loglevel, handlers=[handler])


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on the CLI's event loop (:mod:`aqueue.loops`); an aqueue error exits with
    code 2."""
    try:
        return aqueue_loop.run(main)
    except AqueueError as exc:
        raise fail(exc) from exc


def run_with_app(spec: str, work: Callable[[Aqueue], Awaitable[T]]) -> T:
    """Load the app, run ``work`` in a fresh loop, close the app; errors exit with code 2."""
    try:
        app = load_app(spec)
    except AqueueError as exc:
        raise fail(exc) from exc

    async def main() -> T:
        try:
            return await work(app)
        finally:
            await app.close()

    return run(main())


def split(value: str | None) -> list[str] | None:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``; ``None`` or nothing listed -> ``None``."""
    names = [v.strip() for v in value.split(",") if v.strip()] if value else []
    return names or None
