"""What the Redis broker and the Redis result backend share: the client, errors, URL redaction."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from aqueue.exceptions import BrokerConnectionError, BrokerError, ConfigurationError

__all__ = ["SharedClient", "as_bytes", "open_client", "redacted_url", "redis_errors"]

MAX_CONNECTIONS = 128  # per client; enough for a worker's 100 concurrent runners
POOL_TIMEOUT = 20.0  # seconds to wait for a free pooled connection before failing


def redacted_url(url: str) -> str:
    """``url`` without its password or query string, fit for error messages and logs."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        if parts.username:
            netloc = f"{parts.username}@{netloc}"
    except ValueError:
        return url.partition("://")[0] + "://…"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@contextmanager
def redis_errors(url: str, action: str) -> Iterator[None]:
    """Translate redis-py errors raised inside the block into aqueue's error tree.

    Raises:
        BrokerConnectionError: the server could not be reached or timed out (names ``url``
            without its password, and the cause).
        BrokerError: the server refused a command.
    """
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise BrokerConnectionError(
            f"Redis at {redacted_url(url)} unreachable during {action}: {type(exc).__name__}: {exc}"
        ) from exc
    except redis.exceptions.RedisError as exc:
        raise BrokerError(f"Redis at {redacted_url(url)} failed {action}: {exc}") from exc


class BoundedConnectionPool(aioredis.ConnectionPool):
    """redis-py's connection pool with at most ``limit`` connections out at once; a caller past
    the bound waits (up to ``timeout`` seconds) instead of failing.

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
        if self._slots.locked():
            try:
                async with asyncio.timeout(self._wait_timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise redis.exceptions.ConnectionError(
                    f"no free connection in the pool within {self._wait_timeout:g}s"
                ) from None
        else:
            await self._slots.acquire()
        try:
            connection = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except BaseException:
            self._slots.release()
            raise
        self._checked_out.add(id(connection))
        return connection

    async def release(self, connection: Any) -> None:
        try:
            await super().release(connection)
        finally:
            if id(connection) in self._checked_out:
                self._checked_out.discard(id(connection))
                self._slots.release()


def open_client(url: str) -> aioredis.Redis:
    """A redis-py asyncio client for ``url`` (not yet connected; bytes responses).

    A command failing with a connection error or timeout is retried up to 3 times on a fresh
    connection (about a second in all): ``from_url`` clients otherwise fail on the first stale
    pooled connection after a server restart or a killed connection. A retried command may
    have run already when only its reply was lost, which at-least-once delivery tolerates.

    Raises:
        ConfigurationError: ``url`` is not a valid ``redis://`` or ``rediss://`` URL.
    """
    retry = Retry(ExponentialWithJitterBackoff(base=0.1, cap=1.0), retries=3)
    try:
        # A bounded pool makes a burst of concurrent calls wait for a connection instead of
        # failing with MaxConnectionsError once the pool is full.
        pool = BoundedConnectionPool.from_url(url, retry=retry)
        return aioredis.Redis.from_pool(pool)
    except ValueError as exc:
        raise ConfigurationError(f"invalid Redis URL {redacted_url(url)!r}: {exc}") from exc


class SharedClient:
    """One connected redis-py client - one connection pool - shared by the roles of one
    transport (broker, results, control, beat store) of one app and event loop.

    A role made on its own (``RedisBroker(url, options)``) gets a private one and closes it with
    itself; roles made by :class:`aqueue.transports.redis.Transport` share the transport's, which
    the transport closes after them.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: aioredis.Redis | None = None
        self._connecting: asyncio.Lock | None = None

    @property
    def current(self) -> aioredis.Redis | None:
        """The client if connected, else ``None`` (no I/O)."""
        return self._client

    async def get(self) -> aioredis.Redis:
        """The connected client, opening it and checking PING on first use.

        Raises:
            BrokerConnectionError: the server cannot be reached.
            ConfigurationError: the URL is invalid.
        """
        if self._client is not None:
            return self._client
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._client is None:
                client = open_client(self.url)
                try:
                    with redis_errors(self.url, "connect"):
                        await client.ping()
                except BaseException:
                    await client.aclose()
                    raise
                self._client = client
            return self._client

    async def aclose(self) -> None:
        """Close the pool's connections. Idempotent; a later :meth:`get` reconnects."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def as_bytes(value: bytes | str) -> bytes:
    """A reply value as bytes (replies are bytes unless the URL asks to decode responses)."""
    return value.encode() if isinstance(value, str) else bytes(value)
