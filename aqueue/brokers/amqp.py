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
- **Delayed messages** go through :mod:`aqueue.brokers.amqp_delay` (TTL queues, no plugin).
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
import heapq
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import aio_pika.abc
import aiormq
import aiormq.abc
import aiormq.exceptions
from aiormq import spec

from aqueue._amqp import amqp_errors, open_connection, redacted_url
from aqueue.brokers import amqp_delay as delay
from aqueue.brokers import visibility_timeout
from aqueue.brokers.base import Binding, DeadLetter, Delivery, Outgoing, dead_letter_queue
from aqueue.exceptions import AqueueError, BrokerConnectionError, BrokerError, ConfigurationError

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
QUEUE_TYPES = ("classic", "quorum")
MAX_PRIORITY = 9

COUNT_HEADER = "aqueue-deliveries"
REASON_HEADER = "aqueue-reason"
TIME_HEADER = "aqueue-time"  # epoch milliseconds (an int: AMQP tables have no double-safe float)

# How long a fetch that has just started consuming a queue waits for the messages already in it
# (RabbitMQ's declare-ok counts them) before choosing the best: deliveries of several queues
# arrive one queue after the other, and the first to arrive need not be the most urgent.
_SETTLE = 0.5
# Channels declaring the delay chain at once (see amqp_delay.declare_levels).
_DECLARE_CHANNELS = 8
# Seconds without a fetch after which the consumers stop and the buffer is handed back (a
# worker fetches at least every second unless all its slots are busy).
_IDLE = 10.0
# An eta (aqueue-eta header) this close is due: re-delaying would cost more than it saves.
_EARLY = 0.001


@dataclass(slots=True)
class _Arrival:
    """A delivery pushed by RabbitMQ, waiting in the buffer or handed out (a Delivery's token)."""

    message: aiormq.abc.DeliveredMessage
    queue: str
    count: int
    seq: int
    done: bool = False  # acked, or handed back

    @property
    def channel(self) -> aiormq.abc.AbstractChannel:
        """The channel it came on: only there can it be acked."""
        return self.message.channel

    @property
    def properties(self) -> spec.Basic.Properties:
        return self.message.header.properties

    @property
    def priority(self) -> int:
        return self.properties.priority or 0

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.properties.headers or {})

    async def ack(self) -> None:
        """``basic.ack`` on the channel it came on, once.

        Raises:
            aiormq.exceptions.ChannelInvalidStateError: that channel has closed.
        """
        if not self.done:
            assert self.message.delivery_tag is not None
            # No wait for the socket to drain: an ack has no reply, and order is kept anyway.
            await self.channel.basic_ack(self.message.delivery_tag, wait=False)
            self.done = True


def _number(options: Mapping[str, Any], name: str, default: float) -> float:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigurationError(
            f"broker_transport_options[{name!r}] must be a number of seconds > 0, not {value!r}"
        )
    return float(value)


