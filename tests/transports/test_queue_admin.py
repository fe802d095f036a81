"""The QueueAdmin contract (depths, purge, dead-letter clean-up) on every broker."""

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


@pytest.fixture(params=OPS_TRANSPORTS)
async def broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Broker]:
    b = broker_from_url(url_for(request.param, request, tmp_path))
    await b.connect()
    yield b
    await b.close()


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
    await broker.dead_letter(leased[0], "testing")
    [depth] = await admin.queue_depths([q])
    assert depth == QueueDepth(q, ready=1, delayed=2, unacked=1, dead=1)
    assert depth.waiting == 3
    assert (await admin.queue_depths([other]))[0].ready == 1
    everything = {d.queue: d for d in await admin.queue_depths(None)}
    assert everything[q] == depth and everything[other].ready == 1
    [empty] = await admin.queue_depths([f"q-{uuid.uuid4().hex}"])
    assert (empty.ready, empty.delayed, empty.unacked, empty.dead) == (0, 0, 0, 0)


async def test_purge_removes_waiting_messages_but_not_leased_ones(broker: Broker) -> None:
    admin = queue_admin(broker)
    q, other = f"q-{uuid.uuid4().hex}", f"q-{uuid.uuid4().hex}"
    await broker.publish([out(q, b"a"), out(q, b"b"), out(q, b"c", eta=10**10)])
    await broker.publish([out(other, b"keep")])
    [held] = await broker.fetch([q], 1, 5)
    assert await admin.purge([q]) == 2  # b (ready) and c (delayed); a is leased
    assert await admin.queue_depths([q]) == [QueueDepth(q, 0, 0, 1, 0)]
    await broker.ack([held])  # its worker still acks it normally
    assert await admin.queue_depths([q]) == [QueueDepth(q, 0, 0, 0, 0)]
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
