"""Redis Cluster: ``redis+cluster://`` and ``rediss+cluster://``, served by redis-py's asyncio
:class:`~redis.asyncio.cluster.RedisCluster`.

URL: ``redis+cluster://[[user]:password@]host:port[,host2:port2...][/0][?query]``: some of the
cluster's nodes (port 6379 by default; one that answers is enough, the others are found with
``CLUSTER SLOTS``), the login every node shares, and redis-py's connection options in the query
(``socket_timeout``, ``ssl_ca_certs``...). A cluster has database 0 only. ``rediss+cluster://``
speaks TLS to every node.

The roles are the Redis transport's (:mod:`aqueue.transports.redis`) with the cluster's key
layout (:class:`~aqueue.transports.redis.keys.ClusterLayout`): a queue's keys share one hash
tag, so its scripts run in one slot, and queues spread over the primaries; a task id's result
keys share one; control tables and beat's keys are tagged by table and app. What a cluster
changes in behaviour:

- **Per-queue scripts.** Publishing, fetching, acking and renewing run one script per queue
  (concurrently where they are independent). A worker's blocking read is one ``XREADGROUP``
  per queue, so the strict priority order 9..0 holds within a queue; between queues, the
  order they are listed in decides (``-Q high,low`` reads ``high`` first).
- **Sharded pub/sub.** Result, reply and control channels use ``SPUBLISH``/``SSUBSCRIBE``
  (Redis >= 7.0): a message goes to the primary of its channel's slot only, not to every node.
- **No ``wait_replicas``**: ``WAIT`` counts the replicas of one node, and a publish spans
  several; it is refused with a :class:`~aqueue.exceptions.ConfigurationError`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, ClusterPubSub, RedisCluster
from redis.asyncio.connection import parse_url

from aqueue.exceptions import ConfigurationError
from aqueue.transports import CLUSTER_SCHEMES, scheme
from aqueue.transports.base import ConnectionOptions
from aqueue.transports.redis import keys
from aqueue.transports.redis.client import (
    MAX_CONNECTIONS,
    POOL_TIMEOUT,
    PUBSUB_BACKOFF,
    SHARDED_CHANNELS,
    SharedClient,
    check_socket_timeout,
    drop_connection,
    take_slot,
    tls_arguments,
)
from aqueue.transports.redis.sentinel import server_address
from aqueue.transports.urls import redacted_url

__all__ = [
    "DEFAULT_PORT",
    "ClusterClient",
    "ClusterURL",
    "open_cluster_client",
    "parse_cluster_url",
]

log = logging.getLogger(__name__)

#: A node's port when the URL names none (Redis's default).
DEFAULT_PORT = 6379
#: Seconds one wait for a sharded pub/sub message lasts, shared among the nodes subscribed
#: on (redis-py polls them in turn): how late a message can be seen, at most.
SHARDED_POLL = 0.05


@dataclass(frozen=True, slots=True)
class ClusterURL:
    """A Redis Cluster URL taken apart.

    Attributes:
        nodes: ``(host, port)`` of each node named, in the URL's order.
        tls: TLS to every node (``rediss+cluster://``).
        options: redis-py's connection arguments from the URL: ``username``, ``password`` and
            the query's options.
    """

    nodes: tuple[tuple[str, int], ...]
    tls: bool
    options: dict[str, Any]


def parse_cluster_url(url: str) -> ClusterURL:
    """Take a ``redis+cluster://`` or ``rediss+cluster://`` URL apart.

    Raises:
        ConfigurationError: not a Cluster URL, no node named, a port that is not one, or a
            database other than 0.
    """
    name = scheme(url)
    where = redacted_url(url)
    if name not in CLUSTER_SCHEMES:
        raise ConfigurationError(f"{where!r} is not a Redis Cluster URL")
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not hosts:
        raise ConfigurationError(
            f"{where!r} names no node: redis+cluster://host:port[,host2:port2...]"
        )
    nodes = tuple(server_address(part, where, DEFAULT_PORT) for part in hosts.split(","))
    db = parts.path.strip("/")
    if db not in ("", "0"):
        raise ConfigurationError(
            f"{where!r}: Redis Cluster has database 0 only, not {db!r} (use another cluster, "
            f"or one cluster for everything: aqueue's keys start with 'aqueue:')"
        )
    try:
        options = dict(parse_url(f"redis://{userinfo}{at}node/?{parts.query}"))
    except ValueError as exc:
        raise ConfigurationError(f"invalid Redis Cluster URL {where!r}: {exc}") from exc
    for key in ("host", "port", "db", "connection_class"):
        options.pop(key, None)
    return ClusterURL(nodes, name == "rediss+cluster", options)


T = TypeVar("T")

# Connections a node's pool may open beyond the bound on concurrent commands: sharded pub/sub
# and pipelines take theirs beside the commands the bound counts.
_NODE_HEADROOM = 32


class BoundedRedisCluster(RedisCluster):
    """redis-py's cluster client, with at most ``limit`` commands and pipelines in flight at
    once: one past the bound waits (up to ``timeout`` seconds) for one to finish, as on one
    server (:class:`~aqueue.transports.redis.client.BoundedPool`), instead of failing with
    ``MaxConnectionsError`` once a node's pool is full (redis-py's cluster pools do not wait).
    Each node's pool may open ``limit`` connections and some more, for sharded pub/sub and for
    pipelines spread over several nodes.
    """

    def __init__(
        self, *args: Any, limit: int = MAX_CONNECTIONS, timeout: float = POOL_TIMEOUT, **kwargs: Any
    ) -> None:
        kwargs["max_connections"] = limit + _NODE_HEADROOM
        super().__init__(*args, **kwargs)
        self.limit = limit  # commands and pipelines in flight at once
        self._slots = asyncio.Semaphore(limit)
        self._wait_timeout = timeout

    async def bounded(self, call: Awaitable[T]) -> T:
        """``await call`` holding one of the client's slots (waiting for one if need be).

        Raises:
            redis.exceptions.ConnectionError: no slot came free within the timeout (``call`` is
                closed, never run).
        """
        try:
            await take_slot(self._slots, self._wait_timeout)
        except BaseException:
            if inspect.iscoroutine(call):
                call.close()
            raise
        try:
            return await call
        finally:
            self._slots.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        return await self.bounded(super().execute_command(*args, **kwargs))

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # redis-py's error
        return _BoundedPipeline(self, transaction)  # type: ignore[abstract]


class _BoundedPipeline(ClusterPipeline):
    """A cluster pipeline that runs holding one of its client's slots."""

    _bounded_client: BoundedRedisCluster

    def __init__(self, client: BoundedRedisCluster, transaction: Any | None = None) -> None:
        super().__init__(client, transaction)
        self._bounded_client = client

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        return await self._bounded_client.bounded(
            super().execute(raise_on_error, allow_redirections)
        )


