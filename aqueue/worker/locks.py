"""Unique tasks in the worker: a running call's lock follows its message's lease.

A unique call's send took ``unique:<task>:<key>`` for its task id for ``unique_ttl`` seconds
(:mod:`aqueue.sending.unique`). In the worker:

- when the run starts, a ``"running"`` lock is taken again for one visibility timeout and
  renewed every third of it while the task runs, like the message's lease; a ``"queued"`` lock
  is freed;
- when the run ends (success, failure, revoke, termination) the lock is freed; a retry keeps it
  for ``unique_ttl`` again, as the call is queued again; a message the worker will not run
  (revoked, expired, dead-lettered) frees it too;
- when the worker dies, the renewals stop and the lock expires within one visibility timeout -
  about when the message is delivered again, and runs once more.

Freeing compares the owner (the task id), so a run never frees a lock another call took after
its own expired. Errors of the result backend here are logged, never raised: a lock left
behind expires on its own, and the task's outcome is never lost for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aqueue import states
from aqueue.exceptions import AqueueError
from aqueue.message import Message
from aqueue.sending.unique import UniqueLock
from aqueue.transports import Delivery, Locks, ResultBackend, has_locks

__all__ = ["RunLocks"]

logger = logging.getLogger("aqueue.worker")


class RunLocks:
    """The unique locks of the calls one executor runs.

    Args:
        backend: the connected result backend (no locks are kept unless it serves
            :class:`~aqueue.transports.base.Locks`).
        lease: seconds a running call's lock lasts without renewal: the visibility timeout.
    """

    def __init__(self, backend: ResultBackend | None, lease: float) -> None:
        self.locks: Locks | None = backend if has_locks(backend) else None
        self.lease = lease
        self._running: dict[int, tuple[str, str]] = {}  # id(delivery) -> (key, owner)
        self._renewer: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()  # set when nothing runs: the renewer ends at once

    async def start(self, delivery: Delivery, msg: Message) -> None:
        """``msg`` starts running: move its lock onto the lease, or free a ``"queued"`` one."""
        lock = self._lock_of(msg)
        if lock is None or self.locks is None:
            return
        if lock.mode == "queued":
            await self._unlock(lock.key, msg.id)
            return
        if await self._lock(lock.key, msg.id, self.lease) == msg.id:
            self._running[id(delivery)] = (lock.key, msg.id)
            self._idle.clear()
            if self._renewer is None or self._renewer.done():
                self._renewer = asyncio.create_task(self._renew())

    async def finish(self, delivery: Delivery, msg: Message, state: str) -> None:
        """``msg``'s run ended in ``state``: free its lock, or keep it while a retry is queued."""
        self.drop(delivery)
        lock = self._lock_of(msg)
        if lock is None or self.locks is None:
            return
        if state == states.RETRY:
            await self._lock(lock.key, msg.id, lock.ttl)
        else:
            await self._unlock(lock.key, msg.id)

    async def discard(self, msg: Message) -> None:
        """``msg`` will not run (revoked, expired, dead-lettered): free its lock."""
        lock = self._lock_of(msg)
        if lock is not None and self.locks is not None:
            await self._unlock(lock.key, msg.id)

    def drop(self, delivery: Delivery) -> None:
        """Stop renewing ``delivery``'s lock without freeing it (its message stays leased and
        comes back; the lock expires within one lease). Called for every delivery the
        executor finishes: for one without a lock it is one dict lookup."""
        if self._running.pop(id(delivery), None) is not None and not self._running:
            self._idle.set()

    def _lock_of(self, msg: Message) -> UniqueLock | None:
        return UniqueLock.from_message(msg) if "unique" in msg.options else None

    async def _renew(self) -> None:
        """Every third of a lease, renew the locks of the running calls; ends when none run."""
        while self._running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.lease / 3)
            for ref, (key, owner) in list(self._running.items()):
                holder = await self._lock(key, owner, self.lease)
                if holder is not None and holder != owner:
                    self._running.pop(ref, None)  # expired and taken: not ours to renew

    async def _lock(self, key: str, owner: str, ttl: float) -> str | None:
        assert self.locks is not None
        try:
            return await self.locks.lock(key, owner, ttl)
        except AqueueError as exc:
            logger.error("unique lock %s could not be renewed: %s", key, exc)
            return None

    async def _unlock(self, key: str, owner: str) -> None:
        assert self.locks is not None
        with contextlib.suppress(AqueueError):
            if await self.locks.unlock(key, owner):
                return
        logger.debug("unique lock %s was not %s's any more (expired)", key, owner)
