"""Unique tasks, idempotent sends and dependencies (docs/tasks.md), in one process on SQLite.

Run from the repository root: ``python -m examples.pipeline.demo [sqlite:///pipeline.db]``. A
feed rebuild requested five times while queued runs once; a charge sent three times with one
``task_id`` (a client retrying) charges once; an extract -> (transform, enrich) -> load diamond
runs in order with ``load`` reading both results; and a failing step fails what waits for it,
naming the step. Any URL whose result backend stores works (``redis://``, ``sqlite://``).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections import Counter
from typing import Any

from aqueue import Aqueue, Task, Worker
from aqueue.exceptions import DependencyFailed

URL = sys.argv[1] if len(sys.argv) > 1 else f"sqlite:///{tempfile.mkdtemp()}/pipeline.db"
app = Aqueue("pipeline-demo", broker=URL, backend=URL)
RUNS: Counter[str] = Counter()


@app.task(name="demo.rebuild_feed", unique=True, unique_key=lambda user_id: f"user:{user_id}")
async def rebuild_feed(user_id: int) -> str:
    RUNS["rebuild_feed"] += 1
    return f"feed of {user_id} rebuilt"


@app.task(name="demo.charge")
async def charge(order: str, cents: int) -> str:
    RUNS["charge"] += 1
    return f"charged {cents} cents for {order}"


@app.task(name="demo.extract")
async def extract(source: str) -> list[int]:
    return [len(part) for part in source.split()]


@app.task(name="demo.transform", bind=True)
async def transform(self: Task[Any, Any]) -> int:
    [rows] = self.request.dependencies or [[]]
    return sum(rows)


@app.task(name="demo.enrich", bind=True)
async def enrich(self: Task[Any, Any], fail: bool = False) -> int:
    if fail:
        raise ValueError("the geo service is down")
    [rows] = self.request.dependencies or [[]]
    return len(rows)


@app.task(name="demo.load", bind=True)
async def load(self: Task[Any, Any]) -> str:
    total, count = self.request.dependencies or [0, 0]
    return f"loaded {count} rows, {total} characters"


async def main() -> None:
    # Sent before any worker runs: the duplicates all find the first call queued.
    feeds = [await rebuild_feed.delay(7) for _ in range(5)]
    print(f"unique:      5 sends, {len({r.id for r in feeds})} call")
    charges = [await charge.apply_async(("order-17", 1999), task_id="charge-17") for _ in range(3)]
    print(f"idempotent:  3 sends of task_id 'charge-17', ids {sorted({r.id for r in charges})}")

    a = await extract.delay("held until it succeeds")
    b = await transform.apply_async(after=[a])
    c = await enrich.apply_async(after=[a])
    d = await load.apply_async(after=[b, c])
    print(f"held:        load is {await d.state()} before any worker runs")

    async with Worker(app, concurrency=4):
        print(f"             {await feeds[-1].get(timeout=10)}; ran {RUNS['rebuild_feed']} time")
        print(f"             {await charges[-1].get(timeout=10)}; ran {RUNS['charge']} time")
        print(f"diamond:     {await d.get(timeout=10)}")

        c2 = await enrich.apply_async((True,), after=[a])
        d2 = await load.apply_async(after=[b, c2])
        try:
            await d2.get(timeout=10)
        except DependencyFailed as exc:
            print(f"failed dep:  {exc}")
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())
