"""What the Redis broker and the Redis result backend share: the client, errors, URL redaction."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from aqueue.exceptions import BrokerConnectionError, BrokerError, ConfigurationError
from aqueue.transports import CLUSTER_SCHEMES, SENTINEL_SCHEMES, plain_hint, scheme, tls_hint
from aqueue.transports.base import MIN_SOCKET_TIMEOUT, ConnectionOptions
from aqueue.transports.redis import keys
from aqueue.transports.tls import REDIS_KEYS, TLSOptions, client_certificate_hint, tls_refusal
from aqueue.transports.urls import redacted_url

__all__ = [
    "PLAIN_CHANNELS",
    "SHARDED_CHANNELS",
    "BoundedConnectionPool",
    "BoundedPool",
    "Channels",
    "SharedClient",
    "as_bytes",
    "check_socket_timeout",
    "drop_connection",
    "dropped_connection_retry",
    "open_client",
    "pubsub_messages",
    "redacted_url",
    "redis_errors",
    "shared_client",
    "tls_arguments",
]

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 128  # per client by default; enough for a worker's 100 concurrent runners
POOL_TIMEOUT = 20.0  # seconds to wait for a free pooled connection before failing


@contextmanager
def redis_errors(url: str, action: str) -> Iterator[None]:
    """Translate redis-py errors raised inside the block into aqueue's error tree.

    Raises:
        BrokerConnectionError: the server could not be reached or timed out, refused the login,
            or its TLS certificate was not trusted (names ``url`` without its password, and the
            cause); or it cannot serve now: ``BUSY`` (a script running past its
            ``busy-reply-threshold``), ``LOADING``, ``TRYAGAIN``, ``READONLY`` (the server
            became a replica: a failover), ``OOM`` (``maxmemory`` reached: no write until
            memory is freed), or Redis Cluster with no node reachable, a slot without a
            primary, ``CLUSTERDOWN``, ``MASTERDOWN``. A caller that tries again later (a worker
            storing a result) gets through once it answers.
        BrokerError: the server refused a command (an ACL user lacking it: ``NOPERM``).
    """
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise BrokerConnectionError(_connection_failure(url, action, exc)) from exc
    except _CLUSTER_UNAVAILABLE as exc:
        raise BrokerConnectionError(
            f"Redis Cluster at {redacted_url(url)} unavailable during {action}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    except redis.exceptions.RedisClusterException as exc:
        cause = exc.__cause__
        if isinstance(cause, redis.exceptions.ConnectionError):  # a refused login, TLS
            raise BrokerConnectionError(_connection_failure(url, action, cause)) from exc
        raise BrokerError(f"Redis Cluster at {redacted_url(url)} failed {action}: {exc}") from exc
    except redis.exceptions.RedisError as exc:
        if _unavailable_now(exc):
            raise BrokerConnectionError(
                f"Redis at {redacted_url(url)} cannot serve {action} now{_why_not_now(exc)}: {exc}"
            ) from exc
        if _not_permitted(exc):
            raise BrokerError(
                f"Redis at {redacted_url(url)} refused {action}: the ACL user lacks a permission "
                f"aqueue needs (docs/security.md has the least ACL that works): {exc}"
            ) from exc
        raise BrokerError(f"Redis at {redacted_url(url)} failed {action}: {exc}") from exc


def _unavailable_now(error: Exception) -> bool:
    """True for a reply that says the server cannot serve now but will: ``BUSY`` (a script
    running past its ``busy-reply-threshold``; no class of its own in redis-py), ``TRYAGAIN``
    (a multi-key command during a resharding), ``READONLY`` (the URL's server became a replica:
    a failover done by DNS or a virtual IP), ``OOM`` (``maxmemory`` reached under
    ``noeviction``). A connection failure to the caller, which tries again later.

    ``READONLY`` and ``OOM`` refuse a write before it changes anything, and say nothing of the
    record written: refusing it for good would dead-letter every good result until the
    server is a primary again, or has memory."""
    if isinstance(error, _NOT_NOW):
        return True
    return isinstance(error, redis.exceptions.ResponseError) and str(error).startswith("BUSY ")


_NOT_NOW = (
    redis.exceptions.TryAgainError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
)


def _why_not_now(error: Exception) -> str:
    """What an operator should know of a :func:`_unavailable_now` reply that its own text
    does not say: a parenthesis for the error message (``""``: nothing to add)."""
    if isinstance(error, redis.exceptions.ReadOnlyError):
        return " (it is a read-only replica: a failover, or the URL names a replica)"
    if isinstance(error, redis.exceptions.OutOfMemoryError):
        return " (out of memory: writes fail until memory is freed or maxmemory raised)"
    return ""


#: Redis Cluster's errors that say it cannot serve now (no node reachable, a slot without a
#: primary, the cluster down): a connection failure to the caller, which tries again later.
_CLUSTER_UNAVAILABLE = (
    redis.exceptions.ClusterDownError,
    redis.exceptions.SlotNotCoveredError,
    redis.exceptions.RedisClusterUnreachableError,
)


def _not_permitted(error: Exception) -> bool:
    """True for an ACL refusal (``NOPERM``): of a command, a key or a channel, or of a command
    inside a Lua script (which Redis reports without the ``NOPERM`` code)."""
    if isinstance(error, redis.exceptions.NoPermissionError):
        return True
    return "The user executing the script can't run this command" in str(error)


def _connection_failure(url: str, action: str, exc: Exception) -> str:
    """Why a connection to ``url`` failed during ``action``: a refused login, an untrusted TLS
    certificate, or unreachable (names the URL without its password)."""
    where = f"Redis at {redacted_url(url)}"
    if isinstance(exc, redis.exceptions.AuthenticationError):
        return (
            f"{where} refused the login during {action} (check the user name and password in "
            f"the URL, redis://user:password@host:port/db): {exc}"
        )
    refusal = tls_refusal(exc, REDIS_KEYS)
    if refusal is not None:
        return f"{where} failed TLS during {action}: {refusal}"
    return f"{where} unreachable during {action}: {type(exc).__name__}: {exc}"


async def take_slot(slots: asyncio.Semaphore, timeout: float) -> None:
    """Acquire one of ``slots``, waiting ``timeout`` seconds at most when none is free (an
    uncontended semaphore costs no timer).

    Raises:
        redis.exceptions.ConnectionError: none came free in time (as redis-py's own pools
            say a full pool; callers translate it with :func:`redis_errors`).
    """
    if not slots.locked():
        await slots.acquire()
        return
    try:
        async with asyncio.timeout(timeout):
            await slots.acquire()
    except TimeoutError:
        raise redis.exceptions.ConnectionError(
            f"no free connection in the pool within {timeout:g}s"
        ) from None


class BoundedPool:
    """A redis-py connection pool with at most ``limit`` connections out at once; a caller past
    the bound waits (up to ``timeout`` seconds) instead of failing. Mixed into a redis-py pool
    class (:class:`BoundedConnectionPool`; the Sentinel pool of
    :mod:`aqueue.transports.redis.sentinel`).

    redis-py's own BlockingConnectionPool does the same, but costs about 0.25 ms more per
    command on our benchmark machine (a lock, a condition and a timer around every checkout);
    an uncontended semaphore costs nothing. Used by every Redis client aqueue opens.
    """

    def __init__(
        self, *args: Any, limit: int = MAX_CONNECTIONS, timeout: float = POOL_TIMEOUT, **kwargs: Any
    ) -> None:
        # redis-py's own cap (100 by default) must not fail before the semaphore makes us wait.
        kwargs["max_connections"] = limit
        super().__init__(*args, **kwargs)
        self._slots = asyncio.Semaphore(limit)
        self._wait_timeout = timeout
        self._checked_out: set[int] = set()

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        await take_slot(self._slots, self._wait_timeout)
        try:
            connection = await super().get_connection(*args, **kwargs)  # type: ignore[misc]
        except BaseException:
            self._slots.release()
            raise
        self._checked_out.add(id(connection))
        return connection

    async def release(self, connection: Any) -> None:
        try:
            await super().release(connection)  # type: ignore[misc]
        finally:
            if id(connection) in self._checked_out:
                self._checked_out.discard(id(connection))
                self._slots.release()


class BoundedConnectionPool(BoundedPool, aioredis.ConnectionPool):
    """redis-py's connection pool, bounded (see :class:`BoundedPool`)."""


