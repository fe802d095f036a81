"""aqueue in FastAPI: async endpoints await the API directly; ``lifespan`` closes it.

FastAPI runs on an event loop, so there is nothing to bridge: ``await add.delay(2, 2)`` in an
endpoint, ``await r.get(timeout=10)`` for the value. The app's connections open on first use in
the server's loop and ``async with tasks_app:`` in the ``lifespan`` closes them at shutdown.

Run (from the repository root, with a worker on the same broker)::

    export AQUEUE_BROKER_URL=redis://127.0.0.1:6379/0
    aqueue worker -A examples.fastapi_app.main
    uvicorn examples.fastapi_app.main:api
    curl -X POST 'http://127.0.0.1:8000/add?x=2&y=3'         # {"task_id": "..."}
    curl 'http://127.0.0.1:8000/results/<task_id>'           # {"state": "SUCCESS", "result": 5}
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI

from aqueue import Aqueue

tasks_app = Aqueue(
    "api",
    broker=os.environ.get("AQUEUE_BROKER_URL", "sqlite:///aqueue-fastapi.db"),
    task_default_queue=os.environ.get("AQUEUE_QUEUE", "default"),
)


@tasks_app.task(name="api.add")
async def add(x: int, y: int) -> int:
    return x + y


@tasks_app.task(name="api.remind_at")
async def remind_at(when: datetime, after: timedelta) -> datetime:
    """A datetime and a timedelta in, a datetime out: each arrives as itself."""
    return when + after


@asynccontextmanager
async def lifespan(api: FastAPI) -> AsyncIterator[None]:
    async with tasks_app:  # closes this loop's broker and backend connections at shutdown
        yield


api = FastAPI(lifespan=lifespan)


@api.post("/add", status_code=202)
async def post_add(x: int, y: int) -> dict[str, str]:
    r = await add.delay(x, y)
    return {"task_id": r.id}


@api.post("/remind", status_code=202)
async def post_remind(minutes: int) -> dict[str, str]:
    r = await remind_at.delay(datetime.now(UTC), timedelta(minutes=minutes))
    return {"task_id": r.id}


@api.get("/results/{task_id}")
async def get_result(task_id: str, timeout: float = 10) -> dict[str, Any]:
    r = tasks_app.AsyncResult(task_id)
    value = await r.get(timeout=timeout)
    return {"state": await r.state(), "result": value}
