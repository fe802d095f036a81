"""RabbitMQ going away under a running worker: dropped connections and a node restart.

The robust connection reconnects and restores its consumers; deliveries of the lost channel come
back from RabbitMQ and run again (at-least-once), so every task ends with its result stored.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import aio_pika
import pytest

from aqueue import Aqueue, Worker
from tests.conftest import RabbitNode

pytestmark = pytest.mark.slow


class Runs(Counter[int]):
    """Runs of ``nap`` per argument ``i``; :meth:`reached` waits for a total."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Condition()

    async def add(self, i: int) -> None:
        async with self.changed:
            self[i] += 1
            self.changed.notify_all()

    async def reached(self, total: int) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: self.total() >= total)


def build(node: RabbitNode, redis_server: str) -> tuple[Aqueue, Runs, Any]:
    """An app on ``node`` (results in Redis) whose task ``nap(i)`` counts its runs per ``i``."""
    runs = Runs()
    app = Aqueue(
        "recovery",
        broker=node.url,
        backend=f"{redis_server}/0",
        task_default_queue=f"q-{uuid.uuid4().hex[:12]}",
    )

    @app.task(name="recovery.nap")
    async def nap(i: int, seconds: float) -> int:
        await runs.add(i)
        await asyncio.sleep(seconds)
        return i

    return app, runs, nap


@pytest.mark.timeout(60)
async def test_worker_survives_dropped_connections(
    rabbitmq_server: RabbitNode, redis_server: str
) -> None:
    app, _, nap = build(rabbitmq_server, redis_server)
    async with Worker(app, concurrency=4):
        assert await (await nap.delay(0, 0)).get(timeout=10) == 0
        out = await asyncio.to_thread(rabbitmq_server.ctl, "close_all_connections", "test")
        assert "Closed 1 connections" in out  # the app's: worker and producer share it
        patient = {"max_retries": 50, "interval_start": 0.1, "interval_step": 0.1}
        results = [
            await nap.apply_async((i, 0), retry_policy={**patient, "interval_max": 0.2})
            for i in range(1, 11)
        ]
        assert [await r.get(timeout=20) for r in results] == list(range(1, 11))
    await app.close()


@pytest.mark.timeout(60)
async def test_a_queue_deleted_under_a_worker_is_declared_again(
    rabbitmq_server: RabbitNode, redis_server: str
) -> None:
    app, _, nap = build(rabbitmq_server, redis_server)
    queue = app.conf.task_default_queue
    async with Worker(app, concurrency=4):
        assert await (await nap.delay(0, 0)).get(timeout=10) == 0
        connection = await aio_pika.connect(rabbitmq_server.url)
        channel = await connection.channel()
        await channel.queue_delete(queue)  # RabbitMQ cancels the worker's consumer too
        await connection.close()
        # Returned as unroutable, then declared and sent again; the worker consumes anew.
        assert await (await nap.delay(1, 0)).get(timeout=10) == 1
    await app.close()


@pytest.mark.timeout(180)
async def test_node_restart_with_1000_tasks_in_flight(
    rabbitmq_server: RabbitNode, redis_server: str
) -> None:
    app, runs, nap = build(rabbitmq_server, redis_server)
    n = 1000
    results = [await nap.delay(i, 0.02) for i in range(n)]
    # Delayed ones, due while the node is down: they wait in the delay chain's durable queues.
    delayed = [await nap.apply_async((n + i, 0), countdown=2) for i in range(10)]
    async with Worker(app, concurrency=20):
        await asyncio.wait_for(runs.reached(100), 30)  # the rest is queued or running
        await asyncio.to_thread(rabbitmq_server.stop)
        # Sent while the node is down: app.publish retries per retry_policy until it is back.
        patient = {"max_retries": 200, "interval_start": 0.2, "interval_step": 0.2}
        late = asyncio.create_task(
            nap.apply_async((n + 10, 0), retry_policy={**patient, "interval_max": 0.5})
        )
        await asyncio.to_thread(rabbitmq_server.start)
        everything = [*results, *delayed, await late]
        values = await asyncio.gather(*(r.get(timeout=120) for r in everything))
    assert values == list(range(n + 11))
    # At-least-once: every task ran; those running when the node went down may have run twice.
    assert set(runs) == set(range(n + 11))
    assert [await r.state() for r in everything] == ["SUCCESS"] * (n + 11)
    await app.close()
