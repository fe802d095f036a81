"""Handing records and messages to in-process subscribers, from any thread or event loop.

The memory and SQLite transports deliver what they store or poll to the asyncio queues of
whoever watches a task id or subscribes to a channel. A subscriber may live on another event
loop (a worker's and a test's loop in one process) or be fed from the SQLite thread, so each
queue is fed through its own loop (:class:`LoopQueue`); :class:`Subscriptions` keeps them by key.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["LoopQueue", "Subscriptions"]


@dataclass(eq=False)
class LoopQueue:
    """An asyncio queue and the loop it belongs to (compared by identity).

    Attributes:
        loop: the event loop of the subscriber.
        queue: where :meth:`put` delivers.
    """

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)

    def put(self, data: bytes) -> None:
        """Put ``data`` on the queue from any thread or loop; dropped if that loop is closed
        (even if it closes during the call: never raises for it)."""
        try:
            same_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            same_loop = False
        if same_loop:
            self.queue.put_nowait(data)
            return
        # No is_closed() check first: the loop's own thread may close it right after one, and
        # a publisher must not fail (after storing) for a subscriber that is gone.
        with contextlib.suppress(RuntimeError):  # "Event loop is closed"
            self.loop.call_soon_threadsafe(self.queue.put_nowait, data)


S = TypeVar("S", bound=LoopQueue)


class Subscriptions(Generic[S]):
    """Subscribers by key (a channel, a task id), guarded by the owner's lock.

    Args:
        lock: the lock the owner also holds while it stores, so that storing and finding whom
            to notify happen together.
    """

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._by_key: dict[str, list[S]] = {}

    def __bool__(self) -> bool:
        return bool(self._by_key)

    def of(self, key: str) -> list[S]:
        """The subscribers of ``key`` (a copy; call with the lock held). Those whose loop is
        closed are removed: nobody will read their queue, and a subscription whose loop was
        closed under it never leaves by itself."""
        subscribers = self._by_key.get(key)
        if not subscribers:
            return []
        live = [s for s in subscribers if not s.loop.is_closed()]
        if len(live) != len(subscribers):
            if live:
                self._by_key[key] = live
            else:
                del self._by_key[key]
        return live

    def keys(self) -> list[str]:
        """The keys with at least one subscriber."""
        return list(self._by_key)

    def items(self) -> list[tuple[str, list[S]]]:
        """``(key, subscribers)`` pairs (copies)."""
        return [(k, list(v)) for k, v in self._by_key.items()]

    def clear(self) -> None:
        """Forget every subscriber (the owner closed)."""
        self._by_key.clear()

    @contextmanager
    def holding(self, key: str, subscriber: S) -> Iterator[S]:
        """Subscribe ``subscriber`` to ``key`` for the block; the last one out removes the key."""
        with self._lock:
            self._by_key.setdefault(key, []).append(subscriber)
        try:
            yield subscriber
        finally:
            with self._lock:
                subscribers = self._by_key.get(key, [])
                if subscriber in subscribers:
                    subscribers.remove(subscriber)
                if not subscribers:
                    self._by_key.pop(key, None)
