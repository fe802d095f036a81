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
and published in the order they were yielded. A result backend that cannot be reached (a dropped
connection, or no answer within the writer's ``timeout`` seconds: a connection the network left
open but silent) fails nothing and loses nothing, as for the worker's other results
(:mod:`aqueue.worker.completer`): the item is stored again, on a fresh connection, after a pause
(:data:`~aqueue.worker.completer.STORE_BACKOFF`), until the backend takes it - the task waits
meanwhile, within its time limit. A store that did land before its answer was lost is stored again
with the same bytes: the item's key holds it once, and a reader skips the record seen twice (it
names its number). Only an item the backend *refuses* fails the task: another error than a
connection error, or a connection error :data:`~aqueue.worker.completer.REFUSALS` times in a row
while the backend answers a read right after each (Redis closes the connection on a value larger
than its ``proto-max-bulk-len``). A task with ``ignore_result`` (or a worker without
a result backend) stores nothing and only collects the list. More than ``stream_max_items``
items fail the task with :class:`~aqueue.exceptions.StreamError`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from aqueue import states
from aqueue.exceptions import BrokerConnectionError, StreamError
from aqueue.results.record import ResultRecord
from aqueue.results.stream import item_key
from aqueue.worker import completer
from aqueue.worker.completer import REFUSALS, STORE_TIMEOUT, answers, bounded, store

if TYPE_CHECKING:
    from aqueue.message import Message
    from aqueue.signing import Signing
    from aqueue.transports import ResultBackend

logger = logging.getLogger(__name__)

#: What :func:`drain` calls with each item (``None``: items are only collected).
Emit = Callable[[Any], Awaitable[None]]
_T = TypeVar("_T")


class StreamWriter:
    """Stores the items of one run of a streamed task (the ``emit`` of :func:`drain`).

    Args:
        backend: the connected result backend.
        msg: the message being run (its id, name, retries and ``reply_to``).
        serializer: the ``result_serializer``.
        signing: the app's record signers, or ``None``.
        expires: ``result_expires`` seconds, or ``None``.
        timeout: seconds an item's store may wait for the backend's answer before it is tried
            again on a fresh connection (the worker's ``broker_connection_timeout``, as the
            completer's :attr:`~aqueue.worker.completer.Completer.timeout`), ``None`` for no
            bound.
    """

    __slots__ = (
        "_backend", "_expires", "_msg", "_reply", "_serializer", "_signing", "count", "timeout",
    )  # fmt: skip

    def __init__(
        self,
        backend: ResultBackend,
        msg: Message,
        serializer: str,
        signing: Signing | None,
        expires: float | None,
        *,
        timeout: float | None = STORE_TIMEOUT,
    ) -> None:
        self._backend = backend
        self._msg = msg
        self._serializer = serializer
        self._signing = signing
        self._expires = expires
        self._reply = {msg.id: msg.reply_to} if msg.reply_to else None
        self.count = 0  # items stored so far
        self.timeout = timeout

    async def __call__(self, item: Any) -> None:
        """Store ``item`` as the next one and tell the task's waiters.

        While the backend cannot be reached the item is stored again after a pause, until it
        takes it (see the module docstring): this waits as long as the backend is away.

        Raises:
            EncodeError: ``item`` cannot be serialised with ``result_serializer`` (the task
                fails with it).
            BrokerConnectionError: the backend refused the item: it closed the connection
                :data:`~aqueue.worker.completer.REFUSALS` times in a row while answering a
                read right after each.
            Any other error of the backend's store (a refusal: the task fails with it).
        """
        msg, number = self._msg, self.count + 1
        record = ResultRecord(
            msg.id, states.STREAMING, item, None, time.time(), msg.retries, msg.task,
            streamed=number,
        )  # fmt: skip
        data = record.encode(self._serializer, self._signing)
        pairs = [(item_key(msg.id, number - 1), data), (msg.id, data)]
        try:
            await self._bounded(store(self._backend, pairs, self._expires, self._reply))
        except BrokerConnectionError as exc:
            await self._store_again(pairs, exc)
        self.count = number

    async def _store_again(
        self, pairs: list[tuple[str, bytes]], exc: BrokerConnectionError
    ) -> None:
        """Store ``pairs`` (the same bytes: storing them twice leaves them as once) after a
        pause, doubled after each failed try up to ``STORE_BACKOFF[1]`` seconds, until the
        backend takes them.

        Raises:
            BrokerConnectionError: ``exc`` (or a later try's), once :data:`REFUSALS` tries in a
                row failed while the backend answered a read right after each.
            Any other error of the backend's store.
        """
        # Read at each call, not imported: the worker's pauses are the completer's.
        pause, longest = completer.STORE_BACKOFF
        refused = 0
        logger.warning(
            "item %d of %s[%s] not stored: %s; trying again every %gs at most until the result "
            "backend takes it",
            self.count + 1, self._msg.task, self._msg.id, exc, longest,
        )  # fmt: skip
        while True:
            # Counted in a row only: a try that found the backend away is no refusal.
            refused = refused + 1 if await self._answering() else 0
            if refused >= REFUSALS:
                raise exc
            await asyncio.sleep(pause)  # a backoff, not a synchronisation
            pause = min(pause * 2, longest)
            try:
                await self._bounded(store(self._backend, pairs, self._expires, self._reply))
            except BrokerConnectionError as again:
                logger.debug("item of %s still not stored: %s", self._msg.id, again)
                exc = again
            else:
                logger.warning("the result backend takes the items of %s again", self._msg.id)
                return

    async def _answering(self) -> bool:
        """Whether the backend answers a read of the task's record within :attr:`timeout`
        seconds (a store it fails while it answers may be its refusal of the item)."""
        return await answers(self._backend, self._msg.id, self.timeout)

    async def _bounded(self, call: Awaitable[_T]) -> _T:
        """``await call`` within :attr:`timeout` seconds (:func:`.completer.bounded`)."""
        return await bounded(call, self.timeout)


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
