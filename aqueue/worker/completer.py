"""Finishing messages in batches: store many results in one round trip, then ack many.

Every finished task needs two writes: its result in the result backend, then the ack of its
message in the broker - in that order, so a crash between them means the message is delivered
again rather than its result lost (at-least-once). Done one task at a time that is two round
trips per task, and the worker's CPU goes into client overhead. The completer coalesces: runners
that finish in the same turn of the event loop share one ``backend.store`` call and then one
``broker.ack`` call, and each runner still returns only after its own message is acked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from aqueue.batching import Batcher
from aqueue.transports import Broker, Delivery

if TYPE_CHECKING:
    from aqueue.transports import ResultBackend

_Item = tuple[Sequence[tuple[str, bytes]], Sequence[Delivery], str | None]


class Completer:
    """Coalesces result stores and acks from concurrent runners.

    Args:
        broker: where acks go.
        backend: where results go, or ``None`` when results are not stored.
        expires: seconds results are kept (the ``result_expires`` setting), or ``None``.
        max_batch: flush at once when a batch holds this many calls.
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
        self._batcher: Batcher[_Item] = Batcher(self._flush, max_batch)

    async def finish(
        self,
        records: Sequence[tuple[str, bytes]],
        acks: Sequence[Delivery],
        reply_to: str | None = None,
    ) -> None:
        """Store ``records`` then ack ``acks``, batched with other runners' calls.

        ``records`` are ``(task id, encoded record)`` pairs; ``reply_to`` is the sender's reply
        channel (the message's ``reply_to``), where the backend also publishes them.

        Raises:
            BrokerConnectionError (or any error of the backend or broker): the batch failed;
            every caller in it gets the error, and its messages stay leased, so they are
            delivered again after the visibility timeout (nothing is lost).
        """
        await self._batcher.submit([(records, acks, reply_to)])

    async def _flush(self, items: list[_Item]) -> None:
        records = [r for recs, _, _ in items for r in recs]
        acks = [d for _, ds, _ in items for d in ds]
        replies = {r[0]: reply for recs, _, reply in items if reply for r in recs}
        if records and self.backend is not None:
            if replies:
                await self.backend.store(records, self.expires, replies)
            else:  # the plain call: backends written before reply channels take it too
                await self.backend.store(records, self.expires)
        if acks:
            await self.broker.ack(acks)
