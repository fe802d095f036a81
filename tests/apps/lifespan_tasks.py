"""An app with a worker lifespan, for real worker processes (tests/test_worker_lifespan.py).

Built from ``$AQUEUE_BROKER_URL``, ``$AQUEUE_LS_QUEUE``, ``$AQUEUE_LS_DIR`` (where the lifespan
writes ``start-<pid>`` and ``stop-<pid>``) and ``$AQUEUE_LS_MAX_TASKS`` /
``$AQUEUE_LS_MAX_MEMORY`` (``worker_max_tasks_per_child`` / ``worker_max_memory_per_child``),
``$AQUEUE_LS_REJECT=0`` (``task_reject_on_worker_lost=False``), ``$AQUEUE_LS_VISIBILITY``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aqueue
from aqueue import Aqueue, Worker

_url = os.environ.get("AQUEUE_BROKER_URL", "memory://")
app = Aqueue("lifespan", broker=_url, backend=_url)
app.conf.task_default_queue = os.environ.get("AQUEUE_LS_QUEUE", "default")
if os.environ.get("AQUEUE_LS_MAX_TASKS"):
    app.conf.worker_max_tasks_per_child = int(os.environ["AQUEUE_LS_MAX_TASKS"])
if os.environ.get("AQUEUE_LS_REJECT") == "0":
    app.conf.task_reject_on_worker_lost = False
if os.environ.get("AQUEUE_LS_VISIBILITY"):
    app.conf.broker_transport_options = {
        "visibility_timeout": float(os.environ["AQUEUE_LS_VISIBILITY"])
    }
if os.environ.get("AQUEUE_LS_MAX_MEMORY"):
    app.conf.worker_max_memory_per_child = int(os.environ["AQUEUE_LS_MAX_MEMORY"])


@dataclass
class State:
    pid: int
    served: list[str] = field(default_factory=list)


@app.worker_lifespan
async def lifespan(worker: Worker) -> AsyncIterator[State]:
    where = Path(os.environ.get("AQUEUE_LS_DIR", "."))
    (where / f"start-{os.getpid()}").write_text(worker.hostname)
    state = State(os.getpid())
    yield state
    (where / f"stop-{os.getpid()}").write_text(",".join(state.served))


@app.task(name="ls.whoami")
async def whoami(tag: str) -> int:
    """The pid whose lifespan state served ``tag``."""
    state = aqueue.worker_state(State)
    state.served.append(tag)
    return state.pid


@app.task(name="ls.hang")
async def hang(seconds: float) -> str:
    """Sleep ``seconds`` (long enough to be killed meanwhile)."""
    import asyncio

    await asyncio.sleep(seconds)
    return "woke"