def open_client(url: str, connection: ConnectionOptions | None = None) -> aioredis.Redis:
    """A redis-py asyncio client for ``url`` (not yet connected; bytes responses).

    Timeouts and the pool size come from ``connection``; the URL's own query parameters
    (``?socket_timeout=2&socket_connect_timeout=2``) take precedence, as in redis-py.

    redis-py retries a command once, at once, on a fresh connection when the pooled one it
    used turns out dropped (a server restart, a killed connection) - and, with
    ``retry_on_timeout``, when it timed out. It does not retry opening a connection: the
    caller's own policy decides that (one retry policy, not two stacked). A retried command
    may have run already when only its reply was lost, which at-least-once delivery tolerates.

    Raises:
        ConfigurationError: ``url`` is not a valid ``redis://`` or ``rediss://`` URL, or its
            socket timeout is shorter than :data:`~aqueue.transports.base.MIN_SOCKET_TIMEOUT`.
    """
    options = connection or ConnectionOptions()
    try:
        # A bounded pool makes a burst of concurrent calls wait for a connection instead of
        # failing with MaxConnectionsError once the pool is full.
        pool = BoundedConnectionPool.from_url(
            url,
            retry=dropped_connection_retry(options.retry_on_timeout),
            limit=options.max_connections or MAX_CONNECTIONS,
            socket_timeout=options.socket_timeout,
            socket_connect_timeout=options.connect_timeout,
            **tls_arguments(options.tls),
        )
    except ValueError as exc:
        raise ConfigurationError(f"invalid Redis URL {redacted_url(url)!r}: {exc}") from exc
    check_socket_timeout(url, pool.connection_kwargs.get("socket_timeout"))
    return aioredis.Redis.from_pool(pool)


