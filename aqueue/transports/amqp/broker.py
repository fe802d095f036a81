"""The RabbitMQ broker (``amqp://``, ``amqps://``) on aio-pika; docs/amqp.md has the whole design.

How the Broker Protocol maps onto AMQP 0-9-1 as RabbitMQ implements it:

- **Queues** are durable; each has a dead-letter queue ``<queue>.dlq``. Classic queues (the
  default) are declared with ``x-max-priority: 9``; ``queue_type="quorum"`` declares quorum
  queues instead (replicated, but without priorities before RabbitMQ 4: see docs/amqp.md).
- **Publishing** is persistent (``delivery_mode=2``), ``mandatory`` (an unroutable message is an
  error, not a silent drop) and confirmed: :meth:`AMQPBroker.publish` returns once RabbitMQ has
  confirmed every message, i.e. written it to disk.
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
  (``aqueue-deliveries + 1``). :meth:`AMQPBroker.release` publishes a copy the same way with the
  count kept, and acks the original.
- **Blame.** RabbitMQ gives a consumer no way to mark a delivery it holds as started, and
  returns every unacked delivery of a closed channel alike (``redelivered``; quorum queues
  count each return in ``x-delivery-count``). So this broker is not a
  :class:`~aqueue.transports.base.RunTracking` one: a message prefetched by a worker that died
  is counted like the one it was running, and ``strikes`` are ``delivery_count - 1``.
  ``worker_prefetch_multiplier=1`` keeps what a worker holds close to what it runs.
- **Headers are checked** as a delivery arrives: a count or eta header that is not a whole
  number is the delivery's :attr:`~aqueue.transports.base.Delivery.defect` (the worker
  dead-letters it) instead of being read as 0.
- **Delayed messages** go through :mod:`aqueue.transports.amqp.delay` (TTL queues, no plugin).
  What is declared, and when, is :mod:`aqueue.transports.amqp.topology`; the local buffer is
  :mod:`aqueue.transports.amqp.buffer`.
- **Dead letters** are published to ``<queue>.dlq`` with headers ``aqueue-reason`` and
  ``aqueue-time``, then the original is acked. The queue's ``x-dead-letter-exchange`` also sends
  anything rejected without requeue there (reason: ``x-death``).
- **Connection** is aio-pika's robust connection: after a broker restart or a dropped socket it
  reconnects (at once, then every ``reconnect_interval`` seconds) and reopens its channels; the
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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import aio_pika.abc
import aiormq
import aiormq.abc
import aiormq.exceptions
from aiormq import spec

from aqueue.exceptions import AqueueError, BrokerConnectionError, ConfigurationError
from aqueue.transports import visibility_timeout
from aqueue.transports.amqp import delay
from aqueue.transports.amqp.buffer import Arrival, Buffer
from aqueue.transports.amqp.connection import amqp_errors, open_connection, redacted_url
from aqueue.transports.amqp.topology import MAX_PRIORITY, QUEUE_TYPES, Topology
from aqueue.transports.base import DeadLetter, Delivery, Outgoing, dead_letter_queue
from aqueue.transports.tls import TLSOptions

__all__ = ["AMQPBroker"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_OPTIONS = frozenset(
    {
        "visibility_timeout",
        "queue_type",
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
            parameters such as ``?heartbeat=10`` are passed through.
        options: broker transport options:
            ``queue_type`` (``"classic"``, default, or ``"quorum"``);
            ``prefetch_count`` (per consumed queue; default: the largest fetch ``limit`` seen,
            which is the worker's ``concurrency * worker_prefetch_multiplier``);
            ``reconnect_interval`` (seconds between reconnection attempts, default 1);
            ``connect_timeout`` (seconds for the first connection, default 10);
            ``operation_timeout`` (seconds to wait for a publish confirm or another reply,
            default 30); ``visibility_timeout`` is accepted and unused (see the module doc).
        tls: TLS from ``broker_use_ssl`` (see
            :func:`~aqueue.transports.amqp.connection.open_connection`); ``None``: as the URL
            says.

    Raises:
        ConfigurationError: an option is unknown or invalid.
    """

    def __init__(
        self, url: str, options: Mapping[str, Any], *, tls: TLSOptions | None = None
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
        )
        self._closes = 0  # close() calls so far: a waiting fetch returns when this changes
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._publisher: aio_pika.abc.AbstractRobustChannel | None = None  # confirms
        self._declarer: aio_pika.abc.AbstractRobustChannel | None = None  # declarations only
        self._consumer: aio_pika.abc.AbstractRobustChannel | None = None
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
                await self._republish(self._buffer.drain(), "release")
        except (AqueueError, TimeoutError) as exc:
            log.warning("closing %r: %s", self, exc)
        finally:
            self._connection = self._publisher = self._declarer = self._consumer = None
            self._reset()
            with contextlib.suppress(Exception):
                await connection.close()

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publish persistent messages and wait for RabbitMQ's confirms (sent pipelined).

        Declares what the messages need first (once per connection): their queues, the exchanges
        and bindings they name, the delay chain for delayed ones. Messages RabbitMQ returns as
        unroutable (a queue deleted since it was declared) are declared and sent again, once.
        A priority outside 0..9 is clamped.

        Raises:
            BrokerConnectionError: the server cannot be reached, or confirmed nothing in
                ``operation_timeout`` seconds; nothing may be assumed stored.
            BrokerError: RabbitMQ refused a declaration, or returned a message that no queue is
                bound to receive.
        """
        if not messages:
            return
        await self._connect()
        with amqp_errors(self._url, "publish"):
            returned = await self._publish_once(messages)
            if returned:
                self._topology.forget()
                returned = await self._publish_once([m for m, _ in returned])
            if returned:
                raise returned[0][1]

    async def _publish_once(
        self, messages: Sequence[Outgoing]
    ) -> list[tuple[Outgoing, BaseException]]:
        """Declare and publish ``messages``; return those RabbitMQ returned, with the error.

        Raises:
            aiormq.exceptions.AMQPError: any other failure of a declaration or a publish.
        """
        await self._topology.prepare(messages, time.time())
        channel = await self._underlay(self._publisher, "publish")
        # Delays count from now: declaring may have taken a while.
        now = time.time()
        sends = [self._send(channel, m, now) for m in messages]
        outcomes = await self._bounded(asyncio.gather(*sends, return_exceptions=True))
        failed = [
            (m, o) for m, o in zip(messages, outcomes, strict=True) if isinstance(o, BaseException)
        ]
        for _, outcome in failed:
            if not isinstance(outcome, aiormq.exceptions.PublishError):
                raise outcome
        return failed

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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), wait)

    def _delivery(self, arrival: Arrival) -> Delivery:
        defect = _header_defect(arrival.headers, self._queue_type == "quorum")
        count = 1 if defect else arrival.count
        return Delivery(arrival.queue, arrival.message.body, count, arrival, count - 1, defect)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """``basic.ack`` each delivery on its channel. Acking twice is harmless.

        Raises:
            BrokerConnectionError: a delivery's channel has closed (the connection dropped):
                RabbitMQ has put the message back and will deliver it again.
        """
        lost = 0
        for d in deliveries:
            arrival: Arrival = d.token
            try:
                await arrival.ack()
            except aiormq.exceptions.ChannelInvalidStateError:
                lost += 1
        if lost:
            raise BrokerConnectionError(
                f"RabbitMQ at {redacted_url(self._url)}: {lost} delivery(ies) could not be acked, "
                f"their channel closed (connection lost); RabbitMQ delivers them again"
            )

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Give deliveries back, delivery count kept: publish a copy to the end of the queue,
        then ack the original. Deliveries of a closed channel are already back in their queue.

        Raises:
            BrokerConnectionError: the server cannot be reached (the originals stay leased to
                this connection and come back, counted, when it closes).
        """
        if not deliveries:
            return
        await self._connect()
        with amqp_errors(self._url, "release"):
            await self._republish([d.token for d in deliveries], "release")

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
        with amqp_errors(self._url, "dead_letter"):
            await self._topology.ensure_queue(delivery.queue)
            channel = await self._underlay(self._publisher, "dead_letter")
            await self._bounded(
                channel.basic_publish(
                    arrival.message.body,
                    routing_key=dead_letter_queue(delivery.queue),
                    properties=_properties(arrival.properties.correlation_id, 0, headers),
                    mandatory=True,
                    wait=False,
                )
            )
            await arrival.ack()

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Read up to ``limit`` of ``queue``'s dead letters, oldest first, leaving them there.

        ``basic.get`` on a channel of its own, which is then closed: RabbitMQ puts the messages
        back where they were. Two readers at once each see only part of the queue.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        if limit <= 0:
            return []
        await self._connect()
        with amqp_errors(self._url, "dead_letters"):
            await self._topology.ensure_queue(queue)
            channel = await self._scratch_channel("dead_letters")
            found: list[DeadLetter] = []
            try:
                for _ in range(limit):
                    got = await self._bounded(
                        channel.basic_get(dead_letter_queue(queue), no_ack=False)
                    )
                    if not isinstance(got.delivery, spec.Basic.GetOk):
                        break
                    headers = dict(got.header.properties.headers or {})
                    reason, when = _death(headers)
                    found.append(DeadLetter(queue, bytes(got.body), reason, when))
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
        return found

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
        self._publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
        self._declarer = await connection.channel(publisher_confirms=False)
        self._consumer = await connection.channel(publisher_confirms=False)
        self._consumer.reopen_callbacks.add(self._on_consumer_reopen)

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
        # A channel closed by a refused request (PRECONDITION_FAILED...) reopens by itself.
        await self._bounded(channel.ready())
        underlay = await channel.get_underlay_channel()
        assert isinstance(underlay, aiormq.Channel)
        return underlay

    async def _scratch_channel(self, action: str) -> aiormq.abc.AbstractChannel:
        """A plain (not robust) channel, for requests that may close it or must not outlive it."""
        self._check_connected(action)
        assert self._connection is not None and self._connection.transport is not None
        return await self._bounded(self._connection.transport.connection.channel())

    async def _bounded(self, awaitable: Awaitable[T]) -> T:
        return await asyncio.wait_for(awaitable, self._timeout)

    # -- publishing ------------------------------------------------------------------------

    def _send(self, channel: aiormq.Channel, m: Outgoing, now: float) -> Awaitable[Any]:
        """Publish one message: straight to its queue, through its exchange, or delayed."""
        headers: dict[str, Any] = {}
        exchange, key = ("", m.queue) if not m.exchange else (m.exchange, m.routing_key or m.queue)
        eta = m.eta if m.eta is not None else now
        wait = delay.delay_ms(eta - now)
        if wait and m.exchange:
            # Routing happens now, through the exchange; each queue's consumer then delays its
            # copy, when it sees the eta (the chain needs a target queue, unknown here).
            headers[delay.ETA_HEADER] = round(eta * 1000)
        elif wait:
            exchange, key = delay.entry_exchange(wait), delay.routing_key(wait)
            headers[delay.TARGET_HEADER] = m.queue
            if eta - now > delay.MAX_DELAY_MS / 1000:
                headers[delay.ETA_HEADER] = round(eta * 1000)  # longer than the chain
        priority = min(max(m.priority, 0), MAX_PRIORITY)
        return channel.basic_publish(
            m.body,
            exchange=exchange,
            routing_key=key,
            properties=_properties(m.message_id, priority, headers),
            mandatory=True,
            wait=False,  # the confirm is what counts; no wait for the socket to drain first
        )

    async def _republish(
        self, arrivals: Sequence[Arrival], action: str, before: int | None = None
    ) -> None:
        """Publish a copy of each open-channel arrival to its queue, then ack the arrival.

        The copy says it was delivered ``before`` times (default: the arrival's count less one,
        so that its next delivery has the same count).
        """
        live = [a for a in arrivals if not a.done and not a.channel.is_closed]
        if not live:
            return
        for arrival in live:
            await self._topology.ensure_queue(arrival.queue)
        channel = await self._underlay(self._publisher, action)
        copies = (self._copy(channel, a, a.count - 1 if before is None else before) for a in live)
        await self._bounded(asyncio.gather(*copies))
        for arrival in live:
            # A channel closed meanwhile has put the original back too: a duplicate, not a loss.
            with contextlib.suppress(aiormq.exceptions.ChannelInvalidStateError):
                await arrival.ack()

    def _copy(self, channel: aiormq.Channel, arrival: Arrival, before: int) -> Awaitable[Any]:
        """Publish ``arrival``'s message to its queue again, as delivered ``before`` times."""
        headers = arrival.headers
        headers[COUNT_HEADER] = before
        headers.pop("x-delivery-count", None)
        return channel.basic_publish(
            arrival.message.body,
            routing_key=arrival.queue,
            properties=_properties(arrival.properties.correlation_id, arrival.priority, headers),
            mandatory=True,
            wait=False,  # the confirm is what counts; no wait for the socket to drain first
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
                channel.queue_declare(queue, durable=True, arguments=arguments)
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

    async def _go_idle(self) -> None:
        """Nobody fetched for a while (the worker stopped, the app lives on): stop consuming and
        hand back what waits in the buffer, rather than hold it from other consumers."""
        try:
            with amqp_errors(self._url, "release"):
                await self._stop_consuming()
                await self._republish(self._buffer.drain(), "release")
        except (AqueueError, TimeoutError) as exc:
            log.warning("%r: releasing idle deliveries failed: %s", self, exc)
        finally:
            self._idling = None

    async def _on_message(self, queue: str, message: aiormq.abc.DeliveredMessage) -> None:
        """Buffer a pushed delivery, or first re-publish it when it is early or uncounted."""
        arrival = self._buffer.arrival(message, queue)
        headers = arrival.headers
        if _header_defect(headers, self._queue_type == "quorum") is not None:
            # Neither re-delayed nor re-counted: handed out as it is, the worker dead-letters it.
            if not message.channel.is_closed:
                self._buffer.push(arrival)
            return
        eta = _int(headers.get(delay.ETA_HEADER)) / 1000
        if eta and eta - time.time() > _EARLY:
            await self._handoff(self._redelay(arrival, eta))
            return
        before = _int(headers.get(COUNT_HEADER))
        if self._queue_type == "quorum":
            arrival.count = before + _int(headers.get("x-delivery-count")) + 1
        elif message.redelivered:
            # A classic queue gives no count: the copy carries this delivery in its header, so
            # a message whose consumer keeps dying reaches task_max_deliveries.
            await self._handoff(self._republish([arrival], "consume", before + 1))
            return
        else:
            arrival.count = before + 1
        if message.channel.is_closed:
            return  # RabbitMQ has put it back already
        self._buffer.push(arrival)

    async def _handoff(self, work: Awaitable[None]) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handoffs.add(task)
        try:
            with amqp_errors(self._url, "consume"):
                await work
        except AqueueError as exc:
            # Not acked, so not lost: it comes back when the channel closes.
            log.warning("could not re-publish a delivery: %s", exc)
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
        properties = _properties(arrival.properties.correlation_id, arrival.priority, headers)
        await self._bounded(
            channel.basic_publish(
                arrival.message.body,
                exchange=delay.entry_exchange(wait),
                routing_key=delay.routing_key(wait),
                properties=properties,
                mandatory=True,
                wait=False,
            )
        )
        await arrival.ack()


def _forget_task(tasks: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
    """A done-callback that drops a task from ``tasks``, its exception retrieved."""

    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: whoever awaited it has seen it

    return done


def _properties(
    correlation_id: str | None, priority: int, headers: Mapping[str, Any]
) -> spec.Basic.Properties:
    return spec.Basic.Properties(
        delivery_mode=2,  # persistent
        priority=priority,
        correlation_id=correlation_id,
        headers=dict(headers) or None,
    )


def _header_defect(headers: Mapping[str, Any], quorum: bool) -> str | None:
    """Why a delivery's headers cannot be read (naming the header), or ``None``."""
    names = (COUNT_HEADER, delay.ETA_HEADER, "x-delivery-count") if quorum else _CHECKED
    for name in names:
        value = headers.get(name)
        if value is not None and (type(value) is not int or value < 0):
            return f"AMQP header {name!r} must be a whole number >= 0, not {value!r:.40}"
    return None


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