class AMQPBroker:
    """A :class:`~aqueue.brokers.base.Broker` on RabbitMQ (``amqp://``, ``amqps://``).

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

    Raises:
        ConfigurationError: an option is unknown or invalid.
    """

    def __init__(self, url: str, options: Mapping[str, Any]) -> None:
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
        self._url = url
        self._tag = secrets.token_hex(4)  # consumer tags of this instance
        self._connecting = asyncio.Lock()
        self._declaring = asyncio.Lock()
        self._closes = 0  # close() calls so far: a waiting fetch returns when this changes
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._publisher: aio_pika.abc.AbstractRobustChannel | None = None  # confirms
        self._declarer: aio_pika.abc.AbstractRobustChannel | None = None  # declarations only
        self._consumer: aio_pika.abc.AbstractRobustChannel | None = None
        self._reset()

    def _reset(self) -> None:
        """Forget everything tied to a connection (after close, or a reconnection for caches)."""
        self._forget_declarations()
        # Queue -> (consumer tag, the aiormq channel it consumes on).
        self._consumers: dict[str, tuple[str, aiormq.abc.AbstractChannel]] = {}
        self._tags = itertools.count()
        self._fetching = 0  # fetch calls in progress
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idling: asyncio.Task[None] | None = None
        self._prefetch = self._prefetch_option or 0
        # Per queue, a heap of (-priority, arrival number, arrival): best first, then oldest.
        self._buffer: dict[str, list[tuple[int, int, _Arrival]]] = {}
        self._arrived = asyncio.Event()
        self._seq = itertools.count()
        self._settling: dict[str, int] = {}  # queue -> messages still expected since its start
        self._settle_until = 0.0  # loop time
        self._handoffs: set[asyncio.Task[Any]] = set()  # consume callbacks re-publishing
        self._starting: set[asyncio.Task[None]] = set()  # consumers being started

    def _forget_declarations(self) -> None:
        self._declared: set[str] = set()  # queues declared with their dead-letter queue
        self._exchanges: set[str] = set()
        self._bindings: set[tuple[str, str, str]] = set()
        self._levels = False  # the delay chain is declared
        self._delay_targets: set[str] = set()

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
        self._arrived.set()  # a waiting fetch returns
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        try:
            if self._idling is not None:
                await self._idling
            with amqp_errors(self._url, "close"):
                await self._stop_consuming()
                await self._republish(self._drain(), "release")
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
        and bindings they name, the delay chain for delayed ones. A priority outside 0..9 is
        clamped.

        Raises:
            BrokerConnectionError: the server cannot be reached, or confirmed nothing in
                ``operation_timeout`` seconds; nothing may be assumed stored.
            BrokerError: RabbitMQ refused a declaration, or returned a message that no queue is
                bound to receive.
        """
        if not messages:
            return
        await self._connect()
        now = time.time()
        with amqp_errors(self._url, "publish"):
            await self._prepare(messages, now)
            channel = await self._underlay(self._publisher, "publish")
            # Delays count from now: declaring may have taken a while.
            now = time.time()
            sends = [self._send(channel, m, now) for m in messages]
            await self._bounded(asyncio.gather(*sends))

    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        """Hand out up to ``limit`` buffered deliveries of ``queues``, waiting up to ``timeout``.

        The first fetch of a queue declares it and starts its consumer, then waits (at most
        0.5 s) for the messages already queued to arrive, so that the best of them is handed out
        first. Order: priority 9 first, then the earlier queue in ``queues``, then arrival.

        Raises:
            BrokerConnectionError: the server cannot be reached (also when the connection
                dropped and did not come back within ``timeout``).
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
            settling = now < min(self._settle_until, deadline) and any(
                self._settling.get(q) for q in names
            )
            if not settling:
                taken = self._take(rank, limit)
                if taken:
                    return taken
            if self._closes != closes:
                return []
            wait = (min(self._settle_until, deadline) if settling else deadline) - now
            if wait <= 0:
                self._check_connected("fetch")
                return []
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), wait)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """``basic.ack`` each delivery on its channel. Acking twice is harmless.

        Raises:
            BrokerConnectionError: a delivery's channel has closed (the connection dropped):
                RabbitMQ has put the message back and will deliver it again.
        """
        lost = 0
        for d in deliveries:
            arrival: _Arrival = d.token
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
        arrival: _Arrival = delivery.token
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
            await self._ensure_queue(delivery.queue)
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
            await self._ensure_queue(queue)
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
                    self._url, self._reconnect_interval, self._connect_timeout
                )
                try:
                    with amqp_errors(self._url, "connect"):
                        self._publisher = await connection.channel(
                            publisher_confirms=True, on_return_raises=True
                        )
                        self._declarer = await connection.channel(publisher_confirms=False)
                        self._consumer = await connection.channel(publisher_confirms=False)
                        self._consumer.reopen_callbacks.add(self._on_consumer_reopen)
                except BaseException:
                    await connection.close()
                    raise
                connection.reconnect_callbacks.add(self._on_reconnect)
                self._reset()
                self._connection = connection
            return self._connection

    def _on_reconnect(self, *_: Any) -> None:
        # A broker reset meanwhile lost our declarations: make them again before the next use.
        log.warning("%r reconnected", self)
        self._forget_declarations()
        self._arrived.set()

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

    # -- declaring -------------------------------------------------------------------------

    def _queue_arguments(self, queue: str) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead_letter_queue(queue),
        }
        if self._queue_type == "quorum":
            arguments["x-queue-type"] = "quorum"
        else:
            arguments["x-max-priority"] = MAX_PRIORITY
        return arguments

    def _dlq_arguments(self) -> dict[str, Any] | None:
        return {"x-queue-type": "quorum"} if self._queue_type == "quorum" else None

    async def _ensure_queue(self, queue: str) -> None:
        """Declare ``queue`` and its dead-letter queue, once per connection.

        Raises:
            BrokerError: the queue exists with other arguments (declared by another tool, or
                with another ``queue_type``).
        """
        if queue in self._declared:
            return
        channel = await self._underlay(self._declarer, "declare")
        arguments = self._queue_arguments(queue)
        try:
            await self._bounded(
                channel.queue_declare(
                    dead_letter_queue(queue), durable=True, arguments=self._dlq_arguments()
                )
            )
            await self._bounded(channel.queue_declare(queue, durable=True, arguments=arguments))
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise BrokerError(
                f"RabbitMQ at {redacted_url(self._url)} refused to declare queue {queue!r}: {exc}."
                f" It exists with other arguments; aqueue declares it durable with {arguments} "
                f"(queue_type={self._queue_type!r}): delete it, or use another queue name"
            ) from exc
        self._declared.add(queue)

    async def _ensure_exchange(self, name: str, kind: str | None) -> None:
        """Declare exchange ``name`` durable of type ``kind``, once per connection.

        With no ``kind`` (and for RabbitMQ's own ``amq.*`` exchanges, which may not be
        declared), an existing exchange is used as it is, and a missing one is declared direct.

        Raises:
            BrokerError: it exists with another type, or a missing ``amq.*`` one is named.
        """
        if name in self._exchanges:
            return
        if kind is None or name.startswith("amq."):
            # A passive declare of a missing exchange closes its channel: a scratch one.
            scratch = await self._scratch_channel("declare")
            try:
                await self._bounded(scratch.exchange_declare(name, passive=True))
                self._exchanges.add(name)
                return
            except aiormq.exceptions.ChannelNotFoundEntity:
                if name.startswith("amq."):
                    raise BrokerError(
                        f"RabbitMQ at {redacted_url(self._url)} has no exchange {name!r}, and "
                        f"amq.* names are reserved to RabbitMQ"
                    ) from None
            finally:
                with contextlib.suppress(Exception):
                    await scratch.close()
        channel = await self._underlay(self._declarer, "declare")
        await self._bounded(
            channel.exchange_declare(name, exchange_type=kind or "direct", durable=True)
        )
        self._exchanges.add(name)

    async def _ensure_binding(self, binding: Binding) -> None:
        key = (binding.queue, binding.exchange, binding.routing_key)
        if key in self._bindings:
            return
        await self._ensure_queue(binding.queue)
        await self._ensure_exchange(binding.exchange, binding.exchange_type)
        channel = await self._underlay(self._declarer, "declare")
        await self._bounded(
            channel.queue_bind(binding.queue, binding.exchange, routing_key=binding.routing_key)
        )
        self._bindings.add(key)

    async def _ensure_delay(self, target: str) -> None:
        """Declare the delay chain (once) and bind ``target`` to its deliver exchange."""
        if self._levels and target in self._delay_targets:
            return
        await self._ensure_queue(target)
        if not self._levels:
            scratch = [await self._scratch_channel("declare") for _ in range(_DECLARE_CHANNELS)]
            try:
                await self._bounded(delay.declare_levels(scratch))
            finally:
                for channel in scratch:
                    with contextlib.suppress(Exception):
                        await channel.close()
            self._levels = True
        channel = await self._underlay(self._declarer, "declare")
        await self._bounded(delay.bind_target(channel, target))
        self._delay_targets.add(target)

    async def _prepare(self, messages: Sequence[Outgoing], now: float) -> None:
        """Declare what ``messages`` need before they are published."""
        async with self._declaring:
            for m in messages:
                if m.exchange:
                    for binding in m.bindings:
                        await self._ensure_binding(binding)
                elif m.eta is not None and delay.delay_ms(m.eta - now) > 0:
                    await self._ensure_delay(m.queue)
                else:
                    await self._ensure_queue(m.queue)

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
        self, arrivals: Sequence[_Arrival], action: str, before: int | None = None
    ) -> None:
        """Publish a copy of each open-channel arrival to its queue, then ack the arrival.

        The copy says it was delivered ``before`` times (default: the arrival's count less one,
        so that its next delivery has the same count).
        """
        live = [a for a in arrivals if not a.done and not a.channel.is_closed]
        if not live:
            return
        for arrival in live:
            await self._ensure_queue(arrival.queue)
        channel = await self._underlay(self._publisher, action)
        copies = (self._copy(channel, a, a.count - 1 if before is None else before) for a in live)
        await self._bounded(asyncio.gather(*copies))
        for arrival in live:
            # A channel closed meanwhile has put the original back too: a duplicate, not a loss.
            with contextlib.suppress(aiormq.exceptions.ChannelInvalidStateError):
                await arrival.ack()

    def _copy(self, channel: aiormq.Channel, arrival: _Arrival, before: int) -> Awaitable[Any]:
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
        missing = [q for q in queues if q not in self._consumers or self._consumers[q][1].is_closed]
        if not missing:
            return
        task = asyncio.ensure_future(self._start_consumers(missing))
        self._starting.add(task)
        task.add_done_callback(_forget_task(self._starting))
        await asyncio.shield(task)

    async def _start_consumers(self, queues: Sequence[str]) -> None:
        """Declare and consume each queue, noting how many messages it already holds."""
        channel = await self._underlay(self._consumer, "fetch")
        if not any(c is channel for _, c in self._consumers.values()):
            # basic.qos applies to the consumers started after it on this channel.
            await self._bounded(channel.basic_qos(prefetch_count=self._prefetch))
        loop = asyncio.get_running_loop()
        for queue in queues:
            async with self._declaring:
                await self._ensure_queue(queue)
            declared = await self._bounded(
                channel.queue_declare(queue, durable=True, arguments=self._queue_arguments(queue))
            )
            ready = declared.message_count or 0
            if ready:
                self._settling[queue] = min(ready, self._prefetch)
                self._settle_until = loop.time() + _SETTLE
            tag = f"aqueue.{self._tag}.{next(self._tags)}"
            # Recorded before the consume is sent: deliveries may come before consume-ok.
            self._consumers[queue] = (tag, channel)
            try:
                callback = functools.partial(self._on_message, queue)
                await self._bounded(channel.basic_consume(queue, callback, consumer_tag=tag))
            except BaseException:
                self._consumers.pop(queue, None)
                self._settling.pop(queue, None)
                raise

    async def _stop_consuming(self) -> None:
        """Cancel every consumer; what they delivered stays in the buffer, still leased."""
        consumers, self._consumers = self._consumers, {}
        self._settling.clear()
        for tag, channel in consumers.values():
            if not channel.is_closed:
                # After cancel-ok nothing more arrives for it, so the buffer is complete.
                await self._bounded(channel.basic_cancel(tag))
        if self._handoffs:
            await self._bounded(asyncio.gather(*self._handoffs, return_exceptions=True))

    def _on_consumer_reopen(self, *_: Any) -> None:
        # The consumers died with the old channel; the next fetch starts them on the new one.
        self._consumers.clear()
        self._settling.clear()
        self._arrived.set()

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
                await self._republish(self._drain(), "release")
        except (AqueueError, TimeoutError) as exc:
            log.warning("%r: releasing idle deliveries failed: %s", self, exc)
        finally:
            self._idling = None

    def _drain(self) -> list[_Arrival]:
        """Empty the buffer; return what it held."""
        buffered = [a for heap in self._buffer.values() for _, _, a in heap]
        self._buffer = {}
        return buffered

    async def _on_message(self, queue: str, message: aiormq.abc.DeliveredMessage) -> None:
        """Buffer a pushed delivery, or first re-publish it when it is early or uncounted."""
        settling = self._settling.get(queue)
        if settling:
            if settling > 1:
                self._settling[queue] = settling - 1
            else:
                del self._settling[queue]
        arrival = _Arrival(message, queue, 0, next(self._seq))
        headers = arrival.headers
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
        heapq.heappush(
            self._buffer.setdefault(queue, []), (-arrival.priority, arrival.seq, arrival)
        )
        self._arrived.set()

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

    async def _redelay(self, arrival: _Arrival, eta: float) -> None:
        """Send an early arrival (its eta header is in the future) round the delay chain."""
        headers = arrival.headers
        wait = delay.delay_ms(eta - time.time())
        headers[delay.TARGET_HEADER] = arrival.queue
        async with self._declaring:
            await self._ensure_delay(arrival.queue)
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

    def _take(self, rank: Mapping[str, int], limit: int) -> list[Delivery]:
        """Remove and return up to ``limit`` buffered deliveries of the ranked queues, best first.

        Deliveries of a closed channel are dropped: RabbitMQ has put them back in their queue.
        """
        heaps = [(r, self._buffer[q]) for q, r in rank.items() if self._buffer.get(q)]
        taken: list[Delivery] = []
        while heaps and len(taken) < limit:
            _, heap = min(heaps, key=lambda rh: (rh[1][0][0], rh[0], rh[1][0][1]))
            arrival = heapq.heappop(heap)[2]
            if not heap:
                heaps = [rh for rh in heaps if rh[1]]
            if not arrival.channel.is_closed:
                taken.append(Delivery(arrival.queue, arrival.message.body, arrival.count, arrival))
        return taken


def _forget_task(tasks: set[asyncio.Task[None]]) -> Any:
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
