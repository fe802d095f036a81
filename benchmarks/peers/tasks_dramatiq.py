"""dramatiq's actors: ``dramatiq tasks_dramatiq -p 1 -t 100`` (cwd benchmarks/peers).

Async actors on dramatiq's AsyncIO middleware (one event-loop thread; each of the worker's
threads waits on one coroutine), on queue ``bench_dramatiq``.

- Redis broker (the first table): dramatiq stores no results, as in the issue's table: each actor
  appends ``"<index> <start time>"`` to ``$BENCH_RECORD_FILE`` when it finishes, and the producer
  reads that file (no Redis traffic) to know which tasks are done and when they started.
- ``amqp://`` broker (``bench.py --amqp``): ``RabbitmqBroker`` with dramatiq's defaults (no
  publisher confirms), and results in Redis as for the other systems of that table: the
  ``Results`` middleware with its ``RedisBackend``, ``store_results=True``; each actor returns
  its start time.
"""

from __future__ import annotations

import asyncio
import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware.asyncio import AsyncIO

QUEUE = "bench_dramatiq"  # not "default": queues of other systems stay on the RabbitMQ node

_broker_url = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0")
STORE_RESULTS = _broker_url.startswith("amqp")


def _redis_url(url: str) -> str:
    """``url`` with a connection pool larger than redis-py's default of 100 connections.

    redis-py 8 caps a pool at 100 by default; dramatiq's 100 worker threads and its consumer
    threads share one, and at the cap an ack or a consumer fails with "Too many connections"
    (the consumer restarts 3 s later), which would be measured as dramatiq's slowness.
    """
    return url + ("&" if "?" in url else "?") + "max_connections=1000"


if STORE_RESULTS:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    # bench.py's URL names the default vhost Celery's way ("//"); pika reads "/%2F".
    _url = _broker_url[:-2] + "/%2F" if _broker_url.endswith("//") else _broker_url
    broker: dramatiq.Broker = RabbitmqBroker(url=_url)
    broker.add_middleware(
        Results(
            backend=RedisBackend(url=_redis_url(os.environ["BENCH_BACKEND_URL"])),
            store_results=True,
        )
    )
else:
    broker = RedisBroker(url=_redis_url(_broker_url))
broker.add_middleware(AsyncIO())
dramatiq.set_broker(broker)

_fd: int | None = None


def _done(index: int, started: float) -> float | None:
    """The actor's result: its start time when results are stored, else a line in the file."""
    global _fd
    if STORE_RESULTS:
        return started
    if _fd is None:
        _fd = os.open(os.environ["BENCH_RECORD_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(_fd, f"{index} {started!r}\n".encode())  # one short O_APPEND write: atomic
    return None


@dramatiq.actor(actor_name="noop", queue_name=QUEUE, max_retries=0)
async def noop(index: int) -> float | None:
    return _done(index, time.time())


@dramatiq.actor(actor_name="sleep10", queue_name=QUEUE, max_retries=0)
async def sleep10(index: int) -> float | None:
    started = time.time()
    await asyncio.sleep(0.01)
    return _done(index, started)
