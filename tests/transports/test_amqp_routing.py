"""Celery's AMQP routing: ``task_queues`` with direct, topic and fanout exchanges, ``task_routes``
and ``apply_async(queue=, exchange=, routing_key=)``, with real workers on the test node."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from aqueue import Aqueue, Task, Worker
from aqueue.exceptions import ConfigurationError
from aqueue.message import decode
from aqueue.transports.amqp.broker import AMQPBroker
from tests.conftest import RabbitNode

pytestmark = pytest.mark.timeout(60)


@dataclass
class Runs:
    """Runs of ``routing.record``: (worker hostname, epoch seconds) by task id."""

    by_id: dict[str | None, list[tuple[str | None, float]]] = field(default_factory=dict)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def add(self, task_id: str | None, hostname: str | None) -> None:
        async with self.changed:
            self.by_id.setdefault(task_id, []).append((hostname, time.time()))
            self.changed.notify_all()

    async def wait(self, task_id: str, count: int) -> list[tuple[str | None, float]]:
        """Wait until the task ran ``count`` times (every copy of a fanout); return the runs."""
        async with self.changed:
            await asyncio.wait_for(
                self.changed.wait_for(lambda: len(self.by_id.get(task_id, [])) >= count), 10
            )
            return self.by_id[task_id]


def build(
    broker: str, backend: str, runs: Runs | None = None, **settings: Any
) -> tuple[Aqueue, Task[Any, Any]]:
    app = Aqueue("routing", broker=broker, backend=backend, **settings)

    @app.task(name="routing.record", bind=True)
    async def record(self: Task[Any, Any], tag: str) -> str:
        if runs is not None:
            await runs.add(self.request.id, self.request.hostname)
        return tag

    return app, record


@pytest.fixture
def names() -> dict[str, str]:
    """Exchange and queue names of one test, so tests never see each other's bindings."""
    tag = uuid.uuid4().hex[:8]
    return {k: f"{k}-{tag}" for k in ("media", "video", "image", "all", "bcast", "fan_a", "fan_b")}


@pytest.fixture
def urls(rabbitmq_server: RabbitNode, redis_server: str) -> tuple[str, str]:
    return rabbitmq_server.url, f"{redis_server}/0"


@pytest.fixture
async def raw(urls: tuple[str, str]) -> AsyncIterator[AMQPBroker]:
    """A bare consumer, to see which queues a message reached."""
    broker = AMQPBroker(urls[0], {})
    yield broker
    await broker.close()


async def ids_in(broker: AMQPBroker, queue: str) -> list[str]:
    """Task ids of the messages in ``queue`` (fetched, then acked)."""
    got = await broker.fetch([queue], 100, 0.5)
    await broker.ack(got)
    return [decode(d.body).id for d in got]


async def test_topic_exchange_routes_by_pattern(
    urls: tuple[str, str], names: dict[str, str], raw: AMQPBroker
) -> None:
    media, video, image, every = names["media"], names["video"], names["image"], names["all"]
    task_queues = {
        video: {"exchange": media, "exchange_type": "topic", "routing_key": "media.video.*"},
        image: {"exchange": media, "exchange_type": "topic", "routing_key": "media.image.*"},
        every: {"exchange": media, "exchange_type": "topic", "routing_key": "media.#"},
    }
    routes = {"routing.record": {"exchange": media, "routing_key": "media.image.png"}}
    app, record = build(*urls, task_queues=task_queues, task_routes=routes)

    clip = await record.apply_async(("clip",), exchange=media, routing_key="media.video.mp4")
    photo = await record.delay("photo")  # routed by task_routes
    other = await record.apply_async(("doc",), exchange=media, routing_key="media.doc")

    assert await ids_in(raw, video) == [clip.id]
    assert await ids_in(raw, image) == [photo.id]
    assert sorted(await ids_in(raw, every)) == sorted([clip.id, photo.id, other.id])
    await app.close()


async def test_fanout_exchange_reaches_every_bound_queue(
    urls: tuple[str, str], names: dict[str, str]
) -> None:
    bcast, fan_a, fan_b = names["bcast"], names["fan_a"], names["fan_b"]
    task_queues = {
        fan_a: {"exchange": bcast, "exchange_type": "fanout"},
        fan_b: {"exchange": bcast, "exchange_type": "fanout"},
    }
    runs = Runs()
    app, record = build(*urls, runs, task_queues=task_queues)
    async with (
        Worker(app, queues=[fan_a], hostname="worker-a"),
        Worker(app, queues=[fan_b], hostname="worker-b"),
    ):
        # Routed to a queue listed in task_queues: published through its exchange, as in Celery.
        r = await record.apply_async(("hello",), queue=fan_a)
        assert await r.get(timeout=10) == "hello"
        done = await runs.wait(r.id, 2)
    assert sorted(host for host, _ in done) == ["worker-a", "worker-b"]
    await app.close()


