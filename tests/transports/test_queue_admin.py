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
from aqueue.transports.base import DeadLetter, DeadLetterTakes, QueueAdmin, QueueDepth, queue_admin
from tests.apps.ops_tasks import OPS_TRANSPORTS, dead_letter_all, url_for

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


async def test_take_dead_letters_deletes_exactly_what_it_sent(broker: Broker) -> None:
    assert isinstance(broker, DeadLetterTakes)
    q = f"q-{uuid.uuid4().hex}"
    sent: list[list[bytes]] = []

    async def send(letters: list[DeadLetter]) -> None:
        sent.append([letter.body for letter in letters])

    assert await broker.take_dead_letters(q, 10, send) == 0
    assert sent == []  # nothing to take: send is not called
    await broker.publish([out(q, b"%d" % i) for i in range(4)])
    await dead_letter_all(broker, q, 4)

    async def fail(letters: list[DeadLetter]) -> None:
        raise RuntimeError("the broker refused")

    with pytest.raises(RuntimeError, match="refused"):
        await broker.take_dead_letters(q, 2, fail)
    assert [d.body for d in await broker.dead_letters(q)] == [b"0", b"1", b"2", b"3"]
    assert await broker.take_dead_letters(q, 2, send) == 2
    assert sent == [[b"0", b"1"]]
    assert [d.body for d in await broker.dead_letters(q)] == [b"2", b"3"]
    assert await broker.take_dead_letters(q, 10, send) == 2
    assert sent[-1] == [b"2", b"3"] and await broker.dead_letters(q) == []


async def test_a_take_deletes_its_own_letters_whatever_another_take_did(broker: Broker) -> None:
    # A second take runs to the end while the first is sending: the first still deletes only
    # what it took. Where the server holds letters for a taker (AMQP, memory), the second
    # gets the others; elsewhere it may send the same ones again.
    q = f"q-{uuid.uuid4().hex}"
    await broker.publish([out(q, b"%d" % i) for i in range(4)])
    await dead_letter_all(broker, q, 4)
    second: list[bytes] = []

    async def record(letters: list[DeadLetter]) -> None:
        second.extend(letter.body for letter in letters)

    async def send_after_another_take(letters: list[DeadLetter]) -> None:
        assert isinstance(broker, DeadLetterTakes)
        assert await broker.take_dead_letters(q, 2, record) == 2

    assert isinstance(broker, DeadLetterTakes)
    assert await broker.take_dead_letters(q, 2, send_after_another_take) == 2
    left = [d.body for d in await broker.dead_letters(q)]
    if is_amqp(broker) or broker.url.startswith("memory"):
        assert second == [b"2", b"3"] and left == []
    else:
        assert second == [b"0", b"1"] and left == [b"2", b"3"]
