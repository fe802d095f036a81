"""Finishing messages in batches: store many results in one round trip, then ack many.

Every finished task needs two writes: its result in the result backend, then the ack of its
message in the broker - in that order, so a crash between them means the message is delivered
again rather than its result lost (at-least-once). Done one task at a time that is two round
trips per task, and the worker's CPU goes into client overhead. The completer coalesces: runners
that finish in the same turn of the event loop share one ``backend.store`` call and then one
``broker.ack`` call, and each runner still returns only after its own message is acked.

On a broker that tracks runs (:class:`~aqueue.transports.base.RunTracking`) the marks of runs
about to start travel here too, in the same broker call as the acks: a runner that finishes
one message hands in the start of its next one with the ack, so marking costs neither a round
trip nor a wait of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from aqueue.batching import Batcher
from aqueue.transports import Broker, Delivery, RunTracking

if TYPE_CHECKING:
    from aqueue.transports import Records, ReplyTo, ResultBackend

Run = tuple[Delivery, bool]  # a delivery about to run, and whether as an isolated suspect
_Item = tuple[Sequence[tuple[str, bytes]], Sequence[Delivery], str | None, Run | None]


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
        self.tracker = broker if isinstance(broker, RunTracking) else None
        self._batcher: Batcher[_Item] = Batcher(self._flush, max_batch)
        self._lost: set[int] = set()  # ids of runs whose lease was found lost when marked
        # Stores the records in place of the backend's plain store and settles the tasks sent
        # after= them, before the acks (aqueue.dependencies); set by the executor when the
        # backend keeps waiter sets.
        self.on_waited: Callable[[Records, ReplyTo | None], Awaitable[None]] | None = None

    async def finish(
        self,
        records: Sequence[tuple[str, bytes]],
        acks: Sequence[Delivery],
        reply_to: str | None = None,
        start: Run | None = None,
    ) -> bool:
        """Store ``records`` then ack ``acks``, batched with other runners' calls.

        ``records`` are ``(task id, encoded record)`` pairs; ``reply_to`` is the sender's reply
        channel (the message's ``reply_to``), where the backend also publishes them. ``start``
        is a run to mark as started along with the acks (only on a RunTracking broker).

        Returns:
            False if the lease of ``start`` was found lost (another consumer has the message:
            it must not run here); True otherwise.

        Raises:
            BrokerConnectionError (or any error of the backend or broker): the batch failed;
            every caller in it gets the error, and its messages stay leased, so they are
            delivered again after the visibility timeout (nothing is lost).
        """
        await self._batcher.submit([(records, acks, reply_to, start)])
        if start is None or id(start[0]) not in self._lost:
            return True
        self._lost.discard(id(start[0]))
        return False

    async def _flush(self, items: list[_Item]) -> None:
        records = [r for recs, _, _, _ in items for r in recs]
        acks = [d for _, ds, _, _ in items for d in ds]
        replies = {r[0]: reply for recs, _, reply, _ in items if reply for r in recs}
        starts = [run for *_, run in items if run is not None]
        if records and self.backend is not None:
            if self.on_waited is not None:
                await self.on_waited(records, replies or None)
            else:
                await store(self.backend, records, self.expires, replies)
        if starts and self.tracker is not None:
            kept = await self.tracker.start(starts, acks)
            self._lost.update(id(d) for (d, _), ours in zip(starts, kept, strict=True) if not ours)
        elif acks:
            await self.broker.ack(acks)


async def store(
    backend: ResultBackend, records: Records, expires: float | None, replies: ReplyTo | None
) -> None:
    """``backend.store(records, expires, replies)``, without ``replies`` when there are none:
    the plain call, which backends written before reply channels take too.

    Raises:
        BrokerConnectionError (or any error of the backend): the records were not stored.
    """
    if replies:
        await backend.store(records, expires, replies)
    else:
        await backend.store(records, expires)