def check_socket_timeout(url: str, read_timeout: float | None) -> None:
    """Check a Redis connection's ``socket_timeout`` (seconds; ``None``: no limit).

    Raises:
        ConfigurationError: shorter than :data:`~aqueue.transports.base.MIN_SOCKET_TIMEOUT`,
            which a worker's blocking fetch may wait for its reply.
    """
    if read_timeout is not None and read_timeout < MIN_SOCKET_TIMEOUT:
        raise ConfigurationError(
            f"Redis at {redacted_url(url)}: socket_timeout {read_timeout:g}s is shorter than a "
            f"worker's blocking fetch may wait for its reply; use at least "
            f"{MIN_SOCKET_TIMEOUT:g}s, or None"
        )


def tls_arguments(
    tls: TLSOptions | None, connection_class: type[Any] = aioredis.SSLConnection
) -> dict[str, Any]:
    """redis-py's connection arguments for ``tls`` (none for ``None``): TLS connections (of
    ``connection_class``), even for a ``redis://`` URL, as Celery makes them for
    ``broker_use_ssl``; the URL's own ``ssl_*`` query parameters take precedence.

    Raises:
        ConfigurationError: a certificate or key file cannot be read (checked now, not at the
            first connection).
    """
    if tls is None:
        return {}
    tls.context()
    return {
        "connection_class": connection_class,
        "ssl_ca_certs": tls.ca_certs,
        "ssl_certfile": tls.certfile,
        "ssl_keyfile": tls.keyfile,
        "ssl_cert_reqs": tls.cert_reqs,
        "ssl_check_hostname": tls.check_hostname,
    }


