"""Redis Sentinel (``redis+sentinel://``, ``rediss+sentinel://``, kombu's ``sentinel://``):
URLs and options, every role through real sentinels, authenticated and over TLS, ``WAIT`` on
publish, and one failover under a small load (the large one: ``test_sentinel_failover.py``,
``make test-cluster``).

The contract suites run over Sentinel too: ``AQUEUE_TEST_TRANSPORTS=sentinel`` (``make
test-cluster`` does).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.sentinel import MasterNotFoundError

from aqueue import Aqueue
from aqueue.exceptions import BrokerConnectionError, ConfigurationError
from aqueue.transports import broker_from_url
from aqueue.transports.base import ConnectionOptions, Outgoing
from aqueue.transports.redis.sentinel import (
    SentinelClient,
    open_sentinel_client,
    parse_sentinel_url,
)
from aqueue.transports.urls import redacted_url
from tests.chaos import chaos_app
from tests.chaos.harness import Ledger, worker, worker_env
from tests.conftest import QUICK, refused_at_once
from tests.transports.sentinels import (
    SENTINEL_PASSWORD,
    SERVICE,
    SentinelGroup,
    failover_under_load,
    ledger_on,
)

pytestmark = pytest.mark.timeout(60)


# -- URLs and options (no server) ------------------------------------------------------------


def test_the_url_names_the_sentinels_the_service_and_the_database() -> None:
    parsed = parse_sentinel_url(
        "redis+sentinel://user:pw@h1,h2:26380,[::1]:26381/my%20master/3"
        "?socket_timeout=5&sentinel_password=sp"
    )
    assert parsed.sentinels == (("h1", 26379), ("h2", 26380), ("::1", 26381))
    assert parsed.service == "my master"
    assert not parsed.tls
    assert parsed.primary == {"username": "user", "password": "pw", "db": 3, "socket_timeout": 5}
    assert parsed.sentinel_login == {"password": "sp"}
    assert parse_sentinel_url("rediss+sentinel://h/m").tls
    assert parse_sentinel_url("redis+sentinel://h/m").primary == {}


def test_kombus_form_takes_the_service_from_master_name() -> None:
    url = "sentinel://:pw@h1:26379/2;sentinel://h2:26380/2; sentinel://:pw@h3:26381/2"
    parsed = parse_sentinel_url(url, {"master_name": "mymaster"})
    assert parsed.sentinels == (("h1", 26379), ("h2", 26380), ("h3", 26381))
    assert parsed.service == "mymaster"
    assert parsed.primary == {"password": "pw", "db": 2}


@pytest.mark.parametrize(
    ("url", "options", "error"),
    [
        ("sentinel://h1:26379;sentinel://h2:26379", {}, "names no service"),
        ("redis+sentinel://h1", {}, "names no service"),
        ("redis+sentinel://h1/a", {"master_name": "b"}, "name it once"),
        ("redis+sentinel://h1/m/x", {}, "must be a number"),
        ("redis+sentinel://h1:port/m", {}, "is not a port"),
        ("sentinel://:a@h1;sentinel://:b@h2", {"master_name": "m"}, "different users"),
        ("sentinel://h1;redis://h2", {"master_name": "m"}, "every part"),
        ("redis+sentinel://h1/m", {"master_name": ""}, "master_name must be"),
    ],
)
def test_a_bad_url_is_refused_with_what_to_write(
    url: str, options: dict[str, Any], error: str
) -> None:
    with pytest.raises(ConfigurationError, match=error):
        parse_sentinel_url(url, options)


def test_passwords_are_masked_in_both_forms() -> None:
    assert redacted_url("sentinel://:pw@a:1/0;sentinel://:pw@b:2/0") == (
        "sentinel://:**@a:1/0;sentinel://:**@b:2/0"
    )
    assert redacted_url("redis+sentinel://u:pw@a,b:2/m/0?sentinel_password=s") == (
        "redis+sentinel://u:**@a,b:2/m/0"
    )


def test_the_settings_carry_the_sentinel_options_to_the_client() -> None:
    kombu = "sentinel://127.0.0.1:1;sentinel://127.0.0.1:2"
    options = {"master_name": "m", "sentinel_kwargs": {"password": "s"}, "visibility_timeout": 5}
    app = Aqueue("s", broker=kombu, broker_transport_options=options)
    assert app.conf.resolved_backend_url() == kombu  # a Sentinel broker stores results too
    connection = app.conf.connection_options(kombu)
    assert connection.sentinel == {"master_name": "m", "sentinel_kwargs": {"password": "s"}}
    backend = "redis+sentinel://127.0.0.1:3/other/1"
    app.conf.result_backend = backend
    app.conf.result_backend_transport_options = {"sentinel_kwargs": {"password": "t"}}
    assert app.conf.connection_options(backend).sentinel == {"sentinel_kwargs": {"password": "t"}}
    assert app.conf.connection_options("redis://127.0.0.1:4/0").sentinel is None
    with pytest.raises(ConfigurationError, match="only the Redis Sentinel options"):
        app.conf.result_backend_transport_options = {"retry_policy": {}}


def test_broker_options_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="apply to Redis Sentinel URLs"):
        broker_from_url("redis://127.0.0.1:1/0", {"master_name": "m"})
    with pytest.raises(ConfigurationError, match="wait_replicas'] must be a whole number"):
        broker_from_url("redis://127.0.0.1:1/0", {"wait_replicas": -1})
    with pytest.raises(ConfigurationError, match="wait_timeout'] must be a number"):
        broker_from_url("redis://127.0.0.1:1/0", {"wait_replicas": 1, "wait_timeout": 0})
    with pytest.raises(ConfigurationError, match="sentinel_kwargs must be a mapping"):
        broker_from_url("redis+sentinel://h/m", {"sentinel_kwargs": "password"})
    with pytest.raises(ConfigurationError, match="names no service"):
        SentinelClient("sentinel://h:1", ConnectionOptions(sentinel={"sentinel_kwargs": {}}))


# -- through real sentinels --------------------------------------------------------------------


@pytest.fixture
async def ledger(redis_server: str) -> AsyncIterator[Ledger]:
    async with ledger_on(redis_server) as found:
        yield found


async def test_every_role_works_through_the_sentinels(
    sentinel_group: SentinelGroup, ledger: Ledger
) -> None:
    """Broker, results (reply channel and a watch), control and beat, with the sentinels'
    password in ``sentinel_kwargs`` (Celery's way) and the kombu URL form."""
    url = sentinel_group.kombu_url(1)
    queue = f"roles-{uuid.uuid4().hex[:8]}"
    app = chaos_app.build(url, url, queue)
    app.conf.broker_transport_options = {
        "master_name": SERVICE,
        **sentinel_group.transport_options,
    }
    env = worker_env(sentinel_group.url(1, sentinel_password=SENTINEL_PASSWORD), url, queue, ledger)
    env["CHAOS_BACKEND"] = env["AQUEUE_BROKER_URL"]
    try:
        async with worker(env, 10):
            echo = app.tasks["chaos.echo"]
            assert await (await echo.delay(ledger.run, 7, 1)).get(timeout=10) == 7
            other = app.AsyncResult((await echo.delay(ledger.run, 8, 1)).id)  # no mailbox
            assert await other.get(timeout=10) == 8
            assert [r for r in await app.control.ping(timeout=2)]
            store = await app.beat_store()
            await store.put("every-minute", b"{}")
            assert "every-minute" in (await store.load()).entries
        broker = await app.broker()
        assert [d.queue for d in await broker.queue_depths([queue])] == [queue]  # type: ignore[attr-defined]
    finally:
        await app.close()


@pytest.mark.parametrize("turns", [0, 1, 3])
async def test_closing_the_sentinels_during_a_discovery_leaves_no_connection_open(
    sentinel_group: SentinelGroup, turns: int
) -> None:
    """Closing while a round of questions is under way (``turns`` loop turns after it was
    asked for: 0, not started yet) waits for it, so that no connection it opens is left open
    in the closed clients' pools (a ResourceWarning once the loop is gone); a round asked for
    after the close is refused."""
    url = sentinel_group.url(0, sentinel_password=SENTINEL_PASSWORD)
    sentinels, client, service = open_sentinel_client(url)
    asking = asyncio.ensure_future(sentinels.discover_master(service))
    for _ in range(turns):
        await asyncio.sleep(0)  # the round under way, at some step of its questions
    await sentinels.aclose()
    [outcome] = await asyncio.gather(asking, return_exceptions=True)
    await client.aclose()
    left = [
        connection
        for sentinel in sentinels.sentinels
        for connection in (
            *sentinel.connection_pool._available_connections,
            *sentinel.connection_pool._in_use_connections,
        )
        if connection.is_connected
    ]
    assert left == []
    if turns == 0:
        assert isinstance(outcome, MasterNotFoundError) and "closed" in str(outcome)
    else:
        assert isinstance(outcome, tuple) and outcome[1] in sentinel_group.data_ports, outcome


async def test_a_wrong_sentinel_password_or_service_fails_at_once_naming_each_sentinel(
    sentinel_group: SentinelGroup,
) -> None:
    wrong = broker_from_url(sentinel_group.url(0, sentinel_password="wrong"))
    message = await refused_at_once(wrong.connect())
    assert message.count("AuthenticationError") == len(sentinel_group.sentinel_ports), message
    assert "wrong" not in message and "primary-secret" not in message
    unknown = sentinel_group.url(0, sentinel_password=SENTINEL_PASSWORD).replace(
        f"/{SERVICE}/", "/nosuchservice/"
    )
    message = await refused_at_once(broker_from_url(unknown).connect())
    assert "no sentinel named a primary for 'nosuchservice'" in message
    assert "No such master" in message


async def test_a_publish_waits_for_its_replicas(
    sentinel_group: SentinelGroup, redis_server: str
) -> None:
    """``wait_replicas``: a publish is done when that many replicas have it. Asking for more
    than the sentinels list as able to take the primary's place, those are enough; a server
    with no Sentinel and too few replicas fails the publish after ``wait_timeout`` (the message
    is stored on the server, and the send is left to be tried again)."""
    url = sentinel_group.url(0, sentinel_password=SENTINEL_PASSWORD)
    queue = f"wait-{uuid.uuid4().hex[:8]}"
    message = Outgoing(queue, b"replicated", uuid.uuid4().hex, 0, None)
    one = broker_from_url(url, {"wait_replicas": 1})
    two = broker_from_url(url, {"wait_replicas": 2, "wait_timeout": 0.2})
    alone = broker_from_url(f"{redis_server}/0", {"wait_replicas": 1, "wait_timeout": 0.2})
    try:
        await one.publish([message])
        await two.publish([message])  # one replica in the group: it is enough
        fetched = await one.fetch([queue], 10, 1)
        assert [d.body for d in fetched] == [b"replicated"] * 2
        await one.ack(fetched)
        started = time.monotonic()
        with pytest.raises(BrokerConnectionError, match="0 of 1 replica"):
            await alone.publish([message])
        assert 0.2 <= time.monotonic() - started < QUICK
        fetched = await alone.fetch([queue], 10, 1)
        assert [d.body for d in fetched] == [b"replicated"]
        await alone.ack(fetched)
    finally:
        for broker in (one, two, alone):
            await broker.close()


@pytest.fixture(scope="module")
def tls_group(
    tmp_path_factory: pytest.TempPathFactory, tls_certificates: Path
) -> Iterator[SentinelGroup]:
    """A primary and three sentinels listening for TLS only (no replica)."""
    directory = tmp_path_factory.mktemp("sentinel-tls")
    with SentinelGroup(directory, replicas=0, tls=tls_certificates) as group:
        yield group


async def test_tls_to_the_sentinels_and_the_primary(tls_group: SentinelGroup) -> None:
    """``rediss+sentinel://``: the sentinels and the primary over TLS, trusting the CA the URL
    names; a plain ``redis+sentinel://`` URL to the same sentinels fails at once."""
    url = tls_group.url(0, sentinel_password=SENTINEL_PASSWORD)
    queue = f"tls-{uuid.uuid4().hex[:8]}"
    broker = broker_from_url(url)
    try:
        await broker.publish([Outgoing(queue, b"over tls", uuid.uuid4().hex, 0, None)])
        fetched = await broker.fetch([queue], 1, 1)
        assert [d.body for d in fetched] == [b"over tls"]
        await broker.ack(fetched)
    finally:
        await broker.close()
    plain = url.replace("rediss+sentinel://", "redis+sentinel://", 1).split("?")[0]
    plain += f"?sentinel_password={SENTINEL_PASSWORD}"
    message = await refused_at_once(broker_from_url(plain).connect())
    assert "no sentinel named a primary" in message


async def test_a_failover_under_load_loses_no_acknowledged_task(
    tmp_path: Path, ledger: Ledger
) -> None:
    """A few hundred tasks through a worker process; ``SENTINEL FAILOVER`` midway. With two
    replicas and ``wait_replicas=1``, every ``delay()`` that returned runs; tasks flow again
    within 10 s; and the result of a task sent after the failover reaches its caller's reply
    channel, and a worker answers a control ping - with one of the sentinels gone."""
    with SentinelGroup(tmp_path, replicas=2) as group:
        figures = await failover_under_load(
            group, ledger, total=400, rate=100, wait_replicas=1, visibility=2.0
        )
        print(figures.line())
        assert figures.lost == 0
        assert figures.first_task_s < 10
        assert figures.longest_send_s < 10
        group.kill(group.sentinel_ports[0])
        url = group.url(0, sentinel_password=SENTINEL_PASSWORD)
        queue = f"after-{uuid.uuid4().hex[:8]}"
        app = chaos_app.build(url, url, queue)
        try:
            async with worker(worker_env(url, url, queue, ledger), 5):
                echo = app.tasks["chaos.echo"]
                assert await (await echo.delay(ledger.run, 1, 1)).get(timeout=10) == 1
                assert await app.control.ping(timeout=2)
        finally:
            await app.close()
