"""The role Protocols a transport implements, in one place: the whole contract between aqueue's
core and a server.

A *transport* is one kind of server (``memory``, ``sqlite``, ``redis``, ``amqp``: one folder each
under :mod:`aqueue.transports`). It serves some of these roles, every role over one client or
connection per app, event loop and URL (:class:`Transport`):

- :class:`Broker`: moves opaque message bodies between named queues, at least once.
- :class:`ResultBackend`: stores task records and tells waiting clients when one changes;
  optionally :class:`ReplyChannels`, one subscription per client for the results of the tasks
  it sent.
- :class:`QueueAdmin` (optional, beside a broker): queue depths, purge, dead-letter clean-up;
  :class:`DeadLetterTakes` (optional too): dead letters taken for a replay, none lost.
- :class:`ControlTransport`: channels, shared tables and token buckets for remote control,
  revocations, heartbeats, events and global rate limits.
- :class:`BeatStore`: what beat processes share - stored entries, last ticks, tick claims.

Invariants (timestamps, counters, logging, retry policy) live in the core that calls these, so a
transport cannot get them wrong. The contract suites in ``tests/`` run every role over every
transport that serves it. All times are seconds (float) unless a name says milliseconds.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Protocol, TypeGuard, runtime_checkable

from aqueue.exceptions import ConfigurationError
from aqueue.results.mailbox import Mailbox
from aqueue.transports.tls import TLSOptions

__all__ = [
    "BaseTransport",
    "BeatStore",
    "Binding",
    "Broker",
    "Claim",
    "ConnectionOptions",
    "ControlTransport",
    "DeadLetter",
    "DeadLetterTakes",
    "Delivery",
    "Locks",
    "Outgoing",
    "PushedDeliveries",
    "QueueAdmin",
    "QueueDepth",
    "Records",
    "ReplyChannels",
    "ReplyTo",
    "ResultBackend",
    "RunTracking",
    "SendLetters",
    "SharedReplies",
    "Snapshot",
    "Transport",
    "Waiters",
    "WrittenStarts",
    "dead_letter_queue",
    "has_locks",
    "has_waiters",
    "pushes_deliveries",
    "queue_admin",
    "waiters_key",
]


#: ``(task id, encoded result record)`` pairs, as :meth:`ResultBackend.store` takes them.
Records = Sequence[tuple[str, bytes]]
#: Task id -> the sending client's reply channel (``Message.reply_to``).
ReplyTo = Mapping[str, str]


# -- the transport ----------------------------------------------------------------------------


#: Shortest read timeout a Redis connection may have: the broker's blocking fetch (``XREADGROUP
#: BLOCK``) waits up to 1 s for a reply, which a shorter socket timeout would cut off.
MIN_SOCKET_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """How a transport's client connects to its server; the app makes one per URL from its
    settings (:meth:`aqueue.config.Settings.connection_options`). Seconds throughout.

    Attributes:
        connect_timeout: the longest opening one connection may take, all of it (TCP, TLS,
            login, the first PING): then it fails with
            :class:`~aqueue.exceptions.BrokerConnectionError`.
        socket_timeout: Redis: the longest wait for a reply to a command (``None``: no limit,
            and no timer per command); subscriptions' blocking reads are exempt. At least
            :data:`MIN_SOCKET_TIMEOUT`.
        retry_on_timeout: Redis: a command that timed out is retried once on a fresh connection,
            as one that met a dropped connection is.
        max_connections: Redis: connections in the pool at most (``None``: the transport's own
            default); callers past it wait for a free one.
        tls: TLS for every connection, from ``broker_use_ssl`` / ``redis_backend_use_ssl``
            (:mod:`aqueue.transports.tls`); set, it turns TLS on for a ``redis://`` or
            ``amqp://`` URL too. ``None``: as the URL says (``rediss://``, ``amqps://``).
        sentinel: Redis Sentinel URLs: ``master_name`` and ``sentinel_kwargs`` (Celery's and
            kombu's names, :mod:`aqueue.transports.redis.sentinel`), from
            ``broker_transport_options`` for the broker, ``result_backend_transport_options``
            for a result backend on another URL. ``None``: none given.
        max_deliveries: ``task_max_deliveries``, for a broker that caps poison messages
            itself too (RabbitMQ quorum queues' ``x-delivery-limit``).
    """

    connect_timeout: float = 4.0
    socket_timeout: float | None = None
    retry_on_timeout: bool = False
    max_connections: int | None = None
    tls: TLSOptions | None = None
    sentinel: Mapping[str, Any] | None = None
    max_deliveries: int = 5


class Transport(Protocol):
    """One server for one app and event loop: the roles it serves share its one client.

    Created by :func:`aqueue.transports.transport_for` from a URL; each role is made on first
    use and kept, so ``broker()`` twice returns the same broker. A role the server does not
    serve raises :class:`~aqueue.exceptions.ConfigurationError` naming what to use instead.

    Attributes:
        roles: the names of the roles served (``"broker"``, ``"results"``, ``"control"``,
            ``"beat"``).
        one_per_process: True when the server is this process (``memory://``): the app then
            keeps one instance for every event loop instead of one per loop.
        url: the URL it was made from.
    """

    roles: ClassVar[frozenset[str]]
    one_per_process: ClassVar[bool]
    url: str

    def __init__(
        self, url: str, *, shared: bool = True, connection: ConnectionOptions | None = None
    ) -> None:
        """Remember ``url``; nothing is opened until a role is used.

        Args:
            url: the server's URL.
            shared: the roles share one client, which :meth:`close` closes after them
                (``False``: each role opens and closes a client of its own, for a role used
                alone, as :func:`aqueue.transports.broker_from_url` makes).
            connection: timeouts and pool size of the shared client (default:
                :class:`ConnectionOptions`'s defaults).

        Raises:
            ConfigurationError: the URL is invalid for this transport.
        """

    def broker(self, options: Mapping[str, Any]) -> Broker:
        """The broker (not yet connected), with ``broker_transport_options``.

        Raises:
            ConfigurationError: not a broker, or an option is unknown or invalid.
        """
        ...

    def result_backend(self) -> ResultBackend:
        """The result backend (not yet connected).

        Raises:
            ConfigurationError: the server stores no results.
        """
        ...

    def control(self) -> ControlTransport:
        """The control transport (not yet connected).

        Raises:
            ConfigurationError: the server carries no control traffic.
        """
        ...

    def beat_store(self, namespace: str) -> BeatStore:
        """Beat's store for the app named ``namespace`` (not yet connected).

        Raises:
            ConfigurationError: the server cannot keep beat's state.
        """
        ...

    async def close(self) -> None:
        """Close every role made here, then the shared client. Idempotent."""


# -- broker -----------------------------------------------------------------------------------
#
# A broker moves opaque message bodies (bytes) between named queues. It knows nothing of tasks,
# results or retries; the core decides those and calls these methods. The semantics follow the
# at-least-once model of Redis Streams consumer groups and AMQP late acknowledgement:
#
# - ``publish`` stores messages durably before it returns. A message with ``eta`` in the future
#   is held back until then (a delayed message); among ready messages, priority 9 goes first.
# - ``fetch`` hands out up to ``limit`` messages and *leases* them to this consumer. A leased
#   message is invisible to other consumers until it is acked, released, dead-lettered, or its
#   lease runs out (the visibility timeout, seconds) - then it is delivered again, with
#   ``Delivery.delivery_count`` one higher. ``renew`` extends leases for long tasks.
# - ``ack`` removes a message for good; ``release`` hands it back at once (graceful shutdown);
#   ``dead_letter`` moves it to the queue's dead-letter queue with a reason.


def dead_letter_queue(queue: str) -> str:
    """The name of ``queue``'s dead-letter queue: ``"<queue>.dlq"``."""
    return f"{queue}.dlq"


@dataclass(frozen=True, slots=True)
class Binding:
    """A queue bound to an AMQP exchange, declared before a message is published through it.

    Attributes:
        queue: the bound queue.
        exchange: the exchange's name.
        exchange_type: ``"direct"``, ``"topic"`` or ``"fanout"``; ``None`` to use the exchange
            as it exists (declaring a direct one if it does not).
        routing_key: the binding key (a pattern for a topic exchange, unused by fanout).
    """

    queue: str
    exchange: str
    exchange_type: str | None
    routing_key: str


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to publish.

    Attributes:
        queue: the target queue name.
        body: the encoded message (see :mod:`aqueue.message`).
        message_id: the task id; brokers may use it to name the stored message.
        priority: 0..9, 9 delivered first.
        eta: earliest delivery time in epoch seconds, or ``None`` for now.
        exchange: AMQP only: publish through this exchange with ``routing_key`` instead of
            straight to ``queue`` (other brokers deliver to ``queue`` and ignore the routing).
        routing_key: AMQP only: the routing key used with ``exchange``.
        bindings: AMQP only: queue bindings to ``exchange`` to declare before publishing.
    """

    queue: str
    body: bytes
    message_id: str
    priority: int = 0
    eta: float | None = None
    exchange: str | None = None
    routing_key: str | None = None
    bindings: tuple[Binding, ...] = ()


@dataclass(slots=True)
class Delivery:
    """A message leased to this consumer by :meth:`Broker.fetch`.

    Attributes:
        queue: the queue it came from.
        body: the message bytes exactly as published.
        delivery_count: 1 on the first delivery, +1 each time it comes back counted: with
            :class:`RunTracking`, only when a worker died (its lease ran out) while *running*
            it; otherwise on every redelivery.
        token: the broker's own handle for ack/release (stream entry id, row id, AMQP message...).
        strikes: how many workers died while running it alone as their one suspect (see
            :class:`RunTracking`); ``delivery_count - 1`` on brokers without it.
        defect: why the broker's own record of this message is malformed (a stream entry
            field, a header), naming the field; ``None`` when it is sound. The worker
            dead-letters a delivery with a defect without running it.
    """

    queue: str
    body: bytes
    delivery_count: int
    token: Any
    strikes: int = 0
    defect: str | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message in a dead-letter queue, as :meth:`Broker.dead_letters` returns it."""

    queue: str
    body: bytes
    reason: str
    time: float


@runtime_checkable
class Broker(Protocol):
    """What the core needs from a message transport. All times are seconds (float).

    Attributes:
        url: the broker's URL (remote control and operations find its server by it).
    """

    url: str

    async def connect(self) -> None:
        """Open connections and declare what is needed. Idempotent.

        Raises:
            BrokerConnectionError: the server cannot be reached; the message says which and why.
        """

    async def close(self) -> None:
        """Release connections. Leased messages not acked are delivered again later. Idempotent."""

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Store ``messages`` durably (in one round trip where the transport allows).

        Raises:
            BrokerConnectionError: the broker cannot be reached; nothing may be assumed stored.
        """

    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        """Lease up to ``limit`` ready messages from ``queues``, waiting up to ``timeout`` seconds.

        Returns as soon as at least one message is ready (an empty list after ``timeout``).
        The worker cancels a waiting fetch when it stops: a message leased by a cancelled fetch
        must not be lost (at worst it is delivered again after the visibility timeout).
        Higher priority first; among equal priorities, oldest first; earlier queues in
        ``queues`` win ties between queues. Messages whose lease ran out are delivered again
        here with a higher ``delivery_count``.
        """

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Remove delivered messages for good. Acking twice is harmless."""

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Give leased messages back for immediate redelivery (delivery_count is kept)."""

    async def renew(self, deliveries: Sequence[Delivery]) -> None:
        """Extend the lease (visibility timeout) of messages still being worked on."""

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move a leased message to its queue's dead-letter queue with ``reason``; acks it."""

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Read (without removing) up to ``limit`` dead-lettered messages of ``queue``."""


@runtime_checkable
class PushedDeliveries(Protocol):
    """Optional, beside :class:`Broker`: a broker whose server pushes deliveries to the client
    (AMQP's ``basic.consume`` with a prefetch window) rather than handing them out per fetch."""

    async def stop_fetching(self) -> None:
        """The worker fetches no more: cancel the consumers now and hand back what the server
        pushed and nobody fetched (a later :meth:`Broker.fetch` starts them again), so that
        released messages go to other consumers instead of back to this client.

        Raises:
            BrokerConnectionError: the server cannot be reached (what was pushed comes back
                to the queue when the connection closes).
        """


def pushes_deliveries(broker: object) -> TypeGuard[PushedDeliveries]:
    """``isinstance(broker, PushedDeliveries)``, as a guard a type checker follows."""
    return isinstance(broker, PushedDeliveries)


@runtime_checkable
class RunTracking(Protocol):
    """Optional, beside :class:`Broker`: poison accounting that blames only what was running.

    A worker calls :meth:`start` (batched) just before it runs a delivery; the broker records
    it durably in the lease. When the lease runs out (the worker died), the broker looks at that
    record: a delivery that was never started comes back unchanged (prefetched messages carry
    no blame); one that was running comes back with ``delivery_count`` one higher (a
    *suspect*); one that was running as its worker's isolated suspect also gets a strike. A
    worker runs at most one suspect at a time, so a strike points at one message.
    """

    async def start(
        self, runs: Sequence[tuple[Delivery, bool]], acks: Sequence[Delivery] = ()
    ) -> list[bool]:
        """Record that each ``(delivery, isolated)`` is running now (also renewing its lease),
        after acking ``acks`` as :meth:`Broker.ack` does - in one round trip, so that a worker
        marks its next run with the ack of the previous one.

        Returns:
            Per run, True if the lease is still this consumer's; False if it ran out and
            another consumer took the message over (it must not run here).

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        ...


@runtime_checkable
class WrittenStarts(Protocol):
    """Optional, beside :class:`RunTracking`: a start mark that need not wait for its answer.

    A lease a worker took less than half a visibility timeout ago is still its own, so its mark
    needs no answer before the task runs: once the command is written to the server's socket
    the operating system delivers it even if the worker dies next (a killed process's socket is
    closed after what was written to it is sent). A worker that starts its task then saves the
    round trip, and reads the answer meanwhile: at a light load, and for the acks its runners'
    next marks ride with (written once their results are stored).
    """

    async def start_written(
        self, runs: Sequence[tuple[Delivery, bool]], acks: Sequence[Delivery] = ()
    ) -> Awaitable[None] | None:
        """Send the acks of ``acks`` and the marks of ``runs`` (as :meth:`RunTracking.start`)
        and return once they are written, with the awaitable of the server's answer (it raises
        :class:`~aqueue.exceptions.BrokerConnectionError` if none came); ``None``, having sent
        nothing, when these runs need :meth:`RunTracking.start` (a lease old enough to need an
        owner check, or a layout that cannot).

        Raises:
            BrokerConnectionError: the marks could not be written.
        """
        ...


# -- result backend ---------------------------------------------------------------------------
#
# A backend stores opaque records (bytes, see :mod:`aqueue.results.record`) under task ids and
# tells waiting clients when one changes. The core owns the record format, timestamps and expiry
# policy; a backend only stores, reads, counts and notifies.
#
# Waiting is push, not poll, wherever the server allows: ``watch`` subscribes first, the caller
# then reads the current record, then waits on the queue for changes - so no update can fall
# between the read and the wait. One subscription per client serves every watched id (Redis:
# one pub/sub connection). Backends with no notification across processes (SQLite) check the
# watched ids in one query per interval, never one per id.


@runtime_checkable
class ResultBackend(Protocol):
    """What the core needs from a result store. All times are seconds (float).

    Attributes:
        url: the backend's URL.
    """

    url: str

    async def connect(self) -> None:
        """Open connections. Idempotent.

        Raises:
            BrokerConnectionError: the server cannot be reached; the message says which and why.
        """

    async def close(self) -> None:
        """Release connections and end every watch. Idempotent."""

    async def store(
        self, items: Records, expires: float | None, reply_to: ReplyTo | None = None
    ) -> None:
        """Store each ``(task_id, record)``, replacing what was there, and notify watchers.

        Args:
            items: task ids and their encoded records; stored in one round trip where possible.
            expires: seconds until the records may be deleted, or ``None`` to keep them.
            reply_to: task id -> the sending client's reply channel (``Message.reply_to``),
                for backends with reply channels (:mod:`aqueue.results.mailbox`); others
                ignore it.
        """

    async def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        """Read the records of ``task_ids`` in one round trip; ``None`` where nothing is stored."""

    async def delete(self, task_ids: Sequence[str]) -> None:
        """Forget the records of ``task_ids``. Deleting a missing id is harmless."""

    async def add_member(self, key: str, member: str, expires: float | None) -> int:
        """Atomically add ``member`` to the set ``key`` (created empty); return the set's size.

        Idempotent: adding a member already present changes nothing and returns the same size,
        so a call retried after a lost reply, or a task run twice, counts once. Concurrent calls
        from any number of processes each see the size right after their own addition. Used for
        chords: the header member whose addition makes the set as large as the header triggers
        the body (see :mod:`aqueue.worker.workflow`).

        Args:
            key: the set's name.
            member: the element to add (e.g. a task id).
            expires: seconds until the whole set may be deleted (restarted on each call), or
                ``None`` to keep its deadline.
        """

    def watch(self, task_id: str) -> AbstractAsyncContextManager[asyncio.Queue[bytes]]:
        """Subscribe to changes of ``task_id``'s record.

        On entering, the subscription is live; every record stored for the id afterwards is put
        on the returned queue (in order). Leaving unsubscribes.
        """
        ...


@runtime_checkable
class ReplyChannels(Protocol):
    """Optional, beside :class:`ResultBackend`: one subscription per client for the results of
    the tasks it sent (see :mod:`aqueue.results.mailbox`).

    The client names :meth:`reply_channel` in each message it sends (``Message.reply_to``, as
    AMQP's ``reply_to`` and Celery's ``rpc://`` do); a worker's :meth:`ResultBackend.store`
    publishes those records there, batched. The core checks for this Protocol with
    ``isinstance``; a backend without it is watched per task.
    """

    async def reply_channel(self) -> str:
        """This client's reply channel, subscribed (and confirmed) before this returns.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        ...

    def expect(self, task_id: str) -> Mailbox:
        """The mailbox that records of ``task_id`` arriving on the reply channel go to.

        Called before the message naming the reply channel is published; the mailbox lives as
        long as a reference to it does (the result handle holds it).
        """
        ...


@runtime_checkable
class SharedReplies(Protocol):
    """Optional, beside :class:`ReplyChannels`: a reply channel every client of the backend
    listens on beside its own, for records whose sender is not known.

    A revocation made by another client than the task's sender stores ``REVOKED`` with this
    channel as the ``reply_to`` of each id, so that the sender's handle (which waits on its
    own reply channel, not on the task's) learns it at once rather than when a worker meets
    the message (for a ``countdown`` of an hour, an hour later).
    """

    @property
    def shared_reply_channel(self) -> str:
        """The shared reply channel's name, as :meth:`ResultBackend.store` takes it."""
        ...


# -- locks and waiters ------------------------------------------------------------------------
#
# Unique tasks, idempotent sends and dependencies (docs/tasks.md) keep their state next to the
# results, in the result backend: a broker alone (RabbitMQ) holds no shared keys, so with an
# AMQP broker these live in its Redis or SQLite result backend. ``rpc://`` stores nothing and
# serves neither Protocol; the core then refuses unique tasks and dependencies with a
# ConfigurationError naming a result backend that does.


def waiters_key(task_id: str) -> str:
    """The member set (:meth:`ResultBackend.add_member`) of the tasks waiting for ``task_id``:
    :meth:`Waiters.store_waited` reports the ids whose set is not empty."""
    return f"waiters:{task_id}"


def has_locks(backend: object) -> TypeGuard[Locks]:
    """``isinstance(backend, Locks)``, as a guard a type checker follows (a result backend typed
    as :class:`ResultBackend` does not narrow by ``isinstance`` to a second Protocol)."""
    return isinstance(backend, Locks)


def has_waiters(backend: object) -> TypeGuard[Waiters]:
    """``isinstance(backend, Waiters)``, as a guard a type checker follows."""
    return isinstance(backend, Waiters)


@runtime_checkable
class Locks(Protocol):
    """Optional, beside :class:`ResultBackend`: named locks with an owner and an expiry, atomic
    for every client (Redis: one Lua script, ``SET ... PX`` only when absent or already ours;
    SQLite: one ``BEGIN IMMEDIATE`` transaction; memory: a thread lock)."""

    async def lock(self, key: str, owner: str, ttl: float) -> str:
        """Take ``key`` for ``owner`` for ``ttl`` seconds if it is free (absent or expired) or
        already ``owner``'s (its expiry is then set anew), in one atomic step.

        Returns:
            The owner now holding ``key``: ``owner`` when taken (or kept), else the holder's.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        ...

    async def unlock(self, key: str, owner: str) -> bool:
        """Free ``key`` if ``owner`` holds it (compare and delete, atomically); a lock that
        expired or that another owner took is left alone.

        Returns:
            True if ``owner`` held it and it was freed.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        ...


@runtime_checkable
class Waiters(Protocol):
    """Optional, beside :class:`ResultBackend`: which stored records other tasks wait for.

    A waiting task registers itself with :meth:`add_waiter`, then reads the record of ``id``; a
    worker stores with :meth:`store_waited`, which reads the waiter sets after storing. Each
    side writes before it reads, on one server, so at least one of them sees the other (both
    may: the core counts completions as a set, never twice).
    """

    async def store_waited(
        self, items: Records, expires: float | None, reply_to: ReplyTo | None = None
    ) -> list[str]:
        """:meth:`ResultBackend.store` ``items``, then return the ids among them whose
        :func:`waiters_key` set has members (in the same round trip where the server allows).

        Raises:
            BrokerConnectionError: the server cannot be reached; nothing may be assumed stored.
        """
        ...

    async def add_waiter(self, task_id: str, waiter: str, expires: float | None) -> None:
        """Add ``waiter`` to the :func:`waiters_key` set of ``task_id`` (members expire after
        ``expires`` seconds, ``None``: never), where :meth:`store_waited` finds it.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        ...

    async def members(self, key: str) -> list[str]:
        """The members of the set ``key`` (:meth:`ResultBackend.add_member`), in no order; ``[]``
        when it is missing or expired.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        ...


# -- queue administration ---------------------------------------------------------------------
#
# For ``aqueue status``, ``purge`` and ``dlq``. A separate, optional Protocol next to Broker:
# the worker never needs it, and a broker that lacks it still runs tasks - the operations
# commands then say so (:func:`queue_admin`). Message counts may be a moment old on a busy broker.


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """How many messages a queue holds, by condition.

    Attributes:
        queue: the queue's name.
        ready: deliverable now (including those whose lease ran out).
        delayed: waiting for their eta (``countdown``, ``eta``, retries, rate-limit deferrals);
            ``None`` when the broker cannot tell a queue's own (RabbitMQ: one delay chain for
            every queue, counted as a whole, see docs/amqp.md).
        unacked: leased to a worker that has not acked them yet (running or prefetched);
            ``None`` when the broker does not say (RabbitMQ over AMQP 0-9-1).
        dead: in the queue's dead-letter queue.
        consumers: consumers attached to the queue, where the broker counts them (RabbitMQ:
            one per worker process consuming it); ``None`` elsewhere.
    """

    queue: str
    ready: int = 0
    delayed: int | None = 0
    unacked: int | None = 0
    dead: int = 0
    consumers: int | None = None

    @property
    def waiting(self) -> int:
        """Messages a purge would remove: ready and delayed (those counted)."""
        return self.ready + (self.delayed or 0)


@runtime_checkable
class QueueAdmin(Protocol):
    """Administrative operations on a broker's queues."""

    async def queue_depths(self, queues: Sequence[str] | None = None) -> list[QueueDepth]:
        """The depth of each of ``queues``, or of every queue the broker holds anything for
        (``None``), in that order (then sorted by name).

        Raises:
            BrokerConnectionError: the broker cannot be reached.
        """
        ...

    async def purge(self, queues: Sequence[str]) -> int:
        """Delete the ready and delayed messages of ``queues``; return how many.

        Messages leased to a worker (running or prefetched) are left alone, as Celery's purge
        does: their worker acks or releases them. Dead letters are kept (see
        :meth:`purge_dead_letters`).

        Raises:
            BrokerConnectionError: the broker cannot be reached.
        """
        ...

    async def purge_dead_letters(self, queue: str, limit: int | None = None) -> int:
        """Delete the oldest ``limit`` dead letters of ``queue`` (all if ``None``); return how
        many. :meth:`Broker.dead_letters` lists them in the same order.

        Raises:
            BrokerConnectionError: the broker cannot be reached.
        """
        ...


#: What :meth:`DeadLetterTakes.take_dead_letters` hands the letters it took to.
SendLetters = Callable[[list[DeadLetter]], Awaitable[None]]


@runtime_checkable
class DeadLetterTakes(Protocol):
    """Optional, beside :class:`QueueAdmin`: take dead letters to send them back, so that two
    replays at once - from two processes too - lose none.

    A replay that reads the oldest letters, sends them, then deletes "the oldest N" loses
    letters when another replay ran in between: both send the same ones, then together
    delete twice as many. A take deletes exactly the letters it handed out, and only once
    ``send`` returned.
    """

    async def take_dead_letters(self, queue: str, limit: int, send: SendLetters) -> int:
        """Take up to ``limit`` of ``queue``'s oldest dead letters, await ``send(letters)``,
        then delete exactly those letters; return how many were sent (0: none, and ``send``
        is not called). If ``send`` raises, every letter stays, and the error propagates.

        Where the server can hold messages for one client (AMQP's unacked ``basic.get``, the
        memory broker), letters held by one take are not handed to another at the same time.
        Elsewhere (SQLite, Redis) two takes at the same moment may both send a letter: sent
        twice (the same task id), as a redelivery can be, never lost.

        Raises:
            BrokerConnectionError: the broker cannot be reached (nothing is deleted if the
                error comes before ``send`` returned).
        """
        ...


def queue_admin(broker: Broker) -> QueueAdmin:
    """``broker`` as a :class:`QueueAdmin`.

    Raises:
        ConfigurationError: the broker does not support queue administration.
    """
    if isinstance(broker, QueueAdmin):
        return broker
    raise ConfigurationError(
        f"the {type(broker).__name__} does not support queue administration yet (queue depths, "
        f"purge, dead-letter clean-up): it needs queue_depths, purge and purge_dead_letters "
        f"(see aqueue.transports.base)"
    )


# -- control ----------------------------------------------------------------------------------
#
# Three primitives, each implemented once per transport (``memory``, ``sqlite``, ``redis``):
#
# - Channels (``publish`` / ``subscribe``): fire-and-forget broadcast to whoever is subscribed
#   at that moment, like Redis pub/sub. Control commands go to every worker on one channel; each
#   reply goes back on a channel named by the command; events go on their own channel. Nothing
#   that must survive a restart travels only on a channel.
# - Tables (``put`` / ``read`` / ``version``): small shared key-value maps with a per-entry
#   expiry and a version number bumped by every change. Revocations, runtime rate limits and
#   worker heartbeats live here, so a worker started later still sees them; ``version`` is the
#   cheap check a worker makes on every heartbeat.
# - Token buckets (``acquire``): a global rate limit, atomic on the server (one Lua script on
#   Redis, one ``BEGIN IMMEDIATE`` transaction on SQLite).


@runtime_checkable
class ControlTransport(Protocol):
    """What the operations side of aqueue needs from a server."""

    async def connect(self) -> None:
        """Open connections and create what is needed. Idempotent.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """

    async def close(self) -> None:
        """Release connections and end every subscription. Idempotent."""

    async def publish(self, channel: str, messages: Sequence[bytes]) -> None:
        """Send ``messages`` (in order, one round trip where possible) to the current
        subscribers of ``channel``. Nobody subscribed: they are dropped.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[asyncio.Queue[bytes]]:
        """Listen on ``channel``: on entering, the subscription is live, and every message
        published afterwards is put on the returned queue, in order. Leaving unsubscribes.
        :meth:`close` ends the subscription (a transport shared by event loops: those of the
        closing loop): the queue's ``get()`` then hands out what arrived before, then raises
        :class:`BrokerConnectionError` on every call, waking a consumer waiting on it (see
        :class:`aqueue.transports.fanout.SubscriberQueue`).

        Raises:
            BrokerConnectionError: the server cannot be reached, or :meth:`close` was called
                while subscribing.
        """
        ...

    async def put(self, table: str, key: str, value: bytes | None, ttl: float | None) -> None:
        """Set (or with ``value=None`` delete) ``key`` in ``table`` and bump its version.

        Args:
            ttl: seconds until the entry expires (reads as missing), or ``None`` to keep it.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """

    async def read(self, table: str) -> tuple[int, dict[str, bytes]]:
        """The table's version and its unexpired entries, read at one moment.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        ...

    async def version(self, table: str) -> int:
        """The table's version: it changes whenever an entry is put or deleted (0: never).

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        ...

    async def acquire(self, bucket: str, rate: float, capacity: float) -> float:
        """Take one token from token bucket ``bucket``, atomically for every client.

        The bucket starts full with ``capacity`` tokens and gains ``rate`` per second up to
        ``capacity`` (see :func:`aqueue.worker.ratelimit.refill`). An idle bucket may be forgotten.

        Returns:
            0 when a token was taken, else the seconds until the next one (nothing taken).

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        ...


# -- beat store -------------------------------------------------------------------------------
#
# Beat's store lives next to the results, chosen by the result backend's URL, and is namespaced
# by the app's name, so two apps sharing a Redis database keep separate schedules.
#
# A *claim* decides which beat sends a tick: a small record per (entry, tick) with a state and
# the claiming beat's token. ``claim`` creates it as pending for ``lease`` seconds if there is
# none (or the old one ran out) and answers OWN; if it is already this token's, it answers OWN
# again, so a call retried after a lost reply cannot turn a won claim into a lost one.
# Otherwise it answers DONE (another beat sent it) or PENDING (another beat is sending it).
# ``confirm``, after the message is published, marks it done for ``keep`` seconds and raises the
# entry's last tick. A beat that dies between the two leaves a pending claim that runs out after
# ``lease`` seconds; another beat then claims the tick and sends it (with the same task id).


class Claim(enum.Enum):
    """The answer to :meth:`BeatStore.claim`."""

    OWN = "own"  # this beat holds the claim: send the tick, then confirm
    DONE = "done"  # another beat sent the tick
    PENDING = "pending"  # another beat holds the claim and has not confirmed yet


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one read of the store returns.

    Attributes:
        entries: stored entries, name -> :meth:`Entry.encode` bytes.
        last: the last confirmed tick of each entry, in epoch milliseconds.
        unreadable: entries whose stored last tick could not be read (a row beat did not
            write, left out of ``last``): beat starts them from now
            (:mod:`aqueue.transports.beat_rows`).
    """

    entries: dict[str, bytes]
    last: dict[str, int]
    unreadable: frozenset[str] = frozenset()


class BeatStore(Protocol):
    """Beat's shared state. Ticks are epoch milliseconds; durations are seconds."""

    async def connect(self) -> None:
        """Open connections. Idempotent.

        Raises:
            BrokerConnectionError: the store cannot be reached.
        """

    async def close(self) -> None:
        """Release connections. Idempotent."""

    async def load(self) -> Snapshot:
        """Read every stored entry and every entry's last tick, in one round trip."""
        ...

    async def put(self, name: str, data: bytes) -> None:
        """Store (or replace) the entry ``name``."""

    async def remove(self, name: str) -> bool:
        """Delete the stored entry ``name`` and its last tick; ``False`` if it was not stored."""
        ...

    async def claim(self, name: str, tick: int, token: str, lease: float) -> Claim:
        """Claim ``tick`` of ``name`` for ``token``, pending for ``lease`` seconds (see above)."""
        ...

    async def confirm(self, name: str, tick: int, token: str, keep: float) -> None:
        """Mark the claim done for ``keep`` seconds; raise the entry's last tick to ``tick``."""


# -- a base for transports ----------------------------------------------------------------------

_ROLE_NAMES = {
    "broker": "broker",
    "results": "result backend",
    "control": "control transport (remote control, revocations, rate limits, events)",
    "beat": "beat store",
}


class BaseTransport:
    """What every :class:`Transport` does alike: make each role once, refuse the roles the server
    does not serve, and close the roles before the shared client.

    A subclass sets :attr:`roles` and overrides the ``_make_*`` methods of those roles, and
    :meth:`_close_client` when it holds a client.
    """

    roles: ClassVar[frozenset[str]] = frozenset()
    one_per_process: ClassVar[bool] = False
    #: Said after "X has no <role>: " when a role is missing; how to get it instead.
    missing_hint: ClassVar[str] = ""

    def __init__(
        self, url: str, *, shared: bool = True, connection: ConnectionOptions | None = None
    ) -> None:
        self.url = url
        self.shared = shared
        self.connection = connection or ConnectionOptions()
        self._made: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url.partition('://')[0]}://...)"

    def _role(self, role: str, key: str, make: Any) -> Any:
        made = self._made.get(key)
        if made is None:
            if role not in self.roles:
                raise ConfigurationError(
                    f"{self.url.partition('://')[0]}:// has no {_ROLE_NAMES[role]}"
                    f"{': ' + self.missing_hint if self.missing_hint else ''}"
                )
            made = self._made[key] = make()
        return made

    def broker(self, options: Mapping[str, Any]) -> Broker:
        """See :meth:`Transport.broker`."""
        broker: Broker = self._role("broker", "broker", lambda: self._make_broker(options))
        return broker

    def result_backend(self) -> ResultBackend:
        """See :meth:`Transport.result_backend`."""
        backend: ResultBackend = self._role("results", "results", self._make_results)
        return backend

    def control(self) -> ControlTransport:
        """See :meth:`Transport.control`."""
        control: ControlTransport = self._role("control", "control", self._make_control)
        return control

    def beat_store(self, namespace: str) -> BeatStore:
        """See :meth:`Transport.beat_store`."""
        store: BeatStore = self._role(
            "beat", f"beat:{namespace}", lambda: self._make_beat(namespace)
        )
        return store

    async def close(self) -> None:
        """Close every role made here, then the shared client. Idempotent."""
        made, self._made = list(self._made.values()), {}
        try:
            for role in made:
                await role.close()
        finally:
            await self._close_client()

    def _make_broker(self, options: Mapping[str, Any]) -> Broker:
        raise NotImplementedError

    def _make_results(self) -> ResultBackend:
        raise NotImplementedError

    def _make_control(self) -> ControlTransport:
        raise NotImplementedError

    def _make_beat(self, namespace: str) -> BeatStore:
        raise NotImplementedError

    async def _close_client(self) -> None:
        """Close the client the roles share (none by default)."""


class TransportClient(Protocol):
    """The client (pool, connection and its thread) that every role of one transport shares."""

    async def aclose(self) -> None:
        """Close the client. Idempotent."""
        ...


class RoleClasses(NamedTuple):
    """The class of each role of a :class:`ClientTransport`."""

    broker: Callable[[str, Mapping[str, Any], Any], Broker]
    results: Callable[[str, Any], ResultBackend]
    control: Callable[[str, Any], ControlTransport]
    beat: Callable[[str, str, Any], BeatStore]


class ClientTransport(BaseTransport):
    """A :class:`BaseTransport` whose roles all share one client, declared by class attributes.

    A subclass sets :attr:`role_classes` (each called with ``(url, ..., client)``: the broker
    with its options, the beat store with its namespace) and :meth:`_open_client`. With
    ``shared=False`` there is no shared client (``client`` is ``None``) and each role opens its
    own.
    """

    roles: ClassVar[frozenset[str]] = frozenset({"broker", "results", "control", "beat"})
    role_classes: ClassVar[RoleClasses]

    def __init__(
        self, url: str, *, shared: bool = True, connection: ConnectionOptions | None = None
    ) -> None:
        super().__init__(url, shared=shared, connection=connection)
        self.client: Any = self._open_client() if shared else None

    def _open_client(self) -> TransportClient:
        raise NotImplementedError

    def _make_broker(self, options: Mapping[str, Any]) -> Broker:
        return self.role_classes.broker(self.url, options, self.client)

    def _make_results(self) -> ResultBackend:
        return self.role_classes.results(self.url, self.client)

    def _make_control(self) -> ControlTransport:
        return self.role_classes.control(self.url, self.client)

    def _make_beat(self, namespace: str) -> BeatStore:
        return self.role_classes.beat(self.url, namespace, self.client)

    async def _close_client(self) -> None:
        if self.client is not None:
            await self.client.aclose()
