"""The Redis transport (``redis://``, ``rediss://``, Redis Sentinel's ``redis+sentinel://``,
``rediss+sentinel://``, ``sentinel://``: :mod:`.sentinel`, and Redis Cluster's
``redis+cluster://``, ``rediss+cluster://``: :mod:`.cluster`): broker on streams, results, reply
channels, control, beat store and queue administration, every role over one redis-py client -
one connection pool, or one per node of a cluster - per app, event loop and URL. Key names are
in :mod:`.keys`, laid out for one server or, hash-tagged, for a cluster.
"""

from __future__ import annotations

from aqueue.transports.base import ClientTransport, RoleClasses
from aqueue.transports.redis.beat import RedisStore
from aqueue.transports.redis.broker import RedisBroker
from aqueue.transports.redis.client import SharedClient, shared_client
from aqueue.transports.redis.control import RedisControl
from aqueue.transports.redis.results import RedisBackend

__all__ = ["RedisBackend", "RedisBroker", "RedisControl", "RedisStore", "Transport"]


class Transport(ClientTransport):
    """``redis://`` / ``rediss://`` (and Sentinel and Cluster URLs): every role, sharing one
    client (``client``, a :class:`~aqueue.transports.redis.client.SharedClient`; for Sentinel,
    a :class:`~aqueue.transports.redis.sentinel.SentinelClient`; for Redis Cluster, a
    :class:`~aqueue.transports.redis.cluster.ClusterClient`)."""

    role_classes = RoleClasses(RedisBroker, RedisBackend, RedisControl, RedisStore)

    def _open_client(self) -> SharedClient:
        return shared_client(self.url, self.connection)