def dropped_connection_retry(retry_on_timeout: bool) -> Retry:
    """redis-py's retry: once, at once, for a command on a connection that turned out dropped,
    or whose server became a replica (``READONLY``: the command did not run). redis-py drops
    the connection before the retry: a new one resolves the host again, which after a
    failover done by DNS or a virtual IP reaches the new primary (a pooled one would keep
    reaching the replica)."""
    errors: tuple[type[Exception], ...] = (
        redis.exceptions.ConnectionError,
        redis.exceptions.ReadOnlyError,
    )
    if retry_on_timeout:
        errors += (redis.exceptions.TimeoutError,)
    return Retry(NoBackoff(), retries=1, supported_errors=errors, is_retryable=_not_connecting)


def _not_connecting(error: Exception) -> bool:
    """False for a failure to open a connection (refused, unknown host, connect timeout)."""
    if isinstance(error.__cause__, ConnectionRefusedError | socket.gaierror):
        return False
    return not str(error).startswith("Timeout connecting")


def connection_kwargs(client: aioredis.Redis) -> dict[str, Any]:
    """The arguments ``client`` opens its connections with (a cluster client's are its
    own, the same for every node)."""
    source: Any = getattr(client, "connection_pool", None) or client
    found: dict[str, Any] = source.connection_kwargs
    return found


def _connect_bound(client: aioredis.Redis) -> float | None:
    """Seconds opening ``client``'s first connection may take in all (TCP, TLS, handshake,
    PING): its ``socket_connect_timeout`` (``None``: no bound)."""
    bound = connection_kwargs(client).get("socket_connect_timeout")
    return None if bound is None else float(bound)


@dataclass(frozen=True, slots=True)
class Channels:
    """The pub/sub commands a client uses, and the reply types it reads back: plain
    (``PUBLISH``, ``SUBSCRIBE``: every node of a server gets every message) or sharded (Redis
    Cluster's ``SPUBLISH``, ``SSUBSCRIBE``: a channel lives on its slot's primary)."""

    publish: str
    subscribe: str
    unsubscribe: str
    message: str  # the type of a message received
    subscribed: str  # the type of a subscription's confirmation


PLAIN_CHANNELS = Channels("publish", "subscribe", "unsubscribe", "message", "subscribe")
SHARDED_CHANNELS = Channels("spublish", "ssubscribe", "sunsubscribe", "smessage", "ssubscribe")


def shared_client(url: str, connection: ConnectionOptions | None = None) -> SharedClient:
    """A new :class:`SharedClient` for ``url`` (nothing connected yet): for a Sentinel URL
    (``redis+sentinel://``, ``rediss+sentinel://``, ``sentinel://``) a
    :class:`~aqueue.transports.redis.sentinel.SentinelClient`, for a Redis Cluster URL
    (``redis+cluster://``, ``rediss+cluster://``) a
    :class:`~aqueue.transports.redis.cluster.ClusterClient`.

    Raises:
        ConfigurationError: a Sentinel or Cluster URL or its options are invalid.
    """
    if scheme(url) in SENTINEL_SCHEMES:
        from aqueue.transports.redis.sentinel import SentinelClient  # imports this module

        return SentinelClient(url, connection)
    if scheme(url) in CLUSTER_SCHEMES:
        from aqueue.transports.redis.cluster import ClusterClient  # imports this module

        return ClusterClient(url, connection)
    return SharedClient(url, connection)


