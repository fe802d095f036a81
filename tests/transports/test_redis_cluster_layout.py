"""Redis Cluster's key layout and URL, without a cluster: a single server and Sentinel keep
today's key names (checked on a real server too); on a cluster, every key a script or MULTI
uses together shares one hash tag (so one slot), and different queues, task ids, tables and
apps do not. The cluster itself is in ``make test-cluster`` (tests/cluster/test_redis_cluster.py
and the contract suites)."""

from __future__ import annotations

import time
import uuid

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection

from aqueue.exceptions import BrokerConnectionError, ConfigurationError
from aqueue.transports import (
    ConnectionOptions,
    Outgoing,
    backend_from_url,
    broker_from_url,
    transport_type,
)
from aqueue.transports.redis import Transport
from aqueue.transports.redis.client import PLAIN_CHANNELS, SHARDED_CHANNELS, shared_client
from aqueue.transports.redis.cluster import (
    BoundedRedisCluster,
    ClusterClient,
    open_cluster_client,
    parse_cluster_url,
)
from aqueue.transports.redis.keys import CLUSTER, SINGLE, hash_tag
from tests.net import free_port

pytestmark = pytest.mark.timeout(10)


def test_a_single_server_keeps_its_key_names() -> None:
    assert SINGLE.stream("emails", 9) == "aqueue:stream:emails:9"
    assert SINGLE.stream_prefix("emails") == "aqueue:stream:"
    assert SINGLE.delayed("emails") == SINGLE.delayed("other") == "aqueue:delayed"
    assert SINGLE.delayed_rejected("emails") == "aqueue:delayed-rejected"
    assert SINGLE.dlq("emails") == "aqueue:dlq:emails"
    assert SINGLE.result("id-1") == "aqueue:result:id-1"
    assert SINGLE.result_channel("id-1") == "aqueue:result-events:id-1"
    assert SINGLE.control_table("revoked") == "aqueue:table:revoked"
    assert SINGLE.control_version("revoked") == "aqueue:table-version:revoked"
    assert SINGLE.beat_entries("proj") == "aqueue:beat:proj:entries"
    assert SINGLE.beat_last("proj") == "aqueue:beat:proj:last"
    assert SINGLE.beat_claim("proj", "each", 1000) == "aqueue:beat:proj:claim:each:1000"
    # Every key is in the one shard: a script may use any of them together.
    assert {SINGLE.shard(SINGLE.stream(q, 0)) for q in ("a", "b")} == {""}


@pytest.mark.parametrize("queue", ["emails", "a:b:9", "with}brace", "x{y}"])
def test_a_queues_cluster_keys_share_one_hash_tag(queue: str) -> None:
    names = [CLUSTER.stream(queue, p) for p in range(10)]
    names += [CLUSTER.delayed(queue), CLUSTER.delayed_rejected(queue), CLUSTER.dlq(queue)]
    assert len({hash_tag(n) for n in names}) == 1
    assert all(n.startswith(CLUSTER.stream_prefix(queue)) for n in names[:10])
    assert CLUSTER.stream(queue, 3) == f"aqueue:{{{queue}}}:stream:3"


def test_cluster_keys_of_one_task_table_and_app_share_a_tag_and_others_do_not() -> None:
    task = [CLUSTER.result("t1"), CLUSTER.watched("t1"), CLUSTER.result_channel("t1")]
    assert {hash_tag(n) for n in task} == {"t1"}
    assert hash_tag(CLUSTER.result("t2")) != hash_tag(CLUSTER.result("t1"))
    assert hash_tag(CLUSTER.control_table("revoked")) == hash_tag(
        CLUSTER.control_version("revoked")
    )
    beat = [CLUSTER.beat_entries("p"), CLUSTER.beat_last("p"), CLUSTER.beat_claim("p", "e", 1)]
    assert {hash_tag(n) for n in beat} == {"p"}
    assert hash_tag(CLUSTER.stream("q1", 0)) != hash_tag(CLUSTER.stream("q2", 0))


