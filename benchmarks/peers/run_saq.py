"""saq runner (its own virtualenv).

Producer: ``queue.enqueue`` 1,000 at a time with ``asyncio.gather``; results read in send order
with ``Job.refresh(until_complete=...)`` (a GET, then a pub/sub wait if not finished). That wait
subscribes after reading, so a job finishing in between is only noticed at the end of the wait:
the runner waits 0.2 s at a time and reads again (without this a run could hang until timeout).
Worker: ``saq tasks_saq.settings`` with ``concurrency = 100``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from _common import Adapter, gather_batched, main

RECHECK = 0.2  # seconds: the longest a missed notification can delay noticing a finished job


class SaqAdapter(Adapter):
    name = "saq"
    notes = "queue.enqueue; results via Job.refresh(until_complete) (pub/sub), re-read every 0.2 s"

    def worker_cmd(self) -> list[str]:
        return [str(Path(sys.executable).with_name("saq")), "tasks_saq.settings"]

    def version(self) -> str:
        return f"saq {version('saq')}"

    async def setup(self) -> None:
        from tasks_saq import queue

        self.queue = queue
        await queue.connect()

    async def teardown(self) -> None:
        await self.queue.disconnect()

    async def send_noop(self, n: int) -> list[Any]:
        return await gather_batched(lambda: self.queue.enqueue("noop"), n, self.batch)

    async def send_sleep(self, n: int) -> list[Any]:
        return await gather_batched(lambda: self.queue.enqueue("sleep10"), n, self.batch)

    async def send_one(self) -> Any:
        return await self.queue.enqueue("noop")

    async def wait(self, handles: list[Any], deadline: float) -> list[float]:
        from saq.job import TERMINAL_STATUSES

        out = []
        for job in handles:
            while True:
                # refresh() reads the job, then subscribes: a finish between the two is missed
                # and the wait runs to its end, so wait in short slices and read again.
                with contextlib.suppress(TimeoutError):
                    await job.refresh(until_complete=RECHECK)
                if job.status in TERMINAL_STATUSES:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError
            if job.status != "complete":
                raise RuntimeError(f"saq job {job.id} ended as {job.status}: {job.error}")
            out.append(job.result)
        return out


if __name__ == "__main__":
    main(SaqAdapter)
