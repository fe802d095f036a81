"""Finishing messages in batches: store many results in one round trip, then ack many.

Every finished task needs two writes: its result in the result backend, then the ack of its
message in the broker - in that order, so a crash between them means the message is delivered
again rather than its result lost (at-least-once). Done one task at a time that is two round
trips per task, and the worker's CPU goes into client overhead. The completer coalesces: runners
that finish in the same turn of the event loop share one ``backend.store`` call and then one
``broker.ack`` call, and each runner still returns only after its own message is acked.

A batch is flushed as soon as the loop has nothing else ready to run (no timer, no added
latency), or when it reaches ``max_batch`` items.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aqueue.brokers import Broker, Delivery

if TYPE_CHECKING:
    from aqueue.backends import ResultBackend


class _Batch:
    __slots__ = ("acks", "done", "records")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.records: list[tuple[str, bytes]] = []
        self.acks: list[Delivery] = []
        self.done: asyncio.Future[None] = loop.create_future()
        # Callers may all be cancelled (shutdown) before a failed flush: mark it seen anyway.
        self.done.add_done_callback(_consume)


class Completer:
    """Coalesces result stores and acks from concurrent runners.

    Args:
        broker: where acks go.
        backend: where results go, or ``None`` when results are not stored.
        expires: seconds results are kept (the ``result_expires`` setting), or ``None``.
        max_batch: flush at once when a batch holds this many items.
    """

    def __init__(
        self,
        broker: Broker,
        backend: ResultBackend | None,
        expires: float | None,
        max_batch: int = 500,
    ) -> None:
        self.broker = broker
        self.backend = backend
        self.expires = expires
        self.max_batch = max_batch
        self._batch: _Batch | None = None
        self._flushing: set[asyncio.Task[None]] = set()

    async def finish(self, records: Sequence[tuple[str, bytes]], acks: Sequence[Delivery]) -> None:
        """Store ``records`` then ack ``acks``, batched with other runners' calls.

        Returns once both are done for this call's items.

        Raises:
            BrokerConnectionError (or any error of the backend or broker): the batch failed;
            every caller in it gets the error, and its messages stay leased, so they are
            delivered again after the visibility timeout (nothing is lost).
        """
        batch = self._batch
        if batch is None:
            loop = asyncio.get_running_loop()
            batch = self._batch = _Batch(loop)
            # call_soon runs after every callback already queued: the runners woken in this
            # turn add their items before the flush starts.
            loop.call_soon(self._start_flush, batch)
        if self.backend is not None:
            batch.records.extend(records)
        batch.acks.extend(acks)
        if len(batch.records) + len(batch.acks) >= self.max_batch:
            self._start_flush(batch)
        await asyncio.shield(batch.done)

    def _start_flush(self, batch: _Batch) -> None:
        if self._batch is not batch:
            return  # already flushed because it was full
        self._batch = None
        task = asyncio.ensure_future(self._flush(batch))
        self._flushing.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._flushing.discard)
        task.add_done_callback(_consume)

    async def _flush(self, batch: _Batch) -> None:
        try:
            if batch.records and self.backend is not None:
                await self.backend.store(batch.records, self.expires)
            if batch.acks:
                await self.broker.ack(batch.acks)
        except BaseException as exc:
            batch.done.set_exception(exc)
            raise
        else:
            batch.done.set_result(None)


def _consume(fut: asyncio.Future[None]) -> None:
    # The error reached every caller through the batch's future; don't log it again here.
    if not fut.cancelled():
        fut.exception()
