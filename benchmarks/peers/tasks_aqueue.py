"""aqueue's tasks for the peer benchmark: ``aqueue worker -A tasks_aqueue`` (cwd benchmarks/peers).

URLs come from ``$BENCH_BROKER_URL`` / ``$BENCH_BACKEND_URL``, set by ``run_aqueue.py``;
``$BENCH_AQUEUE_NO_PRIORITIES`` (``bench.py --aqueue-no-priorities``) declares RabbitMQ's
classic queues without priorities.
"""

from __future__ import annotations

import asyncio
import os
import time

from aqueue import Aqueue

app = Aqueue(
    "bench-peers",
    broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"),
    backend=os.environ.get("BENCH_BACKEND_URL") or None,
)
if os.environ.get("BENCH_AQUEUE_NO_PRIORITIES") and (app.conf.broker_url or "").startswith("amqp"):
    app.conf.broker_transport_options = {"priorities": False}


@app.task(name="bench.noop")
async def noop() -> float:
    """Return when it started (epoch seconds)."""
    return time.time()


@app.task(name="bench.sleep")
async def sleep10() -> float:
    """Sleep 10 ms; return when it started."""
    started = time.time()
    await asyncio.sleep(0.01)
    return started
