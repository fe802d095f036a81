"""Worker processes SIGKILLed every 2 s and replaced, on Redis: nothing lost, and every
duplicate is a task its killed worker was running (started and not yet acked) at the kill."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid

import pytest
import redis.asyncio as aioredis

from aqueue.message import decode
from aqueue.transports.redis import keys
from tests.chaos import chaos_app
from tests.chaos.harness import SIZES, Ledger, Result, peak_rss_mb, report, worker, worker_env
from tests.workerproc import WorkerProcess

KILL_EVERY = 2.0  # seconds between SIGKILLs: the scenario
WORKERS = 2
CONCURRENCY = int(os.environ.get("CHAOS_CONCURRENCY", "20"))
VISIBILITY = 3.0  # a killed worker's leases come back after this
TARGET_RUN_S = 6.0  # task length is chosen so that the work lasts about this long undisturbed


async def held_keys(client: aioredis.Redis, stream: str, pid: int) -> set[int]:
    """The task keys of the entries leased to worker ``pid``'s consumer (it is dead: exact)."""
    prefix = f"{socket.gethostname()}-{pid}-"
    held: set[int] = set()
    for consumer in await client.xinfo_consumers(stream, keys.GROUP):
        name = (
            consumer["name"].decode() if isinstance(consumer["name"], bytes) else consumer["name"]
        )
        if not name.startswith(prefix):
            continue
        pending = await client.xpending_range(stream, keys.GROUP, "-", "+", 100_000, name)
        for entry in pending:
            for _, fields in await client.xrange(stream, entry["message_id"], entry["message_id"]):
                held.add(int(decode(fields[b"b"]).args[1]))
    return held


@pytest.mark.timeout(3600)
async def test_sigkill_loop(redis_server: str, ledger: Ledger) -> None:
    total = SIZES.kill_tasks
    queue = f"chaos-{uuid.uuid4().hex[:8]}"
    url = f"{redis_server}/0"
    stream = keys.stream(queue, 0)
    seconds = min(0.5, WORKERS * CONCURRENCY * TARGET_RUN_S / total)
    producer = chaos_app.build(url, url, queue, VISIBILITY)
    work = producer.tasks["chaos.work"]
    for start in range(0, total, 1000):
        batch = range(start, min(total, start + 1000))
        await work.delay_many([(ledger.run, k, seconds, total, True) for k in batch])
    await producer.close()

    env = worker_env(url, url, queue, ledger, CHAOS_VISIBILITY=str(VISIBILITY))
    client = aioredis.Redis.from_url(url)
    finished = asyncio.ensure_future(ledger.wait_finished(timeout=max(120.0, total / 50)))
    in_flight_at_kills: set[int] = set()  # the keys running in a worker when it was killed
    in_flight_count = 0  # summed over the kills: a key can be running at several
    kills = 0
    peak = 0.0
    t0 = time.monotonic()
    workers: list[WorkerProcess] = []
    pids: list[int] = []

    async def start_worker() -> None:
        started = await worker(env, CONCURRENCY).__aenter__()
        assert started.proc is not None
        pids.append(started.proc.pid)
        workers.append(started)

    try:
        for _ in range(WORKERS):
            await start_worker()
        next_kill = time.monotonic() + KILL_EVERY
        while not finished.done():
            # A fixed schedule: the time a replacement takes to start is not added to it.
            await asyncio.wait({finished}, timeout=max(0.0, next_kill - time.monotonic()))
            if finished.done():
                break
            next_kill += KILL_EVERY
            victim = workers.pop(0)
            assert victim.proc is not None
            pid = victim.proc.pid
            peak = max(peak, peak_rss_mb(pid))
            await victim.__aexit__(None, None, None)  # SIGKILL, reaped
            kills += 1
            started = await ledger.started_by(pid)
            running = started & await held_keys(client, stream, pid)
            in_flight_at_kills |= running
            in_flight_count += len(running)
            await start_worker()
        assert finished.result(), "the tasks did not all run before the deadline"
        for survivor in workers:
            assert survivor.proc is not None
            peak = max(peak, peak_rss_mb(survivor.proc.pid))
        wall = time.monotonic() - t0
    finally:
        finished.cancel()
        for running in workers:
            await running.__aexit__(None, None, None)
        await client.aclose()

    lost, completed_twice = await ledger.lost_and_duplicated(range(total))
    duplicated = await ledger.duplicate_starts(pids)  # runs begun again, whether or not ended
    report(
        Result(
            "worker SIGKILL every 2 s (Redis)",
            total,
            len(lost),
            len(duplicated),
            duplicate_bound=in_flight_count,
            peak_rss_mb=peak,
            wall_s=wall,
            notes={
                "kills": kills,
                "seconds_per_kill": round(wall / kills, 2),
                "completed_twice": len(completed_twice),
                "task_s": seconds,
                "concurrency": CONCURRENCY,
            },
        )
    )
    assert lost == []
    assert kills >= 1
    assert set(duplicated) <= in_flight_at_kills, set(duplicated) - in_flight_at_kills
    assert len(duplicated) <= in_flight_count
