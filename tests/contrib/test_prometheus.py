"""Prometheus metrics: a real worker on Redis, scraped over HTTP during a run of 1,000 tasks
with failures and retries; health and readiness endpoints; the CLI's --metrics-port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from aqueue import Aqueue, Worker
from aqueue.contrib.prometheus import Metrics, serve
from aqueue.exceptions import TaskNotRegistered
from tests.net import free_port
from tests.workerproc import WorkerProcess

pytestmark = pytest.mark.timeout(120)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
async def app(redis_server: str, clean_signals: None) -> AsyncIterator[Aqueue]:
    app = Aqueue("metrics", broker=redis_server, backend=redis_server)
    app.conf.task_default_queue = f"q-{uuid.uuid4().hex[:12]}"
    yield app
    await app.close()


async def test_a_scrape_counts_successes_failures_and_retries(app: Aqueue) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, interval=0.5)
    metrics.install(app)

    @app.task(name="m.ok")
    async def ok(i: int) -> int:
        return i

    @app.task(name="m.bad")
    async def bad(i: int) -> None:
        raise ValueError(i)

    @app.task(name="m.flaky", bind=True, max_retries=1, default_retry_delay=0)
    async def flaky(self: object, i: int) -> str:
        if self.request.retries == 0:  # type: ignore[attr-defined]
            raise self.retry()  # type: ignore[attr-defined]
        return "ok"

    port = free_port()
    async with Worker(app, concurrency=50) as worker:
        server = serve(port, "127.0.0.1", registry=registry, alive=metrics.alive,
                       ready=metrics.ready)  # fmt: skip
        try:
            assert _get(f"http://127.0.0.1:{port}/readyz")[0] == 200
            results = [await ok.delay(i) for i in range(900)]
            results += [await bad.delay(i) for i in range(50)]
            results += [await flaky.delay(i) for i in range(50)]
            for r in results:
                with contextlib.suppress(ValueError):
                    await r.get(timeout=60)
            await worker.wait_processed(1050)  # 1,000 messages and 50 retries
            status, text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
            assert metrics.alive()  # ticks kept coming through a busy run
        finally:
            await asyncio.to_thread(server.close)  # shutdown() waits for the serving thread
    assert status == 200
    samples = _samples(text)
    queue = app.conf.task_default_queue

    def count(name: str, task: str) -> float:
        return samples.get((name, (("queue", queue), ("task", task))), 0.0)

    assert count("aqueue_tasks_received_total", "m.ok") == 900
    assert count("aqueue_tasks_succeeded_total", "m.ok") == 900
    assert count("aqueue_tasks_failed_total", "m.bad") == 50
    assert count("aqueue_tasks_received_total", "m.flaky") == 100  # each retried once
    assert count("aqueue_tasks_retried_total", "m.flaky") == 50
    assert count("aqueue_tasks_succeeded_total", "m.flaky") == 50
    assert count("aqueue_task_runtime_seconds_count", "m.ok") == 900
    assert count("aqueue_task_queue_wait_seconds_count", "m.ok") == 900
    assert count("aqueue_task_runtime_seconds_count", "m.flaky") == 100


async def test_readiness_follows_the_worker_and_a_dead_letter_is_counted(app: Aqueue) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, interval=0.5)
    metrics.install(app)
    port = free_port()
    server = serve(port, "127.0.0.1", registry=registry, alive=metrics.alive, ready=metrics.ready)
    try:
        assert _get(f"http://127.0.0.1:{port}/readyz")[0] == 503  # no worker yet
        worker = Worker(app, concurrency=2)
        await worker.start()
        assert _get(f"http://127.0.0.1:{port}/readyz")[0] == 200
        assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        unknown = await app.send_task("m.nobody")  # not registered: dead-lettered
        with pytest.raises(TaskNotRegistered):
            await unknown.get(timeout=10)
        await worker.wait_processed(1)
        text = (await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics"))[1]
        await worker.stop()
        assert _get(f"http://127.0.0.1:{port}/readyz")[0] == 503
        assert _get(f"http://127.0.0.1:{port}/nothing")[0] == 404
    finally:
        server.close()
    samples = _samples(text)
    queue = app.conf.task_default_queue
    key = ("aqueue_tasks_dead_lettered_total", (("queue", queue), ("task", "m.nobody")))
    assert samples[key] == 1


async def test_liveness_fails_while_the_event_loop_is_blocked(app: Aqueue) -> None:
    metrics = Metrics(CollectorRegistry(), interval=0.05)
    metrics.install(app)
    async with Worker(app, concurrency=2):
        assert metrics.alive()
        time.sleep(0.3)  # noqa: ASYNC251 - a task blocking the loop: no tick for six intervals
        assert not metrics.alive()
        async with asyncio.timeout(10):
            while not metrics.alive():  # noqa: ASYNC110 - the ticks are timed, not an event
                await asyncio.sleep(0.01)


async def test_the_cli_serves_metrics_of_its_processes(redis_server: str, tmp_path: Path) -> None:
    """The supervisor serves its children's metrics summed, and removes their multi-process
    directory (made under ``TMPDIR``) when it stops."""
    queue = f"q-{uuid.uuid4().hex[:12]}"
    env = {"AQUEUE_BROKER_URL": redis_server, "AQUEUE_E2E_QUEUE": queue, "TMPDIR": str(tmp_path)}
    producer = Aqueue("p", broker=redis_server, backend=redis_server)
    port = free_port()
    args = ["-c", "4", "--processes", "2", "--metrics-port", str(port),
            "--metrics-address", "127.0.0.1"]  # fmt: skip
    try:
        async with WorkerProcess("tests.apps.log_tasks", args, env) as proc:
            # Entered at the first child's "ready": ready means all of them.
            await proc.wait_for("supervisor ready", timeout=20)
            say = producer.signature("logs.say", queue=queue)
            results = [await say.delay(str(i)) for i in range(20)]
            for r in results:
                await r.get(timeout=20)
            status, text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
            ready = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/readyz")
            assert [n[:15] for n in os.listdir(tmp_path)] == ["aqueue-metrics-"]
            proc.signal(signal.SIGTERM)
            assert await proc.wait() == 0
    finally:
        await producer.close()
    assert status == 200 and ready[0] == 200
    samples = _samples(text)
    key = ("aqueue_tasks_succeeded_total", (("queue", queue), ("task", "logs.say")))
    assert samples[key] == 20  # summed over both children
    assert os.listdir(tmp_path) == []  # the directory is gone
