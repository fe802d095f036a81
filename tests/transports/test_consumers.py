"""A worker's life on Redis around its broker: dead consumers are removed from the consumer
group, and a worker started before its broker waits for it (issue 13)."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from aqueue import Aqueue, Worker
from aqueue.exceptions import BrokerConnectionError
from aqueue.transports import Outgoing
from aqueue.transports.redis import RedisBroker, keys
from tests.conftest import _start_redis
from tests.net import free_port
from tests.workerproc import WorkerProcess

pytestmark = pytest.mark.timeout(60)

LEASE = 0.5  # visibility timeout (seconds) of the in-process tests


@pytest.fixture
async def redis(redis_server: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(f"{redis_server}/0")
    yield client
    await client.aclose()


async def consumers(client: aioredis.Redis, queue: str) -> set[bytes]:
    """The names of the consumers registered on any of ``queue``'s streams."""
    names: set[bytes] = set()
    for priority in keys.PRIORITIES:
        try:
            found = await client.xinfo_consumers(keys.stream(queue, priority), keys.GROUP)
        except aioredis.ResponseError:  # no such stream or group
            continue
        names |= {c["name"] for c in found}
    return names


async def test_dead_consumers_are_removed_once_their_leases_moved(
    redis_server: str, redis: aioredis.Redis
) -> None:
    url, queue = f"{redis_server}/0", f"q-{uuid.uuid4().hex[:12]}"
    dead = [RedisBroker(url, {"visibility_timeout": LEASE}) for _ in range(3)]
    live = RedisBroker(url, {"visibility_timeout": LEASE})
    try:
        await live.publish([Outgoing(queue, b"held by %d" % i, f"m{i}") for i in range(3)])
        for broker in dead:
            assert len(await broker.fetch([queue], 1, 5)) == 1  # each holds one
        assert len(await consumers(redis, queue)) == 3
        # The three "die" (no close, as with SIGKILL). Once their leases run out, the live
        # consumer's reclaim pass takes the messages over, then removes the three.
        await asyncio.sleep(LEASE + 0.1)

        taken = await live.fetch([queue], 10, 5)

        assert sorted(d.body for d in taken) == [b"held by 0", b"held by 1", b"held by 2"]
        assert await consumers(redis, queue) == {live._consumer.encode()}
        await live.ack(taken)
    finally:
        await live.close()
        for broker in dead:
            await broker.close()


async def test_a_consumer_is_kept_while_it_holds_anything(
    redis_server: str, redis: aioredis.Redis
) -> None:
    """Removing a consumer would drop its pending entries: it goes only once all have moved."""
    url, queue = f"{redis_server}/0", f"q-{uuid.uuid4().hex[:12]}"
    dead = RedisBroker(url, {"visibility_timeout": LEASE})
    live = RedisBroker(url, {"visibility_timeout": LEASE})
    try:
        await live.publish([Outgoing(queue, b"%d" % i, f"m{i}") for i in range(2)])
        assert len(await dead.fetch([queue], 2, 5)) == 2
        await asyncio.sleep(LEASE + 0.1)

        first = await live.fetch([queue], 1, 5)  # reclaims one of the two: one still held
        assert dead._consumer.encode() in await consumers(redis, queue)
        second = await live.fetch([queue], 1, 5)  # the pass goes on, and ends with it
        assert await consumers(redis, queue) == {live._consumer.encode()}
        assert sorted(d.body for d in first + second) == [b"0", b"1"]
        await live.ack(first + second)
    finally:
        await live.close()
        await dead.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_sigkilled_workers_leave_no_consumers_behind(
    redis_server: str, redis: aioredis.Redis
) -> None:
    """Issue 13: 12 consumers were registered after 11 kills; now only the live one stays."""
    url, queue = f"{redis_server}/0", f"q-{uuid.uuid4().hex[:12]}"
    env = {"AQUEUE_BROKER_URL": url, "AQUEUE_E2E_QUEUE": queue}  # a 30 s lease: none removed
    producer = Aqueue("c", broker=url, backend=url, task_default_queue=queue)
    try:
        for i in range(3):  # each worker runs a task (so joins the group), then is killed
            async with WorkerProcess("tests.apps.tasks:app", ["-c", "2"], env) as worker:
                assert await (await producer.send_task("e2e.add", (i, 1))).get(timeout=10) == i + 1
                worker.signal(signal.SIGKILL)
                await worker.wait()
        assert len(await consumers(redis, queue)) == 3
        env["AQUEUE_E2E_VISIBILITY"] = "1"  # the survivor removes consumers idle for 1 s
        async with WorkerProcess("tests.apps.tasks:app", ["-c", "2"], env) as survivor:
            assert await (await producer.send_task("e2e.add", (1, 2))).get(timeout=10) == 3
            # Its reclaim pass (every quarter lease) removes the three, and says so.
            while len(await consumers(redis, queue)) > 1:
                line = await survivor.wait_for("removed dead consumer", timeout=10)
                survivor.lines.remove(line)
            assert len(await consumers(redis, queue)) == 1
            assert survivor.proc is not None and survivor.proc.returncode is None
    finally:
        await producer.close()


# -- starting before the broker ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_worker_waits_for_a_broker_that_is_not_up_yet(tmp_path: Path) -> None:
    binary = shutil.which("redis-server")
    assert binary is not None
    port = free_port()
    url, queue = f"redis://127.0.0.1:{port}/0", f"q-{uuid.uuid4().hex[:12]}"
    env = {"AQUEUE_BROKER_URL": url, "AQUEUE_E2E_QUEUE": queue}
    args = ["-c", "2", "-l", "debug"]
    server: Any = None
    async with WorkerProcess("tests.apps.tasks:app", args, env, ready=False) as worker:
        try:
            await worker.wait_for("cannot start yet", timeout=20)
            await worker.wait_for("still unreachable", timeout=20)  # it kept trying...
            server = _start_redis(binary, port, tmp_path, tmp_path / "redis.log")
            assert server is not None, "redis-server did not start"
            appeared = time.monotonic()
            producer = Aqueue("w", broker=url, backend=url, task_default_queue=queue)
            try:
                result = await producer.send_task("e2e.add", (2, 3))
                assert await result.get(timeout=10) == 5
            finally:
                await producer.close()
            assert time.monotonic() - appeared < 5.0
            assert worker.proc is not None and worker.proc.returncode is None
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=10)
    outage_lines = [line for line in worker.lines if "cannot start yet" in line]
    assert len(outage_lines) == 1  # ...with one line for the outage, not one per attempt


async def test_stop_while_waiting_for_the_broker() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    app = Aqueue("w", broker=url, backend=url)
    worker = Worker(app, concurrency=1)
    try:
        starting = asyncio.ensure_future(worker.start())
        await worker.stop()
        await asyncio.wait_for(starting, 10)  # the wait ends; the worker never started
        assert worker.executor is None
    finally:
        await app.close()


async def test_no_retry_on_startup_fails_at_once() -> None:
    """``broker_connection_retry_on_startup=False``: as before, a start fails at once."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    app = Aqueue("w", broker=url, backend=url)
    app.conf.broker_connection_retry_on_startup = False
    try:
        with pytest.raises(BrokerConnectionError, match="unreachable"):
            await asyncio.wait_for(Worker(app, concurrency=1).start(), 10)
    finally:
        await app.close()
