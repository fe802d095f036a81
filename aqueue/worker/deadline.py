"""Slow tasks: report a run that goes past its soft deadline, without stopping it.

A task's ``soft_deadline`` option (seconds; default the ``task_soft_deadline`` setting) is how
long a run is expected to take at most. Unlike ``soft_time_limit`` (Celery's, which raises
``SoftTimeLimitExceeded`` inside the task) and ``time_limit`` (which cancels it), passing a soft
deadline only *reports*: once per run, the worker logs a warning, sends a ``task-slow`` event
(with ``-E``) and the :data:`aqueue.signals.task_slow` signal, and the task runs on. A stuck
task (waiting on a lock, a socket with no timeout) shows up this way long before anyone asks;
``aqueue inspect active`` shows each running task's run time too.

Nothing is added to the path of a message: the runs' start times are kept anyway (for
``inspect active`` and revoke's terminate), and one :class:`DeadlineWatch` coroutine per worker
looks through the running tasks a few times per shortest deadline (at most once a second). A
worker where no task has a deadline runs no watch at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from aqueue import signals
from aqueue.message import Message

if TYPE_CHECKING:
    from aqueue.task import Request, Task
    from aqueue.worker.execute import Executor

__all__ = ["DeadlineWatch", "soft_deadline"]

logger = logging.getLogger("aqueue.worker")

#: Bounds of the seconds between two looks at the running tasks.
INTERVAL = (0.05, 1.0)


def soft_deadline(task: Task[Any, Any] | None, default: float | None) -> float | None:
    """``task``'s soft deadline in seconds: its option, else ``default``; ``None``: none."""
    own = task.soft_deadline if task is not None else None
    return own if own is not None else default


class DeadlineWatch:
    """Reports each run that passes its soft deadline, once.

    Args:
        executor: the worker's executor (its running tasks and their start times).
        default: the ``task_soft_deadline`` setting (seconds), or ``None``.
    """

    def __init__(self, executor: Executor, default: float | None) -> None:
        self.executor = executor
        self.default = default
        # Runs reported, while they run: task id -> the run's start (epoch seconds). Keyed by
        # the start too, as a retry runs again under the same id: a new run, reported anew.
        self._reported: dict[str, float] = {}

    @classmethod
    def interval_for(cls, tasks: Iterable[Task[Any, Any]], default: float | None) -> float | None:
        """Seconds between two looks: a quarter of the shortest deadline, within
        :data:`INTERVAL`; ``None`` when no task has a deadline (no watch is needed)."""
        deadlines = [d for t in tasks if (d := soft_deadline(t, default)) is not None]
        if not deadlines:
            return None
        return min(max(min(deadlines) / 4, INTERVAL[0]), INTERVAL[1])

    async def run(self, interval: float) -> None:
        """Look every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            for request, runtime, deadline in self.overdue(time.time()):
                await self.report(request, runtime, deadline)

    def overdue(self, now: float) -> list[tuple[Request, float, float]]:
        """The runs past their deadline at ``now`` (epoch seconds) not reported yet, as
        ``(request, seconds running, deadline)``."""
        executor = self.executor
        started, tasks = executor.terminable.started, executor.app.tasks
        found = []
        for task_id, request in list(executor.active.items()):
            since = started.get(task_id)
            if since is None or self._reported.get(task_id) == since:
                continue
            deadline = soft_deadline(tasks.get(request.task or ""), self.default)
            if deadline is not None and now - since > deadline:
                self._reported[task_id] = since
                found.append((request, now - since, deadline))
        for task_id in self._reported.keys() - executor.active.keys():
            del self._reported[task_id]
        return found

    async def report(self, request: Request, runtime: float, deadline: float) -> None:
        """The log line, the ``task-slow`` event and the ``task_slow`` signal of one run."""
        executor = self.executor
        logger.warning(
            "Task %s[%s] has been running for %.1fs, past its soft deadline of %gs "
            "(still running; not stopped)",
            request.task,
            request.id,
            runtime,
            deadline,
        )
        if executor.on_event is not None:
            msg = Message(id=request.id or "", task=request.task or "")
            executor.on_event("task-slow", msg, {"runtime": runtime, "deadline": deadline})
        if signals.task_slow.receivers:
            task = executor.app.tasks.get(request.task or "")
            await signals.task_slow.send(
                task or request.task,
                task_id=request.id,
                request=request,
                runtime=runtime,
                deadline=deadline,
            )
