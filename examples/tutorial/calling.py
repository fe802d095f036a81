"""Getting started, page 3: calling options, routing, retries and callbacks.

Run: ``python -m examples.tutorial.calling`` (memory broker, a worker in this process).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from aqueue import Aqueue, Request, Task, Worker

app = Aqueue("tutorial-calling", broker="memory://", backend="memory://")
# --8<-- [start:routes]
app.conf.task_routes = {"tutorial.report.*": {"queue": "reports"}}  # by name or glob
# --8<-- [end:routes]
errors: asyncio.Queue[str] = asyncio.Queue()  # what on_error saw


@app.task(name="tutorial.add")
async def add(x: int, y: int) -> int:
    return x + y


@app.task(name="tutorial.report.monthly", bind=True)
async def monthly(self: Task[..., str], month: str) -> str:
    return f"{month} report built on queue {self.request.queue}"


# --8<-- [start:retry]
attempts: dict[str, int] = {}


@app.task(bind=True, max_retries=3, default_retry_delay=0.1)
async def fetch(self: Task[..., str], url: str) -> str:
    attempts[url] = attempts.get(url, 0) + 1
    if attempts[url] < 3:  # the first two tries fail
        raise self.retry(exc=ConnectionError(f"{url} is down"), countdown=0.05)
    return f"{url} fetched on try {self.request.retries + 1}"


@app.task(autoretry_for=(TimeoutError,), max_retries=2, retry_backoff=False)
async def flaky() -> str:
    return "no retry needed"


# --8<-- [end:retry]


# --8<-- [start:callbacks]
@app.task
async def record(value: int, label: str) -> None:
    print(f"link: {label} = {value}")


@app.task
async def on_error(request: Request, exc: BaseException, traceback: str) -> None:
    await errors.put(f"{request.id} raised {exc!r}")


# --8<-- [end:callbacks]


async def options() -> None:
    # --8<-- [start:options]
    started = time.monotonic()
    result = await add.apply_async((1, 1), countdown=0.2)  # run no sooner than 0.2 s from now
    print("countdown:", await result.get(timeout=5), time.monotonic() - started >= 0.2)
    when = datetime.now(UTC) + timedelta(seconds=0.1)
    print("eta:", await (await add.apply_async((1, 2), eta=when)).get(timeout=5))
    result = await add.apply_async((2, 2), expires=60, priority=9)  # 9 runs first
    print("expires + priority:", await result.get(timeout=5))
    result = await add.apply_async((3, 3), queue="urgent")  # a queue a worker consumes
    print("queue:", await result.get(timeout=5))
    result = await app.send_task("tutorial.add", args=(5, 5))  # by name, no import
    print("send_task:", await result.get(timeout=5))
    # --8<-- [end:options]
    # --8<-- [start:routed]
    print(await (await monthly.delay("2026-11")).get(timeout=5))
    # --8<-- [end:routed]


async def retries_and_callbacks() -> None:
    # --8<-- [start:call-retry]
    print(await (await fetch.delay("https://example.org")).get(timeout=5))
    # --8<-- [end:call-retry]
    # --8<-- [start:call-callbacks]
    result = await add.apply_async((3, 4), link=record.s("3 + 4"))
    print("parent:", await result.get(timeout=5))
    failing = await add.apply_async((1, "x"), link_error=on_error.s())
    await failing.get(timeout=5, propagate=False)
    # --8<-- [end:call-callbacks]
    print(await (await flaky.delay()).get(timeout=5))


async def main() -> None:
    async with Worker(app, queues=["default", "urgent", "reports"]):
        await options()
        await retries_and_callbacks()
        seen = await asyncio.wait_for(errors.get(), 5)  # the errback is a task too
        print("link_error:", "TypeError" in seen)
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())
