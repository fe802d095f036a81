"""The task module of ``benchmarks/throughput.py``: ``aqueue worker -A benchmarks.bench_tasks``.

The broker and result backend come from ``$AQUEUE_BROKER_URL`` / ``$AQUEUE_RESULT_BACKEND``,
which the benchmark sets for itself and for the worker it starts; ``$BENCH_AMQP_PRIORITIES=off``
declares RabbitMQ's classic queues without priorities (``throughput.py --no-priorities``).
"""

from __future__ import annotations

import asyncio
import os
import time

from aqueue import Aqueue

app = Aqueue("bench")
if os.environ.get("BENCH_AMQP_PRIORITIES") == "off":
    app.conf.broker_transport_options = {"priorities": False}


@app.task(name="bench.noop")
async def noop() -> float:
    """Do nothing; return when it started (epoch seconds), for the enqueue-to-start latency."""
    return time.time()


@app.task(name="bench.hold")
async def hold(seconds: float) -> None:
    """Keep a concurrency slot busy for ``seconds`` (the memory benchmark's backlog)."""
    await asyncio.sleep(seconds)
