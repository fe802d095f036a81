"""The aqueue dashboard mounted inside a FastAPI application, behind a token.

``Dashboard(app, ...)`` is an ASGI application: mount it at any path. It starts watching the
app's events on its first request; ``await dashboard.aclose()`` in the ``lifespan`` stops it
(a mounted application gets no lifespan events of its own).

Run (from the repository root; ``pip install 'aqueue[dashboard]' fastapi``)::

    export DASHBOARD_TOKEN=change-me
    aqueue worker -A examples.dashboard_mount.main -E      # -E: task events for the dashboard
    uvicorn examples.dashboard_mount.main:api
    curl -X POST 'http://127.0.0.1:8000/add?x=2&y=3'
    # open http://127.0.0.1:8000/dashboard/ and sign in with the token
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from aqueue import Aqueue
from aqueue.dashboard import Dashboard

tasks_app = Aqueue("shop", broker=os.environ.get("AQUEUE_BROKER_URL", "sqlite:///aqueue-shop.db"))


@tasks_app.task(name="shop.add")
async def add(x: int, y: int) -> int:
    return x + y


# A token (or basic auth) lets other hosts in; without one only loopback clients are served.
dashboard = Dashboard(tasks_app, token=os.environ.get("DASHBOARD_TOKEN"), read_only=False)


@asynccontextmanager
async def lifespan(api: FastAPI) -> AsyncIterator[None]:
    async with tasks_app:
        yield
        await dashboard.aclose()


api = FastAPI(lifespan=lifespan)
api.mount("/dashboard", dashboard)


@api.post("/add", status_code=202)
async def post_add(x: int, y: int) -> dict[str, str]:
    r = await add.delay(x, y)
    return {"task_id": r.id}
