"""The ``rpc://`` result backend: a task's states travel back to the client that sent it, as
messages on the RabbitMQ broker, and are stored nowhere (Celery's ``rpc://``).

How a result comes back:

- A client (one app, process and event loop) declares a reply queue of its own,
  ``aqueue.reply.<16 hex digits>``, and consumes it before the first message naming it is
  published (:meth:`RpcBackend.reply_channel`); every message it sends names it
  (``Message.reply_to``).
- A worker's :meth:`RpcBackend.store` publishes the records of those messages there: one AMQP
  message per reply queue per batch (:func:`~aqueue.results.mailbox.pack`), transient, confirmed
  and *not* mandatory, so a reply queue that is gone simply drops it and the worker goes on.
  Each carries a per-message TTL of ``result_expires``.
- Records arriving on the reply queue go to the :class:`~aqueue.results.mailbox.Mailbox` of their
  task id, which the result handle holds; ``ready()`` and ``state()`` answer from the last record
  arrived. Nothing is read from the server, nothing is polled.

The reply queue is not exclusive and not auto-delete: it has ``x-expires`` of
:data:`REPLY_QUEUE_EXPIRES`, so RabbitMQ deletes it, with whatever it holds, that long after its
consumer went away. A connection that drops and comes back sooner (aio-pika's robust connection
declares and consumes it again) loses no result; a caller that died leaves nothing behind after
that; a clean :meth:`RpcBackend.close` deletes it at once. docs/amqp.md says why this queue and not
RabbitMQ's direct reply-to, with the figures.

What ``rpc://`` cannot do (each raises :class:`~aqueue.exceptions.ConfigurationError` naming the
fix: a Redis or SQLite result backend):

- another client, or a handle that is not the one returned by the send, reading the result
  (``app.AsyncResult(id)`` in another process, ``GroupResult.restore``);
- chords, which need a counter the broker does not keep (refused when the chord is sent);
- remote control, revocations, events and beat (refused by the app).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
import aio_pika.abc

from aqueue.exceptions import BrokerConnectionError, ConfigurationError
from aqueue.results.mailbox import Inbox, Mailbox, pack, unpack
from aqueue.transports.amqp.connection import amqp_errors, open_connection, redacted_url
from aqueue.transports.base import Records, ReplyTo
from aqueue.transports.fanout import SubscriberQueue
from aqueue.transports.rpc import COUNT_A_CHORD, rpc_cannot
from aqueue.transports.tls import TLSOptions

__all__ = ["REPLY_QUEUE_EXPIRES", "REPLY_QUEUE_PREFIX", "RpcBackend", "unseen"]

log = logging.getLogger(__name__)

#: Every reply queue's name starts with this; a worker publishes results to no other queue.
REPLY_QUEUE_PREFIX = "aqueue.reply."
#: Seconds a reply queue outlives its last consumer (its ``x-expires``): a client that comes
#: back sooner gets every result sent meanwhile; after that RabbitMQ deletes it and its messages.
REPLY_QUEUE_EXPIRES = 60.0
#: The content type of a batch of records (:func:`~aqueue.results.mailbox.pack`).
CONTENT_TYPE = "application/x-aqueue-records"
# Seconds close() gives the deletion of the reply queue before closing the connection anyway.
_DELETE_TIMEOUT = 2.0


def unseen(task_id: str) -> str:
    """Why a handle on ``task_id`` cannot be answered by this client's ``rpc://`` backend."""
    return (
        f"task {task_id}: the rpc:// result backend sends a task's states only to the result "
        f"handle its send returned, in the client (process and event loop) that sent it, and "
        f"stores nothing; this client holds no such handle (the task was sent by another "
        f"client or another event loop, or with ignore_result, or its handle was dropped). To "
        f"read results from anywhere (app.AsyncResult(id) in another process, "
        f"GroupResult.restore), set result_backend to a Redis or SQLite URL (e.g. "
        f"'redis://127.0.0.1:6379/1'); RabbitMQ can stay the broker"
    )


