"""Log lines that carry the task: the name and id of the task running where a line is written.

Inside a task, every log record - aqueue's own and the user's, from any logger - gets the
attributes ``task_name`` and ``task_id`` (``"???"`` outside a task, as Celery writes them), read
from the request of the running task (a context variable, so concurrent coroutine tasks on one
loop each see their own). The worker's CLI formats lines inside a task with
``worker_task_log_format`` and the others with ``worker_log_format`` (Celery's settings and
defaults), or as JSON lines with ``aqueue worker --log-format json``.

For an app that configures logging itself, add :class:`TaskFilter` to its handlers (or use
:class:`TaskFormatter` / :class:`JsonFormatter`)::

    handler.addFilter(aqueue.logs.TaskFilter())
    handler.setFormatter(aqueue.logs.TaskFormatter())
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from aqueue.task import current_request

__all__ = [
    "LOG_FORMAT",
    "TASK_LOG_FORMAT",
    "JsonFormatter",
    "TaskFilter",
    "TaskFormatter",
    "get_task_logger",
]

#: Celery's ``worker_log_format`` default: lines written outside a task.
LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
#: Celery's ``worker_task_log_format`` default: lines written inside a task.
TASK_LOG_FORMAT = (
    "[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: %(message)s"
)
_NONE = "???"  # Celery's placeholder outside a task


def _add_task(record: logging.LogRecord) -> tuple[str, str] | None:
    """Set ``record.task_name``/``task_id``; return them when a task is running."""
    request = current_request.get()
    if request is None:
        record.task_name = record.task_id = _NONE
        return None
    task = (request.task or _NONE, request.id or _NONE)
    record.task_name, record.task_id = task
    return task


class TaskFilter(logging.Filter):
    """A filter (for handlers) that adds ``task_name`` and ``task_id`` to every record; keeps
    every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        _add_task(record)
        return True


class TaskFormatter(logging.Formatter):
    """Formats records written inside a task with ``task_fmt`` and the others with ``fmt``.

    Args:
        fmt: the format outside a task (``%``-style), default :data:`LOG_FORMAT`.
        task_fmt: the format inside a task, default :data:`TASK_LOG_FORMAT`.
        datefmt: ``time.strftime`` format of ``%(asctime)s``.
    """

    def __init__(
        self, fmt: str | None = None, task_fmt: str | None = None, datefmt: str | None = None
    ) -> None:
        super().__init__(fmt or LOG_FORMAT, datefmt)
        self._task = logging.Formatter(task_fmt or TASK_LOG_FORMAT, datefmt)

    def format(self, record: logging.LogRecord) -> str:
        if _add_task(record) is not None:
            return self._task.format(record)
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (epoch seconds), ``level``, ``logger``, ``process``,
    ``message``, then ``task_name`` and ``task_id`` inside a task, ``exception`` (the formatted
    traceback) when there is one, and the record's ``extra`` fields: as JSON when JSON can carry
    them (the keys of a dict as strings), else as their ``repr`` (an object, an integer over 64
    bits) - never a lost line."""

    _STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        task = _add_task(record)
        if task is not None:
            line["task_name"], line["task_id"] = task
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        for key, value in record.__dict__.items():
            if key not in self._STANDARD and key not in ("task_name", "task_id"):
                line[key] = value
        try:
            return orjson.dumps(line, default=repr).decode()
        except TypeError:  # orjson.JSONEncodeError: a key that is not a string, a big integer...
            return orjson.dumps(_carryable(line), default=repr, option=_LENIENT).decode()


_LENIENT = orjson.OPT_NON_STR_KEYS  # only for the lines that need it: it slows the others


def _carryable(line: dict[str, Any]) -> dict[str, Any]:
    """``line`` with each value that JSON cannot carry, even with keys made strings, replaced
    by its ``repr``."""
    fixed: dict[str, Any] = {}
    for key, value in line.items():
        try:
            orjson.dumps(value, default=repr, option=_LENIENT)
        except TypeError:
            value = _repr(value)
        fixed[key] = value
    return fixed


def _repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # a broken __repr__ must not lose the line either
        return f"<{type(value).__name__} object>"


def get_task_logger(name: str) -> logging.Logger:
    """The logger ``name`` (Celery's ``celery.utils.log.get_task_logger``): its lines carry the
    running task's name and id like every other line written inside a task."""
    return logging.getLogger(name)
