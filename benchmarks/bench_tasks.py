"""The task module of ``benchmarks/throughput.py``: ``aqueue worker -A benchmarks.bench_tasks``.

The broker and result backend come from ``$AQUEUE_BROKER_URL`` / ``$AQUEUE_RESULT_BACKEND``,
which the benchmark sets for itself and for the worker it starts.
"""

from __future__ import annotations

import asyncio
import time

from aqueue import Aqueue

app = Aqueue("bench")


@app.task(name="bench.noop")
async def noop() -> float:
    """Do nothing; return when it started (epoch seconds), for the enqueue-to-start latency."""
    return time.time()


@app.task(name="bench.hold")
async def hold(seconds: float) -> None:
    """Keep a concurrency slot busy for ``seconds`` (the memory benchmark's backlog)."""
    await asyncio.sleep(seconds)
