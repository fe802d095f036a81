"""``apply_async`` with the options of the tutorial's table, and link / link_error callbacks.

Mirrors: "Celery 在 web 开发中的运用" apply_async的参数 (countdown, eta, expires, retry,
retry_policy, shadow, routing_key, queue, exchange, priority, serializer, compression, headers,
link, link_error) and its example ``task.apply_async((2, 2), compression='zlib',
serialize='json', queue='priority.high', routing_key='web.add', priority=0,
exchange='web_exchange')``.

Differences from Celery: the option is ``serializer`` (the tutorial's ``serialize`` is a typo that
aqueue rejects with ``ConfigurationError``); ``routing_key`` and ``exchange`` are carried along for
AMQP but ignored by the Redis and SQLite brokers, where ``queue`` alone routes; ``eta`` takes a
datetime (naive means UTC), not ``time.time() + 10``; priority 9 runs first; ``retry`` and
``retry_policy`` govern publishing when the broker is unreachable, not re-running the task.

Run: ``python -m examples.seeds.apply_async_options``
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from aqueue import Aqueue, Request, Worker

app = Aqueue("web", broker="memory://", backend="memory://")
callbacks: asyncio.Queue[str] = asyncio.Queue()


@app.task(bind=True)
async def add(self: Any, x: int, y: int) -> int:
    request = self.request
    print(f"  add{request.args} ran on queue {request.queue!r}, headers {request.headers}")
    return x + y


@app.task
async def fail(x: int) -> None:
    raise ValueError(f"bad input {x}")


@app.task
async def log_result(value: int, label: str) -> None:
    await callbacks.put(f"link: {label} got {value}")


@app.task
async def log_error(request: Request, exc: BaseException, traceback: str) -> None:
    await callbacks.put(f"link_error: task {request.id} raised {exc!r}")


async def main() -> None:
    # Consume the queue the tutorial sends to: `aqueue worker -Q priority.high,default`.
    async with Worker(app, queues=["priority.high", "default"]):
        r = await add.apply_async(
            (2, 2),
            compression="zlib",
            serializer="json",
            queue="priority.high",
            routing_key="web.add",
            priority=0,
            exchange="web_exchange",
        )
        print("tutorial example:", await r.get(timeout=1))

        started = time.monotonic()
        r = await add.apply_async((1, 1), countdown=0.5)  # seconds
        print(f"countdown=0.5: {await r.get(timeout=2)} after {time.monotonic() - started:.1f}s")
        r = await add.apply_async((1, 2), eta=datetime.now(UTC) + timedelta(seconds=0.5))
        print("eta:", await r.get(timeout=2))
        r = await add.apply_async(
            (1, 3), expires=60, shadow="add-shadowed", headers={"trace": "t1"}
        )
        print("expires/shadow/headers:", await r.get(timeout=1))
        policy = {"max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
        r = await add.apply_async((1, 4), retry=True, retry_policy=policy, priority=9)
        print("retry_policy/priority:", await r.get(timeout=1))

        await add.apply_async((3, 4), link=log_result.s("add(3, 4)"))
        await fail.apply_async((5,), link_error=log_error.s())
        for _ in range(2):
            print(await asyncio.wait_for(callbacks.get(), 2))
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())
