"""Queue administration on RabbitMQ beyond the contract suite (tests/transports/
test_queue_admin.py): what passive declares count, the delay chain counted and purged as a
whole, queues that do not exist, quorum queues."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import aiormq
import aiormq.exceptions
import pytest

from aqueue.transports import Outgoing
from aqueue.transports.amqp.broker import AMQPBroker
from aqueue.transports.amqp.delay import CHAIN
from aqueue.transports.base import QueueDepth, dead_letter_queue
from tests.conftest import RabbitNode

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def broker(rabbitmq_server: RabbitNode) -> AsyncIterator[AMQPBroker]:
    b = AMQPBroker(rabbitmq_server.url, {})
    yield b
    await b.close()


def out(queue: str, body: bytes = b"x", eta: float | None = None) -> Outgoing:
    return Outgoing(queue, body, uuid.uuid4().hex, 0, eta)


async def test_the_delay_chain_is_counted_and_purged_as_a_whole(
    broker: AMQPBroker, queue_name: str
) -> None:
    await broker.purge([CHAIN])  # what earlier tests left in the shared chain
    later = time.time() + 3600
    await broker.publish([out(queue_name, b"%d" % i, eta=later) for i in range(3)])
    await broker.publish([out(queue_name, b"now")])
    [chain, queue] = await broker.queue_depths([CHAIN, queue_name])
    assert chain == QueueDepth(CHAIN, 0, 3, None, 0)
    assert queue == QueueDepth(queue_name, 1, None, None, 0, 0)
    assert chain.waiting == 3
    # A queue's purge leaves the chain alone: its delayed messages are not told apart there.
    assert await broker.purge([queue_name]) == 1
    assert (await broker.queue_depths([CHAIN]))[0].delayed == 3
    assert await broker.purge([CHAIN]) == 3
    assert (await broker.queue_depths([CHAIN]))[0].delayed == 0
    everything = await broker.queue_depths(None)  # what this broker declared, and the chain
    assert [d.queue for d in everything] == [queue_name, CHAIN]


async def test_a_queue_that_does_not_exist_counts_zero_and_is_not_made(
    broker: AMQPBroker, rabbitmq_server: RabbitNode
) -> None:
    missing = f"missing-{uuid.uuid4().hex}"
    assert await broker.queue_depths([missing]) == [QueueDepth(missing, 0, None, None, 0, None)]
    assert await broker.purge([missing]) == 0
    assert await broker.purge_dead_letters(missing) == 0
    assert await broker.purge_dead_letters(missing, 5) == 0
    assert await broker.dead_letters(missing) == []
    connection = await aiormq.connect(rabbitmq_server.url)
    try:
        for name in (missing, dead_letter_queue(missing)):
            channel = await connection.channel()
            with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
                await channel.queue_declare(name, passive=True)
    finally:
        await connection.close()


async def test_consumers_are_counted_one_per_consuming_broker(
    broker: AMQPBroker, rabbitmq_server: RabbitNode, queue_name: str
) -> None:
    await broker.publish([out(queue_name, b"%d" % i) for i in range(6)])
    assert len(await broker.fetch([queue_name], 2, 5)) == 2
    [depth] = await broker.queue_depths([queue_name])
    assert depth == QueueDepth(queue_name, 4, None, None, 0, 1)
    second = AMQPBroker(rabbitmq_server.url, {})
    try:
        assert len(await second.fetch([queue_name], 2, 5)) == 2
    finally:
        [depth] = await broker.queue_depths([queue_name])
        await second.close()
    assert depth == QueueDepth(queue_name, 2, None, None, 0, 2)


async def test_quorum_queues_are_counted_and_purged_too(rabbitmq_server: RabbitNode) -> None:
    broker = AMQPBroker(rabbitmq_server.url, {"queue_type": "quorum"})
    try:
        await counted_and_purged(broker, f"quorum-{uuid.uuid4().hex}")
    finally:
        await broker.close()


async def counted_and_purged(broker: AMQPBroker, queue: str) -> None:
    await broker.publish([out(queue, b"%d" % i) for i in range(5)])
    [held] = await broker.fetch([queue], 1, 5)
    await broker.dead_letter(held, "testing")
    for delivery in await broker.fetch([queue], 1, 5):
        await broker.dead_letter(delivery, "testing")
    [depth] = await broker.queue_depths([queue])
    assert (depth.ready, depth.dead, depth.consumers) in {(3, 2, 1), (2, 2, 1)}  # prefetch refill
    assert [d.body for d in await broker.dead_letters(queue)] == [b"0", b"1"]
    assert await broker.purge_dead_letters(queue, 1) == 1
    assert [d.body for d in await broker.dead_letters(queue)] == [b"1"]
    assert await broker.purge_dead_letters(queue) == 1
    assert (await broker.queue_depths([queue]))[0].dead == 0
