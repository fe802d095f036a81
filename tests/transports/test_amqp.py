"""What only the RabbitMQ broker promises, beyond the contract suite it also passes.

Delivery counts without a lease timer (a holder's connection closing is what returns a message),
classic and quorum queues, the delay chain's precision, prefetch, native dead-lettering, and the
errors: a refused login, an unreachable server, a queue declared with other arguments.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import pytest

from aqueue import Aqueue, Worker
from aqueue.exceptions import BrokerConnectionError, BrokerError, ConfigurationError
from aqueue.transports import Outgoing, broker_from_url
from aqueue.transports.amqp import delay, publisher
from aqueue.transports.amqp.broker import AMQPBroker
from aqueue.transports.amqp.ledger import Ledger
from tests.apps import tasks as e2e
from tests.conftest import RabbitNode
from tests.net import free_port

pytestmark = pytest.mark.timeout(60)

Make = Callable[..., Awaitable[AMQPBroker]]


@pytest.fixture
def url(rabbitmq_server: RabbitNode) -> str:
    return rabbitmq_server.url


@pytest.fixture
def backend(redis_server: str) -> str:
    """The result backend of the end-to-end tests here: an AMQP broker stores no results."""
    return f"{redis_server}/0"


@pytest.fixture
async def make(url: str) -> AsyncIterator[Make]:
    """Connected brokers on the test node (transport options as keywords); closed at the end."""
    made: list[AMQPBroker] = []

    async def make(**options: Any) -> AMQPBroker:
        broker = AMQPBroker(url, options)
        await broker.connect()
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.close()


@pytest.fixture(params=["classic", "quorum"])
def queue_type(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def out(queue: str, body: bytes, priority: int = 0, eta: float | None = None) -> Outgoing:
    return Outgoing(queue, body, uuid.uuid4().hex, priority, eta)


def closed_port_url(password: str = "") -> str:
    port = free_port()
    auth = f"guest:{password}@" if password else ""
    return f"amqp://{auth}127.0.0.1:{port}/"


# -- configuration and errors ---------------------------------------------------------------


def test_amqp_urls_make_an_amqp_broker() -> None:
    assert isinstance(broker_from_url("amqp://localhost/"), AMQPBroker)
    assert isinstance(broker_from_url("amqps://localhost/"), AMQPBroker)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"visibility_timout": 5}, "visibility_timout"),
        ({"queue_type": "stream"}, "queue_type"),
        ({"prefetch_count": 0}, "prefetch_count"),
        ({"reconnect_interval": -1}, "reconnect_interval"),
        ({"priorities": "no"}, "priorities"),
    ],
)
def test_bad_transport_options_are_configuration_errors(
    options: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        AMQPBroker("amqp://localhost/", options)


async def test_unreachable_server_says_which_and_why() -> None:
    url = closed_port_url(password="s3cret")
    broker = AMQPBroker(url, {"connect_timeout": 2})
    with pytest.raises(BrokerConnectionError) as info:
        await broker.connect()
    message = str(info.value)
    assert "RabbitMQ at amqp://guest:**@127.0.0.1:" in message
    assert "unreachable during connect" in message
    assert "s3cret" not in message


async def test_wrong_password_is_a_connection_error_that_says_so(url: str) -> None:
    bad = url.replace("guest:guest@", "guest:wrong@")
    with pytest.raises(BrokerConnectionError, match="refused the login"):
        await AMQPBroker(bad, {}).connect()


async def test_a_list_of_nodes_connects_to_the_first_that_answers(
    url: str, queue_name: str
) -> None:
    """kombu's failover form, a cluster's nodes joined by ";": the first node that answers
    (tests/cluster has the node that goes away later); no password in any message."""
    down, also_down = closed_port_url("s3cret"), closed_port_url("s3cret")
    broker = AMQPBroker(f"{down};{url}", {})
    try:
        await broker.publish([out(queue_name, b"x")])
        [delivery] = await broker.fetch([queue_name], 1, 5)
        await broker.ack([delivery])
        assert "s3cret" not in repr(broker) and repr(broker).count(":**@") == 2
    finally:
        await broker.close()
    with pytest.raises(BrokerConnectionError) as info:
        await AMQPBroker(f"{down};{also_down}", {"connect_timeout": 5}).connect()
    message = str(info.value)
    assert "unreachable during connect" in message and "s3cret" not in message
    assert down.rpartition("@")[2] in message and also_down.rpartition("@")[2] in message


async def test_amqps_goes_over_tls(rabbitmq_server: RabbitNode, queue_name: str) -> None:
    broker = AMQPBroker(rabbitmq_server.tls_url, {})
    await broker.publish([out(queue_name, b"secret")])
    got = await broker.fetch([queue_name], 1, 5)
    assert [d.body for d in got] == [b"secret"]
    await broker.ack(got)
    await broker.close()


async def test_amqps_refuses_a_server_it_cannot_verify(rabbitmq_server: RabbitNode) -> None:
    untrusted = rabbitmq_server.tls_url.partition("?")[0]  # the test CA is not trusted
    with pytest.raises(BrokerConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        await AMQPBroker(untrusted, {"connect_timeout": 5}).connect()


async def test_publish_is_retried_per_retry_policy_then_fails() -> None:
    app = Aqueue("t", broker=closed_port_url(), backend="memory://")
    attempts = 4
    policy = {"max_retries": attempts - 1, "interval_start": 0.1, "interval_step": 0.1}
    started = time.monotonic()
    with pytest.raises(BrokerConnectionError, match=r"RabbitMQ at amqp://127\.0\.0\.1"):
        await app.send_task("x.y", retry_policy={**policy, "interval_max": 1.0})
    # Slept between attempts: 0.1 + 0.2 + 0.3 seconds.
    assert time.monotonic() - started >= 0.6 - 0.05
    await app.close()


async def test_queue_declared_with_other_arguments_is_a_clear_error(
    url: str, make: Make, queue_name: str
) -> None:
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    await channel.declare_queue(queue_name, durable=True)  # no x-max-priority, no DLX
    await connection.close()
    broker = await make()
    with pytest.raises(BrokerError, match=f"refused to declare queue '{queue_name}'"):
        await broker.publish([out(queue_name, b"x")])
    # The refusal closed a channel only: the broker goes on working.
    other = f"{queue_name}-ok"
    await broker.publish([out(other, b"fine")])
    got = await broker.fetch([other], 1, 5)
    assert [d.body for d in got] == [b"fine"]
    await broker.ack(got)


async def test_unroutable_message_is_an_error_not_a_silent_drop(
    url: str, make: Make, queue_name: str
) -> None:
    exchange = f"x-{queue_name}"
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    await channel.declare_exchange(exchange, aio_pika.ExchangeType.DIRECT, auto_delete=True)
    broker = await make()
    lonely = Outgoing(queue_name, b"x", "id", exchange=exchange, routing_key="nobody")
    with pytest.raises(BrokerError, match="no queue is bound to exchange"):
        await broker.publish([lonely])
    await connection.close()


async def test_classic_queues_without_priorities_deliver_in_publish_order(
    url: str, make: Make, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``priorities=False`` declares classic queues without ``x-max-priority``: a priority 9
    message published after a priority 0 one comes after it, one warning says so, and a
    broker with priorities on is refused that queue (its arguments differ), by name."""
    caplog.set_level(logging.WARNING, logger="aqueue.transports.amqp.broker")
    fifo = await make(priorities=False, prefetch_count=1)
    await fifo.publish([out(queue_name, b"low", 0)])
    await fifo.publish([out(queue_name, b"high", 9)])
    await fifo.publish([out(queue_name, b"high again", 9)])  # warned once only
    bodies = []
    for _ in range(3):
        [delivery] = await fifo.fetch([queue_name], 1, 5)
        bodies.append(delivery.body)
        await fifo.ack([delivery])
    assert bodies == [b"low", b"high", b"high again"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "aqueue.transports.amqp.broker"]
    assert len(warnings) == 1 and "declared without priorities" in warnings[0]
    ranked = await make()
    with pytest.raises(BrokerError, match="x-max-priority"):
        await ranked.publish([out(queue_name, b"x", 9)])