def open_cluster_client(url: str, connection: ConnectionOptions | None = None) -> RedisCluster:
    """A redis-py cluster client for ``url`` (not yet connected; bytes responses).

    Timeouts, the pool's size per node and TLS come from ``connection`` as for a ``redis://``
    URL (the URL's query wins). redis-py follows ``MOVED``/``ASK`` redirections and refreshes
    its slot map itself after a failover or a resharding, retrying the command.

    Raises:
        ConfigurationError: the URL or an option is invalid, or the socket timeout is too
            short for a blocking fetch.
    """
    options = connection or ConnectionOptions()
    parsed = parse_cluster_url(url)
    arguments: dict[str, Any] = {
        "socket_timeout": options.socket_timeout,
        "socket_connect_timeout": options.connect_timeout,
        "limit": options.max_connections or MAX_CONNECTIONS,
    }
    tls = tls_arguments(options.tls)
    if tls or parsed.tls:
        tls.pop("connection_class", None)
        arguments["ssl"] = True
    arguments.update(tls)
    arguments.update(parsed.options)
    if "max_connections" in arguments:  # the URL's ?max_connections= is the bound
        arguments["limit"] = int(arguments.pop("max_connections"))
    check_socket_timeout(url, arguments.get("socket_timeout"))
    try:
        return BoundedRedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in parsed.nodes], **arguments
        )
    except (TypeError, redis.exceptions.RedisClusterException) as exc:
        raise ConfigurationError(f"invalid Redis Cluster URL {redacted_url(url)!r}: {exc}") from exc


