"""The QueueAdmin contract (depths, purge, dead-letter clean-up) on every broker.

RabbitMQ counts differently (docs/amqp.md, *Queue administration*): AMQP does not say how many
messages consumers hold (``unacked`` is ``None``), and delayed messages wait in one chain for
every queue, counted and purged as a whole (a queue's own ``delayed`` is ``None``); it counts
consumers, which the other brokers do not (``None``). :func:`expect` writes a depth down the
way the broker under test counts it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aqueue.exceptions import ConfigurationError
from aqueue.transports import Broker, Outgoing, broker_from_url
from aqueue.transports.base import QueueAdmin, QueueDepth, queue_admin
from tests.apps.ops_tasks import OPS_TRANSPORTS, url_for

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(params=[*OPS_TRANSPORTS, "amqp"])
async def broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Broker]:
    b = broker_from_url(url_for(request.param, request, tmp_path))
    await b.connect()
    yield b
    await b.close()


def is_amqp(broker: Broker) -> bool:
    return broker.url.startswith("amqp")


def expect(
    broker: Broker, q: str, ready: int, delayed: int, unacked: int, dead: int, consumers: int
) -> QueueDepth:
    """The depth ``broker`` reports for these counts (``consumers``: AMQP consumers alive)."""
    if is_amqp(broker):
        return QueueDepth(q, ready, None, None, dead, consumers)
    return QueueDepth(q, ready, delayed, unacked, dead)


def out(queue: str, body: bytes, eta: float | None = None, priority: int = 0) -> Outgoing:
    return Outgoing(queue, body, uuid.uuid4().hex, priority, eta)


async def test_depths_count_ready_delayed_unacked_and_dead(broker: Broker) -> None:
    admin = queue_admin(broker)
    q, other = f"q-{uuid.uuid4().hex}", f"q-{uuid.uuid4().hex}"
    far = 10**10
    await broker.publish([out(q, b"r1"), out(q, b"r2", priority=9), out(q, b"r3")])
    await broker.publish([out(q, b"d1", eta=far), out(q, b"d2", eta=far), out(other, b"x")])
    leased = await broker.fetch([q], 2, 5)
    assert len(leased) == 2
    [depth] = await admin.queue_depths([q])
    assert depth == expect(broker, q, ready=1, delayed=2, unacked=2, dead=0, consumers=1)
    assert depth.waiting == (1 if is_amqp(broker) else 3)
    await broker.dead_letter(leased[0], "testing")
    [depth] = await admin.queue_depths([q])
    assert depth.dead == 1
    if not is_amqp(broker):  # AMQP: the consumer's freed prefetch slot takes the ready message
        assert depth == QueueDepth(q, ready=1, delayed=2, unacked=1, dead=1)
    assert (await admin.queue_depths([other]))[0].ready == 1
    everything = {d.queue: d for d in await admin.queue_depths(None)}
    assert everything[q].dead == 1 and everything[other].ready == 1
    if not is_amqp(broker):
        assert everything[q] == depth
    [empty] = await admin.queue_depths([f"q-{uuid.uuid4().hex}"])
    assert (empty.ready, empty.delayed or 0, empty.unacked or 0, empty.dead) == (0, 0, 0, 0)


async def test_purge_removes_waiting_messages_but_not_leased_ones(broker: Broker) -> None:
    admin = queue_admin(broker)
    q, other = f"q-{uuid.uuid4().hex}", f"q-{uuid.uuid4().hex}"
    await broker.publish([out(q, b"a"), out(q, b"b"), out(q, b"c", eta=10**10)])
    await broker.publish([out(other, b"keep")])
    [held] = await broker.fetch([q], 1, 5)
    # b (ready) and c (delayed); a is leased. AMQP: b only (c waits in the shared delay chain).
    assert await admin.purge([q]) == (1 if is_amqp(broker) else 2)
    assert await admin.queue_depths([q]) == [expect(broker, q, 0, 0, 1, 0, consumers=1)]
    await broker.ack([held])  # its worker still acks it normally
    assert await admin.queue_depths([q]) == [expect(broker, q, 0, 0, 0, 0, consumers=1)]
    assert (await admin.queue_depths([other]))[0].ready == 1
    assert await admin.purge([q]) == 0


async def test_purge_dead_letters_oldest_first_with_a_limit(broker: Broker) -> None:
    admin = queue_admin(broker)
    q = f"q-{uuid.uuid4().hex}"
    await broker.publish([out(q, b"%d" % i) for i in range(4)])
    for delivery in await broker.fetch([q], 4, 5):
        await broker.dead_letter(delivery, "bad")
    assert [d.body for d in await broker.dead_letters(q)] == [b"0", b"1", b"2", b"3"]
    assert await admin.purge_dead_letters(q, 1) == 1
    assert [d.body for d in await broker.dead_letters(q)] == [b"1", b"2", b"3"]
    assert await admin.purge_dead_letters(q) == 3
    assert await broker.dead_letters(q) == []
    assert await admin.purge_dead_letters(q) == 0


def test_a_broker_without_queue_admin_is_refused_with_a_clear_error() -> None:
    class Bare:
        async def publish(self, messages: object) -> None: ...

    with pytest.raises(ConfigurationError, match="does not support queue administration"):
        queue_admin(Bare())  # type: ignore[arg-type]
    assert not isinstance(Bare(), QueueAdmin)
