"""taskiq's tasks: ``taskiq worker tasks_taskiq:broker`` (cwd benchmarks/peers).

taskiq-redis's stream broker (consumer group, acks) with its Redis result backend; with an
``amqp://`` broker URL (``bench.py --amqp``), taskiq-aio-pika's ``AioPikaBroker`` instead, with
the same Redis result backend. Its prefetch (``qos``, 10 by default) is 4 x the worker's
concurrency, as aqueue's and Celery's defaults are, so ``--max-async-tasks`` is not capped by it.
"""

from __future__ import annotations

import asyncio
import os
import time

from taskiq import AsyncBroker
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

_broker_url = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0")
_backend_url = os.environ.get("BENCH_BACKEND_URL") or _broker_url


def _broker() -> AsyncBroker:
    if not _broker_url.startswith("amqp"):
        return RedisStreamBroker(_broker_url)
    from taskiq_aio_pika import AioPikaBroker

    # bench.py's URL names the default vhost Celery's way ("//"); aio-pika reads "/%2F".
    url = _broker_url[:-2] + "/%2F" if _broker_url.endswith("//") else _broker_url
    return AioPikaBroker(url, qos=4 * int(os.environ.get("BENCH_CONCURRENCY", "100")))


broker = _broker().with_result_backend(RedisAsyncResultBackend(_backend_url, result_ex_time=3600))


@broker.task(task_name="bench.noop")
async def noop() -> float:
    return time.time()


@broker.task(task_name="bench.sleep")
async def sleep10() -> float:
    started = time.time()
    await asyncio.sleep(0.01)
    return started
