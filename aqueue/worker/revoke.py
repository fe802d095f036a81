"""Revoking tasks: stored with an expiry, broadcast to live workers, checked without I/O.

Celery keeps revocations in each worker's memory: a worker started later, or restarted, has
forgotten them, and an ETA task revoked before its time can still run. Here:

1. ``app.control.revoke`` (:meth:`aqueue.control.Control.revoke`) stores each id in the control
   transport's ``revoked`` table (expiring after ``result_expires`` seconds, or never when that is
   ``None``), *then* stores state ``REVOKED`` for a task still waiting (``PENDING`` or ``RETRY``),
   so ``await r`` raises :class:`~aqueue.exceptions.TaskRevokedError` at once, *then* broadcasts a
   ``revoke`` command.
2. A worker subscribes to commands first and reads the table second (nothing falls in between),
   keeps the ids in a local :class:`Revocations` set, adds each broadcast to it, and on every
   heartbeat compares the table's version with the one it read - a broadcast lost to a dropped
   connection is picked up within a heartbeat. Checking a message is one dict lookup.
3. When a revoked message comes up - ready, or a delayed one whose eta has come, on any worker,
   started before or after the revoke - it is not run: its state is stored as ``REVOKED`` and
   the message is acked.

``terminate=True`` also cancels the task where it is running: :class:`Terminable` cancels the
runner coroutine that awaits it, and the worker stores ``REVOKED`` (reason ``terminated``) and
acks. A plain (non-``async``) task runs in a thread, which Python cannot interrupt: the worker
stops waiting for it and records ``REVOKED`` at once, and the thread runs on to its end in the
background, its result discarded (the same limit as ``time_limit``). A task revoked while it
runs, without ``terminate``, is not stopped: it finishes, and its outcome replaces the
``REVOKED`` state stored for it if it was still ``PENDING`` then.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from aqueue import states
from aqueue.exceptions import TaskRevokedError
from aqueue.results.record import ResultRecord

if TYPE_CHECKING:
    pass

__all__ = ["WAITING", "Revocations", "Terminable", "Terminated", "revocation_record"]

T = TypeVar("T")

#: States of a task still waiting to run: revoking it stores REVOKED at once.
WAITING = frozenset({states.PENDING, states.RETRY})


class Terminated(TaskRevokedError):
    """A running task was cancelled by ``revoke(terminate=True)``."""


def revocation_record(
    task_id: str, reason: str, retries: int = 0, name: str | None = None
) -> ResultRecord:
    """The ``REVOKED`` record stored for a task that will not run (or was terminated)."""
    return ResultRecord(
        task_id,
        states.REVOKED,
        {
            "exc_type": "TaskRevokedError",
            "exc_module": "aqueue.exceptions",
            "exc_message": reason,
            "exc_args": [reason],
        },
        None,
        time.time(),
        retries,
        name,
    )


class Revocations:
    """The revoked task ids one worker knows, with their expiry; ``task_id in revocations``."""

    def __init__(self) -> None:
        self._ids: dict[str, float | None] = {}  # id -> expiry (epoch seconds) or None
        self.version = -1  # the table version last read in full (-1: never)

    def __contains__(self, task_id: object) -> bool:
        if not self._ids:  # the common case: nothing revoked, nothing to look up
            return False
        until = self._ids.get(task_id) if isinstance(task_id, str) else None
        if until is None:
            return isinstance(task_id, str) and task_id in self._ids
        if until <= time.time():
            del self._ids[str(task_id)]
            return False
        return True

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, task_ids: Iterable[str], expires: float | None) -> None:
        """Remember ``task_ids`` until ``expires`` (epoch seconds; ``None``: for ever)."""
        for task_id in task_ids:
            self._ids[task_id] = expires

    def merge(self, version: int, entries: dict[str, bytes]) -> None:
        """Add the entries of a full read of the table (kept: what broadcasts added since)."""
        for task_id, raw in entries.items():
            try:
                expires = orjson.loads(raw).get("expires")
            except (orjson.JSONDecodeError, AttributeError):
                expires = None
            self._ids[task_id] = float(expires) if isinstance(expires, int | float) else None
        self.version = version

    def ids(self) -> list[str]:
        """The unexpired ids."""
        now = time.time()
        return [i for i, until in self._ids.items() if until is None or until > now]


class Terminable:
    """Runs task bodies so that ``revoke(terminate=True)`` can cancel the one of a task id.

    No ``asyncio.Task`` is made per message: the runner coroutine itself is cancelled, and
    :meth:`run` turns exactly that cancellation into :class:`Terminated` (``Task.uncancel``),
    while any other cancellation (worker shutdown) still propagates. A body that catches the
    cancellation and returns (or raises something else) keeps its outcome; the cancellation
    request is taken back all the same, so that the runner's next task can be terminated (or
    reach its soft time limit) as usual.
    """

    def __init__(self) -> None:
        self._running: dict[str, asyncio.Task[Any]] = {}
        # task id -> the runner cancelled for it by terminate(), until its run ends
        self._requested: dict[str, asyncio.Task[Any]] = {}
        self.started: dict[str, float] = {}  # task id -> when its body started (epoch seconds)

    async def run(self, task_id: str, body: Awaitable[T]) -> T:
        """Await ``body`` (the task's invocation) as the running body of ``task_id``.

        Raises:
            Terminated: :meth:`terminate` was called for ``task_id`` meanwhile, and the body
                let the cancellation out (and no other cancellation, a shutdown, came too).
            Whatever ``body`` raises.
        """
        current = asyncio.current_task()
        if current is None:
            return await body
        # Cancellations requested before this run (one the previous task absorbed) are not
        # this run's: only a count above this one means a shutdown came as well.
        entered = current.cancelling()
        self._running[task_id] = current
        self.started[task_id] = time.time()
        try:
            return await body
        except asyncio.CancelledError:
            if self._requested.get(task_id) is current:
                del self._requested[task_id]
                if current.uncancel() <= entered:
                    raise Terminated(f"task {task_id} was terminated (revoked)") from None
            raise
        finally:
            if self._requested.get(task_id) is current:
                # Terminated, but the body absorbed the cancellation: take the request back,
                # or the runner's cancelling() stays raised and its next terminate or soft
                # time limit would be taken for a shutdown.
                del self._requested[task_id]
                current.uncancel()
            if self._running.get(task_id) is current:
                del self._running[task_id]
                self.started.pop(task_id, None)

    def terminate(self, task_id: str) -> bool:
        """Cancel ``task_id``'s body if it is running here; True if it was."""
        runner = self._running.get(task_id)
        if runner is None or task_id in self._requested:
            return runner is not None
        self._requested[task_id] = runner
        runner.cancel(msg=f"task {task_id} revoked with terminate=True")
        return True

    def runners(self) -> dict[asyncio.Task[Any], str]:
        """The task id each runner (``asyncio.Task``) is running a body of, now."""
        return {runner: task_id for task_id, runner in self._running.items()}

    def running(self) -> list[str]:
        """Ids of the task bodies running now."""
        return list(self._running)
