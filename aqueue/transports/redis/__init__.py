"""The Redis transport (``redis://``, ``rediss://``): broker on streams, results, reply channels,
control, beat store and queue administration, every role over one redis-py client - one
connection pool - per app, event loop and URL. Key names are in :mod:`.keys`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from aqueue.transports.base import (
    BaseTransport,
    BeatStore,
    Broker,
    ConnectionOptions,
    ControlTransport,
    ResultBackend,
)
from aqueue.transports.redis.beat import RedisStore
from aqueue.transports.redis.broker import RedisBroker
from aqueue.transports.redis.client import SharedClient
from aqueue.transports.redis.control import RedisControl
from aqueue.transports.redis.results import RedisBackend

__all__ = ["RedisBackend", "RedisBroker", "RedisControl", "RedisStore", "Transport"]


class Transport(BaseTransport):
    """``redis://`` / ``rediss://``: every role, sharing one connection pool."""

    roles: ClassVar[frozenset[str]] = frozenset({"broker", "results", "control", "beat"})

    def __init__(
        self, url: str, *, shared: bool = True, connection: ConnectionOptions | None = None
    ) -> None:
        super().__init__(url, shared=shared, connection=connection)
        self.client: SharedClient | None = SharedClient(url, self.connection) if shared else None

    def _make_broker(self, options: Mapping[str, Any]) -> Broker:
        return RedisBroker(self.url, options, self.client)

    def _make_results(self) -> ResultBackend:
        return RedisBackend(self.url, self.client)

    def _make_control(self) -> ControlTransport:
        return RedisControl(self.url, self.client)

    def _make_beat(self, namespace: str) -> BeatStore:
        return RedisStore(self.url, namespace, self.client)

    async def _close_client(self) -> None:
        if self.client is not None:
            await self.client.aclose()
