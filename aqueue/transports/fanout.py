"""Handing records and messages to in-process subscribers, from any thread or event loop.

The memory and SQLite transports deliver what they store or poll to the asyncio queues of
whoever watches a task id or subscribes to a channel. A subscriber may live on another event
loop (a worker's and a test's loop in one process) or be fed from the SQLite thread, so each
queue is fed through its own loop (:class:`LoopQueue`); :class:`Subscriptions` keeps them by key.

A subscriber's queue is a :class:`SubscriberQueue`: when its transport closes, the subscription
ends, and a consumer parked on ``get()`` is told (:class:`~aqueue.exceptions.BrokerConnectionError`)
instead of waiting for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, NoReturn, TypeVar

from aqueue.exceptions import BrokerConnectionError

__all__ = ["LoopQueue", "SubscriberQueue", "Subscriptions"]

# Put after the last message of an ended subscription; never handed to a consumer.
_END: Any = object()


class SubscriberQueue(asyncio.Queue[bytes]):
    """The queue a subscription delivers to, which its transport ends when it closes.

    After :meth:`end`, :meth:`get` and :meth:`get_nowait` still hand out the messages that
    arrived before, then raise :class:`~aqueue.exceptions.BrokerConnectionError` on every call
    (every parked consumer is woken); ``empty()`` is then ``False``. Messages put after the
    end are never read.
    """

    def __init__(self) -> None:
        super().__init__()
        self._ended: str | None = None  # why the subscription ended

    def end(self, reason: str) -> None:
        """End the subscription (on the queue's loop; only the first call counts).

        Args:
            reason: the error's message, naming the transport and saying that it closed.
        """
        if self._ended is None:
            self._ended = reason
            super().put_nowait(_END)

    async def get(self) -> bytes:
        """The next message, waiting for one.

        Raises:
            BrokerConnectionError: the subscription ended and every earlier message was read.
        """
        return self._checked(await super().get())

    def get_nowait(self) -> bytes:
        """The next message.

        Raises:
            asyncio.QueueEmpty: none is waiting.
            BrokerConnectionError: the subscription ended and every earlier message was read.
        """
        return self._checked(super().get_nowait())

    def _checked(self, item: bytes) -> bytes:
        if item is _END:
            self._raise_end()
        return item

    def _raise_end(self) -> NoReturn:
        # Put back: the next get (another consumer parked on this queue) must end too.
        super().put_nowait(_END)
        raise BrokerConnectionError(self._ended or "the subscription ended")


@dataclass(eq=False)
class LoopQueue:
    """An asyncio queue and the loop it belongs to (compared by identity).

    Attributes:
        loop: the event loop of the subscriber.
        queue: where :meth:`put` delivers.
    """

    loop: asyncio.AbstractEventLoop
    queue: SubscriberQueue = field(default_factory=SubscriberQueue)

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

    def end(self, reason: str) -> None:
        """End the subscription (:meth:`SubscriberQueue.end`) from any thread or loop, after
        what :meth:`put` delivered before; nothing if the subscriber's loop is closed."""
        try:
            same_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            same_loop = False
        if same_loop:
            self.queue.end(reason)
            return
        with contextlib.suppress(RuntimeError):  # "Event loop is closed"
            self.loop.call_soon_threadsafe(self.queue.end, reason)


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

    def end(self, loop: asyncio.AbstractEventLoop, reason: str) -> None:
        """End and forget the subscribers living on ``loop`` (their owner closed there); those
        of other loops keep listening (an owner shared by loops is closed by each of them).
        Call without the lock.

        Args:
            reason: the message of the error their consumers get (see :class:`SubscriberQueue`).
        """
        ended: list[S] = []
        with self._lock:
            for key, subscribers in list(self._by_key.items()):
                ended.extend(s for s in subscribers if s.loop is loop)
                kept = [s for s in subscribers if s.loop is not loop]
                if kept:
                    self._by_key[key] = kept
                else:
                    del self._by_key[key]
        for subscriber in ended:
            subscriber.end(reason)

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
