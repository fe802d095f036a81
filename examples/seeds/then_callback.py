"""Promise-style callbacks with ``then``, and a result handle rebuilt from a task id.

Mirrors: "Celery 是什么" §2.7 关于 AsyncResult (``add.delay(2, 2).then(on_result_ready)``, where
``on_result_ready(result)`` prints ``result.id`` and ``result.result``; and
``AsyncResult(task_id=xxx)``).

Celery needs gevent's monkey patching and an RPC or Redis backend for this; here ``then`` is an
ordinary asyncio task on the running loop, with any result backend. It returns an awaitable that
yields the callback's value; ``on_error`` is called instead when the task fails.

Run: ``python -m examples.seeds.then_callback``
"""

from __future__ import annotations

import asyncio
from typing import Any

from aqueue import Aqueue, AsyncResult, Worker

app = Aqueue("tasks", broker="memory://", backend="memory://")


@app.task
async def add(x: int, y: int) -> int:
    return x + y


def on_result_ready(result: AsyncResult[Any]) -> Any:
    print(f"Received result for id {result.id!r}: {result.result!r}")
    return result.result


async def main() -> None:
    async with Worker(app):
        r = await add.delay(2, 2)
        value = await r.then(on_result_ready)  # awaiting the promise is optional
        print("then() yielded:", value)

        same = app.AsyncResult(r.id)  # Celery: AsyncResult(task_id=...)
        print("by id:", await same.state(), await same.get())
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())
