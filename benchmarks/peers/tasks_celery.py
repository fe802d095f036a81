"""Celery's tasks: ``celery -A tasks_celery worker -P prefork -c 2`` (cwd benchmarks/peers).

Plain functions: a prefork worker runs no coroutines, so the sleep task is ``time.sleep``.
"""

from __future__ import annotations

import os
import time

from celery import Celery

_broker = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0")
app = Celery("bench", broker=_broker, backend=os.environ.get("BENCH_BACKEND_URL") or _broker)
if os.environ.get("BENCH_CELERY_CONFIRM") and _broker.startswith("amqp"):
    # bench.py --celery-confirm: delay() waits for RabbitMQ's confirm, as aqueue's does.
    app.conf.broker_transport_options = {"confirm_publish": True}


@app.task(name="bench.noop")
def noop() -> float:
    return time.time()


@app.task(name="bench.sleep")
def sleep10() -> float:
    started = time.time()
    time.sleep(0.01)
    return started