async def test_classic_queues_with_priorities_deliver_the_highest_first(
    make: Make, queue_name: str
) -> None:
    """The default: classic queues are declared with ``x-max-priority: 9``, so a priority 9
    message published after a priority 0 one is delivered first."""
    broker = await make(prefetch_count=1)
    await broker.publish([out(queue_name, b"blocker", 0)])
    [blocker] = await broker.fetch([queue_name], 1, 5)  # holds the one prefetch slot
    await broker.publish([out(queue_name, b"low", 0)])
    await broker.publish([out(queue_name, b"high", 9)])
    await broker.ack([blocker])
    bodies = []
    for _ in range(2):
        [delivery] = await broker.fetch([queue_name], 1, 5)
        bodies.append(delivery.body)
        await broker.ack([delivery])
    assert bodies == [b"high", b"low"]


# -- delivery counts: a holder's channel closing returns the message -------------------------


async def test_delivery_count_rises_each_time_a_holder_dies(
    make: Make, queue_name: str, queue_type: str
) -> None:
    publisher = await make(queue_type=queue_type)
    await publisher.publish([out(queue_name, b"hot potato")])
    for expected in (1, 2, 3):
        holder = await make(queue_type=queue_type)
        [d] = await holder.fetch([queue_name], 1, 5)
        assert (d.body, d.delivery_count) == (b"hot potato", expected)
        await holder.close()  # dies holding it: RabbitMQ delivers it again

    # A release hands it back without counting a delivery (the contract's "keeping the count").
    releaser = await make(queue_type=queue_type)
    [d] = await releaser.fetch([queue_name], 1, 5)
    assert d.delivery_count == 4
    await releaser.release([d])
    [again] = await releaser.fetch([queue_name], 1, 5)
    assert again.delivery_count == 4
    await releaser.ack([again])
    assert await releaser.fetch([queue_name], 1, 0.3) == []


