"""The Redis control transport: pub/sub channels, hash tables, a Lua token bucket.

Relies on these Redis semantics (key names in :mod:`aqueue.transports.redis.keys`):

- **Channels are pub/sub.** ``PUBLISH`` reaches the connections subscribed at that moment; the
  ``SUBSCRIBE`` confirmation arrives after the server registered the subscription, so entering
  :meth:`RedisControl.subscribe` waits for it (subscribe first, then send the command: no reply
  can be missed). Each subscription has its own connection: there are few (a worker's control
  channel, one per pending command, ``aqueue events``).
- **Tables are hashes** (``aqueue:table:<name>``), each value prefixed with its expiry in epoch
  milliseconds (``0``: none); a read drops expired fields. ``MULTI`` makes a change and its
  version bump (``INCR aqueue:table-version:<name>``) atomic, and a read of the version and the
  hash one snapshot.
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


class RedisControl(RedisRole):
    """Control transport on Redis (``redis://``, ``rediss://``).

    Args:
        url: ``redis://[[user]:password@]host:port/db`` or ``rediss://...``.
    """

    def __init__(self, url: str, client: SharedClient | None = None) -> None:
        super().__init__(url, client)
        self._acquire: AsyncScript | None = None
        self._readers: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Stop every subscription's reader and close the client. Idempotent."""
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
        """SUBSCRIBE on a connection of its own; yield once the server confirmed it.

        Raises:
            BrokerConnectionError: the server cannot be reached or did not confirm in 10 s.
        """
        client = await self._connection()
        name = keys.control_channel(channel)
        pubsub = client.pubsub()
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        reader: asyncio.Task[None] | None = None
        try:
            with redis_errors(self._url, "subscribe"):
                await getattr(pubsub, self._channels.subscribe)(name)
                await self._confirmed(pubsub, name)
            reader = asyncio.create_task(self._read(pubsub, queue))
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

    async def _read(self, pubsub: PubSub, queue: asyncio.Queue[bytes]) -> None:
        """Put every message on ``queue`` until cancelled; redis-py re-subscribes after a
        reconnect, and this retries with a growing pause while the server is away."""
        async for message in self._shared.messages(pubsub, self):
            if message["type"] == self._channels.message:
                queue.put_nowait(as_bytes(message["data"]))

    # -- tables ------------------------------------------------------------------------------

    async def put(self, table: str, key: str, value: bytes | None, ttl: float | None) -> None:
        """HSET (or HDEL) the field and INCR the version, in one MULTI.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        client = await self._connection()
        with redis_errors(self._url, "put"):
            async with client.pipeline(transaction=True) as pipe:
                if value is None:
                    pipe.hdel(self._keys.control_table(table), key)
                else:
                    until = 0 if ttl is None else int((time.time() + ttl) * 1000)
                    pipe.hset(self._keys.control_table(table), key, b"%d:%s" % (until, value))
                pipe.incr(self._keys.control_version(table))
                await pipe.execute()

    async def read(self, table: str) -> tuple[int, dict[str, bytes]]:
        """GET the version and HGETALL the hash in one MULTI; HDEL expired fields found.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        client = await self._connection()
        with redis_errors(self._url, "read"):
            async with client.pipeline(transaction=True) as pipe:
                pipe.get(self._keys.control_version(table))
                pipe.hgetall(self._keys.control_table(table))
                version, raw = await pipe.execute()
            now_ms = time.time() * 1000
            entries: dict[str, bytes] = {}
            expired: list[bytes] = []
            for field, stored in (raw or {}).items():
                until, _, data = as_bytes(stored).partition(b":")
                if until.isdigit() and 0 < int(until) <= now_ms:
                    expired.append(as_bytes(field))
                else:
                    entries[as_bytes(field).decode()] = data
            if expired:
                # No version bump: an expired entry already reads as missing everywhere.
                await client.hdel(self._keys.control_table(table), *expired)
        return int(version or 0), entries

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
        """Run the bucket script once (EVALSHA); an idle bucket expires once it would be full.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        await self._connection()
        assert self._acquire is not None
        idle_ms = max(1000, int(capacity / rate * 1000) + 1000)
        with redis_errors(self._url, "acquire"):
            wait = await self._acquire(
                keys=[keys.rate_bucket(bucket)], args=[repr(rate), repr(capacity), idle_ms]
            )
        return float(as_bytes(wait))
