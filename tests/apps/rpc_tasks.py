"""Tasks for the ``rpc://`` tests: an app on RabbitMQ alone, results over ``rpc://``, no Redis.

``build(url, queue)`` makes a fresh app; the module's ``app`` (for ``aqueue worker -A
tests.apps.rpc_tasks``) is built from ``$AQUEUE_BROKER_URL`` and ``$AQUEUE_RPC_QUEUE``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aqueue import Aqueue


def build(url: str, queue: str, **settings: Any) -> Aqueue:
    """An app on the broker ``url`` with ``rpc://`` results, its tasks sent to ``queue``."""
    app = Aqueue("rpc-tests", broker=url, backend="rpc://", task_default_queue=queue, **settings)

    @app.task(name="rpc.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="rpc.fail")
    async def fail(key: str) -> None:
        raise KeyError(key)

    @app.task(name="rpc.progress", bind=True, track_started=True)
    async def progress(self: Any, steps: int) -> int:
        for i in range(steps):
            await self.update_state(state="PROGRESS", meta={"step": i})
        await self.update_state(state="CHECKING", meta={"steps": steps})
        return steps

    @app.task(name="rpc.flaky", bind=True, max_retries=5)
    async def flaky(self: Any, failures: int) -> int:
        if self.request.retries < failures:
            raise self.retry(exc=OSError(f"attempt {self.request.retries}"), countdown=0.05)
        return int(self.request.retries)

    @app.task(name="rpc.nap")
    async def nap(i: int, seconds: float) -> int:
        await asyncio.sleep(seconds)
        return i

    return app


app = build(
    os.environ.get("AQUEUE_BROKER_URL", "amqp://"), os.environ.get("AQUEUE_RPC_QUEUE", "rpc")
)
