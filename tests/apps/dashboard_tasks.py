"""Tasks for the dashboard tests. ``build(url, queue)`` makes a fresh app on ``url`` (broker and
result backend); worker subprocesses use ``-A tests.apps.dashboard_tasks:app``, built from
``$AQUEUE_BROKER_URL`` and ``$AQUEUE_DASH_QUEUE``."""

from __future__ import annotations

import asyncio
import os

from aqueue import Aqueue


def build(url: str, queue: str) -> Aqueue:
    """The app with the ``dash.*`` tasks, every role on ``url``."""
    app = Aqueue("dash", broker=url, backend=url, task_default_queue=queue)

    @app.task(name="dash.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="dash.tsum")
    async def tsum(values: list[int]) -> int:
        return sum(values)

    @app.task(name="dash.sleep")
    async def sleep(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    @app.task(name="dash.fail")
    async def fail(text: str) -> None:
        raise ValueError(text)

    return app


app = build(
    os.environ.get("AQUEUE_BROKER_URL", "memory://dash"),
    os.environ.get("AQUEUE_DASH_QUEUE", "default"),
)