def test_hash_tag_follows_redis_cluster_rules() -> None:
    assert hash_tag("aqueue:{q}:x") == "q"
    assert hash_tag("no-tag") == "no-tag"
    assert hash_tag("empty:{}:tag") == "empty:{}:tag"  # an empty tag hashes the whole key
    assert hash_tag("a{b}c{d}") == "b"


def test_cluster_urls_are_served_by_the_redis_transport() -> None:
    assert transport_type("redis+cluster://127.0.0.1:7000") is Transport
    assert transport_type("rediss+cluster://127.0.0.1:7000") is Transport
    client = shared_client("redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
    assert isinstance(client, ClusterClient)
    assert (client.layout, client.channels) == (CLUSTER, SHARDED_CHANNELS)
    plain = shared_client("redis://127.0.0.1:6379/0")
    assert (plain.layout, plain.channels) == (SINGLE, PLAIN_CHANNELS)


def test_parse_cluster_url() -> None:
    parsed = parse_cluster_url("rediss+cluster://u:pw@a:7000,b,[::1]:7002/0?socket_timeout=5")
    assert parsed.nodes == (("a", 7000), ("b", 6379), ("::1", 7002))
    assert parsed.tls
    assert parsed.options["username"] == "u" and parsed.options["password"] == "pw"
    assert parsed.options["socket_timeout"] == 5.0
    assert not parse_cluster_url("redis+cluster://a:7000").tls


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://a:7000/1", "database 0 only"),
        ("redis+cluster://", "names no node"),
        ("redis+cluster://a:port", "not a port"),
        ("redis+cluster://:7000", "has no host"),
    ],
)
def test_bad_cluster_urls_are_refused_at_once(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        shared_client(url)


def test_wait_replicas_is_refused_on_a_cluster() -> None:
    with pytest.raises(ConfigurationError, match="not supported on Redis Cluster"):
        broker_from_url("redis+cluster://127.0.0.1:7000", {"wait_replicas": 1})


def test_a_cluster_client_speaks_tls_for_rediss_and_takes_the_pool_size() -> None:
    tls = open_cluster_client("rediss+cluster://127.0.0.1:7000?ssl_cert_reqs=none")
    assert tls.connection_kwargs["connection_class"] is SSLConnection
    assert tls.connection_kwargs["ssl_cert_reqs"] == "none"
    plain = open_cluster_client(
        "redis+cluster://127.0.0.1:7000", ConnectionOptions(max_connections=7, socket_timeout=9)
    )
    assert plain.connection_kwargs["connection_class"] is not SSLConnection
    assert isinstance(plain, BoundedRedisCluster) and plain.limit == 7  # in flight at once
    assert plain.connection_kwargs["max_connections"] > 7  # per node: room for pub/sub too
    assert plain.connection_kwargs["socket_timeout"] == 9


async def test_an_unreachable_cluster_is_a_connection_error_at_once() -> None:
    broker = broker_from_url(f"redis+cluster://127.0.0.1:{free_port()}")
    began = time.monotonic()
    with pytest.raises(BrokerConnectionError, match=r"unreachable|cannot be connected"):
        await broker.connect()
    assert time.monotonic() - began < 2.0
    await broker.close()


async def test_a_single_server_stores_under_todays_names(redis_server: str) -> None:
    """What a redis:// deployment has stored stays where it was: the names are today's."""
    url = f"{redis_server}/0"
    queue, task_id = f"q-{uuid.uuid4().hex}", uuid.uuid4().hex
    broker, backend = broker_from_url(url), backend_from_url(url)
    raw = aioredis.Redis.from_url(url)
    try:
        await broker.publish(
            [Outgoing(queue, b"now", "m1", 3), Outgoing(queue, b"later", "m2", 0, time.time() + 60)]
        )
        await backend.store([(task_id, b"record")], 60)
        assert await raw.xlen(f"aqueue:stream:{queue}:3") == 1
        later = await raw.zrange("aqueue:delayed", 0, -1)
        assert any(f"aqueue:stream:{queue}:0".encode() in member for member in later)
        assert await raw.get(f"aqueue:result:{task_id}") == b"record"
        await broker.purge([queue])
    finally:
        await raw.aclose()
        await backend.close()
        await broker.close()
