"""Quorum queues on one RabbitMQ node: RabbitMQ's own poison cap (``x-delivery-limit`` from
``task_max_deliveries``), queues found declared without it, and what priorities do. The
3-node cluster is tests/cluster/test_rabbitmq_cluster.py (``make test-cluster``)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

import aiormq
import aiormq.exceptions
import pytest
from aiormq import spec

from aqueue import Aqueue
from aqueue.transports import Outgoing
from aqueue.transports.amqp.broker import AMQPBroker
from tests.conftest import RabbitNode, until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def raw(rabbitmq_server: RabbitNode) -> AsyncIterator[aiormq.abc.AbstractConnection]:
    """A plain aiormq connection to the test node."""
    connection = await aiormq.connect(rabbitmq_server.url)
    yield connection
    await connection.close()


async def test_rabbitmq_dead_letters_a_message_that_keeps_coming_back(
    rabbitmq_server: RabbitNode, raw: aiormq.abc.AbstractConnection
) -> None:
    """A consumer that dies holding the message, every time, before any worker can count it:
    RabbitMQ moves it to the dead-letter queue itself after max_deliveries + 1 deliveries."""
    queue = f"poison-{uuid.uuid4().hex}"
    broker = AMQPBroker(rabbitmq_server.url, {"queue_type": "quorum"}, max_deliveries=2)
    try:
        await broker.publish([Outgoing(queue, b"poison", "p-1")])
        seen = []
        for _ in range(4):
            channel = await raw.channel()
            got = await channel.basic_get(queue, no_ack=False)
            if isinstance(got.delivery, spec.Basic.GetOk):
                seen.append((got.header.properties.headers or {}).get("x-delivery-count"))
            await channel.close()  # dies holding it: RabbitMQ counts a return
        assert seen == [0, 1, 2]  # deliveries 1..3: the cap of 2 returns, then dead-lettered

        async def moved() -> bool:
            return bool(await broker.dead_letters(queue))

        await until(moved, 10, "RabbitMQ dead-letters it")  # in the background
        [letter] = await broker.dead_letters(queue)
        assert (letter.body, letter.reason) == (b"poison", "delivery_limit by RabbitMQ (x-death)")
    finally:
        await broker.close()


async def test_the_delivery_limit_is_task_max_deliveries(
    rabbitmq_server: RabbitNode, raw: aiormq.abc.AbstractConnection
) -> None:
    queue = f"capped-{uuid.uuid4().hex}"
    app = Aqueue(
        "capped",
        broker=rabbitmq_server.url,
        backend=None,
        task_default_queue=queue,
        task_max_deliveries=3,
        broker_transport_options={"queue_type": "quorum"},
    )

    @app.task(name="capped.noop", ignore_result=True)
    async def noop() -> None: ...

    try:
        await noop.delay()
    finally:
        await app.close()
    channel = await raw.channel()
    arguments = {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": f"{queue}.dlq",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    # Redeclaring with equal arguments is accepted; any other delivery limit is refused.
    await channel.queue_declare(queue, durable=True, arguments={**arguments, "x-delivery-limit": 3})
    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed, match="x-delivery-limit"):
        await channel.queue_declare(
            queue, durable=True, arguments={**arguments, "x-delivery-limit": 4}
        )


async def test_a_quorum_queue_declared_without_the_cap_is_used_as_it_is(
    rabbitmq_server: RabbitNode,
    raw: aiormq.abc.AbstractConnection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As an older aqueue declared them (or another tool): refusing it would stop the queue;
    the worker's own count still caps poison messages, so it is used, with a warning."""
    queue = f"older-{uuid.uuid4().hex}"
    channel = await raw.channel()
    await channel.queue_declare(f"{queue}.dlq", durable=True, arguments={"x-queue-type": "quorum"})
    await channel.queue_declare(
        queue,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": f"{queue}.dlq",
        },
    )
    caplog.set_level(logging.WARNING, logger="aqueue.transports.amqp.topology")
    broker = AMQPBroker(rabbitmq_server.url, {"queue_type": "quorum"})
    try:
        await broker.publish([Outgoing(queue, b"a", "a-1")])
        [delivery] = await broker.fetch([queue], 1, 5)
        assert (delivery.body, delivery.delivery_count) == (b"a", 1)
        await broker.ack([delivery])
    finally:
        await broker.close()
    [warning] = [r for r in caplog.records if r.name == "aqueue.transports.amqp.topology"]
    assert f"quorum queue {queue!r} exists with other poison-cap arguments" in warning.message
    assert "x-delivery-limit" in warning.message or "x-dead-letter-strategy" in warning.message


async def test_priorities_on_quorum_queues_of_rabbitmq_3_are_said_to_do_nothing(
    rabbitmq_server: RabbitNode, caplog: pytest.LogCaptureFixture
) -> None:
    """RabbitMQ 3.x quorum queues deliver in order whatever the priority: one warning says so;
    the messages go through, in publishing order."""
    queue = f"prio-{uuid.uuid4().hex}"
    caplog.set_level(logging.WARNING, logger="aqueue.transports.amqp.broker")
    broker = AMQPBroker(rabbitmq_server.url, {"queue_type": "quorum", "prefetch_count": 1})
    try:
        await broker.publish([Outgoing(queue, b"low", "l-1", 0)])
        await broker.publish([Outgoing(queue, b"high", "h-1", 9)])
        await broker.publish([Outgoing(queue, b"high", "h-2", 9)])  # warned once only
        bodies = []
        for _ in range(2):
            [delivery] = await broker.fetch([queue], 1, 5)
            bodies.append(delivery.body)
            await broker.ack([delivery])
        assert bodies == [b"low", b"high"]
    finally:
        await broker.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == "aqueue.transports.amqp.broker"]
    assert len(warnings) == 1
    assert "quorum queues on RabbitMQ 3.10" in warnings[0] and "have no priorities" in warnings[0]