class SharedClient:
    """One connected redis-py client - one connection pool - shared by the roles of one
    transport (broker, results, control, beat store) of one app and event loop.

    A role made on its own (``RedisBroker(url, options)``) gets a private one and closes it with
    itself; roles made by :class:`aqueue.transports.redis.Transport` share the transport's, which
    the transport closes after them.

    Attributes:
        layout: how the roles name their keys (:data:`keys.SINGLE
            <aqueue.transports.redis.keys.SINGLE>`: one server).
        channels: the pub/sub commands the roles use (:data:`PLAIN_CHANNELS`).
    """

    layout: keys.Layout = keys.SINGLE
    channels: Channels = PLAIN_CHANNELS

    def __init__(self, url: str, connection: ConnectionOptions | None = None) -> None:
        self.url = url
        self.connection = connection or ConnectionOptions()
        self._client: aioredis.Redis | None = None
        self._connecting: asyncio.Lock | None = None

    def _open(self) -> aioredis.Redis:
        """A new client (not yet connected) for the URL and connection options.

        Raises:
            ConfigurationError: the URL or an option is invalid.
        """
        return open_client(self.url, self.connection)

    def _opened(self, client: aioredis.Redis) -> None:
        """Called once the new ``client`` answered its first PING, before anyone uses it."""

    async def _abandon(self, client: aioredis.Redis) -> None:
        """Close a new ``client`` whose first PING failed."""
        await client.aclose()

    def primary(self) -> tuple[str, int] | None:
        """``(host, port)`` of the server new connections go to when that can change (a
        Sentinel client's primary, once known); ``None`` here (no I/O)."""
        return None

    async def replicas_in_sync(self, primary: tuple[str, int] | None) -> int | None:
        """How many replicas ``primary`` (:meth:`primary` before a write) has that could take
        its place, when that is known for sure; ``None`` when it is not (then a write that
        must reach replicas counts only the replicas ``WAIT`` reports). Here: ``None``.

        Raises:
            redis.exceptions.RedisError: the question failed.
        """
        return None

    def messages(self, pubsub: PubSub, owner: object) -> AsyncIterator[dict[str, Any]]:
        """Every message ``pubsub`` receives (see :func:`pubsub_messages`)."""
        return pubsub_messages(pubsub, owner)

    async def next_message(self, pubsub: PubSub, timeout: float) -> dict[str, Any] | None:
        """The next message or confirmation ``pubsub`` receives within ``timeout`` seconds,
        or ``None``.

        Raises:
            redis.exceptions.ConnectionError: the connection was lost.
        """
        message: dict[str, Any] | None = await pubsub.get_message(timeout=timeout)
        return message

    @property
    def current(self) -> aioredis.Redis | None:
        """The client if connected, else ``None`` (no I/O)."""
        return self._client

    async def get(self) -> aioredis.Redis:
        """The connected client, opening it and checking PING on first use; opening takes at
        most the connect timeout in all.

        Raises:
            BrokerConnectionError: the server cannot be reached, or did not answer within the
                connect timeout (names the URL without its password).
            ConfigurationError: the URL is invalid.
        """
        if self._client is not None:
            return self._client
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._client is None:
                client = self._open()
                try:
                    await _first_ping(self.url, client, self.connection.tls is not None)
                except BaseException:
                    await self._abandon(client)
                    raise
                self._opened(client)
                self._client = client
            return self._client

    async def aclose(self) -> None:
        """Close the pool's connections. Idempotent; a later :meth:`get` reconnects."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


async def _first_ping(url: str, client: aioredis.Redis, tls: bool) -> None:
    """PING through a new client, within its connect bound.

    Args:
        tls: TLS comes from the connection options (``*_use_ssl``), whatever the URL's scheme.

    Raises:
        BrokerConnectionError: no answer in time, the server cannot be reached, cut the
            connection (a plain one to a TLS port: the message says so), refused the login or
            presented a certificate that is not trusted.
    """
    bound = _connect_bound(client)
    try:
        async with asyncio.timeout(bound):
            with redis_errors(url, "connect"):
                await client.ping()
    except TimeoutError as exc:
        raise BrokerConnectionError(_no_answer(url, bound or 0.0, "connect", tls)) from exc
    except BrokerConnectionError as exc:
        hint = _connect_hint(url, exc.__cause__, tls)
        if not hint:
            raise
        raise BrokerConnectionError(f"{exc}{hint}") from exc.__cause__


def _connect_hint(url: str, error: BaseException | None, tls: bool) -> str:
    """What to check after a failed first connection: for a TLS one that timed out, whether
    the server speaks TLS; for a plain one the server cut, whether it does; for a TLS one the
    server cut, whether it wants a client certificate."""
    if isinstance(error, redis.exceptions.TimeoutError):
        return tls_hint(url, True if tls else None)
    if not _cut(error):
        return ""
    if tls or scheme(url).startswith("rediss"):  # rediss://, rediss+sentinel://
        return client_certificate_hint(REDIS_KEYS)
    return plain_hint(url)


def _cut(error: BaseException | None) -> bool:
    """True for a connection the server accepted, then closed or reset while it opened (not
    refused, not a timeout, not a refused login)."""
    if not isinstance(error, redis.exceptions.ConnectionError) or isinstance(
        error, redis.exceptions.AuthenticationError
    ):
        return False
    return _not_connecting(error) and tls_refusal(error, REDIS_KEYS) is None


def _no_answer(url: str, seconds: float, action: str, tls: bool = False) -> str:
    """The message for a server that did not answer ``action`` within ``seconds`` (names the
    URL without its password; for a TLS connection, the likely cause)."""
    hint = tls_hint(url, True if tls else None)
    return f"Redis at {redacted_url(url)} did not answer {action} within {seconds:g}s{hint}"


def as_bytes(value: bytes | str) -> bytes:
    """A reply value as bytes (replies are bytes unless the URL asks to decode responses)."""
    return value.encode() if isinstance(value, str) else bytes(value)


#: First and longest pause between pub/sub reconnects (seconds).
PUBSUB_BACKOFF = (0.1, 2.0)
#: Seconds of silence after which a pub/sub connection is sent a PING, and then the seconds it
#: has to answer before it is taken for dead (half-open: the peer is gone but nothing closed
#: it) and reconnected. The connection's ``socket_timeout`` (``redis_socket_timeout``) if set.
PUBSUB_LIVENESS = 15.0


async def pubsub_messages(pubsub: PubSub, owner: object) -> AsyncIterator[dict[str, Any]]:
    """Every message ``pubsub`` receives, until the caller stops iterating (or is cancelled).

    redis-py reconnects and re-subscribes by itself when the connection drops; while the server
    stays unreachable this retries with a pause doubling from 0.1 s to 2 s, logging each retry
    against ``owner`` (its repr names the role and the redacted URL). A connection that stays
    silent is PINGed, and one that does not answer is reconnected (see
    :data:`PUBSUB_LIVENESS`): a half-open connection would otherwise be read from for ever.
    A command the server refuses (a re-subscription after an ACL change took a channel away:
    ``NOPERM``) is logged, and the connection is dropped and subscribed again with the same
    pause, until the server accepts it: the reader never ends by itself.
    """
    pause = PUBSUB_BACKOFF[0]
    quiet = pubsub.connection_pool.connection_kwargs.get("socket_timeout") or PUBSUB_LIVENESS
    pinged = False
    while True:
        try:
            message = await pubsub.get_message(timeout=quiet)
            if message is None and pinged:
                log.warning(
                    "%r: pub/sub connection did not answer PING within %gs, reconnecting",
                    owner,
                    quiet,
                )
                pinged = False
                await drop_connection(pubsub)
                continue
            if message is None:
                pinged = True
                await pubsub.ping()
                continue
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            log.warning("%r: pub/sub connection lost, retrying in %gs", owner, pause)
        except redis.exceptions.RedisError as exc:
            # A refused command, such as a re-subscription after an ACL change took the
            # channel away (NOPERM): the connection stays up without the subscription, so it is
            # dropped, and the next read reconnects and subscribes again (refused until the
            # server allows it). Ending here would leave every consumer waiting for ever.
            log.warning(
                "%r: pub/sub failed (%s: %s), subscribing again in %gs",
                owner,
                type(exc).__name__,
                exc,
                pause,
            )
            await drop_connection(pubsub)
        else:
            pause = PUBSUB_BACKOFF[0]
            pinged = False
            yield message
            continue
        pinged = False
        await asyncio.sleep(pause)
        pause = min(pause * 2, PUBSUB_BACKOFF[1])


async def drop_connection(pubsub: PubSub) -> None:
    """Disconnect ``pubsub``'s connection, if it has one: its next read reconnects and
    subscribes again to every channel it had."""
    connection: Any = pubsub.connection  # redis-py types it as always None
    if connection is not None:
        await connection.disconnect()
