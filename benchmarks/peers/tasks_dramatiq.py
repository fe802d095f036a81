"""dramatiq's actors: ``dramatiq tasks_dramatiq -p 1 -t 100`` (cwd benchmarks/peers).

Async actors on dramatiq's AsyncIO middleware (one event-loop thread; each of the worker's
threads waits on one coroutine). dramatiq stores no results here, as in the issue's table: each
actor appends ``"<index> <start time>"`` to ``$BENCH_RECORD_FILE`` when it finishes, and the
producer reads that file (no Redis traffic) to know which tasks are done and when they started.
"""

from __future__ import annotations

import asyncio
import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware.asyncio import AsyncIO

broker = RedisBroker(url=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"))
broker.add_middleware(AsyncIO())
dramatiq.set_broker(broker)

_fd: int | None = None


def _record(index: int, started: float) -> None:
    global _fd
    if _fd is None:
        _fd = os.open(os.environ["BENCH_RECORD_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(_fd, f"{index} {started!r}\n".encode())  # one short O_APPEND write: atomic


@dramatiq.actor(actor_name="noop", max_retries=0)
async def noop(index: int) -> None:
    _record(index, time.time())


@dramatiq.actor(actor_name="sleep10", max_retries=0)
async def sleep10(index: int) -> None:
    started = time.time()
    await asyncio.sleep(0.01)
    _record(index, started)