class RpcBackend:
    """A :class:`~aqueue.transports.base.ResultBackend` with reply channels
    (:class:`~aqueue.transports.base.ReplyChannels`) and no store: ``rpc://`` on RabbitMQ.

    Args:
        server_url: the AMQP broker's URL, ``amqp://user:password@host:port/vhost`` (or
            ``amqps://``); this backend opens a connection of its own to it.
        connect_timeout: seconds the first connection may take.
        reconnect_interval: seconds between reconnection attempts after the connection drops.
        operation_timeout: seconds to wait for a declaration or a publish confirm.
        tls: TLS from ``broker_use_ssl``, as the broker's; ``None``: as the URL says.

    Attributes:
        url: ``"rpc://"``.
        records_received: records that arrived on the reply queue (diagnostics).
        records_unclaimed: of those, records whose task no handle here awaits (dropped).
    """

    def __init__(
        self,
        server_url: str,
        *,
        connect_timeout: float = 10.0,
        reconnect_interval: float = 1.0,
        operation_timeout: float = 30.0,
        tls: TLSOptions | None = None,
    ) -> None:
        self.url = "rpc://"
        self._server = server_url
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._reconnect_interval = reconnect_interval
        self._timeout = operation_timeout
        self._connecting = asyncio.Lock()
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._publisher: aio_pika.abc.AbstractRobustChannel | None = None  # with confirms
        self._consumer: aio_pika.abc.AbstractRobustChannel | None = None  # the reply queue's
        self._queue: aio_pika.abc.AbstractRobustQueue | None = None
        self._consumer_tag = ""
        # The reply queue: declared on first use, by one task every caller awaits.
        self._reply_name = REPLY_QUEUE_PREFIX + secrets.token_hex(8)
        self._reply: asyncio.Future[str] | None = None
        self._inbox = Inbox()
        # A forgotten mailbox -> its size when forgotten (records up to there read as nothing).
        self._forgotten: weakref.WeakKeyDictionary[Mailbox, int] = weakref.WeakKeyDictionary()
        self._refused: set[str] = set()  # reply_to names not ours to publish to (warned once)
        self.records_received = 0
        self.records_unclaimed = 0

    def __repr__(self) -> str:
        return f"RpcBackend({redacted_url(self._server)!r})"

    # -- connecting ----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection and the publishing channel. Idempotent.

        Raises:
            BrokerConnectionError: RabbitMQ cannot be reached or refused the login.
            ConfigurationError: the URL is invalid.
        """
        await self._connect()

    async def _connect(self) -> aio_pika.abc.AbstractRobustConnection:
        if self._connection is not None:
            return self._connection
        async with self._connecting:
            if self._connection is None:
                self._connection = await open_connection(
                    self._server,
                    self._reconnect_interval,
                    self._connect_timeout,
                    setup=self._open_channel,
                    on_reconnect=self._on_reconnect,
                    tls=self._tls,
                )
            return self._connection

    async def _open_channel(self, connection: aio_pika.abc.AbstractRobustConnection) -> None:
        async with asyncio.timeout(self._timeout):
            self._publisher = await connection.channel(publisher_confirms=True)

    def _on_reconnect(self, *_: Any) -> None:
        log.warning(
            "%r reconnected; its reply queue %s kept the results sent meanwhile (for up to %gs)",
            self,
            self._reply_name,
            REPLY_QUEUE_EXPIRES,
        )

    def _connected(self, action: str) -> aio_pika.abc.AbstractRobustConnection:
        """The connection, or an error at once if it is down (a publish would wait for it)."""
        connection = self._connection
        if connection is None or not connection.connected.is_set():
            raise BrokerConnectionError(
                f"RabbitMQ at {redacted_url(self._server)} unreachable during {action}: the "
                f"connection is down; reconnecting every {self._reconnect_interval:g}s"
            )
        return connection

    async def close(self) -> None:
        """Delete the reply queue (results still on their way to this client are dropped) and
        close the connection; every mailbox is forgotten. Idempotent; errors are logged."""
        reply, self._reply = self._reply, None
        if reply is not None and not reply.done():
            reply.cancel()
            await asyncio.wait([reply])
        connection, self._connection = self._connection, None
        queue, self._queue = self._queue, None
        self._publisher = self._consumer = None
        self._inbox.clear()
        if connection is None:
            return
        try:
            if queue is not None and connection.connected.is_set():
                async with asyncio.timeout(_DELETE_TIMEOUT):
                    await queue.cancel(self._consumer_tag)  # then the broker has none to cancel
                    await queue.delete(if_unused=False, if_empty=False)
        except Exception as exc:  # the queue expires by itself: x-expires
            log.warning("%r: could not delete reply queue %s: %r", self, self._reply_name, exc)
        finally:
            with contextlib.suppress(Exception):
                await connection.close()

    # -- the reply queue (ReplyChannels) -------------------------------------------------------

    async def reply_channel(self) -> str:
        """This client's reply queue, declared and consumed before this returns.

        Raises:
            BrokerConnectionError: RabbitMQ cannot be reached, or did not answer in time.
        """
        reply = self._reply
        if reply is not None and reply.done():
            if not reply.cancelled() and reply.exception() is None:
                return reply.result()  # declared: what every send after the first one finds
            reply = None  # the last declaration failed: declare again
        if reply is None:
            reply = self._reply = asyncio.ensure_future(self._declare_reply())
        return await asyncio.shield(reply)

    async def _declare_reply(self) -> str:
        connection = await self._connect()
        with amqp_errors(self._server, f"declare reply queue {self._reply_name}"):
            async with asyncio.timeout(self._timeout):
                channel = await connection.channel(publisher_confirms=False)
                try:
                    queue = await channel.declare_queue(
                        self._reply_name,
                        durable=False,
                        arguments={"x-expires": int(REPLY_QUEUE_EXPIRES * 1000)},
                    )
                    tag = await queue.consume(self._on_reply, no_ack=True)
                except BaseException:
                    with contextlib.suppress(Exception):
                        await channel.close()
                    raise
        self._consumer, self._queue, self._consumer_tag = channel, queue, tag
        return self._reply_name

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        try:
            pairs = unpack(message.body)
        except ValueError as exc:
            log.warning("%r: dropped a malformed reply (%s)", self, exc)
            return
        for task_id, record in pairs:
            self.records_received += 1
            if not self._inbox.put(task_id, record):
                self.records_unclaimed += 1

    def expect(self, task_id: str) -> Mailbox:
        """The mailbox that records of ``task_id`` arriving on the reply queue go to."""
        return self._inbox.expect(task_id, self)

    # -- storing: publishing to the callers' reply queues --------------------------------------

    async def store(
        self, items: Records, expires: float | None, reply_to: ReplyTo | None = None
    ) -> None:
        """Publish each record to the reply queue of its task's sender, one message per queue;
        records with no reply queue are dropped (nobody could read them).

        Returns once RabbitMQ has confirmed them, whether or not the queue still exists: a
        caller that has gone costs the worker nothing.

        Args:
            items: task ids and their encoded records.
            expires: seconds each may wait in a reply queue (per-message TTL), or ``None``.
            reply_to: task id -> its sender's reply queue (``Message.reply_to``).

        Raises:
            BrokerConnectionError: RabbitMQ cannot be reached, or confirmed nothing within the
                operation timeout.
        """
        batches: dict[str, list[tuple[str, bytes]]] = {}
        for task_id, record in items:
            name = reply_to.get(task_id) if reply_to else None
            if name is None:
                continue
            if not name.startswith(REPLY_QUEUE_PREFIX):
                self._refuse(name)
                continue
            batches.setdefault(name, []).append((task_id, record))
        if not batches:
            return
        await self._connect()
        self._connected("publish results")
        assert self._publisher is not None
        exchange = self._publisher.default_exchange
        with amqp_errors(self._server, "publish results"):
            async with asyncio.timeout(self._timeout):
                await asyncio.gather(
                    *(
                        exchange.publish(_message(pairs, expires), name, mandatory=False)
                        for name, pairs in batches.items()
                    )
                )

    def _refuse(self, name: str) -> None:
        if name not in self._refused:
            self._refused.add(name)
            log.warning(
                "%r: not publishing results to %r: not an rpc:// reply queue (the sender uses "
                "another result backend than this worker?)",
                self,
                name,
            )

    # -- reading: only what arrived here -------------------------------------------------------

    async def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        """The last record that arrived for each id (``None``: none yet, or forgotten).

        Raises:
            ConfigurationError: no handle of this client awaits an id (see :func:`unseen`).
        """
        found: list[bytes | None] = []
        for task_id in task_ids:
            box = self._mailbox(task_id)
            fresh = box.size() > self._forgotten.get(box, 0)
            found.append(box.latest() if fresh else None)
        return found

    async def delete(self, task_ids: Sequence[str]) -> None:
        """Forget what arrived for ``task_ids`` (they read as PENDING); nothing is stored."""
        for task_id in task_ids:
            box = self._inbox.get(task_id)
            if box is not None:
                self._forgotten[box] = box.size()

    async def add_member(self, key: str, member: str, expires: float | None) -> int:
        """Refused: chords need a result store.

        Raises:
            ConfigurationError: always, naming the fix.
        """
        raise rpc_cannot(COUNT_A_CHORD)

    @asynccontextmanager
    async def watch(self, task_id: str) -> AsyncIterator[asyncio.Queue[bytes]]:
        """Records of ``task_id`` arriving from now on, read from its mailbox, until
        :meth:`close` ends it: the queue's ``get()`` then raises
        :class:`~aqueue.exceptions.BrokerConnectionError` once the records before are read.

        Raises:
            ConfigurationError: no handle of this client awaits ``task_id`` (see :func:`unseen`).
        """
        box = self._mailbox(task_id)
        updates = SubscriberQueue()

        async def follow(position: int) -> None:
            while True:
                try:
                    records = await box.read_from(position)
                except BrokerConnectionError as exc:  # the mailbox ended: the backend closed
                    updates.end(str(exc))
                    return
                position += len(records)
                for record in records:
                    updates.put_nowait(record)

        follower = asyncio.ensure_future(follow(box.size()))
        try:
            yield updates
        finally:
            follower.cancel()
            await asyncio.wait([follower])

    def _mailbox(self, task_id: str) -> Mailbox:
        box = self._inbox.get(task_id)
        if box is None:
            raise ConfigurationError(unseen(task_id))
        return box


def _message(pairs: list[tuple[str, bytes]], expires: float | None) -> aio_pika.Message:
    """One AMQP message carrying ``pairs``; ``expires`` seconds is its TTL (``None``: none)."""
    return aio_pika.Message(
        pack(pairs),
        content_type=CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
        expiration=expires,
    )
