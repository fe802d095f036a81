"""streaq runner (its own virtualenv).

Producer: ``await task.enqueue()`` (one Redis call per task) 1,000 at a time with
``asyncio.gather``, streaq's single-message path, as every peer's; ``worker.enqueue_many`` (one
Redis pipeline) per 1,000 tasks in the bulk workload. Completion is read in send
order with ``Task.status()`` (polled every 10 ms while not done), then the values in one
``get_tasks_by_status(DONE)``: ``Task.result()`` opens a pub/sub subscription per call that takes
0.1 s to close (coredis's unsubscribe timeout), and past ~30 at once it exhausts the 64-connection
pool and stalls, so it cannot collect 20,000 results in the time of the run. Worker: ``streaq run
tasks_streaq:worker`` with ``concurrency=100``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from _common import Adapter, gather_batched, main

POLL = 0.01  # seconds between status checks of an unfinished task


class StreaqAdapter(Adapter):
    name = "streaq"
    notes = (
        "enqueue() gathered 1,000 at a time (bulk: enqueue_many per 1,000, one pipeline); "
        "completion via Task.status() polling, "
        "values via get_tasks_by_status (Task.result() costs 0.1 s per call)"
    )

    def worker_cmd(self) -> list[str]:
        return [str(Path(sys.executable).with_name("streaq")), "run", "tasks_streaq:worker"]

    def version(self) -> str:
        return f"streaq {version('streaq')}"

    async def setup(self) -> None:
        import tasks_streaq

        self.t = tasks_streaq
        self._cm = tasks_streaq.worker.__asynccontextmanager__()
        await self._cm.__aenter__()

    async def teardown(self) -> None:
        await self._cm.__aexit__(None, None, None)

    async def _bulk(self, registered: Any, n: int) -> list[Any]:
        out: list[Any] = []
        for start in range(0, n, self.batch):
            tasks = [registered.enqueue() for _ in range(min(self.batch, n - start))]
            await self.t.worker.enqueue_many(tasks)
            out += tasks
        return out

    async def send_noop(self, n: int) -> list[Any]:
        return await gather_batched(self.t.noop.enqueue, n, self.batch)

    async def send_sleep(self, n: int) -> list[Any]:
        return await gather_batched(self.t.sleep10.enqueue, n, self.batch)

    async def send_one(self) -> Any:
        return await self.t.noop.enqueue()

    async def send_noop_bulk(self, n: int) -> list[Any]:
        return await self._bulk(self.t.noop, n)

    async def wait(self, handles: list[Any], deadline: float) -> list[float]:
        from streaq.task import TaskStatus

        for task in handles:
            while await task.status() != TaskStatus.DONE:
                if time.monotonic() > deadline:
                    raise TimeoutError
                await asyncio.sleep(POLL)
        done = await self.t.worker.get_tasks_by_status(TaskStatus.DONE, limit=len(handles))
        by_id = {r.task_id: r for r in done}
        return [by_id[task.id].result for task in handles]


if __name__ == "__main__":
    main(StreaqAdapter)