async def test_countdown_through_a_fanout_delays_every_copy(
    urls: tuple[str, str], names: dict[str, str]
) -> None:
    bcast, fan_a, fan_b = names["bcast"], names["fan_a"], names["fan_b"]
    task_queues = {
        fan_a: {"exchange": bcast, "exchange_type": "fanout"},
        fan_b: {"exchange": bcast, "exchange_type": "fanout"},
    }
    runs = Runs()
    app, record = build(*urls, runs, task_queues=task_queues)
    async with (
        Worker(app, queues=[fan_a], hostname="worker-a"),
        Worker(app, queues=[fan_b], hostname="worker-b"),
    ):
        sent = time.time()
        r = await record.apply_async(("later",), queue=fan_a, countdown=0.5)
        done = await runs.wait(r.id, 2)
    assert sorted(host for host, _ in done) == ["worker-a", "worker-b"]
    assert all(at - sent >= 0.5 - 0.001 for _, at in done)
    await app.close()


async def test_explicit_exchange_without_task_queues_binds_the_message_queue(
    urls: tuple[str, str], names: dict[str, str]
) -> None:
    # The Celery tutorial's call: a queue, an exchange and a routing key, nothing declared.
    queue, exchange = names["video"], names["media"]
    app, record = build(*urls)
    async with Worker(app, queues=[queue]):
        r = await record.apply_async(
            ("tutorial",), queue=queue, exchange=exchange, routing_key="web.add"
        )
        assert await r.get(timeout=10) == "tutorial"
    await app.close()


async def test_rabbitmq_own_exchange_is_used_not_declared(
    urls: tuple[str, str], names: dict[str, str]
) -> None:
    queue = names["image"]
    app, record = build(*urls)
    async with Worker(app, queues=[queue]):
        r = await record.apply_async(
            ("amq",), queue=queue, exchange="amq.topic", routing_key=f"{queue}.made"
        )
        assert await r.get(timeout=10) == "amq"
    await app.close()


@pytest.mark.parametrize(
    ("task_queues", "match"),
    [
        (["video"], "must be a dict from queue name"),
        ({"video": {"exchange": ""}}, "non-empty exchange name"),
        ({"video": {"exchange": "m", "exchange_type": "headers"}}, "direct, topic, fanout"),
        ({"video": {"exchange": "m", "binding_key": "x"}}, "unknown keys"),
        (
            {
                "a": {"exchange": "m", "exchange_type": "topic"},
                "b": {"exchange": "m", "exchange_type": "fanout"},
            },
            "exchange 'm' has two types",
        ),
    ],
)
def test_bad_task_queues_are_configuration_errors(task_queues: Any, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Aqueue("t", broker="memory://", task_queues=task_queues)


def test_exchange_and_routing_key_come_from_the_call_then_routes_then_task_queues() -> None:
    task_queues = {
        "video": {"exchange": "media", "exchange_type": "topic", "routing_key": "media.video.*"},
        "image": {"exchange": "media", "exchange_type": "topic", "routing_key": "media.image.*"},
    }
    routes = {"t.routed": {"queue": "image", "routing_key": "media.image.png"}}
    app = Aqueue("t", broker="memory://", task_queues=task_queues, task_routes=routes)

    def options(name: str, **call: Any) -> dict[str, Any]:
        return app.sender.build_message(name, (), {}, None, call).options

    assert options("t.plain") == {}  # no exchange: straight to its queue
    assert options("t.routed") == {"exchange": "media", "routing_key": "media.image.png"}
    assert options("t.any", queue="video") == {"exchange": "media", "routing_key": "media.video.*"}
    assert options("t.routed", routing_key="media.image.gif")["routing_key"] == "media.image.gif"

    outgoing = app.sender.outgoing(app.sender.build_message("t.routed", (), {}, None, {}))
    assert outgoing.exchange == "media" and outgoing.routing_key == "media.image.png"
    assert {(b.queue, b.exchange_type, b.routing_key) for b in outgoing.bindings} == {
        ("video", "topic", "media.video.*"),
        ("image", "topic", "media.image.*"),
    }
    # An exchange no task_queues entry names: the message's own queue is bound to it.
    loose = app.sender.outgoing(
        app.sender.build_message("t.x", (), {}, None, {"exchange": "web", "routing_key": "web.add"})
    )
    assert [(b.queue, b.exchange, b.exchange_type, b.routing_key) for b in loose.bindings] == [
        ("default", "web", None, "web.add")
    ]