async def test_close_releases_buffered_deliveries_without_counting(
    make: Make, queue_name: str
) -> None:
    first = await make(prefetch_count=10)
    await first.publish([out(queue_name, b"%d" % i) for i in range(5)])
    [taken] = await first.fetch([queue_name], 1, 5)  # the other four wait in its buffer
    await first.ack([taken])
    await first.close()

    second = await make()
    got: list[Any] = []
    while len(got) < 4:
        batch = await second.fetch([queue_name], 10, 5)
        assert batch
        got += batch
    assert sorted(d.body for d in got) == [b"1", b"2", b"3", b"4"]
    assert {d.delivery_count for d in got} == {1}
    await second.ack(got)


async def test_poison_message_goes_to_dlq_after_the_delivery_cap(
    url: str, backend: str, make: Make
) -> None:
    # test_e2e's version lets a lease run out; here the holder's connection closes instead.
    queue = f"q-{uuid.uuid4().hex[:12]}"
    t = e2e.build(url, queue=queue, backend=backend, task_max_deliveries=2)
    r = await t.add.delay(1, 1)
    for expected in (1, 2):  # a worker that dies holding it, twice
        holder = await make()
        [d] = await holder.fetch([queue], 1, 5)
        assert d.delivery_count == expected
        await holder.close()
    async with Worker(t.app, concurrency=2):
        with pytest.raises(Exception, match="more than task_max_deliveries=2"):
            await r.get(timeout=10)
        assert await (await t.add.delay(2, 2)).get(timeout=10) == 4
    [dead] = await (await t.app.broker()).dead_letters(queue)
    assert "poison" in dead.reason
    await t.app.close()


# -- queues ------------------------------------------------------------------------------------


