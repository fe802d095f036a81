"""A large backlog drained by one worker (peak RSS), and an ETA longer than the visibility
timeout (runs exactly once, on Redis and on RabbitMQ)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from tests.chaos import chaos_app
from tests.chaos.harness import SIZES, Ledger, Result, peak_rss_mb, report, worker, worker_env

COUNTDOWN = 20.0  # seconds: longer than the visibility timeout
ETA_VISIBILITY = 5.0
ETA_TASKS = 20
AFTER_WINDOW = ETA_VISIBILITY + 2.0  # seconds watched after the runs for a second delivery


@pytest.mark.timeout(3600)
async def test_backlog_drained_by_one_worker(redis_server: str, ledger: Ledger) -> None:
    total = SIZES.backlog
    queue = f"chaos-{uuid.uuid4().hex[:8]}"
    url = f"{redis_server}/0"
    producer = chaos_app.build(url, url, queue)
    work = producer.tasks["chaos.work"]
    t0 = time.monotonic()
    for start in range(0, total, 1000):
        batch = range(start, min(total, start + 1000))
        await work.delay_many([(ledger.run, k, 0.0, total) for k in batch])
    fill_s = time.monotonic() - t0
    await producer.close()

    env = worker_env(url, url, queue, ledger)
    t1 = time.monotonic()
    async with worker(env, 100) as drainer:
        assert drainer.proc is not None
        assert await ledger.wait_finished(timeout=max(120.0, total / 200))
        drain_s = time.monotonic() - t1
        peak = peak_rss_mb(drainer.proc.pid)
    lost, duplicated = await ledger.lost_and_duplicated(range(total))
    report(
        Result(
            "backlog, one worker -c 100 (Redis)",
            total,
            len(lost),
            len(duplicated),
            peak_rss_mb=peak,
            wall_s=fill_s + drain_s,
            notes={"fill_s": round(fill_s, 1), "drain_s": round(drain_s, 1)},
        )
    )
    assert lost == [] and duplicated == []


@pytest.fixture(params=["redis", "amqp"])
def eta_urls(request: pytest.FixtureRequest, redis_server: str) -> tuple[str, str]:
    """(broker, backend) for the ETA scenario."""
    if request.param == "redis":
        return f"{redis_server}/0", f"{redis_server}/0"
    node: Any = request.getfixturevalue("rabbit_node")
    return str(node.url), f"{redis_server}/0"


@pytest.mark.timeout(180)
async def test_eta_longer_than_the_visibility_timeout(
    eta_urls: tuple[str, str], ledger: Ledger
) -> None:
    broker, backend = eta_urls
    queue = f"chaos-{uuid.uuid4().hex[:8]}"
    producer = chaos_app.build(broker, backend, queue, ETA_VISIBILITY)
    work = producer.tasks["chaos.work"]
    env = worker_env(broker, backend, queue, ledger, CHAOS_VISIBILITY=str(ETA_VISIBILITY))
    async with worker(env, 10) as running:
        assert running.proc is not None
        t0 = time.monotonic()
        for key in range(ETA_TASKS):
            await work.apply_async((ledger.run, key, 0.0, ETA_TASKS), countdown=COUNTDOWN)
        await producer.close()
        assert await ledger.wait_finished(timeout=COUNTDOWN + 30)
        first_all = time.monotonic() - t0
        await asyncio.sleep(AFTER_WINDOW)  # the window in which a second delivery would show
        peak = peak_rss_mb(running.proc.pid)
    lost, duplicated = await ledger.lost_and_duplicated(range(ETA_TASKS))
    kind = "Redis" if broker.startswith("redis") else "RabbitMQ"
    report(
        Result(
            f"countdown 20 s, visibility 5 s ({kind})",
            ETA_TASKS,
            len(lost),
            len(duplicated),
            peak_rss_mb=peak,
            wall_s=first_all,
        )
    )
    assert lost == [] and duplicated == []
    assert first_all >= COUNTDOWN - 0.5
