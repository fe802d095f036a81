"""The options the ``aqueue`` commands share (typer declarations): the app, and the process's
log level, log file, log format and pidfile."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = [
    "LOG_LEVELS",
    "AppOption",
    "LogFormatOption",
    "LogfileOption",
    "LoglevelOption",
    "PidfileOption",
    "check_loglevel",
]

#: Celery's ``-l`` names (``celery.bin.base.LogLevel``), accepted in any case.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "FATAL")


def check_loglevel(value: str) -> str:
    """The ``-l`` value upper-cased, if it is one of :data:`LOG_LEVELS` in any case.

    Raises:
        typer.BadParameter: another name (``-l verbose``); typer prints it with the usage and
            exits with code 2.
    """
    level = value.strip().upper()
    if level not in LOG_LEVELS:
        names = ", ".join(name.lower() for name in LOG_LEVELS[:-1])
        raise typer.BadParameter(f"{value!r} is not a log level; use one of {names} (any case)")
    return level


AppOption = Annotated[
    str | None,
    typer.Option(
        "-A",
        "--app",
        help="The app: 'module' or 'module:attribute' (may come before the command too).",
    ),
]
LoglevelOption = Annotated[
    str,
    typer.Option(
        "-l",
        "--loglevel",
        callback=check_loglevel,
        help="debug|info|warning|error|critical (any case).",
    ),
]
LogfileOption = Annotated[
    Path | None,
    typer.Option("--logfile", help="Append the log to this file instead of stderr."),
]
LogFormatOption = Annotated[
    str | None,
    typer.Option(
        "--log-format",
        help="text (Celery's line format, with the task's name and id inside a task) or json "
        "(one object per line). [env: AQUEUE_LOG_FORMAT; default: text]",
    ),
]
PidfileOption = Annotated[
    Path | None,
    typer.Option(
        "--pidfile",
        help="Write the process id here while running; refuse to start if it names a live one.",
    ),
]
