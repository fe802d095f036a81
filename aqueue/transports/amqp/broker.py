"""The RabbitMQ broker (``amqp://``, ``amqps://``) on aio-pika; docs/amqp.md has the whole design.

How the Broker Protocol maps onto AMQP 0-9-1 as RabbitMQ implements it:

- **Queues** are durable; each has a dead-letter queue ``<queue>.dlq``. Classic queues (the
  default) are declared with ``x-max-priority: 9``, or with none when the ``priorities``
  option is ``False`` (first in, first out; RabbitMQ spends less per message on them);
  ``queue_type="quorum"`` declares quorum
  queues instead: replicated, with ``x-delivery-limit`` = ``task_max_deliveries`` (RabbitMQ
  dead-letters a message returned more often, at least once), a delay chain of quorum queues,
  and no priorities before RabbitMQ 4 (a warning says so once): see docs/amqp.md.
- **Publishing** is persistent (``delivery_mode=2``), ``mandatory`` (an unroutable message is an
  error, not a silent drop) and confirmed: :meth:`AMQPBroker.publish` returns once RabbitMQ has
  confirmed every message (written it to disk; for a quorum queue, committed by a majority).
  A batch goes out in one write and its confirms are awaited together
  (:mod:`aqueue.transports.amqp.publisher`); when only some are confirmed,
  :class:`~aqueue.exceptions.PublishIncomplete` names the others, each with its error.
- **Leases are unacked deliveries.** One consumer per queue on one channel, with
  ``basic.qos(prefetch_count)`` per consumer (the worker's prefetch bound: the largest fetch
  ``limit`` seen, or the ``prefetch_count`` option), pushes messages into a local buffer that
  :meth:`AMQPBroker.fetch` drains best first. Consumers are started by ``fetch``; when nobody
  has fetched for 10 s (the worker stopped, the app lives on) they stop and the buffer is
  handed back. AMQP has no lease timer: a delivery stays leased
  until it is acked or its channel closes (the worker died, or the connection dropped); then
  RabbitMQ delivers it again. So ``renew`` is a no-op and ``visibility_timeout`` is accepted but
  unused. RabbitMQ's own ``consumer_timeout`` (30 min by default) closes a channel that holds a
  delivery longer than that: raise it for longer tasks.
- **Delivery count.** AMQP's ``redelivered`` flag says "at least the second time", not how many.
  A message carries ``aqueue-deliveries``: how many deliveries it had before it was last
  published. Quorum queues count returns in ``x-delivery-count``, so the count is
  ``aqueue-deliveries + x-delivery-count + 1``. Classic queues count nothing, so a delivery
  with ``redelivered`` set is never handed out: it is published again with
  ``aqueue-deliveries`` one higher and the original acked, and the copy is what the worker gets
  (``aqueue-deliveries + 1``); a delivery whose copy RabbitMQ does not take is handed out as
  it is (:meth:`AMQPBroker._handoff` says why). :meth:`AMQPBroker.release` publishes a copy the
  same way with the count kept, and acks the original; one whose copy RabbitMQ does not take
  is put back in its queue.
- **Blame.** RabbitMQ gives a consumer no way to mark a delivery it holds as started, and
  returns every unacked delivery of a closed channel alike (``redelivered``; quorum queues
  count each return in ``x-delivery-count``). So this broker is not a
  :class:`~aqueue.transports.base.RunTracking` one: a message prefetched by a worker that died
  is counted like the one it was running, and ``strikes`` are ``delivery_count - 1``.
  ``worker_prefetch_multiplier=1`` keeps what a worker holds close to what it runs.
- **Headers are checked** as a delivery arrives: a count or eta header that is not a whole
  number is the delivery's :attr:`~aqueue.transports.base.Delivery.defect` (the worker
  dead-letters it) instead of being read as 0; so are headers that could not be published
  again (pamqp decodes some valid AMQP values, such as a long string that is not UTF-8, into
  Python values it cannot encode), since re-delaying, re-counting or releasing the delivery
  re-publishes them.
- **Delayed messages** go through :mod:`aqueue.transports.amqp.delay` (TTL queues, no plugin).
  What is declared, and when, is :mod:`aqueue.transports.amqp.topology`; the local buffer is
  :mod:`aqueue.transports.amqp.buffer`.
- **Dead letters** are published to ``<queue>.dlq`` with headers ``aqueue-reason`` and
  ``aqueue-time``, then the original is acked. The queue's ``x-dead-letter-exchange`` also sends
  anything rejected without requeue there (reason: ``x-death``).
- **Queue administration** (:class:`~aqueue.transports.base.QueueAdmin`, for ``aqueue status``,
  ``purge`` and ``dlq``): passive declares count a queue's ready messages, consumers and dead
  letters; AMQP cannot tell unacked messages, nor a queue's own delayed ones (the delay chain
  is shared and counted as a whole, as ``"aqueue.delay.*"``).
- **Connection** is aio-pika's robust connection: after a broker restart or a dropped socket it
  reconnects (at once, then every ``reconnect_interval`` seconds; with a cluster's nodes listed
  in the URL, each failed attempt moves on to the next node) and reopens its channels; the
  next fetch declares its queues and starts its consumers again. Deliveries of the lost channel
  cannot be acked any more (RabbitMQ has put them back), so they are dropped from the buffer,
  and acking one raises :class:`BrokerConnectionError`: the message runs again
  (at-least-once). While disconnected, every call raises :class:`BrokerConnectionError` at
  once, so ``app.publish`` retries it per ``retry_policy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import aio_pika.abc
import aiormq
import aiormq.abc
import aiormq.exceptions
from aiormq import spec
from pamqp.encode import field_table

from aqueue.exceptions import (
    AqueueError,
    BrokerConnectionError,
    ConfigurationError,
    PublishIncomplete,
)
from aqueue.transports import visibility_timeout
from aqueue.transports.amqp import delay, publisher
from aqueue.transports.amqp.buffer import Arrival, Buffer
from aqueue.transports.amqp.connection import (
    amqp_error,
    amqp_errors,
    open_connection,
    redacted_url,
)
from aqueue.transports.amqp.renewal import Renewal
from aqueue.transports.amqp.topology import MAX_PRIORITY, QUEUE_TYPES, Topology
from aqueue.transports.base import (
    DeadLetter,
    Delivery,
    Outgoing,
    QueueDepth,
    SendLetters,
    dead_letter_queue,
)
from aqueue.transports.tls import TLSOptions

__all__ = ["AMQPBroker"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_OPTIONS = frozenset(
    {
        "visibility_timeout",
        "queue_type",
        "priorities",
        "prefetch_count",
        "reconnect_interval",
        "connect_timeout",
        "operation_timeout",
    }
)

COUNT_HEADER = "aqueue-deliveries"
REASON_HEADER = "aqueue-reason"
TIME_HEADER = "aqueue-time"  # epoch milliseconds (an int: AMQP tables have no double-safe float)

# How long a fetch that has just started consuming a queue waits for the messages already in it
# (RabbitMQ's declare-ok counts them) before choosing the best: deliveries of several queues
# arrive one queue after the other, and the first to arrive need not be the most urgent.
_SETTLE = 0.5
# Seconds without a fetch after which the consumers stop and the buffer is handed back (a
# worker fetches at least every second unless all its slots are busy).
_IDLE = 10.0
# An eta (aqueue-eta header) this close is due: re-delaying would cost more than it saves.
_EARLY = 0.001


def _number(options: Mapping[str, Any], name: str, default: float) -> float:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigurationError(
            f"broker_transport_options[{name!r}] must be a number of seconds > 0, not {value!r}"
        )
    return float(value)


class AMQPBroker:
    """A :class:`~aqueue.transports.base.Broker` on RabbitMQ (``amqp://``, ``amqps://``).

    Args:
        url: ``amqp://user:password@host:port/vhost`` (``amqps://`` for TLS); aio-pika's query
            parameters such as ``?heartbeat=10`` are passed through. A cluster's nodes may be
            listed, joined by ``;`` (kombu's failover form): see
            :func:`~aqueue.transports.amqp.connection.open_connection`.
        options: broker transport options:
            ``queue_type`` (``"classic"``, default, or ``"quorum"``);
            ``priorities`` (default ``True``: classic queues are declared with
            ``x-max-priority: 9``; ``False``: without it, so they deliver in publish order and
            cost RabbitMQ less per message; a queue keeps what it was declared with);
            ``prefetch_count`` (per consumed queue; default: the largest fetch ``limit`` seen,
            which is the worker's ``concurrency * worker_prefetch_multiplier``);
            ``reconnect_interval`` (seconds between reconnection attempts, default 1);
            ``connect_timeout`` (seconds for the first connection, default 10);
            ``operation_timeout`` (seconds to wait for a publish confirm or another reply,
            default 30); ``visibility_timeout`` is accepted and unused (see the module doc).
        tls: TLS from ``broker_use_ssl`` (see
            :func:`~aqueue.transports.amqp.connection.open_connection`); ``None``: as the URL
            says.
        max_deliveries: ``task_max_deliveries``: quorum queues are declared with it as
            ``x-delivery-limit``, so RabbitMQ dead-letters a message returned more often than
            that even if no worker lives to count it.

    Raises:
        ConfigurationError: an option is unknown or invalid.
    """

    def __init__(
        self,
        url: str,
        options: Mapping[str, Any],
        *,
        tls: TLSOptions | None = None,
        max_deliveries: int = 5,
    ) -> None:
        unknown = set(options) - _OPTIONS
        if unknown:
            raise ConfigurationError(
                f"unknown broker_transport_options for RabbitMQ: {sorted(unknown)}; "
                f"supported: {sorted(_OPTIONS)}"
            )
        visibility_timeout(options)  # checked for consistency with other brokers; unused
        self._queue_type = options.get("queue_type", "classic")
        if self._queue_type not in QUEUE_TYPES:
            raise ConfigurationError(
                f"broker_transport_options['queue_type'] must be one of {', '.join(QUEUE_TYPES)}"
                f", not {self._queue_type!r}"
            )
        self._quorum = self._queue_type == "quorum"
        priorities = options.get("priorities", True)
        if not isinstance(priorities, bool):
            raise ConfigurationError(
                f"broker_transport_options['priorities'] must be True or False, not {priorities!r}"
            )
        self._priorities = priorities
        prefetch = options.get("prefetch_count")
        if prefetch is not None and (
            isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1
        ):
            raise ConfigurationError(
                f"broker_transport_options['prefetch_count'] must be a whole number >= 1, "
                f"not {prefetch!r}"
            )
        self._prefetch_option: int | None = prefetch
        self._reconnect_interval = _number(options, "reconnect_interval", 1.0)
        self._connect_timeout = _number(options, "connect_timeout", 10.0)
        self._timeout = _number(options, "operation_timeout", 30.0)
        self.url = self._url = url
        self._tls = tls
        self._tag = secrets.token_hex(4)  # consumer tags of this instance
        self._connecting = asyncio.Lock()
        self._topology = Topology(
            url,
            self._queue_type,
            lambda: self._underlay(self._declarer, "declare"),
            lambda: self._scratch_channel("declare"),
            self._timeout,
            max_deliveries,
            priorities,
        )
        self._closes = 0  # close() calls so far: a waiting fetch returns when this changes
        # The warning that messages with a priority go to queues without priorities was given.
        self._told_priorities = False
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._publisher: aio_pika.abc.AbstractRobustChannel | None = None  # confirms
        self._declarer: aio_pika.abc.AbstractRobustChannel | None = None  # declarations only
        self._consumer: aio_pika.abc.AbstractRobustChannel | None = None
        self._renewal = Renewal(self._open_publisher, self._timeout)
        self._reset()

    def _reset(self) -> None:
        """Forget everything tied to a connection (after close, or a reconnection for caches)."""
        self._topology.forget()
        # Queue -> (consumer tag, the aiormq channel it consumes on).
        self._consumers: dict[str, tuple[str, aiormq.Channel]] = {}
        self._tags = itertools.count()
        self._fetching = 0  # fetch calls in progress
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idling: asyncio.Task[None] | None = None
        self._prefetch = self._prefetch_option or 0
        self._buffer = Buffer()
        self._handoffs: set[asyncio.Task[Any]] = set()  # consume callbacks re-publishing
        self._starting: set[asyncio.Task[None]] = set()  # consumers being started

    def __repr__(self) -> str:
        return f"AMQPBroker({redacted_url(self._url)!r}, queue_type={self._queue_type!r})"

    # -- the Protocol ----------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect and open the channels. Idempotent.

        Raises:
            BrokerConnectionError: the server cannot be reached or refused the login.
            ConfigurationError: the URL is invalid.
        """
        await self._connect()

    async def close(self) -> None:
        """Stop consuming, release buffered deliveries, close the connection. Idempotent.

        Deliveries handed out and not acked go back to their queue when the connection closes
        and are delivered again with a higher count. Errors on the way are logged, not raised.
        """
        connection = self._connection
        if connection is None:
            return
        self._closes += 1
        self._buffer.arrived.set()  # a waiting fetch returns
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        try:
            if self._idling is not None:
                await self._idling
            with amqp_errors(self._url, "close"):
                await self._stop_consuming()
                await self._give_back(self._buffer.drain(), "release")
        except (AqueueError, TimeoutError) as exc:
            log.warning("closing %r: %s", self, exc)
        finally:
            await self._renewal.aclose()
            self._connection = self._publisher = self._declarer = self._consumer = None
            self._reset()
            with contextlib.suppress(Exception):
                await connection.close()

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publish persistent messages and wait for RabbitMQ's confirms.

        Every message is written at once (one write for the batch) and the confirms are awaited
        together: no round trip per message. Declares what the messages need first (once per
        connection): their queues, the exchanges and bindings they name, the delay chain for
        delayed ones. Messages RabbitMQ returns as unroutable (a queue deleted since it was
        declared) are declared and sent again, once. A priority outside 0..9 is clamped.

        Raises:
            PublishIncomplete: RabbitMQ confirmed some messages and not the others (the
                connection dropped mid-batch, a confirm did not come in ``operation_timeout``
                seconds, or RabbitMQ nacked some); ``failed`` names them, each with its error.
            BrokerConnectionError: no message was confirmed: the server cannot be reached,
                nacked them all, or confirmed nothing in ``operation_timeout`` seconds; nothing
                may be assumed stored.
            BrokerError: RabbitMQ refused a declaration (nothing was sent), or returned every
                message as unroutable (no queue bound to receive it).
        """
        if not messages:
            return
        await self._connect()
        if (self._quorum or not self._priorities) and not self._told_priorities:
            self._tell_priorities(messages)
        outcomes = await self._publish_once(messages, range(len(messages)))
        returned = [i for i, o in outcomes.items() if isinstance(o, aiormq.exceptions.PublishError)]
        if returned:
            self._topology.forget()
            outcomes.update(await self._publish_once(messages, returned))
        errors = {i: o for i, o in outcomes.items() if o is not None}
        if not errors:
            return
        failed = {i: amqp_error(self._url, "publish", e) for i, e in sorted(errors.items())}
        first = next(iter(failed.values()))
        if len(failed) == len(messages):
            raise first
        raise PublishIncomplete(
            f"{len(failed)} of {len(messages)} messages not confirmed (the others are stored); "
            f"the first: {first}",
            failed,
        )

    def _tell_priorities(self, messages: Sequence[Outgoing]) -> None:
        """Warn once when messages with a priority go to queues without priorities: classic
        queues with the ``priorities`` option off, or quorum queues of a RabbitMQ before 4.0
        (they are delivered in order; the priority still orders what a worker has
        prefetched). RabbitMQ 4 quorum queues have two levels: 5..9 ahead of 0..4."""
        if not any(m.priority > 0 for m in messages):
            return
        self._told_priorities = True
        if not self._quorum:
            log.warning(
                "%r: messages with a priority go to classic queues declared without "
                "priorities (broker_transport_options['priorities'] is False): they are "
                "delivered in the order they were published (the priority only orders what a "
                "worker has prefetched)",
                self,
            )
            return
        version = self._server_version()
        if version is not None and version >= (4,):
            return
        log.warning(
            "%r: quorum queues on RabbitMQ %s have no priorities: messages with a priority are "
            "delivered in the order they were published (the priority only orders what a "
            "worker has prefetched); RabbitMQ 4.0+ gives quorum queues two levels (5-9 before "
            "0-4), classic queues 0-9",
            self,
            ".".join(map(str, version)) if version else "(version unknown)",
        )

    def _server_version(self) -> tuple[int, ...] | None:
        """RabbitMQ's version, as it said when the connection opened, or ``None``."""
        connection = self._connection
        transport = connection.transport if connection is not None else None
        if transport is None:
            return None
        version = transport.connection.server_properties.get("version")
        if isinstance(version, bytes):
            version = version.decode(errors="replace")
        try:
            return tuple(int(part) for part in str(version).split(".")[:2])
        except ValueError:
            return None

    async def _publish_once(
        self, messages: Sequence[Outgoing], which: Sequence[int]
    ) -> dict[int, BaseException | None]:
        """Declare what ``messages[i]`` for ``i`` in ``which`` need and publish them; return
        each one's outcome (``None``: confirmed).

        Raises:
            BrokerConnectionError, BrokerError: a declaration failed, or the publishing channel
                is not open; nothing was sent.
        """
        chosen = [messages[i] for i in which]
        with amqp_errors(self._url, "publish"):
            await self._topology.prepare(chosen, time.time())
            channel = await self._underlay(self._publisher, "publish")
            # Delays count from now: declaring may have taken a while.
            now = time.time()
            outcomes = await self._confirmed(channel, [self._publication(m, now) for m in chosen])
        return dict(zip(which, outcomes, strict=True))

    async def _confirmed(
        self, channel: aiormq.Channel, publications: Sequence[publisher.Publication]
    ) -> list[BaseException | None]:
        """Publish on ``channel`` in one write; each message's outcome once confirmed, nacked,
        returned or lost, or a ``TimeoutError`` after ``operation_timeout`` seconds.

        Raises:
            aiormq.exceptions.ChannelInvalidStateError: the channel closed; nothing was sent.
        """
        confirms = await publisher.publish(channel, publications)
        outcomes = await confirms.outcomes(self._timeout)
        current = self._publisher
        if current is not None and any(map(publisher.nacked, outcomes)):
            fresh = await self._renewal.renew(current, channel)
            if fresh is not None and self._publisher is current:
                self._publisher = fresh
        return outcomes

    async def _confirm(
        self, channel: aiormq.Channel, publications: Sequence[publisher.Publication]
    ) -> list[bool]:
        """:meth:`_confirmed`, for the broker's own re-publishing: which were confirmed.

        Raises:
            aiormq.exceptions.AMQPError: the first failure, when none was confirmed.
        """
        outcomes = await self._confirmed(channel, publications)
        if outcomes and all(o is not None for o in outcomes):
            raise outcomes[0]  # type: ignore[misc]
        return [o is None for o in outcomes]

    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        """Hand out up to ``limit`` buffered deliveries of ``queues``, waiting up to ``timeout``.

        The first fetch of a queue declares it and starts its consumer, then waits (at most
        0.5 s) for the messages already queued to arrive, so that the best of them is handed out
        first. Order: priority 9 first, then the earlier queue in ``queues``, then arrival.

        Raises:
            BrokerConnectionError: the server cannot be reached (at once while the connection
                is down: the worker tries again a second later).
            BrokerError: RabbitMQ refused to declare or consume a queue.
        """
        names = list(dict.fromkeys(queues))
        if limit <= 0 or not names:
            return []
        await self._connect()
        closes = self._closes
        deadline = asyncio.get_running_loop().time() + max(timeout, 0.0)
        self._fetching += 1
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        try:
            return await self._wait_and_take(names, limit, deadline, closes)
        finally:
            self._fetching -= 1
            self._fetch_ended()

    async def _wait_and_take(
        self, names: Sequence[str], limit: int, deadline: float, closes: int
    ) -> list[Delivery]:
        loop = asyncio.get_running_loop()
        rank = {q: i for i, q in enumerate(names)}
        while True:
            if self._closes != closes:
                # close() ran (it wakes this wait): return, rather than start consumers again
                # on the connection being closed.
                return []
            # Each round: consumers lost with a channel (reconnection) are started again.
            with amqp_errors(self._url, "fetch"):
                await self._consume(names, limit)
            now = loop.time()
            settle = min(self._buffer.settling_until(names), deadline)
            if settle <= now:
                taken = self._buffer.take(rank, limit)
                if taken:
                    return [self._delivery(a) for a in taken]
            if self._closes != closes:
                return []
            wait = (settle if settle > now else deadline) - now
            if wait <= 0:
                self._check_connected("fetch")
                return []
            arrived = self._buffer.arrived
            arrived.clear()
            # Not wait_for: on 3.11 it loses a cancel that comes as the wait ends, and the
            # fetch would go on waiting and taking deliveries for a caller that gave up.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await arrived.wait()

    def _delivery(self, arrival: Arrival) -> Delivery:
        defect = arrival.defect
        count = 1 if defect else arrival.count
        return Delivery(arrival.queue, arrival.message.body, count, arrival, count - 1, defect)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """``basic.ack`` each delivery on its channel, those of one channel in one write (no
        reply to wait for); where they are all the channel's oldest unacked deliveries, one
        ``multiple`` ack covers them (:class:`~aqueue.transports.amqp.ledger.Ledger`). Acking
        twice is harmless.

        Raises:
            BrokerConnectionError: a delivery's channel has closed (the connection dropped):
                RabbitMQ has put the message back and will deliver it again.
        """
        lost = 0
        by_channel: dict[aiormq.Channel, list[Arrival]] = {}
        for d in deliveries:
            arrival: Arrival = d.token
            if not arrival.done:
                channel = arrival.message.channel
                assert isinstance(channel, aiormq.Channel)
                by_channel.setdefault(channel, []).append(arrival)
        for channel, arrivals in by_channel.items():
            ledger = arrivals[0].ledger
            try:
                async with ledger.lock:  # written in the order settled (see Ledger.lock)
                    # On a closed channel acknowledge() raises: they are back in the queue, and
                    # that channel's ledger is no longer used.
                    upto, singles = ledger.settle([a.delivery_tag for a in arrivals])
                    await publisher.acknowledge(channel, singles, upto)
            except aiormq.exceptions.ChannelInvalidStateError:
                lost += len(arrivals)
                continue
            for arrival in arrivals:
                arrival.done = True
        if lost:
            raise BrokerConnectionError(
                f"RabbitMQ at {redacted_url(self._url)}: {lost} delivery(ies) could not be acked, "
                f"their channel closed (connection lost); RabbitMQ delivers them again"
            )

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Give deliveries back, delivery count kept: publish a copy to the end of the queue,
        then ack the original. Deliveries of a closed channel are already back in their queue.

        A delivery whose copy RabbitMQ did not confirm (it nacked or refused it, or no confirm
        came in ``operation_timeout`` seconds) is put back in its queue instead (``basic.reject``
        with ``requeue``): its next delivery counts one more.

        Raises:
            BrokerConnectionError: the server cannot be reached (the originals stay leased to
                this connection and come back, counted, when it closes), or no copy was
                confirmed (the originals were put back in their queue).
            BrokerError: RabbitMQ refused every copy (the originals were put back).
        """
        if not deliveries:
            return
        await self._connect()
        with amqp_errors(self._url, "release"):
            await self._give_back([d.token for d in deliveries], "release")

    async def renew(self, deliveries: Sequence[Delivery]) -> None:
        """Nothing to do: an AMQP delivery stays leased until acked or its channel closes."""

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Publish the message to ``<queue>.dlq`` with ``reason`` (confirmed), then ack it.

        Raises:
            BrokerConnectionError: the server cannot be reached, or the delivery's channel has
                closed (the message will be delivered again, and dead-lettered again).
        """
        arrival: Arrival = delivery.token
        if arrival.done:
            return
        if arrival.channel.is_closed:
            raise BrokerConnectionError(
                f"RabbitMQ at {redacted_url(self._url)}: cannot dead-letter a delivery of a "
                f"closed channel (connection lost); RabbitMQ delivers it again"
            )
        await self._connect()
        headers = {REASON_HEADER: reason, TIME_HEADER: round(time.time() * 1000)}
        letter = publisher.Publication(
            arrival.message.body,
            "",
            dead_letter_queue(delivery.queue),
            arrival.properties.correlation_id,
            0,
            headers,
        )
        with amqp_errors(self._url, "dead_letter"):
            await self._topology.ensure_queue(delivery.queue)
            channel = await self._underlay(self._publisher, "dead_letter")
            await self._confirm(channel, [letter])
            await arrival.ack()

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Read up to ``limit`` of ``queue``'s dead letters, oldest first, leaving them there.

        ``basic.get`` on a channel of its own, which is then closed: RabbitMQ puts the messages
        back where they were. Two readers at once each see only part of the queue. A queue
        never declared has none (nothing is declared to find out).

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        if limit <= 0:
            return []
        await self._connect()
        with amqp_errors(self._url, "dead_letters"):
            channel = await self._scratch_channel("dead_letters")
            try:
                found, _ = await self._get_dead_letters(channel, queue, limit)
            finally:
                await self._close_holding(channel)
        return found

    async def _get_dead_letters(
        self, channel: aiormq.abc.AbstractChannel, queue: str, limit: int
    ) -> tuple[list[DeadLetter], int]:
        """Up to ``limit`` of ``queue``'s dead letters by unacked ``basic.get`` on ``channel``,
        and the delivery tag of the last (0: none). A queue never declared has none.

        Raises:
            aiormq.exceptions.AMQPError: the connection failed.
            asyncio.TimeoutError: the server did not answer within the connection timeout.
        """
        found: list[DeadLetter] = []
        last = 0
        try:
            for _ in range(limit):
                got = await self._bounded(channel.basic_get(dead_letter_queue(queue), no_ack=False))
                if not isinstance(got.delivery, spec.Basic.GetOk):
                    break
                reason, when = _death(dict(got.header.properties.headers or {}))
                found.append(DeadLetter(queue, bytes(got.body), reason, when))
                last = got.delivery.delivery_tag or 0
        except aiormq.exceptions.ChannelNotFoundEntity:
            pass  # no such queue (never declared): no dead letters
        return found, last

    async def _close_holding(self, channel: aiormq.abc.AbstractChannel) -> None:
        """Close ``channel``, which may hold unacked messages (RabbitMQ puts them back), even
        when the caller is cancelled meanwhile; errors are ignored (the connection may be gone).

        A cancelled caller waits up to ``operation_timeout`` seconds for the close to end (it
        goes on in its own task after that), then the cancellation is raised.

        Raises:
            asyncio.CancelledError: the caller was cancelled (after the wait).
        """
        # A cancel that lands before the channel.close frame is sent would leave the channel
        # open, holding its messages from every other reader until the connection closes.
        closing = asyncio.ensure_future(self._close_quietly(channel))
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            await asyncio.wait({closing}, timeout=self._timeout)
            raise

    @staticmethod
    async def _close_quietly(channel: aiormq.abc.AbstractChannel) -> None:
        """Close ``channel``; errors are ignored (the connection may be gone)."""
        with contextlib.suppress(Exception):
            await channel.close()

    async def take_dead_letters(self, queue: str, limit: int, send: SendLetters) -> int:
        """Take up to ``limit`` of ``queue``'s dead letters with ``basic.get`` (unacked, on a
        channel of its own), await ``send(letters)``, then ack them. RabbitMQ holds them for
        this channel meanwhile, so another take (from any process) gets others. If ``send``
        raises, the channel closes and RabbitMQ puts them back (see
        :class:`~aqueue.transports.base.DeadLetterTakes`).

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        if limit <= 0:
            return 0
        await self._connect()
        with amqp_errors(self._url, "take_dead_letters"):
            channel = await self._scratch_channel("take_dead_letters")
        try:
            with amqp_errors(self._url, "take_dead_letters"):
                found, last = await self._get_dead_letters(channel, queue, limit)
            if not found:
                return 0
            await send(found)  # its own errors are not the broker's
            with amqp_errors(self._url, "take_dead_letters"):
                await channel.basic_ack(last, multiple=True)
                # basic.ack has no reply: a round trip on the channel makes sure RabbitMQ has
                # it before the channel closes (a close would put the letters back).
                await self._bounded(channel.basic_qos(prefetch_count=0))
            return len(found)
        finally:
            await self._close_holding(channel)

    # -- queue administration (QueueAdmin) -------------------------------------------------

    async def queue_depths(self, queues: Sequence[str] | None = None) -> list[QueueDepth]:
        """Each queue's ready messages, consumers and dead letters, by passive ``queue.declare``
        (its ``declare-ok`` carries the ready count and the consumer count).

        What AMQP 0-9-1 cannot tell, and is ``None``: ``unacked`` (held by consumers; the
        management plugin or ``rabbitmqctl list_queues`` show it) and a queue's own
        ``delayed`` (delayed messages of every queue wait in one chain,
        :mod:`aqueue.transports.amqp.delay`, and which queue each is for is in its headers).
        The chain is counted as a whole under the name ``"aqueue.delay.*"``
        (:data:`~aqueue.transports.amqp.delay.CHAIN`), in ``delayed``. A queue that does not
        exist counts 0.

        Args:
            queues: the queues; ``None``: the queues this broker has declared on its connection
                (AMQP cannot list a server's queues), then the delay chain.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        await self._connect()
        names = [*sorted(self._topology.queues), delay.CHAIN] if queues is None else queues
        depths: list[QueueDepth] = []
        with amqp_errors(self._url, "queue_depths"):
            async with self._passive() as passive:
                for name in names:
                    if name == delay.CHAIN:
                        levels = delay.level_queues(self._quorum)
                        delayed = sum([(await passive.count(q))[0] for q in levels])
                        depths.append(QueueDepth(name, 0, delayed, None, 0))
                        continue
                    ready, consumers = await passive.count(name)
                    dead, _ = await passive.count(dead_letter_queue(name))
                    depths.append(QueueDepth(name, ready, None, None, dead, consumers))
        return depths

    async def purge(self, queues: Sequence[str]) -> int:
        """``queue.purge`` each queue: its ready messages are deleted; return how many.

        Messages held by consumers (unacked) stay, as AMQP's purge leaves them, and so do dead
        letters. Delayed messages wait in the delay chain, shared by every queue, and stay
        too; the name ``"aqueue.delay.*"`` purges the whole chain, every queue's delayed
        messages. A queue that does not exist counts 0.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        await self._connect()
        chain = delay.level_queues(self._quorum)
        names = [level for q in queues for level in (chain if q == delay.CHAIN else [q])]
        with amqp_errors(self._url, "purge"):
            return await self._purge_each(names)

    async def purge_dead_letters(self, queue: str, limit: int | None = None) -> int:
        """Delete the oldest ``limit`` dead letters of ``queue`` (all if ``None``): ``queue.purge``
        of ``<queue>.dlq``, or that many ``basic.get`` with auto-ack. Return how many.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        await self._connect()
        name = dead_letter_queue(queue)
        if limit is None:
            with amqp_errors(self._url, "purge_dead_letters"):
                return await self._purge_each([name])
        deleted = 0
        with amqp_errors(self._url, "purge_dead_letters"):
            channel = await self._scratch_channel("purge_dead_letters")
            try:
                while deleted < limit:
                    got = await self._bounded(channel.basic_get(name, no_ack=True))
                    if not isinstance(got.delivery, spec.Basic.GetOk):
                        break
                    deleted += 1
            except aiormq.exceptions.ChannelNotFoundEntity:
                pass  # no such queue: nothing to delete
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
        return deleted

    async def _purge_each(self, queues: Sequence[str]) -> int:
        """``queue.purge`` each of ``queues`` that exists; the messages deleted.

        Raises:
            aiormq.exceptions.AMQPError: the connection failed.
        """
        deleted = 0
        async with self._passive() as passive:
            for queue in queues:
                deleted += await passive.purge(queue)
        return deleted

    @contextlib.asynccontextmanager
    async def _passive(self) -> AsyncIterator[_Passive]:
        """A :class:`_Passive` on channels of its own, closed at the end."""
        passive = _Passive(lambda: self._scratch_channel("count"), self._timeout)
        try:
            yield passive
        finally:
            await passive.close()

    # -- connecting ------------------------------------------------------------------------

    async def _connect(self) -> aio_pika.abc.AbstractRobustConnection:
        if self._connection is not None:
            return self._connection
        async with self._connecting:
            if self._connection is None:
                connection = await open_connection(
                    self._url,
                    self._reconnect_interval,
                    self._connect_timeout,
                    setup=self._open_channels,
                    on_reconnect=self._on_reconnect,
                    tls=self._tls,
                )
                self._reset()
                self._connection = connection
            return self._connection

    async def _open_channels(self, connection: aio_pika.abc.AbstractRobustConnection) -> None:
        self._publisher = await _publishing(connection)
        self._declarer = await connection.channel(publisher_confirms=False)
        self._consumer = await connection.channel(publisher_confirms=False)
        self._consumer.reopen_callbacks.add(self._on_consumer_reopen)

    async def _open_publisher(self) -> aio_pika.abc.AbstractRobustChannel:
        """A new publishing channel (confirms on) on the open connection, for :class:`Renewal`.

        Raises:
            BrokerConnectionError: the connection is down.
            TimeoutError: RabbitMQ did not open it within ``operation_timeout`` seconds.
        """
        self._check_connected("publish")
        assert self._connection is not None
        channel = _publishing(self._connection)
        try:
            await self._bounded(channel.initialize())
        except BaseException:
            with contextlib.suppress(Exception):
                await channel.close()
            raise
        return channel

    def _on_reconnect(self, *_: Any) -> None:
        # A broker reset meanwhile lost our declarations: make them again before the next use.
        log.warning("%r reconnected", self)
        self._topology.forget()
        self._buffer.arrived.set()

    def _check_connected(self, action: str) -> None:
        connection = self._connection
        if connection is None or not connection.connected.is_set():
            raise BrokerConnectionError(
                f"RabbitMQ at {redacted_url(self._url)} unreachable during {action}: the "
                f"connection is down; reconnecting every {self._reconnect_interval:g}s"
            )

    async def _underlay(
        self, channel: aio_pika.abc.AbstractRobustChannel | None, action: str
    ) -> aiormq.Channel:
        """The open aiormq channel under ``channel``, or an error at once if disconnected."""
        self._check_connected(action)
        assert channel is not None
        return await self._bounded(_open_underlay(channel))

    async def _scratch_channel(self, action: str) -> aiormq.abc.AbstractChannel:
        """A plain (not robust) channel, for requests that may close it or must not outlive it."""
        self._check_connected(action)
        assert self._connection is not None and self._connection.transport is not None
        return await self._bounded(self._connection.transport.connection.channel())

    async def _bounded(self, awaitable: Awaitable[T]) -> T:
        """``awaitable``'s result, within ``operation_timeout`` seconds.

        Raises:
            TimeoutError: it took longer (it is cancelled).
        """
        # Not wait_for: on 3.11 it loses a cancellation that comes as the wait ends, and the
        # caller goes on as if it had not been cancelled.
        async with asyncio.timeout(self._timeout):
            return await awaitable

    # -- publishing ------------------------------------------------------------------------

    def _publication(self, m: Outgoing, now: float) -> publisher.Publication:
        """What to publish for ``m``: straight to its queue, through its exchange, or into the
        delay chain (``now``: epoch seconds the delay counts from)."""
        headers: dict[str, Any] | None = None
        exchange, key = ("", m.queue) if not m.exchange else (m.exchange, m.routing_key or m.queue)
        eta = m.eta if m.eta is not None else now
        wait = delay.delay_ms(eta - now)
        if wait and m.exchange:
            # Routing happens now, through the exchange; each queue's consumer then delays its
            # copy, when it sees the eta (the chain needs a target queue, unknown here).
            headers = {delay.ETA_HEADER: round(eta * 1000)}
        elif wait:
            exchange, key = delay.entry_exchange(wait, self._quorum), delay.routing_key(wait)
            headers = {delay.TARGET_HEADER: m.queue}
            if eta - now > delay.MAX_DELAY_MS / 1000:
                headers[delay.ETA_HEADER] = round(eta * 1000)  # longer than the chain
        priority = min(max(m.priority, 0), MAX_PRIORITY)
        return publisher.Publication(m.body, exchange, key, m.message_id, priority, headers)

    async def _give_back(self, arrivals: Sequence[Arrival], action: str) -> None:
        """Give ``arrivals`` back, count kept (:meth:`_republish`); those whose copy RabbitMQ
        did not confirm (nacked, refused, no confirm in time) are put back in their queue
        instead (``basic.reject`` with ``requeue``), and so counted once more.

        Without that they would stay unacked on a channel that may live on (the app outlives
        its worker, or the worker hands back surplus deliveries while it runs), delivered to
        no one and holding prefetch slots until the connection closes. A consumer never gives
        its own deliveries back this way (see :meth:`_handoff`), so this cannot loop.

        Raises:
            aiormq.exceptions.AMQPError: no copy was confirmed (the arrivals are given back).
        """
        try:
            await self._republish(arrivals, action)
        finally:
            kept = [a for a in arrivals if not a.done and not a.channel.is_closed]
            if kept:
                log.warning(
                    "%r: %d delivery(ies) not re-published during %s; put back in their queue",
                    self,
                    len(kept),
                    action,
                )
            for arrival in kept:
                # A channel closed meanwhile has put it back already.
                with contextlib.suppress(aiormq.exceptions.ChannelInvalidStateError):
                    await arrival.requeue()

    async def _republish(
        self, arrivals: Sequence[Arrival], action: str, before: int | None = None
    ) -> None:
        """Publish a copy of each open-channel arrival to its queue, then ack the arrival.

        The copy says it was delivered ``before`` times (default: the arrival's count less one,
        so that its next delivery has the same count). An arrival whose copy was not confirmed
        stays unacked, for the caller to settle (:meth:`_give_back`, :meth:`_handoff`). An
        arrival whose copy cannot be encoded is put back in its queue instead (``basic.reject``
        with ``requeue``), so that the others still go.

        Raises:
            aiormq.exceptions.AMQPError: no copy was confirmed.
        """
        live: list[Arrival] = []
        copies: list[publisher.Publication] = []
        for arrival in arrivals:
            if arrival.done or arrival.channel.is_closed:
                continue
            copy = self._copy(arrival, arrival.count - 1 if before is None else before)
            problem = _unencodable(copy.headers)
            if problem is None:
                live.append(arrival)
                copies.append(copy)
                continue
            # Encoded with the others, it would fail the whole batch (which the buffer no
            # longer holds: the good ones would stay leased, delivered to no one). Put back
            # rather than dead-lettered here: whoever receives it next sees the same defect as
            # it arrives and hands it out, and the worker dead-letters it with the reason. The
            # consume path never gets here (the arrival check flags the same headers), so this
            # cannot loop on one consumer.
            log.warning(
                "%r: a delivery of %r cannot be re-published (%s); put back in its queue",
                self,
                arrival.queue,
                problem,
            )
            with contextlib.suppress(aiormq.exceptions.ChannelInvalidStateError):
                await arrival.requeue()  # a closed channel has put it back already
        if not live:
            return
        for arrival in live:
            await self._topology.ensure_queue(arrival.queue)
        channel = await self._underlay(self._publisher, action)
        confirmed = await self._confirm(channel, copies)
        for arrival, stored in zip(live, confirmed, strict=True):
            if stored:
                # A channel closed meanwhile has put the original back too: a duplicate, not
                # a loss.
                with contextlib.suppress(aiormq.exceptions.ChannelInvalidStateError):
                    await arrival.ack()

    def _copy(self, arrival: Arrival, before: int) -> publisher.Publication:
        """``arrival``'s message, to its queue again, as delivered ``before`` times."""
        headers = arrival.headers
        headers[COUNT_HEADER] = before
        headers.pop("x-delivery-count", None)
        return publisher.Publication(
            arrival.message.body,
            "",
            arrival.queue,
            arrival.properties.correlation_id,
            arrival.priority,
            headers,
        )

    # -- consuming -------------------------------------------------------------------------

    async def _consume(self, queues: Sequence[str], limit: int) -> None:
        """Make sure each of ``queues`` has a live consumer, with a prefetch of at least ``limit``.

        Consumers are started here, by fetch, and nowhere else: after a reconnection (or any
        reopening of the consumer channel) the next fetch starts them again. Starting runs
        shielded from cancellation: a fetch cancelled while the consume is on the wire must not
        leave a consumer that this instance does not know of.
        """
        while True:
            # Another fetch's consumer start, or the idle release: wait for it (not for its
            # outcome, which is that fetch's to report), without cancelling it if we are.
            busy = [t for t in (*self._starting, self._idling) if t is not None and not t.done()]
            if not busy:
                break
            await asyncio.wait(busy)
        if self._prefetch_option is None and limit > self._prefetch:
            # A consumer's basic.qos is fixed when it starts: a fetch asking for more (another
            # worker on this app, with a higher concurrency) gets consumers started anew.
            self._prefetch = limit
            await self._stop_consuming()
        missing = [q for q in queues if not self._consuming(q)]
        if not missing:
            return
        task = asyncio.ensure_future(self._start_consumers(missing))
        self._starting.add(task)
        task.add_done_callback(_forget_task(self._starting))
        await asyncio.shield(task)

    def _consuming(self, queue: str) -> bool:
        """True when ``queue``'s consumer is alive: its channel open, and not cancelled by
        RabbitMQ (which it does when the queue is deleted; the next fetch declares it again)."""
        found = self._consumers.get(queue)
        if found is None:
            return False
        tag, channel = found
        if channel.is_closed or tag not in channel.consumers:
            del self._consumers[queue]
            self._topology.forget_queue(queue)
            return False
        return True

    async def _start_consumers(self, queues: Sequence[str]) -> None:
        """Declare and consume each queue, noting how many messages it already holds."""
        channel = await self._underlay(self._consumer, "fetch")
        if not any(c is channel for _, c in self._consumers.values()):
            # basic.qos applies to the consumers started after it on this channel.
            await self._bounded(channel.basic_qos(prefetch_count=self._prefetch))
        loop = asyncio.get_running_loop()
        for queue in queues:
            async with self._topology.lock:
                await self._topology.ensure_queue(queue)
            arguments = self._topology.queue_arguments(queue)
            declared = await self._bounded(
                channel.queue_declare(
                    queue, durable=True, arguments=arguments, passive=arguments is None
                )
            )
            ready = min(declared.message_count or 0, self._prefetch)
            self._buffer.expect(queue, ready, loop.time() + _SETTLE)
            tag = f"aqueue.{self._tag}.{next(self._tags)}"
            # Recorded before the consume is sent: deliveries may come before consume-ok.
            self._consumers[queue] = (tag, channel)
            try:
                callback = functools.partial(self._on_message, queue)
                await self._bounded(channel.basic_consume(queue, callback, consumer_tag=tag))
            except BaseException:
                self._consumers.pop(queue, None)
                raise

    async def _stop_consuming(self) -> None:
        """Cancel every consumer; what they delivered stays in the buffer, still leased."""
        consumers, self._consumers = self._consumers, {}
        self._buffer.stop_settling()
        for tag, channel in consumers.values():
            if not channel.is_closed:
                # After cancel-ok nothing more arrives for it, so the buffer is complete.
                await self._bounded(channel.basic_cancel(tag))
        if self._handoffs:
            await self._bounded(asyncio.gather(*self._handoffs, return_exceptions=True))

    def _on_consumer_reopen(self, *_: Any) -> None:
        # The consumers died with the old channel; the next fetch starts them on the new one.
        self._consumers.clear()
        self._buffer.stop_settling()
        self._buffer.arrived.set()

    def _fetch_ended(self) -> None:
        if self._fetching or not self._consumers:
            return
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = asyncio.get_running_loop().call_later(_IDLE, self._on_idle)

    def _on_idle(self) -> None:
        self._idle_timer = None
        if self._fetching or not self._consumers or self._idling is not None:
            return
        self._idling = asyncio.ensure_future(self._go_idle())

    async def stop_fetching(self) -> None:
        """Cancel the consumers now, rather than after ``_IDLE`` seconds without a fetch, and
        re-publish what they delivered and nobody fetched
        (:meth:`aqueue.transports.base.PushedDeliveries.stop_fetching`).

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        idling = self._idling
        if idling is not None:
            await asyncio.shield(idling)
            return
        if self._consumers:
            await self._release()

    async def _go_idle(self) -> None:
        """Nobody fetched for a while (the worker stopped, the app lives on): release, rather
        than hold what waits in the buffer from other consumers."""
        try:
            await self._release()
        except (AqueueError, TimeoutError) as exc:
            log.warning("%r: releasing idle deliveries failed: %s", self, exc)
        finally:
            self._idling = None

    async def _release(self) -> None:
        """Stop consuming and re-publish what waits in the buffer (:meth:`_republish`).

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        with amqp_errors(self._url, "release"):
            await self._stop_consuming()
            await self._give_back(self._buffer.drain(), "release")

    async def _on_message(self, queue: str, message: aiormq.abc.DeliveredMessage) -> None:
        """Buffer a pushed delivery, or first re-publish it when it is early or uncounted."""
        arrival = self._buffer.arrival(message, queue)
        headers = arrival.headers
        arrival.defect = _header_defect(headers, self._quorum)
        if arrival.defect is not None:
            # Neither re-delayed nor re-counted: handed out as it is, the worker dead-letters it.
            if not message.channel.is_closed:
                self._buffer.push(arrival)
            return
        before = _int(headers.get(COUNT_HEADER))
        if self._quorum:
            arrival.count = before + _int(headers.get("x-delivery-count")) + 1
        elif message.redelivered:
            arrival.count = before + 2  # as its re-counted copy (below) would be delivered
        else:
            arrival.count = before + 1
        eta = _int(headers.get(delay.ETA_HEADER)) / 1000
        if eta and eta - time.time() > _EARLY:
            await self._handoff(arrival, self._redelay(arrival, eta))
            return
        if message.redelivered and not self._quorum:
            # A classic queue gives no count: the copy carries this delivery in its header, so
            # a message whose consumer keeps dying reaches task_max_deliveries.
            await self._handoff(arrival, self._republish([arrival], "consume", before + 1))
            return
        if message.channel.is_closed:
            return  # RabbitMQ has put it back already
        self._buffer.push(arrival)

    async def _handoff(self, arrival: Arrival, work: Awaitable[None]) -> None:
        """Await ``work``, which re-publishes ``arrival`` and acks it, in its consumer callback
        (where :meth:`_stop_consuming` waits for it); should it fail with ``arrival`` still
        unacked on its open channel, buffer ``arrival`` as it is. Errors are logged."""
        task = asyncio.current_task()
        if task is not None:
            self._handoffs.add(task)
        try:
            with amqp_errors(self._url, "consume"):
                await work
        except Exception as exc:
            # Neither acked nor buffered, the arrival would hold a prefetch slot for as long as
            # its channel lives (RabbitMQ refused the copy, nacked it or did not confirm it in
            # time, and the channel stays open; or a bug), and never run: with prefetch 1 the
            # whole queue stalls. So it is handed out as it is: early, or counted as its copy
            # would have been (the copy's header is what failed to move). Not given back
            # (reject with requeue): RabbitMQ would deliver it again at once, to this consumer,
            # redelivered, to be re-published and refused again, a loop that neither runs nor
            # counts it. Handed out, it runs (at-least-once; should the copy have been stored
            # after all, it runs twice), and a worker dying on it still sends it back counted
            # at least this much; the count moves on once re-publishing works again.
            if isinstance(exc, AqueueError):
                log.warning(
                    "%r: could not re-publish a delivery of %r (%s); handing it out as it is",
                    self,
                    arrival.queue,
                    exc,
                )
            else:  # not the broker's doing: the arrival check missed why, or a bug
                log.exception(
                    "%r: could not re-publish a delivery of %r; handing it out as it is",
                    self,
                    arrival.queue,
                )
            if not arrival.done and not arrival.channel.is_closed:
                self._buffer.push(arrival)  # a closed channel has put it back already
        finally:
            if task is not None:
                self._handoffs.discard(task)

    async def _redelay(self, arrival: Arrival, eta: float) -> None:
        """Send an early arrival (its eta header is in the future) round the delay chain."""
        headers = arrival.headers
        wait = delay.delay_ms(eta - time.time())
        headers[delay.TARGET_HEADER] = arrival.queue
        async with self._topology.lock:
            await self._topology.ensure_delay(arrival.queue)
        channel = await self._underlay(self._publisher, "consume")
        again = publisher.Publication(
            arrival.message.body,
            delay.entry_exchange(wait, self._quorum),
            delay.routing_key(wait),
            arrival.properties.correlation_id,
            arrival.priority,
            headers,
        )
        await self._confirm(channel, [again])
        await arrival.ack()


class _Passive:
    """Passive ``queue.declare`` and ``queue.purge`` on a plain channel of its own.

    A passive declare of a queue that does not exist closes its channel (``NOT_FOUND``): the
    next request opens another.

    Args:
        open_channel: opens a plain channel.
        timeout: seconds to wait for each reply.
    """

    def __init__(
        self, open_channel: Callable[[], Awaitable[aiormq.abc.AbstractChannel]], timeout: float
    ) -> None:
        self._open = open_channel
        self._timeout = timeout
        self._channel: aiormq.abc.AbstractChannel | None = None

    async def _ready(self) -> aiormq.abc.AbstractChannel:
        if self._channel is None or self._channel.is_closed:
            self._channel = await self._open()
        return self._channel

    async def count(self, queue: str) -> tuple[int, int | None]:
        """``queue``'s ready messages and consumers; ``(0, None)`` when it does not exist.

        Raises:
            aiormq.exceptions.AMQPError: the connection failed.
        """
        channel = await self._ready()
        try:
            async with asyncio.timeout(self._timeout):  # not wait_for: see AMQPBroker._bounded
                ok = await channel.queue_declare(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return 0, None
        return ok.message_count or 0, ok.consumer_count or 0

    async def purge(self, queue: str) -> int:
        """Purge ``queue`` if it exists; the messages deleted.

        Raises:
            aiormq.exceptions.AMQPError: the connection failed.
        """
        if (await self.count(queue))[1] is None:
            return 0
        channel = await self._ready()
        async with asyncio.timeout(self._timeout):
            purged = await channel.queue_purge(queue)
        return purged.message_count or 0

    async def close(self) -> None:
        """Close the channel; errors are ignored (the connection may be gone)."""
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()


async def _open_underlay(channel: aio_pika.abc.AbstractRobustChannel) -> aiormq.Channel:
    """The open aiormq channel under ``channel``, once it is open (not bounded in time).

    A channel closed by a refused request (``PRECONDITION_FAILED``...) reopens by itself, but
    aio-pika learns of the close in a task of its own, some loop steps after the refusal was
    raised: until then ``ready()`` returns at once and the underlay is the closed channel. So
    a closed underlay is waited past, until the channel has reopened.
    """
    while True:
        await channel.ready()
        underlay = await channel.get_underlay_channel()
        if not underlay.is_closed:
            assert isinstance(underlay, aiormq.Channel)
            return underlay
        # No step between seeing it closed and waiting: its reopening cannot be missed.
        await _reopened(channel)


async def _reopened(channel: aio_pika.abc.AbstractRobustChannel) -> None:
    """Return when ``channel`` has next reopened (not bounded in time)."""
    reopened = asyncio.Event()

    def on_reopen(*_: Any) -> None:
        reopened.set()

    channel.reopen_callbacks.add(on_reopen)
    try:
        await reopened.wait()
    finally:
        channel.reopen_callbacks.discard(on_reopen)


def _forget_task(tasks: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
    """A done-callback that drops a task from ``tasks``, its exception retrieved."""

    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: whoever awaited it has seen it

    return done


def _header_defect(headers: Mapping[str, Any], quorum: bool) -> str | None:
    """Why a delivery's headers cannot be read (naming the header) or re-published, or
    ``None``."""
    names = (COUNT_HEADER, delay.ETA_HEADER, "x-delivery-count") if quorum else _CHECKED
    for name in names:
        value = headers.get(name)
        if value is not None and (type(value) is not int or value < 0):
            return f"AMQP header {name!r} must be a whole number >= 0, not {value!r:.40}"
    # Re-delaying, re-counting and releasing publish these headers again (with whole numbers
    # added): what cannot be encoded now would fail there, out of any error handling meant
    # for the connection.
    return _unencodable(headers)


#: Header values pamqp decodes only from what it can encode again (a text that was not UTF-8
#: comes back as bytes; tables, arrays, timestamps and decimals are checked by encoding them).
_PLAIN = (str, int)


def _unencodable(headers: Mapping[str, Any] | None) -> str | None:
    """Why ``headers`` cannot be encoded as an AMQP table, as a publish would, or ``None``."""
    if not headers or all(type(k) is str and type(v) in _PLAIN for k, v in headers.items()):
        return None  # what aqueue writes itself: no need to encode them to know (3.8 µs)
    try:
        field_table(dict(headers))
    except Exception as exc:  # pamqp raises TypeError mostly; any failure is one
        return f"AMQP headers cannot be re-published: {exc!s:.80}"
    return None


def _publishing(
    connection: aio_pika.abc.AbstractRobustConnection,
) -> aio_pika.abc.AbstractRobustChannel:
    """A publishing channel of ``connection``, not opened yet (``await`` it, or
    ``initialize()``): publisher confirms on, returned messages raise."""
    return connection.channel(publisher_confirms=True, on_return_raises=True)


_CHECKED = (COUNT_HEADER, delay.ETA_HEADER)  # headers read on a classic queue


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _death(headers: Mapping[str, Any]) -> tuple[str, float]:
    """A dead letter's reason and time: aqueue's headers, else RabbitMQ's ``x-death``."""
    reason = headers.get(REASON_HEADER)
    if isinstance(reason, bytes):
        reason = reason.decode(errors="replace")
    if isinstance(reason, str):
        return reason, _int(headers.get(TIME_HEADER)) / 1000
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], Mapping):
        first = deaths[0]
        stamp = first.get("time")
        seconds = stamp.timestamp() if isinstance(stamp, datetime) else 0.0
        return f"{first.get('reason', 'dead-lettered')} by RabbitMQ (x-death)", seconds
    return "dead-lettered", 0.0