async def test_quorum_queues_keep_the_contract(make: Make, queue_name: str) -> None:
    broker = await make(queue_type="quorum")
    # Declared first: creating a quorum queue (a Raft group) takes a while.
    await broker.publish([out(queue_name, b"warm-up")])
    await broker.ack(await broker.fetch([queue_name], 1, 5))
    eta = time.time() + 0.3
    await broker.publish([out(queue_name, b"now"), out(queue_name, b"later", eta=eta)])
    first = await broker.fetch([queue_name], 10, 5)
    assert [(d.body, d.delivery_count) for d in first] == [(b"now", 1)]
    later = await broker.fetch([queue_name], 10, 5)
    assert [d.body for d in later] == [b"later"]
    assert time.time() >= eta - 0.01

    await broker.dead_letter(later[0], "bad")
    await broker.ack(first)
    dead = await broker.dead_letters(queue_name)
    assert [(d.body, d.reason) for d in dead] == [(b"later", "bad")]
    assert await broker.fetch([queue_name], 10, 0.3) == []


async def test_dead_letters_are_read_without_removing_them(make: Make, queue_name: str) -> None:
    broker = await make()
    await broker.publish([out(queue_name, b"%d" % i) for i in range(3)])
    for d in await broker.fetch([queue_name], 3, 5):
        await broker.dead_letter(d, f"reason {d.body.decode()}")

    assert [d.body for d in await broker.dead_letters(queue_name)] == [b"0", b"1", b"2"]
    again = await broker.dead_letters(queue_name)
    assert [(d.body, d.reason) for d in again] == [(b"%d" % i, f"reason {i}") for i in range(3)]


async def test_a_rejection_by_another_client_lands_in_the_dlq(
    url: str, make: Make, queue_name: str
) -> None:
    broker = await make()
    await broker.publish([out(queue_name, b"refused")])
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    queue = await channel.get_queue(queue_name, ensure=False)
    message = await queue.get(timeout=5)
    assert message is not None
    await message.reject(requeue=False)  # not through aqueue: RabbitMQ dead-letters it
    await connection.close()

    [dead] = await broker.dead_letters(queue_name)
    assert dead.body == b"refused"
    assert dead.reason == "rejected by RabbitMQ (x-death)"
    assert abs(dead.time - time.time()) < 60


async def test_prefetch_bounds_what_a_worker_holds(url: str, backend: str, make: Make) -> None:
    queue = f"q-{uuid.uuid4().hex[:12]}"
    app = Aqueue("prefetch", broker=url, backend=backend, task_default_queue=queue)
    running, go = asyncio.Semaphore(0), asyncio.Event()

    @app.task(name="prefetch.hold")
    async def hold(i: int) -> int:
        running.release()
        await go.wait()
        return i

    results = [await hold.delay(i) for i in range(30)]
    async with Worker(app, concurrency=2, prefetch_multiplier=3):
        for _ in range(2):
            await running.acquire()  # both slots busy: the worker has fetched
        other = await make()
        got = await other.fetch([queue], 100, 5)
        # basic.qos: the worker holds 2 x 3 unacked, the rest is left to other consumers.
        assert len(got) == 30 - 2 * 3
        await other.release(got)
        await other.close()  # or, still consuming, it would get them back
        go.set()
        assert [await r.get(timeout=10) for r in results] == list(range(30))
    await app.close()


# -- the delay chain -------------------------------------------------------------------------


def test_delay_routing_key_spells_the_delay_in_binary() -> None:
    assert delay.routing_key(1).endswith(".0.0.1")
    assert delay.routing_key(6).split(".")[-3:] == ["1", "1", "0"]
    assert len(delay.routing_key(1).split(".")) == delay.LEVELS
    assert delay.entry_exchange(1) == "aqueue.delay.0"
    assert delay.entry_exchange(1000) == "aqueue.delay.9"  # 512 <= 1000 < 1024
    assert delay.delay_ms(0.0011) == 2  # rounded up: never early
    assert delay.delay_ms(-5) == 0
    assert delay.delay_ms(10**9) == delay.MAX_DELAY_MS


