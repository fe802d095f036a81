"""streaq's tasks: ``streaq run tasks_streaq:worker`` (cwd benchmarks/peers)."""

from __future__ import annotations

import asyncio
import os
import time

from streaq import Worker

worker = Worker(
    redis_url=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"),
    concurrency=int(os.environ.get("BENCH_CONCURRENCY", "100")),
)


@worker.task
async def noop() -> float:
    return time.time()


@worker.task
async def sleep10() -> float:
    started = time.time()
    await asyncio.sleep(0.01)
    return started
