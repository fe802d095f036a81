"""saq's tasks: ``saq tasks_saq.settings`` (cwd benchmarks/peers)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from saq import Queue

queue = Queue.from_url(os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"))


async def noop(ctx: dict[str, Any]) -> float:
    return time.time()


async def sleep10(ctx: dict[str, Any]) -> float:
    started = time.time()
    await asyncio.sleep(0.01)
    return started


settings = {
    "queue": queue,
    "functions": [noop, sleep10],
    "concurrency": int(os.environ.get("BENCH_CONCURRENCY", "100")),
}
