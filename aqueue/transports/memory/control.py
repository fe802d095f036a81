"""The in-process control transport for ``memory://`` brokers: the reference implementation.

Everything lives in this object; the app shares one instance per URL between every loop that
uses it (a producer's loop and a worker's), as it does the memory broker. State is guarded by a
thread lock and subscribers are woken on their own loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from aqueue.transports.fanout import LoopQueue, Subscriptions
from aqueue.worker.ratelimit import refill

__all__ = ["MemoryControl"]


class MemoryControl:
    """Control transport kept in this process (``memory://``)."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._lock = threading.Lock()
        self._subscribers: Subscriptions[LoopQueue] = Subscriptions(self._lock)
        self._tables: dict[str, dict[str, tuple[bytes, float | None]]] = {}
        self._versions: dict[str, int] = {}
        self._buckets: dict[str, tuple[float, float]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    async def connect(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """End the subscriptions of the calling event loop: their consumers' ``get()`` raises
        :class:`~aqueue.exceptions.BrokerConnectionError` once they read what arrived before.
        The state is kept, and other loops' subscriptions go on: the instance is shared by
        every user of the URL, each loop closing its own. A later subscribe works again."""
        self._subscribers.end(
            asyncio.get_running_loop(), f"{self!r} was closed: the subscription ended"
        )

    async def publish(self, channel: str, messages: Sequence[bytes]) -> None:
        """Put ``messages`` on every current subscriber's queue."""
        with self._lock:
            subscribers = self._subscribers.of(channel)
        for sub in subscribers:
            for data in messages:
                sub.put(data)

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[asyncio.Queue[bytes]]:
        """Yield a queue receiving what is published on ``channel`` from now on, until
        :meth:`close` on this loop ends it (see :class:`.fanout.SubscriberQueue`)."""
        with self._subscribers.holding(channel, LoopQueue(asyncio.get_running_loop())) as sub:
            yield sub.queue

    async def put(self, table: str, key: str, value: bytes | None, ttl: float | None) -> None:
        """Set or delete an entry and bump the table's version."""
        with self._lock:
            entries = self._tables.setdefault(table, {})
            if value is None:
                entries.pop(key, None)
            else:
                entries[key] = (value, None if ttl is None else time.monotonic() + ttl)
            self._versions[table] = self._versions.get(table, 0) + 1

    async def read(self, table: str) -> tuple[int, dict[str, bytes]]:
        """The version and the unexpired entries; expired ones are dropped."""
        now = time.monotonic()
        with self._lock:
            entries = self._tables.get(table, {})
            for key in [
                k for k, (_, until) in entries.items() if until is not None and until <= now
            ]:
                del entries[key]
            return self._versions.get(table, 0), {k: v for k, (v, _) in entries.items()}

    async def version(self, table: str) -> int:
        """The table's version."""
        with self._lock:
            return self._versions.get(table, 0)

    async def acquire(self, bucket: str, rate: float, capacity: float) -> float:
        """Take a token under the lock (see :func:`aqueue.worker.ratelimit.refill`)."""
        with self._lock:
            # Read under the lock: a time read before another thread's acquire would move
            # the bucket's time back, and its refill would be counted twice.
            now = time.monotonic()
            tokens, updated = self._buckets.get(bucket, (capacity, now))
            tokens, wait = refill(tokens, updated, now, rate, capacity)
            self._buckets[bucket] = (tokens, now)
        return wait
