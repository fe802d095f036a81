"""The worker's side of result streaming: store each item an async-generator task yields.

A task whose function is an ``async def`` with ``yield`` is *streamed*: the worker iterates it
(:func:`drain`) and, for each item, before asking the generator for the next one, stores a
``STREAMING`` record (:data:`aqueue.states.STREAMING`) holding the item and its number
(``streamed``) twice in one ``store`` call - under the task's id, which notifies its waiters over
the result backend's usual push path (pub/sub or the sender's reply channel on Redis, the reply
queue of ``rpc://``, the SQLite backend's watch), and under the item's own key
(:func:`aqueue.results.stream.item_key`), so that a reader who subscribes late, or whose backend
coalesces notifications, reads every item it missed. Both expire with ``result_expires``. The
task's result is the list of its items (:mod:`aqueue.results.stream` says why).

Backpressure is the store: the generator resumes once its item is stored, so items are stored
and published in the order they were yielded. A task with ``ignore_result`` (or a worker without
a result backend) stores nothing and only collects the list. More than ``stream_max_items``
items fail the task with :class:`~aqueue.exceptions.StreamError`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aqueue import states
from aqueue.exceptions import StreamError
from aqueue.results.record import ResultRecord
from aqueue.results.stream import item_key
from aqueue.worker.completer import store

if TYPE_CHECKING:
    from aqueue.message import Message
    from aqueue.signing import Signing
    from aqueue.transports import ResultBackend

#: What :func:`drain` calls with each item (``None``: items are only collected).
Emit = Callable[[Any], Awaitable[None]]


class StreamWriter:
    """Stores the items of one run of a streamed task (the ``emit`` of :func:`drain`).

    Args:
        backend: the connected result backend.
        msg: the message being run (its id, name, retries and ``reply_to``).
        serializer: the ``result_serializer``.
        signing: the app's record signers, or ``None``.
        expires: ``result_expires`` seconds, or ``None``.
    """

    __slots__ = ("_backend", "_expires", "_msg", "_reply", "_serializer", "_signing", "count")

    def __init__(
        self,
        backend: ResultBackend,
        msg: Message,
        serializer: str,
        signing: Signing | None,
        expires: float | None,
    ) -> None:
        self._backend = backend
        self._msg = msg
        self._serializer = serializer
        self._signing = signing
        self._expires = expires
        self._reply = {msg.id: msg.reply_to} if msg.reply_to else None
        self.count = 0  # items stored so far

    async def __call__(self, item: Any) -> None:
        """Store ``item`` as the next one and tell the task's waiters.

        Raises:
            EncodeError: ``item`` cannot be serialised with ``result_serializer`` (the task
                fails with it).
            BrokerConnectionError: the result backend cannot be reached.
        """
        msg, number = self._msg, self.count + 1
        record = ResultRecord(
            msg.id, states.STREAMING, item, None, time.time(), msg.retries, msg.task,
            streamed=number,
        )  # fmt: skip
        data = record.encode(self._serializer, self._signing)
        pairs = [(item_key(msg.id, number - 1), data), (msg.id, data)]
        await store(self._backend, pairs, self._expires, self._reply)
        self.count = number


async def drain(generator: AsyncGenerator[Any, None], emit: Emit | None, limit: int) -> list[Any]:
    """Run ``generator`` to its end, passing each item to ``emit``; return the items' list.

    Raises:
        StreamError: it yielded more than ``limit`` items (it is closed first).
        Whatever the generator or ``emit`` raises (the generator is closed).
    """
    items: list[Any] = []
    try:
        async for item in generator:
            if len(items) >= limit:
                raise StreamError(
                    f"the task yielded more than its stream_max_items={limit} items (each is "
                    f"stored until the result expires): raise the option, or yield bigger items"
                )
            if emit is not None:
                await emit(item)
            items.append(item)
    finally:
        await generator.aclose()
    return items
