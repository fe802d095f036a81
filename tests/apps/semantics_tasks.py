"""Tasks of the unique / idempotent / dependency tests (docs/tasks.md), in-process and in worker
subprocesses (``-A tests.apps.semantics_tasks``, built from ``$AQUEUE_BROKER_URL``,
``$AQUEUE_E2E_QUEUE`` and ``$AQUEUE_E2E_VISIBILITY``).

Runs are counted in :data:`RUNS` in-process, and in a file per call where a worker process
runs them (``once_more``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aqueue import Aqueue, Task
from tests.apps.tasks import backend_for

#: Runs per (task, key) in this process.
RUNS: Counter[tuple[str, str]] = Counter()
#: The order in which tasks ran in this process (their labels).
ORDER: list[str] = []
#: Set when ``sem.queued_only`` starts with that key, in this process.
STARTED: dict[str, asyncio.Event] = {}


@dataclass
class SemanticsTasks:
    app: Aqueue
    keyed: Any
    charge: Any
    once_more: Any
    step: Any
    fails: Any
    gather: Any
    queued_only: Any
    patient: Any


def build(url: str, queue: str = "default", **settings: Any) -> SemanticsTasks:
    """A fresh app on ``url`` (result backend as :func:`tests.apps.tasks.backend_for`)."""
    app = Aqueue(
        "semantics", broker=url, backend=backend_for(url), task_default_queue=queue, **settings
    )

    @app.task(name="sem.keyed", unique=True, unique_key=lambda key: key)
    async def keyed(key: str) -> str:
        RUNS["keyed", key] += 1
        return key

    @app.task(name="sem.charge")
    async def charge(order: str, cents: int) -> str:
        RUNS["charge", order] += 1
        await asyncio.sleep(0.05)  # still queued or running while the duplicates arrive
        return f"charged {cents} for {order}"

    @app.task(name="sem.once_more", unique="running")
    def once_more(path: str, seconds: float) -> int:
        """Append a line to ``path``; the first run then sleeps ``seconds`` (to be killed)."""
        with open(path, "a") as marks:
            marks.write("run\n")
        runs = len(Path(path).read_text().splitlines())
        logging.getLogger("tests.semantics").warning("once_more run %d written", runs)
        if runs == 1:
            time.sleep(seconds)
        return runs

    @app.task(name="sem.step", bind=True)
    async def step(self: Task[Any, Any], label: str, value: int) -> int:
        ORDER.append(label)
        return value + sum(self.request.dependencies or ())

    @app.task(name="sem.fails")
    async def fails(label: str) -> None:
        ORDER.append(label)
        raise ValueError(f"{label} failed on purpose")

    @app.task(name="sem.gather", bind=True)
    async def gather(self: Task[Any, Any], label: str) -> list[Any]:
        ORDER.append(label)
        return list(self.request.dependencies or ())

    @app.task(name="sem.queued_only", unique="queued")
    async def queued_only(key: str, seconds: float) -> str:
        RUNS["queued_only", key] += 1
        STARTED.setdefault(key, asyncio.Event()).set()
        await asyncio.sleep(seconds)
        return key

    @app.task(name="sem.patient", unique=True, unique_ttl=60)
    async def patient(key: str) -> str:
        RUNS["patient", key] += 1
        return key

    return SemanticsTasks(app, keyed, charge, once_more, step, fails, gather, queued_only, patient)


# For worker subprocesses: ``aqueue worker -A tests.apps.semantics_tasks:app``.
app = build(
    os.environ.get("AQUEUE_BROKER_URL", "memory://"),
    queue=os.environ.get("AQUEUE_E2E_QUEUE", "default"),
    broker_transport_options={
        "visibility_timeout": float(os.environ.get("AQUEUE_E2E_VISIBILITY", "30"))
    },
).app
