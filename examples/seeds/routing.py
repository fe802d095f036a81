"""Routing tasks to queues (``task_routes``), and workers that consume chosen queues (``-Q``).

Mirrors: "Celery 初次使用" 配置 (``task_routes = {'tasks.add': 'low-priority'}``) and
"Celery 在 web 开发中的运用" (its ``CELERY_DEFAULT_QUEUE`` / ``CELERY_QUEUES`` settings, the
``queue=`` option of ``apply_async``, and starting a worker with ``-Q`` so it only consumes the
named queues).

A route's value is a queue name or a dict of options (``{"queue": "io", "priority": 5}``); keys
may be glob patterns. Queues need no declaration: ``CELERY_QUEUES`` with AMQP exchanges and
routing keys has no counterpart on the Redis and SQLite brokers. With separate processes::

    aqueue worker -A examples.seeds.routing -Q low-priority        # only tasks.add
    aqueue worker -A examples.seeds.routing -Q default,io

Run: ``python -m examples.seeds.routing`` (one worker per queue set, in this process)
"""

from __future__ import annotations

import asyncio
from typing import Any

from aqueue import Aqueue, Worker

app = Aqueue("tasks", broker="memory://", backend="memory://")
app.conf.task_default_queue = "default"  # Celery: CELERY_DEFAULT_QUEUE = "default"
app.conf.task_routes = {
    "tasks.add": "low-priority",
    "tasks.io.*": {"queue": "io"},
}


@app.task(name="tasks.add", bind=True)
async def add(self: Any, x: int, y: int) -> str:
    return f"{x + y} (queue {self.request.queue}, {self.request.hostname})"


@app.task(name="tasks.io.fetch", bind=True)
async def fetch(self: Any, url: str) -> str:
    return f"fetched {url} (queue {self.request.queue}, {self.request.hostname})"


@app.task(name="tasks.mul", bind=True)
async def mul(self: Any, x: int, y: int) -> str:
    return f"{x * y} (queue {self.request.queue}, {self.request.hostname})"


async def main() -> None:
    low = Worker(app, queues=["low-priority"], hostname="low@example")
    rest = Worker(app, queues=["default", "io"], hostname="rest@example")
    async with low, rest:
        print("add:", await (await add.delay(2, 2)))
        print("fetch:", await (await fetch.delay("https://example.com")))
        print("mul:", await (await mul.delay(2, 3)))
        print("add, queue= overrides the route:", await (await add.apply_async((1, 1), queue="io")))
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())
