"""What every Redis role (broker, results, control, beat store) does alike: its client."""

from __future__ import annotations

import redis.asyncio as aioredis

from aqueue.transports.base import ConnectionOptions
from aqueue.transports.redis.client import SharedClient, shared_client
from aqueue.transports.urls import redacted_url

__all__ = ["RedisRole"]


class RedisRole:
    """A role over a :class:`SharedClient`: the transport's one connection pool, or its own.

    Args:
        url: ``redis://[[user]:password@]host:port/db``, ``rediss://...`` for TLS, or a
            Sentinel URL (:mod:`aqueue.transports.redis.sentinel`).
        client: the client shared by the transport's roles; ``None`` opens one of its own,
            closed with the role.
        connection: how a client of its own connects (default: the defaults of
            :class:`~aqueue.transports.base.ConnectionOptions`).

    Attributes:
        url: the server's URL.

    Raises:
        ConfigurationError: a Sentinel URL or its options are invalid.
    """

    def __init__(
        self, url: str, client: SharedClient | None, connection: ConnectionOptions | None = None
    ) -> None:
        self.url = self._url = url
        self._shared = client or shared_client(url, connection)
        self._keys = self._shared.layout  # how this server names aqueue's keys
        self._channels = self._shared.channels  # plain or sharded pub/sub
        self._owns_client = client is None
        self._client: aioredis.Redis | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redacted_url(self._url)!r})"

    async def connect(self) -> None:
        """Connect and check the server answers PING. Idempotent.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        await self._connection()

    async def _connection(self) -> aioredis.Redis:
        """The connected client, connecting first if needed."""
        if self._client is None:
            client = await self._shared.get()
            self._connected(client)
            self._client = client
        return self._client

    def _connected(self, client: aioredis.Redis) -> None:
        """Called once per (re)connection, before first use: register scripts here."""

    async def _release_client(self) -> None:
        """Forget the client; close it if it is this role's own (a later call reconnects)."""
        self._client = None
        if self._owns_client:
            await self._shared.aclose()
