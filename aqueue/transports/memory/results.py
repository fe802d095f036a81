"""The in-process result backend: the reference implementation of the ResultBackend Protocol.

Records live in a dict guarded by a thread lock; watchers are woken on their own event loop, so
one instance can serve several loops. Nothing survives the process.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from aqueue.transports.base import Records, ReplyTo, waiters_key
from aqueue.transports.fanout import LoopQueue, Subscriptions


class MemoryBackend:
    """Result backend for ``memory://`` URLs; state is per instance."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._lock = threading.Lock()
        self._data: dict[str, tuple[bytes, float | None]] = {}
        self._sets: dict[str, tuple[set[str], float | None]] = {}  # key -> (members, deadline)
        self._watchers: Subscriptions[LoopQueue] = Subscriptions(self._lock)
        self._locks: dict[str, tuple[str, float]] = {}  # key -> (owner, deadline)

    async def connect(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """End the watches of the calling event loop: their ``get()`` raises
        :class:`~aqueue.exceptions.BrokerConnectionError` once the records put before are read.
        Records are kept for a later ``connect``, and other loops' watches go on: the instance
        is shared by every user of the URL, each loop closing its own."""
        self._watchers.end(
            asyncio.get_running_loop(), f"the result backend {self.url} was closed: the watch ended"
        )

    async def store(
        self, items: Records, expires: float | None, reply_to: ReplyTo | None = None
    ) -> None:
        """Store records and put each on the queues watching its id (``reply_to`` is ignored)."""
        until = time.monotonic() + expires if expires is not None else None
        with self._lock:
            notify: list[tuple[LoopQueue, bytes]] = []
            for task_id, data in items:
                self._data[task_id] = (data, until)
                notify.extend((w, data) for w in self._watchers.of(task_id))
        for w, data in notify:
            w.put(data)

    async def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        """Read records; an expired record reads as ``None``."""
        now = time.monotonic()
        out: list[bytes | None] = []
        with self._lock:
            for task_id in task_ids:
                found = self._data.get(task_id)
                if found is not None and found[1] is not None and found[1] <= now:
                    del self._data[task_id]
                    found = None
                out.append(found[0] if found else None)
        return out

    async def delete(self, task_ids: Sequence[str]) -> None:
        """Forget records."""
        with self._lock:
            for task_id in task_ids:
                self._data.pop(task_id, None)

    async def add_member(self, key: str, member: str, expires: float | None) -> int:
        """Add ``member`` to set ``key`` under the lock; return its size (expired: starts empty)."""
        now = time.monotonic()
        with self._lock:
            members, until = self._sets.get(key, (set(), None))
            if until is not None and until <= now:
                members, until = set(), None
            members.add(member)
            if expires is not None:
                until = now + expires
            self._sets[key] = (members, until)
            return len(members)

    async def lock(self, key: str, owner: str, ttl: float) -> str:
        """See :meth:`aqueue.transports.base.Locks.lock` (atomic under the thread lock)."""
        now = time.monotonic()
        with self._lock:
            held = self._locks.get(key)
            if held is not None and held[0] != owner and held[1] > now:
                return held[0]
            self._locks[key] = (owner, now + ttl)
            return owner

    async def unlock(self, key: str, owner: str) -> bool:
        """See :meth:`aqueue.transports.base.Locks.unlock`."""
        with self._lock:
            held = self._locks.get(key)
            if held is None or held[0] != owner:
                return False
            del self._locks[key]
            return held[1] > time.monotonic()

    async def store_waited(
        self, items: Records, expires: float | None, reply_to: ReplyTo | None = None
    ) -> list[str]:
        """See :meth:`aqueue.transports.base.Waiters.store_waited`."""
        await self.store(items, expires, reply_to)
        waited = [task_id for task_id, _ in items if self._set(waiters_key(task_id))]
        return list(dict.fromkeys(waited))

    async def add_waiter(self, task_id: str, waiter: str, expires: float | None) -> None:
        """See :meth:`aqueue.transports.base.Waiters.add_waiter`."""
        await self.add_member(waiters_key(task_id), waiter, expires)

    async def members(self, key: str) -> list[str]:
        """See :meth:`aqueue.transports.base.Waiters.members`."""
        return sorted(self._set(key))

    def _set(self, key: str) -> set[str]:
        with self._lock:
            members, until = self._sets.get(key, (set(), None))
            return set() if until is not None and until <= time.monotonic() else set(members)

    @asynccontextmanager
    async def watch(self, task_id: str) -> AsyncIterator[asyncio.Queue[bytes]]:
        """Yield a queue that receives every record stored for ``task_id`` from now on, until
        :meth:`close` on this loop ends it (see :class:`.fanout.SubscriberQueue`)."""
        with self._watchers.holding(task_id, LoopQueue(asyncio.get_running_loop())) as w:
            yield w.queue
