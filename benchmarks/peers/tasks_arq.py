"""arq's tasks: ``arq tasks_arq.WorkerSettings`` (cwd benchmarks/peers)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from arq.connections import RedisSettings

REDIS = RedisSettings.from_dsn(os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"))


async def noop(ctx: dict[str, Any]) -> float:
    return time.time()


async def sleep10(ctx: dict[str, Any]) -> float:
    started = time.time()
    await asyncio.sleep(0.01)
    return started


class WorkerSettings:
    functions = [noop, sleep10]
    redis_settings = REDIS
    max_jobs = int(os.environ.get("BENCH_CONCURRENCY", "100"))