class ClusterClient(SharedClient):
    """A :class:`~aqueue.transports.redis.client.SharedClient` over a Redis Cluster: one
    redis-py :class:`~redis.asyncio.cluster.RedisCluster` (a connection pool per node) for the
    roles of one app, event loop and URL, with the cluster's key layout and sharded pub/sub.

    The roles are typed against :class:`redis.asyncio.Redis`; the cluster client answers the
    commands they use alike (routed by key), which is what the cast stands for.

    Raises:
        ConfigurationError: the URL is invalid (checked here).
    """

    layout: keys.Layout = keys.CLUSTER
    channels = SHARDED_CHANNELS

    def __init__(self, url: str, connection: ConnectionOptions | None = None) -> None:
        super().__init__(url, connection)
        parse_cluster_url(url)  # checked now, as a redis:// URL is when its pool is made

    def _open(self) -> aioredis.Redis:
        return cast(aioredis.Redis, open_cluster_client(self.url, self.connection))

    def messages(self, pubsub: PubSub, owner: object) -> AsyncIterator[dict[str, Any]]:
        """Every sharded message ``pubsub`` (a :class:`~redis.asyncio.cluster.ClusterPubSub`)
        receives, and each subscription's confirmation, from every node it subscribed on."""
        return sharded_messages(cast(ClusterPubSub, pubsub), owner)

    async def next_message(self, pubsub: PubSub, timeout: float) -> dict[str, Any] | None:
        message: dict[str, Any] | None = await cast(ClusterPubSub, pubsub).get_sharded_message(
            timeout=timeout
        )
        return message


async def sharded_messages(pubsub: ClusterPubSub, owner: object) -> AsyncIterator[dict[str, Any]]:
    """Every message (and subscription confirmation) ``pubsub`` receives on its shard
    channels, until the caller stops iterating.

    redis-py keeps one connection per node subscribed on, reconnects and subscribes again by
    itself, and moves a channel to the new owner of its slot; while no node answers, this
    retries with a pause doubling from 0.1 s to 2 s, logging each retry against ``owner``. A
    command a node refuses (a re-subscription after an ACL change: ``NOPERM``) is logged, and
    every node's connection is dropped and subscribed again with the same pause.
    """
    pause = PUBSUB_BACKOFF[0]
    while True:
        if not pubsub.node_pubsub_mapping:  # nothing subscribed (yet): nothing to read
            await asyncio.sleep(SHARDED_POLL)
            continue
        try:
            message = await pubsub.get_sharded_message(timeout=SHARDED_POLL)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            log.warning("%r: sharded pub/sub connection lost, retrying in %gs", owner, pause)
        except redis.exceptions.RedisError as exc:
            # A refused command, such as a re-subscription after an ACL change took the
            # channel away (NOPERM): the node's connection stays up without the subscription,
            # so every node's is dropped, and the next read reconnects and subscribes again
            # (refused until the server allows it). Ending here would leave every consumer
            # waiting for ever.
            log.warning(
                "%r: sharded pub/sub failed (%s: %s), subscribing again in %gs",
                owner,
                type(exc).__name__,
                exc,
                pause,
            )
            for node_pubsub in list(pubsub.node_pubsub_mapping.values()):
                await drop_connection(node_pubsub)
        else:
            pause = PUBSUB_BACKOFF[0]
            if message is not None:
                yield message
            continue
        await asyncio.sleep(pause)
        pause = min(pause * 2, PUBSUB_BACKOFF[1])
