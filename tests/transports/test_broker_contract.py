"""The Broker Protocol contract, run against every transport (see ``broker_url`` in conftest).

A new broker is done when it passes this file unchanged. Sleeps appear only where the contract
is about time passing (a lease or an eta running out); everything else waits on results.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from aqueue.transports import Broker, Delivery, Outgoing, RunTracking, broker_from_url

pytestmark = pytest.mark.timeout(30)

Make = Callable[..., Awaitable[Broker]]

SHORT_LEASE = 0.5  # visibility timeout (seconds) of the tests about leases running out


@pytest.fixture
async def make_broker(broker_url: str) -> AsyncIterator[Make]:
    """Create connected brokers on ``broker_url`` (transport options as keywords); closes them."""
    made: list[Broker] = []

    async def make(**options: Any) -> Broker:
        broker = broker_from_url(broker_url, options)
        await broker.connect()
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.close()


@pytest.fixture
async def broker(make_broker: Make) -> Broker:
    return await make_broker()


def skip_without_lease_timer(broker_url: str) -> None:
    """Skip a test that needs a lease to run out while its consumer is alive.

    AMQP has no lease timer: a delivery stays with its consumer until acked or until the
    consumer's channel closes (it died). ``test_amqp.py`` checks the same counts that way.
    """
    if broker_url.startswith(("amqp:", "amqps:")):
        pytest.skip("AMQP: a delivery returns when its consumer's channel closes, not on a timer")


async def second_consumer(first: Broker, make_broker: Make, **options: Any) -> Broker:
    """Another consumer of the same queues: a new client, except for memory:// (state is per
    instance, so the only other consumer is another fetch on the same instance)."""
    if type(first).__name__ == "MemoryBroker":
        return first
    return await make_broker(**options)


async def run(broker: Broker, deliveries: list[Delivery], isolated: bool = False) -> None:
    """Mark ``deliveries`` as running, as a worker does just before their tasks run, so that a
    lease running out counts against them (RunTracking; AMQP counts every return anyway)."""
    if isinstance(broker, RunTracking):
        assert await broker.start([(d, isolated) for d in deliveries]) == [True] * len(deliveries)


async def tracking_pair(make_broker: Make, broker_url: str) -> tuple[Any, Any]:
    """Two consumers of one server with short leases, on brokers that track runs (else skip)."""
    skip_without_lease_timer(broker_url)
    first = await make_broker(visibility_timeout=SHORT_LEASE)
    if not isinstance(first, RunTracking):
        pytest.skip(f"{type(first).__name__} counts every redelivery")
    return first, await second_consumer(first, make_broker, visibility_timeout=SHORT_LEASE)


def out(queue: str, body: bytes, priority: int = 0, eta: float | None = None) -> Outgoing:
    return Outgoing(queue, body, uuid.uuid4().hex, priority, eta)


def bodies(deliveries: list[Delivery]) -> list[bytes]:
    return [d.body for d in deliveries]


async def fetch_all(broker: Broker, queues: list[str], expected: int) -> list[Delivery]:
    """Fetch until ``expected`` deliveries arrived (each fetch may wait up to 5 s)."""
    got: list[Delivery] = []
    while len(got) < expected:
        batch = await broker.fetch(queues, expected - len(got), 5)
        assert batch, f"only {len(got)} of {expected} messages arrived"
        got += batch
    return got


async def test_roundtrip_keeps_bytes_exact(broker: Broker, queue_name: str) -> None:
    sent = [bytes(range(256)), b"", b"\x00" * 10, "ünïcødé".encode(), b"x" * 100_000]
    await broker.publish([out(queue_name, body) for body in sent])

    got = await fetch_all(broker, [queue_name], len(sent))

    assert bodies(got) == sent
    assert {d.queue for d in got} == {queue_name}
    assert {d.delivery_count for d in got} == {1}
    await broker.ack(got)


async def test_fetch_returns_empty_after_timeout(broker: Broker, queue_name: str) -> None:
    started = time.monotonic()
    assert await broker.fetch([queue_name], 10, 0.3) == []
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 3

    started = time.monotonic()
    assert await broker.fetch([queue_name], 10, 0) == []
    assert time.monotonic() - started < 1


async def test_fetch_returns_as_soon_as_a_message_is_ready(
    make_broker: Make, queue_name: str
) -> None:
    consumer = await make_broker()
    producer = await second_consumer(consumer, make_broker)
    started = time.monotonic()

    waiting = asyncio.create_task(consumer.fetch([queue_name], 10, 10))
    await asyncio.sleep(0.2)  # let the fetch start waiting
    await producer.publish([out(queue_name, b"late")])
    got = await waiting

    assert bodies(got) == [b"late"]
    assert time.monotonic() - started < 5
    await consumer.ack(got)


async def test_limit_is_respected(broker: Broker, queue_name: str, broker_url: str) -> None:
    await broker.publish([out(queue_name, b"%d" % i) for i in range(5)])

    sizes: list[int] = []
    while sum(sizes) < 5:
        batch = await broker.fetch([queue_name], 2, 5)
        assert 1 <= len(batch) <= 2
        sizes.append(len(batch))
        await broker.ack(batch)

    if not broker_url.startswith("amqp"):
        # Pulled: as many as are ready, up to the limit. RabbitMQ pushes instead, and a fetch
        # right after an ack may run before it has pushed the next ones: fewer, not more.
        assert sizes == [2, 2, 1]
    assert await broker.fetch([queue_name], 2, 0.1) == []


async def test_higher_priority_first(broker: Broker, queue_name: str) -> None:
    await broker.publish([out(queue_name, b"p0", 0), out(queue_name, b"p9", 9)])
    await broker.publish([out(queue_name, b"p5", 5)])

    together = await fetch_all(broker, [queue_name], 3)
    assert bodies(together) == [b"p9", b"p5", b"p0"]
    await broker.ack(together)

    await broker.publish([out(queue_name, b"p0", 0), out(queue_name, b"p9", 9)])
    one_by_one = [(await broker.fetch([queue_name], 1, 5))[0] for _ in range(2)]
    assert bodies(one_by_one) == [b"p9", b"p0"]
    await broker.ack(one_by_one)


async def test_fifo_within_a_priority(broker: Broker, queue_name: str) -> None:
    sent = [b"%02d" % i for i in range(20)]
    await broker.publish([out(queue_name, body, 3) for body in sent[:10]])
    await broker.publish([out(queue_name, body, 3) for body in sent[10:]])

    got: list[Delivery] = []
    while len(got) < len(sent):
        batch = await broker.fetch([queue_name], 7, 5)
        assert batch
        # Acked as a worker does: an AMQP consumer holds at most its prefetch count unacked.
        await broker.ack(batch)
        got += batch

    assert bodies(got) == sent


async def test_several_queues(broker: Broker, queue_name: str) -> None:
    other = f"{queue_name}-other"
    await broker.publish([out(queue_name, b"a1"), out(other, b"b1"), out(queue_name, b"a2")])

    only_other = await broker.fetch([other], 10, 5)
    assert [(d.queue, d.body) for d in only_other] == [(other, b"b1")]

    await broker.publish([out(other, b"b2")])
    both = await fetch_all(broker, [queue_name, other], 3)
    assert sorted((d.queue, d.body) for d in both) == [
        (queue_name, b"a1"),
        (queue_name, b"a2"),
        (other, b"b2"),
    ]
    await broker.ack(only_other + both)


async def test_priority_wins_across_queues(
    broker: Broker, broker_url: str, queue_name: str
) -> None:
    other = f"{queue_name}-other"
    await broker.publish([out(queue_name, b"low", 0), out(other, b"high", 9)])

    first = await broker.fetch([queue_name, other], 1, 5)
    rest = await broker.fetch([queue_name, other], 1, 5)

    if broker_url.startswith(("redis+cluster:", "rediss+cluster:")):
        # Redis Cluster: priorities order a queue; between queues, the order given does
        # (a queue per slot, read one after the other; docs/deployment.md#redis-cluster).
        assert [(d.queue, d.body) for d in first + rest] == [(queue_name, b"low"), (other, b"high")]
    else:
        assert [(d.queue, d.body) for d in first + rest] == [(other, b"high"), (queue_name, b"low")]
    await broker.ack(first + rest)


async def test_ack_removes_for_good(make_broker: Make, queue_name: str) -> None:
    broker = await make_broker(visibility_timeout=SHORT_LEASE)
    await broker.publish([out(queue_name, b"done")])
    got = await broker.fetch([queue_name], 10, 5)

    await broker.ack(got)
    await broker.ack(got)  # acking twice is harmless

    await asyncio.sleep(SHORT_LEASE + 0.2)  # past the lease: an unacked message would be back
    assert await broker.fetch([queue_name], 10, 0.3) == []


async def test_leased_message_is_not_handed_to_another_consumer(
    make_broker: Make, queue_name: str
) -> None:
    first = await make_broker()
    second = await second_consumer(first, make_broker)
    await first.publish([out(queue_name, b"mine"), out(queue_name, b"yours")])

    mine = await first.fetch([queue_name], 1, 5)
    yours = await second.fetch([queue_name], 10, 5)

    assert bodies(mine) == [b"mine"]
    assert bodies(yours) == [b"yours"]
    assert await second.fetch([queue_name], 10, 0.3) == []
    assert await first.fetch([queue_name], 10, 0) == []
    await first.ack(mine)
    await second.ack(yours)


async def test_expired_lease_is_delivered_again(
    make_broker: Make, queue_name: str, broker_url: str
) -> None:
    skip_without_lease_timer(broker_url)
    first = await make_broker(visibility_timeout=SHORT_LEASE)
    second = await second_consumer(first, make_broker, visibility_timeout=SHORT_LEASE)
    await first.publish([out(queue_name, b"again")])
    got = await first.fetch([queue_name], 10, 5)
    assert [d.delivery_count for d in got] == [1]
    await run(first, got)
    leased_at = time.monotonic()

    # The first consumer "dies" running it: it never acks. It comes back once the lease runs out.
    again = await second.fetch([queue_name], 10, 5)

    assert time.monotonic() - leased_at >= SHORT_LEASE - 0.1
    assert [(d.body, d.delivery_count) for d in again] == [(b"again", 2)]
    await second.ack(again)
    assert await second.fetch([queue_name], 10, SHORT_LEASE + 0.3) == []


async def test_a_lease_that_runs_out_unstarted_is_not_counted(
    make_broker: Make, queue_name: str, broker_url: str
) -> None:
    """Prefetched but never started: its worker's death is not the message's fault."""
    first, second = await tracking_pair(make_broker, broker_url)
    await first.publish([out(queue_name, b"prefetched"), out(queue_name, b"running")])
    held = await fetch_all(first, [queue_name], 2)
    await run(first, [d for d in held if d.body == b"running"])

    again = await fetch_all(second, [queue_name], 2)  # after the leases ran out

    counts = {d.body: (d.delivery_count, d.strikes) for d in again}
    assert counts == {b"prefetched": (1, 0), b"running": (2, 0)}
    await second.ack(again)


async def test_an_isolated_run_that_dies_is_a_strike(
    make_broker: Make, queue_name: str, broker_url: str
) -> None:
    first, second = await tracking_pair(make_broker, broker_url)
    await first.publish([out(queue_name, b"suspect")])
    got = await first.fetch([queue_name], 1, 5)
    await run(first, got, isolated=True)

    again = await second.fetch([queue_name], 1, 5)  # after the lease ran out
    assert [(d.delivery_count, d.strikes) for d in again] == [(2, 1)]
    await second.release(again)  # a hand-back keeps the counts
    kept = await first.fetch([queue_name], 1, 5)
    assert [(d.delivery_count, d.strikes) for d in kept] == [(2, 1)]
    await first.ack(kept)


async def test_start_refuses_a_lease_taken_over(
    make_broker: Make, queue_name: str, broker_url: str
) -> None:
    slow, other = await tracking_pair(make_broker, broker_url)
    await slow.publish([out(queue_name, b"contested")])
    stale = await slow.fetch([queue_name], 1, 5)
    taken = await other.fetch([queue_name], 1, 5)  # after the lease ran out

    assert await slow.start([(stale[0], False)]) == [False]
    assert await other.start([(taken[0], False)]) == [True]
    await other.ack(taken)


async def test_renew_keeps_the_lease(make_broker: Make, queue_name: str) -> None:
    first = await make_broker(visibility_timeout=SHORT_LEASE)
    second = await second_consumer(first, make_broker, visibility_timeout=SHORT_LEASE)
    await first.publish([out(queue_name, b"long task")])
    got = await first.fetch([queue_name], 10, 5)
    started = time.monotonic()

    while time.monotonic() - started < SHORT_LEASE * 2.5:
        await asyncio.sleep(SHORT_LEASE / 3)  # a long task; it renews well within the lease
        await first.renew(got)
        assert await second.fetch([queue_name], 10, 0) == []

    await first.ack(got)
    assert await second.fetch([queue_name], 10, SHORT_LEASE + 0.3) == []


async def test_release_makes_it_ready_at_once_keeping_the_count(
    make_broker: Make, queue_name: str, broker_url: str
) -> None:
    skip_without_lease_timer(broker_url)
    first = await make_broker(visibility_timeout=SHORT_LEASE)
    second = await second_consumer(first, make_broker, visibility_timeout=SHORT_LEASE)
    await first.publish([out(queue_name, b"back")])
    await run(first, await first.fetch([queue_name], 10, 5))
    redelivered = await second.fetch([queue_name], 10, 5)  # after the lease ran out
    assert [d.delivery_count for d in redelivered] == [2]

    await second.release(redelivered)
    started = time.monotonic()
    again = await first.fetch([queue_name], 10, 5)

    assert time.monotonic() - started < SHORT_LEASE
    assert [(d.body, d.delivery_count) for d in again] == [(b"back", 2)]
    await first.ack(again)


async def test_release_of_a_fresh_delivery(broker: Broker, queue_name: str) -> None:
    await broker.publish([out(queue_name, b"one"), out(queue_name, b"two")])
    got = await fetch_all(broker, [queue_name], 2)

    await broker.release(got)
    again = await fetch_all(broker, [queue_name], 2)

    assert sorted(bodies(again)) == [b"one", b"two"]
    assert {d.delivery_count for d in again} == {1}
    await broker.ack(again)


async def test_eta_in_the_future_waits_until_due(broker: Broker, queue_name: str) -> None:
    eta = time.time() + 0.4
    await broker.publish([out(queue_name, b"later", eta=eta), out(queue_name, b"now")])

    first = await broker.fetch([queue_name], 10, 5)
    assert bodies(first) == [b"now"]
    assert time.time() < eta, "test machine too slow to check an eta of 0.4 s"

    later = await broker.fetch([queue_name], 10, 5)
    assert bodies(later) == [b"later"]
    assert time.time() >= eta - 0.01
    assert time.time() < eta + 1.5  # due messages are moved within about a second
    await broker.ack(first + later)


async def test_eta_published_by_another_client(make_broker: Make, queue_name: str) -> None:
    consumer = await make_broker()
    producer = await second_consumer(consumer, make_broker)
    assert await consumer.fetch([queue_name], 10, 0) == []  # the consumer is already polling
    eta = time.time() + 0.3

    await producer.publish([out(queue_name, b"delayed", 7, eta=eta)])
    got = await consumer.fetch([queue_name], 10, 5)

    assert bodies(got) == [b"delayed"]
    assert eta - 0.01 <= time.time() < eta + 1.5
    await consumer.ack(got)


async def test_eta_in_the_past_is_ready_now(broker: Broker, queue_name: str) -> None:
    await broker.publish([out(queue_name, b"overdue", eta=time.time() - 60)])

    got = await broker.fetch([queue_name], 10, 5)

    assert bodies(got) == [b"overdue"]
    await broker.ack(got)


async def test_dead_letter(make_broker: Make, queue_name: str) -> None:
    broker = await make_broker(visibility_timeout=SHORT_LEASE)
    await broker.publish([out(queue_name, b"poison"), out(queue_name, b"fine")])
    poison, fine = await fetch_all(broker, [queue_name], 2)
    before = time.time()

    await broker.dead_letter(poison, "ValueError: bad input")
    await broker.ack([fine])

    dead = await broker.dead_letters(queue_name)
    assert [(d.queue, d.body, d.reason) for d in dead] == [
        (queue_name, b"poison", "ValueError: bad input")
    ]
    assert before - 5 <= dead[0].time <= time.time() + 5
    await asyncio.sleep(SHORT_LEASE + 0.2)  # past the lease: a message still leased would be back
    assert await broker.fetch([queue_name], 10, 0.3) == []
    assert await broker.dead_letters(f"{queue_name}-other") == []


async def test_dead_letters_limit_and_order(broker: Broker, queue_name: str) -> None:
    await broker.publish([out(queue_name, b"%d" % i) for i in range(5)])
    for delivery in await fetch_all(broker, [queue_name], 5):
        await broker.dead_letter(delivery, f"reason {delivery.body.decode()}")

    dead = await broker.dead_letters(queue_name, limit=3)

    assert [(d.body, d.reason) for d in dead] == [
        (b"0", "reason 0"),
        (b"1", "reason 1"),
        (b"2", "reason 2"),
    ]


async def test_publish_many_in_one_call(broker: Broker, queue_name: str) -> None:
    sent = [b"message %04d" % i for i in range(1000)]
    await broker.publish([out(queue_name, body) for body in sent])

    got: list[Delivery] = []
    while len(got) < len(sent):
        batch = await broker.fetch([queue_name], 100, 5)
        assert batch, f"only {len(got)} of {len(sent)} arrived"
        assert len(batch) <= 100
        await broker.ack(batch)
        got += batch

    assert bodies(got) == sent
    assert await broker.fetch([queue_name], 100, 0.1) == []


async def test_publish_nothing_and_ack_nothing(broker: Broker, queue_name: str) -> None:
    await broker.publish([])
    await broker.ack([])
    await broker.release([])
    await broker.renew([])
    assert await broker.fetch([queue_name], 10, 0) == []


async def test_connect_and_close_are_idempotent(broker_url: str, queue_name: str) -> None:
    broker = broker_from_url(broker_url)
    await broker.connect()
    await broker.connect()
    await broker.publish([out(queue_name, b"x")])
    got = await broker.fetch([queue_name], 1, 5)
    await broker.ack(got)
    await broker.close()
    await broker.close()

    await broker.connect()  # usable again after close
    assert await broker.fetch([queue_name], 1, 0) == []
    await broker.close()


async def test_unacked_message_of_a_closed_consumer_comes_back(
    make_broker: Make, queue_name: str, broker_url: str
) -> None:
    if broker_url.startswith("memory:"):
        pytest.skip("memory:// state is per instance: no other consumer survives the close")
    first = await make_broker(visibility_timeout=SHORT_LEASE)
    second = await make_broker(visibility_timeout=SHORT_LEASE)
    await first.publish([out(queue_name, b"orphan")])
    got = await first.fetch([queue_name], 10, 5)
    assert bodies(got) == [b"orphan"]
    await run(first, got)

    await first.close()
    again = await second.fetch([queue_name], 10, 5)

    assert [(d.body, d.delivery_count) for d in again] == [(b"orphan", 2)]
    await second.ack(again)
