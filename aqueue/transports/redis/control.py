"""The Redis control transport: pub/sub channels, hash tables, a Lua token bucket.

Relies on these Redis semantics (key names in :mod:`aqueue.transports.redis.keys`):

- **Channels are pub/sub.** ``PUBLISH`` reaches the connections subscribed at that moment; the
  ``SUBSCRIBE`` confirmation arrives after the server registered the subscription, so entering
  :meth:`RedisControl.subscribe` waits for it (subscribe first, then send the command: no reply
  can be missed). Each subscription has its own connection: there are few (a worker's control
  channel, one per pending command, ``aqueue events``). A dropped connection is reconnected
  and subscribed again; what was published in between is lost (pub/sub keeps nothing), which
  control tolerates (a command's sender stops waiting for replies at its timeout).
- **Tables are hashes** (``aqueue:table:<name>``), each value prefixed with its expiry in epoch
  milliseconds (``0``: none) by the server's clock (``TIME``, asked before a put with a ttl and
  before a read), as the token buckets are timed: a host whose clock runs ahead or behind can
  neither expire an entry early for everyone nor keep it too long. A read drops expired
  fields. ``MULTI`` makes a change and its version bump (``INCR aqueue:table-version:<name>``)
  atomic, and a read of the version and the hash one snapshot.
- **On Redis Cluster** channels are sharded (``SPUBLISH``/``SSUBSCRIBE``) and a table's hash
  and version share a hash tag (``aqueue:table:{<name>}``, ``aqueue:table-version:{<name>}``).
- **Token buckets** are one Lua script each call, timed by the server's ``TIME``: every worker on
  every host shares one clock, so host clock skew cannot raise the rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.client import PubSub
from redis.commands.core import AsyncScript

from aqueue.exceptions import BrokerConnectionError
from aqueue.transports.fanout import SubscriberQueue
from aqueue.transports.redis import keys, lua
from aqueue.transports.redis.client import (
    SharedClient,
    as_bytes,
    redacted_url,
    redis_errors,
)
from aqueue.transports.redis.role import RedisRole

__all__ = ["RedisControl"]

log = logging.getLogger("aqueue.transports.redis.control")

_SUBSCRIBE_TIMEOUT = 10.0  # seconds to wait for a SUBSCRIBE confirmation
# The longest idle expiry of a bucket (ms, about 285,000 years): PEXPIRE refuses what would
# pass the largest time it can hold, which a very slow rate (1e-17/s) would ask for.
_MAX_IDLE_MS = 2**53


async def _server_ms(client: aioredis.Redis) -> int:
    """The server's clock (``TIME``) in epoch milliseconds.

    Raises:
        redis.exceptions.RedisError: the command failed.
    """
    seconds, microseconds = await client.time()
    return int(seconds) * 1000 + int(microseconds) // 1000


def _expired(stored: bytes, now_ms: int) -> bool:
    """Whether a stored table value (``<expiry ms>:<data>``) expired by ``now_ms``."""
    until = stored.partition(b":")[0]
    return until.isdigit() and 0 < int(until) <= now_ms


class RedisControl(RedisRole):
    """Control transport on Redis (``redis://``, ``rediss://``).

    Args:
        url: ``redis://[[user]:password@]host:port/db`` or ``rediss://...``.
    """

    def __init__(self, url: str, client: SharedClient | None = None) -> None:
        super().__init__(url, client)
        self._acquire: AsyncScript | None = None
        self._readers: set[asyncio.Task[None]] = set()
        self._closes = 0  # close() calls: a subscribe confirmed after one of them fails

    async def close(self) -> None:
        """Stop every subscription's reader and close the client; a subscribe still waiting
        for its confirmation fails, and the consumers of open subscriptions are told (see
        :meth:`subscribe`). Idempotent."""
        self._closes += 1
        readers = list(self._readers)
        for reader in readers:
            reader.cancel()
        if readers:
            await asyncio.wait(readers)
        self._acquire = None
        await self._release_client()

    def _connected(self, client: aioredis.Redis) -> None:
        self._acquire = lua.register(client, "acquire")

    # -- channels ----------------------------------------------------------------------------

    async def publish(self, channel: str, messages: Sequence[bytes]) -> None:
        """PUBLISH each message on the channel (one pipeline).

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        if not messages:
            return
        client = await self._connection()
        name = keys.control_channel(channel)
        with redis_errors(self._url, "publish"):
            async with client.pipeline(transaction=False) as pipe:
                for data in messages:
                    getattr(pipe, self._channels.publish)(name, data)
                await pipe.execute()

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[asyncio.Queue[bytes]]:
        """SUBSCRIBE on a connection of its own; yield once the server confirmed it. After
        :meth:`close`, the queue's ``get()`` raises :class:`BrokerConnectionError` once the
        messages read before are taken (a consumer waiting on it is woken).

        Raises:
            BrokerConnectionError: the server cannot be reached or did not confirm in 10 s,
                or :meth:`close` was called meanwhile.
        """
        closes = self._closes
        client = await self._connection()
        name = keys.control_channel(channel)
        pubsub = client.pubsub()
        queue = SubscriberQueue()
        reader: asyncio.Task[None] | None = None
        try:
            with redis_errors(self._url, "subscribe"):
                await getattr(pubsub, self._channels.subscribe)(name)
                await self._confirmed(pubsub, name)
            if self._closes != closes:
                # redis-py reconnected the connection close() cut, and subscribed it again:
                # nobody would end a reader started now.
                raise BrokerConnectionError(f"{self!r} was closed while subscribing to {name}")
            reader = asyncio.create_task(self._read(pubsub, queue, name))
            self._readers.add(reader)
            reader.add_done_callback(self._readers.discard)
            yield queue
        finally:
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
            with contextlib.suppress(redis.exceptions.RedisError, OSError):
                # Untyped before redis-py 8.2.
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]

    async def _confirmed(self, pubsub: PubSub, name: str) -> None:
        deadline = time.monotonic() + _SUBSCRIBE_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerConnectionError(
                    f"Redis at {redacted_url(self._url)} did not confirm SUBSCRIBE {name} "
                    f"within {_SUBSCRIBE_TIMEOUT:g}s"
                )
            message = await self._shared.next_message(pubsub, remaining)
            if message is not None and message["type"] == self._channels.subscribed:
                return

    async def _read(self, pubsub: PubSub, queue: SubscriberQueue, name: str) -> None:
        """Put every message on ``queue`` until cancelled, then end it; redis-py re-subscribes
        after a reconnect, and this retries with a growing pause while the server is away."""
        why = "was closed"
        try:
            async for message in self._shared.messages(pubsub, self):
                if message["type"] == self._channels.message:
                    queue.put_nowait(as_bytes(message["data"]))
        except Exception as exc:
            why = f"stopped reading ({exc!r})"
            raise
        finally:
            # Cancelled by close() (or by leaving the subscription: then nobody reads on), or
            # failed: nothing more comes, and a consumer waiting on the queue must hear it.
            queue.end(f"{self!r} {why}: the subscription to {name} ended")

    # -- tables ------------------------------------------------------------------------------

    async def put(self, table: str, key: str, value: bytes | None, ttl: float | None) -> None:
        """HSET (or HDEL) the field and INCR the version, in one MULTI; the expiry is the
        server's time (one ``TIME`` first) plus ``ttl`` seconds.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        client = await self._connection()
        with redis_errors(self._url, "put"):
            until = (
                0 if value is None or ttl is None else await _server_ms(client) + int(ttl * 1000)
            )
            async with client.pipeline(transaction=True) as pipe:
                if value is None:
                    pipe.hdel(self._keys.control_table(table), key)
                else:
                    pipe.hset(self._keys.control_table(table), key, b"%d:%s" % (until, value))
                pipe.incr(self._keys.control_version(table))
                await pipe.execute()

    async def read(self, table: str) -> tuple[int, dict[str, bytes]]:
        """The server's time, then GET the version and HGETALL the hash in one MULTI; HDEL
        expired fields found. A field that is not UTF-8 (another program's) is skipped with a
        warning.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        client = await self._connection()
        with redis_errors(self._url, "read"):
            now_ms = await _server_ms(client)
            async with client.pipeline(transaction=True) as pipe:
                pipe.get(self._keys.control_version(table))
                pipe.hgetall(self._keys.control_table(table))
                version, raw = await pipe.execute()
            entries: dict[str, bytes] = {}
            expired: list[bytes] = []
            for field, stored in (raw or {}).items():
                if _expired(as_bytes(stored), now_ms):
                    expired.append(as_bytes(field))
                    continue
                try:
                    entries[as_bytes(field).decode()] = as_bytes(stored).partition(b":")[2]
                except UnicodeDecodeError:
                    log.warning("%r: skipped field %r of table %s: not UTF-8", self, field, table)
            if expired:
                await self._drop_expired(client, table, expired, now_ms)
        return int(version or 0), entries

    async def _drop_expired(
        self, client: aioredis.Redis, table: str, fields: list[bytes], now_ms: int
    ) -> None:
        """HDEL the ``fields`` of ``table`` that are still expired, under WATCH: one put again
        since the read (a heartbeat after a late one) is kept. A change meanwhile leaves them
        for the next read. No version bump: an expired entry reads as missing everywhere.

        Raises:
            redis.exceptions.RedisError: a command failed.
        """
        key = self._keys.control_table(table)
        async with client.pipeline(transaction=True) as pipe:
            await pipe.watch(key)
            values = await pipe.hmget(key, fields)
            gone = [
                f
                for f, v in zip(fields, values, strict=True)
                if v and _expired(as_bytes(v), now_ms)
            ]
            if gone:
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.hdel(key, *gone)
                with contextlib.suppress(redis.exceptions.WatchError):
                    await pipe.execute()

    async def version(self, table: str) -> int:
        """GET the table's version.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        client = await self._connection()
        with redis_errors(self._url, "version"):
            value = await client.get(self._keys.control_version(table))
        return int(value or 0)

    # -- token buckets -----------------------------------------------------------------------

    async def acquire(self, bucket: str, rate: float, capacity: float) -> float:
        """Run the bucket script once (EVALSHA); an idle bucket expires once it would be full
        (within :data:`_MAX_IDLE_MS`).

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        await self._connection()
        assert self._acquire is not None
        idle_ms = int(min(_MAX_IDLE_MS, max(1000.0, capacity / rate * 1000 + 1000)))
        with redis_errors(self._url, "acquire"):
            wait = await self._acquire(
                keys=[keys.rate_bucket(bucket)], args=[repr(rate), repr(capacity), idle_ms]
            )
        return float(as_bytes(wait))
