"""A new publishing channel after RabbitMQ nacks publishes: a channel can be stuck nacking.

RabbitMQ (3.10 at least) keeps, per channel and quorum queue, a client of the queue's Raft
group. At the channel's first publish to the queue, that client asks the node the queue's record
names as leader (a remote call, for the queue's machine version) before it registers the
channel as an enqueuer. When that node is down (the leader died, and the record does not yet
name the new one), the publish is nacked and the client stays as it was: every later publish of
that channel to that queue asks the same node again and is nacked, for as long as the node is
down, whoever leads meanwhile (``rabbit_fifo_client:enqueue``). A new channel starts a new
client, which reads the record again.

So the broker replaces its publishing channel when a batch comes back with nacks: later batches
go on a new channel, and the old one is closed once every wait for its confirms has ended. A
queue that nacks for another reason (over ``x-max-length`` with ``overflow=reject-publish``)
costs a channel open at most once per :data:`MIN_INTERVAL` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import aio_pika.abc
import aiormq

log = logging.getLogger(__name__)

#: Seconds between two renewals at least.
MIN_INTERVAL = 0.25


class Renewal:
    """Renews a publishing channel nacked on, and closes the old ones later.

    Args:
        open_channel: opens a new publishing channel (confirms on); raises when it cannot.
        grace: seconds the old channel stays open, so that every wait for its confirms ends
            first (the broker's ``operation_timeout``).
    """

    def __init__(
        self,
        open_channel: Callable[[], Awaitable[aio_pika.abc.AbstractRobustChannel]],
        grace: float,
    ) -> None:
        self._open = open_channel
        self._grace = grace
        self._last = float("-inf")  # loop time of the last renewal tried
        self._retiring: set[asyncio.Task[None]] = set()

    async def renew(
        self, current: aio_pika.abc.AbstractRobustChannel, nacked_on: aiormq.Channel
    ) -> aio_pika.abc.AbstractRobustChannel | None:
        """A new channel to publish on instead of ``current``, or ``None`` to keep it: when
        ``current`` is no longer the channel nacked on (renewed, or reopened after a
        reconnection, already), when the last renewal tried is under :data:`MIN_INTERVAL`
        seconds old, or when the new channel cannot be opened (logged; the next publish tells)."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._last + MIN_INTERVAL:
            return None
        self._last = loop.time()  # before any await: one renewal for batches nacked together
        try:
            async with asyncio.timeout(self._grace):  # the underlay waits for a reconnection
                if current.is_closed or await current.get_underlay_channel() is not nacked_on:
                    return None
                fresh = await self._open()
        except Exception as exc:  # the connection is down: the next publish raises for it
            log.warning("no new publishing channel after nacks: %s", exc)
            return None
        log.warning(
            "RabbitMQ nacked publishes: publishing on a new channel (a quorum queue whose "
            "leader died may nack a channel's publishes until it is replaced)"
        )
        task = loop.create_task(self._retire(current))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return fresh

    async def _retire(self, channel: aio_pika.abc.AbstractRobustChannel) -> None:
        await asyncio.sleep(self._grace)  # every wait for its confirms has ended by then
        with contextlib.suppress(Exception):
            await channel.close()

    async def aclose(self) -> None:
        """Stop the pending retirements (closing the connection closes their channels)."""
        tasks = list(self._retiring)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
