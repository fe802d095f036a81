"""Tasks for the poison-accounting tests (``tests/test_poison.py``), in worker subprocesses.

``aqueue worker -A tests.apps.poison_tasks:app`` builds the app from ``$AQUEUE_BROKER_URL``,
``$AQUEUE_POISON_QUEUE`` and ``$AQUEUE_POISON_VISIBILITY`` (seconds).
"""

from __future__ import annotations

import asyncio
import os

from aqueue import Aqueue


def build(url: str, queue: str, visibility: float) -> Aqueue:
    """An app on broker (and result backend) ``url`` with an innocent and a crashing task."""
    app = Aqueue(
        "poison",
        broker=url,
        backend=url,
        task_default_queue=queue,
        broker_transport_options={"visibility_timeout": visibility},
    )

    @app.task(name="poison.nap")
    async def nap(i: int, seconds: float) -> int:
        await asyncio.sleep(seconds)
        return i

    @app.task(name="poison.crash")
    async def crash() -> None:
        os._exit(1)  # the whole worker process dies, as with a segfault or the OOM killer

    return app


app = build(
    os.environ.get("AQUEUE_BROKER_URL", "memory://"),
    os.environ.get("AQUEUE_POISON_QUEUE", "default"),
    float(os.environ.get("AQUEUE_POISON_VISIBILITY", "30")),
)
