"""The deliveries a consumer channel holds unacked, so that one ``basic.ack`` can settle many.

RabbitMQ numbers the deliveries on a channel 1, 2, 3... (AMQP 0-9-1 delivery tags), and an ack
with ``multiple`` set settles every delivery on the channel up to and including its tag. Acking
a whole run of deliveries with one such frame costs RabbitMQ far less CPU than one frame each
(``benchmarks/amqp_acks.py``), but it is only right when every delivery up to that tag is one
being acked now: a multiple ack also settles whatever the worker still runs or holds.

:class:`Ledger` keeps, per channel, the tags delivered and not yet acked, in order. Given the
tags to ack, :meth:`Ledger.settle` finds the longest run at the front of that order made only of
them, to be covered by one multiple ack, and leaves the others to be acked one by one. It trusts
only what it has seen: should a tag ever arrive out of turn (a delivery that never reached the
consumer callback, which aiormq drops when its consumer is gone), the ledger cannot know what
else the channel holds, and from then on every ack on that channel names one tag.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection

__all__ = ["Ledger"]


class Ledger:
    """The unacked delivery tags of one channel, oldest first."""

    __slots__ = ("_exact", "_next", "_tags", "lock")

    def __init__(self) -> None:
        self._tags: dict[int, None] = {}  # insertion order is delivery order
        self._next = 1  # the tag the next delivery must carry for the ledger to stay exact
        self._exact = True
        # Held from settle() until its acks are written: acks must reach RabbitMQ in the order
        # they were settled. A multiple ack written ahead of an earlier one would settle the
        # earlier one's tags, and RabbitMQ closes the channel on an ack of an unknown tag.
        self.lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._tags)

    @property
    def exact(self) -> bool:
        """True while every delivery on the channel has been :meth:`add`-ed, in order."""
        return self._exact

    def add(self, tag: int) -> None:
        """Note a delivery (``tag`` > 0) as it arrives."""
        if tag != self._next:
            self._exact = False
        self._next = tag + 1
        self._tags[tag] = None

    def discard(self, tag: int) -> None:
        """Note ``tag`` acked on its own."""
        self._tags.pop(tag, None)

    def settle(self, tags: Collection[int]) -> tuple[int, list[int]]:
        """Note ``tags`` acked, and say how: ``(upto, singles)``.

        Returns:
            ``upto``: the tag for one ``multiple`` ack that settles every tag of ``tags`` up to
            it (0: none; only when that covers at least two); ``singles``: the tags of
            ``tags`` to ack one by one, ascending.
        """
        wanted = set(tags)
        upto = 0
        covered = 0
        if self._exact and len(wanted) > 1:
            for tag in self._tags:
                if tag not in wanted:
                    break
                upto = tag
                covered += 1
            if covered < 2:
                upto = 0
        for tag in wanted:
            self._tags.pop(tag, None)
        singles = sorted(t for t in wanted if t > upto) if upto else sorted(wanted)
        return upto, singles
