"""taskiq's tasks: ``taskiq worker tasks_taskiq:broker`` (cwd benchmarks/peers).

taskiq-redis's stream broker (consumer group, acks) with its Redis result backend.
"""

from __future__ import annotations

import asyncio
import os
import time

from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

_broker_url = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0")
_backend_url = os.environ.get("BENCH_BACKEND_URL") or _broker_url

broker = RedisStreamBroker(_broker_url).with_result_backend(
    RedisAsyncResultBackend(_backend_url, result_ex_time=3600)
)


@broker.task(task_name="bench.noop")
async def noop() -> float:
    return time.time()


@broker.task(task_name="bench.sleep")
async def sleep10() -> float:
    started = time.time()
    await asyncio.sleep(0.01)
    return started
