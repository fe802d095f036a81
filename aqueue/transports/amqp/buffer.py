"""What RabbitMQ has pushed to an AMQP consumer and ``fetch`` has not handed out yet.

Deliveries wait here, already leased to this connection (unacked), until a fetch takes them:
per queue a heap, priority 9 first, then in arrival order. A consumer that has just started is
*settling* while the messages RabbitMQ said were ready are still on their way, so that a fetch
does not hand out the first to arrive when a better one is coming.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiormq.abc
from aiormq import spec

from aqueue.transports.amqp.ledger import Ledger

__all__ = ["Arrival", "Buffer"]


@dataclass(slots=True)
class Arrival:
    """A delivery pushed by RabbitMQ, waiting in the buffer or handed out (a Delivery's token).

    Attributes:
        message: the delivery as aiormq parsed it.
        queue: the queue it came from.
        count: its delivery count (see :mod:`aqueue.transports.amqp.broker`).
        seq: its arrival number in this buffer: older first among equal priorities.
        ledger: the unacked deliveries of its channel, this one included until acked.
        done: acked, or handed back.
        defect: why its headers cannot be read or re-published (naming the header), checked
            as it arrives; the worker dead-letters a delivery with a defect.
    """

    message: aiormq.abc.DeliveredMessage
    queue: str
    count: int
    seq: int
    ledger: Ledger
    done: bool = False
    defect: str | None = None

    @property
    def channel(self) -> aiormq.abc.AbstractChannel:
        """The channel it came on: only there can it be acked."""
        return self.message.channel

    @property
    def properties(self) -> spec.Basic.Properties:
        return self.message.header.properties

    @property
    def delivery_tag(self) -> int:
        """Its tag on its channel (what an ack names)."""
        tag = self.message.delivery_tag
        assert tag is not None
        return tag

    @property
    def priority(self) -> int:
        return self.properties.priority or 0

    @property
    def headers(self) -> dict[str, Any]:
        """A copy of its AMQP headers."""
        return dict(self.properties.headers or {})

    async def ack(self) -> None:
        """``basic.ack`` on the channel it came on, once.

        Raises:
            aiormq.exceptions.ChannelInvalidStateError: that channel has closed.
        """
        if not self.done:
            # No wait for the socket to drain: an ack has no reply, and order is kept anyway.
            await self.channel.basic_ack(self.delivery_tag, wait=False)
            self.ledger.discard(self.delivery_tag)
            self.done = True

    async def requeue(self) -> None:
        """``basic.reject`` with ``requeue`` on the channel it came on, once: RabbitMQ puts it
        back in its queue, where it was, and delivers it again (``redelivered``).

        Raises:
            aiormq.exceptions.ChannelInvalidStateError: that channel has closed.
        """
        if not self.done:
            # Written before the tag leaves the ledger, as ack() does: a multiple ack settled
            # later is written after it, and RabbitMQ skips a tag it no longer holds.
            await self.channel.basic_reject(self.delivery_tag, requeue=True, wait=False)
            self.ledger.discard(self.delivery_tag)
            self.done = True


class Buffer:
    """Arrivals by queue, best first, and the settling of freshly started consumers.

    :attr:`arrived` is set whenever something changes that a waiting fetch should look at.
    """

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self._heaps: dict[str, list[tuple[int, int, Arrival]]] = {}
        self._seq = itertools.count()
        self._expected: dict[str, int] = {}  # queue -> arrivals still expected since its start
        self._settle_until = 0.0  # loop time
        self._ledgers: dict[aiormq.abc.AbstractChannel, Ledger] = {}  # by consumer channel

    def arrival(self, message: aiormq.abc.DeliveredMessage, queue: str) -> Arrival:
        """A new arrival (count 0) for ``message``, noted unacked in its channel's ledger;
        counts towards ``queue``'s settling. Called for every delivery as it comes, in order
        (the ledger of a channel whose deliveries skip it stops covering many per ack)."""
        expected = self._expected.get(queue)
        if expected is not None:
            if expected > 1:
                self._expected[queue] = expected - 1
            else:
                del self._expected[queue]
        channel = message.channel
        ledger = self._ledgers.get(channel)
        if ledger is None:
            # A new consumer channel (after a reopening): the closed ones' ledgers go.
            for old in [c for c in self._ledgers if c.is_closed]:
                del self._ledgers[old]
            ledger = self._ledgers[channel] = Ledger()
        tag = message.delivery_tag
        assert tag is not None
        ledger.add(tag)
        return Arrival(message, queue, 0, next(self._seq), ledger)

    def push(self, arrival: Arrival) -> None:
        heapq.heappush(
            self._heaps.setdefault(arrival.queue, []), (-arrival.priority, arrival.seq, arrival)
        )
        self.arrived.set()

    def expect(self, queue: str, count: int, until: float) -> None:
        """A consumer of ``queue`` started with ``count`` messages to come, by loop time
        ``until`` at the latest."""
        if count > 0:
            self._expected[queue] = count
            self._settle_until = until

    def stop_settling(self) -> None:
        self._expected.clear()

    def settling_until(self, queues: Iterable[str]) -> float:
        """Loop time until which a fetch of ``queues`` should wait for expected arrivals
        (in the past when none are expected)."""
        if any(self._expected.get(q) for q in queues):
            return self._settle_until
        return 0.0

    def take(self, rank: Mapping[str, int], limit: int) -> list[Arrival]:
        """Remove and return up to ``limit`` arrivals of the ranked queues: priority 9 first,
        then the lower rank, then the oldest.

        Arrivals of a closed channel are dropped: RabbitMQ has put them back in their queue.
        """
        heaps = [(r, self._heaps[q]) for q, r in rank.items() if self._heaps.get(q)]
        taken: list[Arrival] = []
        while heaps and len(taken) < limit:
            _, heap = min(heaps, key=lambda rh: (rh[1][0][0], rh[0], rh[1][0][1]))
            arrival = heapq.heappop(heap)[2]
            if not heap:
                heaps = [rh for rh in heaps if rh[1]]
            if not arrival.channel.is_closed:
                taken.append(arrival)
        return taken

    def drain(self) -> list[Arrival]:
        """Empty the buffer; return what it held."""
        held = [arrival for heap in self._heaps.values() for _, _, arrival in heap]
        self._heaps = {}
        return held
