"""arq runner (its own virtualenv).

Producer: ``enqueue_job`` 1,000 at a time with ``asyncio.gather``; results read in send order
with ``Job.result`` (arq polls: ``poll_delay`` 10 ms here, 0.5 s by default). Worker: ``arq
tasks_arq.WorkerSettings`` with ``max_jobs = 100`` and arq's defaults otherwise (it polls the
queue every 0.5 s when idle, hence its latency).

arq 0.26, not 0.25: 0.25's ``Job.result`` reads the result and the queue in two separate commands,
so a job finishing between them raises ``ResultNotFound``; 0.26 reads both in one transaction.
"""

from __future__ import annotations

import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from _common import Adapter, gather_batched, main

POLL = 0.01  # seconds between result checks


class ArqAdapter(Adapter):
    name = "arq"
    notes = (
        "enqueue_job; results polled every 10 ms; "
        "the worker polls the queue every 0.5 s when idle (arq's default)"
    )

    def worker_cmd(self) -> list[str]:
        return [str(Path(sys.executable).with_name("arq")), "tasks_arq.WorkerSettings"]

    def version(self) -> str:
        return f"arq {version('arq')}"

    async def setup(self) -> None:
        from arq import create_pool
        from tasks_arq import REDIS

        self.redis = await create_pool(REDIS)

    async def teardown(self) -> None:
        await self.redis.aclose()

    async def send_noop(self, n: int) -> list[Any]:
        return await gather_batched(lambda: self.redis.enqueue_job("noop"), n, self.batch)

    async def send_sleep(self, n: int) -> list[Any]:
        return await gather_batched(lambda: self.redis.enqueue_job("sleep10"), n, self.batch)

    async def send_one(self) -> Any:
        return await self.redis.enqueue_job("noop")

    async def wait(self, handles: list[Any], deadline: float) -> list[float]:
        return [
            await job.result(timeout=deadline - time.monotonic(), poll_delay=POLL)
            for job in handles
        ]


if __name__ == "__main__":
    main(ArqAdapter)