async def test_delays_are_never_early_and_in_eta_order_beyond_their_lateness(
    make: Make, queue_name: str
) -> None:
    """Each delayed message arrives never early and less than ``late`` seconds late; so those
    due ``late`` or more apart arrive in eta order, and closer ones need not.

    Why not strict order: a message's lateness is its own. It waits its set bits' TTLs one after
    the other, each counted from when it entered that level; a stall of the node (a loaded
    machine, a long GC) makes late only the hops that fall due during it. A 1.0 s message
    (6 hops: 512, 256, ... ms) whose 512 ms hop ends in a 0.45 s stall arrives at ~1.45 s,
    while the 1.3 s one (1024 ms first) waited through the stall in one hop and arrives at 1.3 s.
    """
    late = 0.5
    broker = await make()
    # Declared first (creating durable queues takes milliseconds), so that publishing is quick.
    await broker.publish([out(queue_name, b"warm-up", eta=time.time() + 0.002)])
    await broker.ack(await broker.fetch([queue_name], 1, 5))
    now = time.time()
    # Published longest first, with delays of many bit patterns (one TTL queue per set bit).
    delays = [1.3, 1.0, 0.77, 0.5, 0.255, 0.128, 0.05, 0.001]
    await broker.publish([out(queue_name, b"%g" % s, eta=now + s) for s in delays])
    arrived: list[tuple[bytes, float]] = []
    while len(arrived) < len(delays):
        for d in await broker.fetch([queue_name], 10, 5):
            arrived.append((d.body, time.time() - now))
            await broker.ack([d])
    when = dict(arrived)
    assert sorted(when) == sorted(b"%g" % s for s in delays)
    for wanted in delays:
        assert wanted - 0.001 <= when[b"%g" % wanted] < wanted + late, wanted
    position = {body: i for i, (body, _) in enumerate(arrived)}
    for first in delays:
        for then in delays:
            if then - first >= late:
                assert position[b"%g" % first] < position[b"%g" % then], (first, then)


async def test_an_eta_header_in_the_future_is_delayed_again(
    url: str, make: Make, queue_name: str
) -> None:
    # What a fanout's copies and etas beyond 49.7 days get: the consumer delays them itself.
    broker = await make()
    await broker.publish([out(queue_name, b"declared")])
    await broker.ack(await broker.fetch([queue_name], 1, 5))
    eta = time.time() + 0.4
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    headers = {delay.ETA_HEADER: round(eta * 1000)}
    message = aio_pika.Message(b"early", headers=headers, delivery_mode=2)
    await channel.default_exchange.publish(message, routing_key=queue_name)
    await connection.close()

    got = await broker.fetch([queue_name], 1, 5)
    assert [d.body for d in got] == [b"early"]
    assert time.time() >= eta - 0.001
    await broker.ack(got)


async def test_a_stopped_worker_hands_its_prefetched_messages_back_at_once(
    rabbitmq_server: RabbitNode, queue_name: str
) -> None:
    """An in-process worker stopped while its app lives on: what RabbitMQ pushed to it and it
    did not run is ready for other consumers right away, not only once the idle timer runs."""
    app = Aqueue("stopping", broker=rabbitmq_server.url, backend="memory://")
    app.conf.task_default_queue = queue_name
    running = asyncio.Event()

    @app.task(name="stopping.block")
    async def block() -> None:
        running.set()
        await asyncio.Event().wait()  # cancelled at shutdown, then released

    try:
        for _ in range(30):
            await block.delay()
        worker = Worker(app, concurrency=2, prefetch_multiplier=4)
        await worker.start()
        async with asyncio.timeout(10):
            await running.wait()
        await worker.stop(timeout=0)
        broker = await app.broker()
        assert isinstance(broker, AMQPBroker)
        [depth] = await broker.queue_depths([queue_name])
        assert depth.consumers == 0
        assert depth.ready == 30  # 2 cancelled runs and every prefetched message, all back
    finally:
        await app.close()


