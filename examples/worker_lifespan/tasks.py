"""A database pool opened once per worker process and shared by its tasks.

Run a worker, then send tasks::

    aqueue worker -A examples.worker_lifespan.tasks --processes 2
    aqueue call -A examples.worker_lifespan.tasks examples.worker_lifespan.tasks.user_name \
        --args '[1]' --wait

``Pool`` stands in for a real one (asyncpg's ``create_pool``, SQLAlchemy's ``create_async_engine``,
an ``httpx.AsyncClient``): the shape is the same.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aqueue
from aqueue import Aqueue, Worker
from aqueue.exceptions import SoftTimeLimitExceeded

app = Aqueue("lifespan_example")
app.conf.update(task_soft_time_limit=20, task_time_limit=30)


class Pool:
    """A fake connection pool: ``fetchval`` answers from a dict."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.closed = False
        self._users = {1: "ada", 2: "grace"}

    @classmethod
    async def create(cls, dsn: str) -> Pool:
        await asyncio.sleep(0)  # a real pool connects here
        return cls(dsn)

    async def fetchval(self, user_id: int) -> str | None:
        if self.closed:
            raise RuntimeError("the pool is closed")
        await asyncio.sleep(0)
        return self._users.get(user_id)

    async def close(self) -> None:
        self.closed = True


@dataclass
class State:
    """What every task of this worker process shares."""

    db: Pool


@app.worker_lifespan
async def lifespan(worker: Worker) -> AsyncIterator[State]:
    pool = await Pool.create(os.environ.get("DATABASE_URL", "postgresql://localhost/app"))
    try:
        yield State(db=pool)  # the worker starts taking messages now
    finally:
        await pool.close()  # after the last running task has finished


@app.task
async def user_name(user_id: int) -> str | None:
    db = aqueue.worker_state(State).db
    try:
        return await db.fetchval(user_id)
    except SoftTimeLimitExceeded:
        return None  # 20 s passed: give up cleanly, 10 s before the hard limit