async def fetch_all(broker: AMQPBroker, queue: str, n: int) -> list[Any]:
    got: list[Any] = []
    while len(got) < n:
        batch = await broker.fetch([queue], n - len(got), 5)
        assert batch
        got += batch
    return got


async def test_one_multiple_ack_settles_the_oldest_deliveries_and_nothing_else(
    make: Make, queue_name: str, queue_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Acks of a channel's oldest unacked deliveries go as one ``multiple`` ack; a delivery
    not acked, older or newer, stays leased and comes back when its holder dies."""
    sent: list[tuple[list[int], int]] = []
    acknowledge = publisher.acknowledge

    async def spy(channel: Any, tags: Any, upto: int = 0) -> None:
        sent.append((list(tags), upto))
        await acknowledge(channel, tags, upto)

    monkeypatch.setattr(publisher, "acknowledge", spy)
    producer = await make(queue_type=queue_type)
    await producer.publish([out(queue_name, b"%d" % i) for i in range(12)])
    holder = await make(queue_type=queue_type, prefetch_count=12)
    got = sorted(await fetch_all(holder, queue_name, 12), key=lambda d: int(d.body))
    tags = [d.token.delivery_tag for d in got]
    assert tags == sorted(tags)

    await holder.ack(got[0:4] + got[5:8])  # 4 is held: 0-3 in one ack, 5-7 one by one
    assert sent[-1] == (tags[5:8], tags[3])
    await holder.ack([got[4], got[8]])  # now 4..8 are the oldest: one ack
    assert sent[-1] == ([], tags[8])
    await holder.ack([got[10]])  # 9 and 11 held
    assert sent[-1] == ([tags[10]], 0)
    await holder.close()  # dies holding 9 and 11

    again = await fetch_all(await make(queue_type=queue_type), queue_name, 2)
    assert sorted(d.body for d in again) == [b"11", b"9"]
    assert {d.delivery_count for d in again} == {2}


def test_the_ledger_covers_only_a_run_it_has_seen_whole() -> None:
    ledger = Ledger()
    for tag in (1, 2, 3, 4):
        ledger.add(tag)
    assert ledger.settle([2, 1, 4]) == (2, [4])  # 3 is still held
    assert ledger.settle([3]) == (0, [3])  # one alone needs no multiple
    assert len(ledger) == 0
    ledger.add(6)  # 5 never reached the ledger: it cannot know what else the channel holds
    ledger.add(7)
    assert not ledger.exact
    assert ledger.settle([6, 7]) == (0, [6, 7])


async def test_acks_reach_rabbitmq_in_the_order_they_were_settled(
    make: Make, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two batches acked at once while the connection's writer is backed up: the second's
    multiple ack, which covers the first's tags too, must not be written before the first's,
    or RabbitMQ closes the channel on an ack of a tag it no longer knows."""
    producer = await make()
    await producer.publish([out(queue_name, b"%d" % i) for i in range(11)])
    holder = await make(prefetch_count=11)
    got = sorted(await fetch_all(holder, queue_name, 11), key=lambda d: int(d.body))
    backed_up = asyncio.Event()
    write = publisher._write
    calls = 0

    async def slow_first(channel: Any, frame: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:  # the first batch's write waits, as for room in a full write queue
            await backed_up.wait()
        await write(channel, frame)

    monkeypatch.setattr(publisher, "_write", slow_first)
    first = asyncio.ensure_future(holder.ack(got[:5]))
    second = asyncio.ensure_future(holder.ack(got[5:10]))
    await asyncio.sleep(0.05)  # both under way; the second must wait for the first
    backed_up.set()
    await asyncio.gather(first, second)

    await holder.ack([got[10]])  # on the same channel, still open
    await holder.queue_depths([queue_name])  # a round trip on the connection
    assert not got[10].token.channel.is_closed
    await holder.close()  # what it had not acked would be back now
    [depth] = await (await make()).queue_depths([queue_name])
    assert depth.ready == 0
