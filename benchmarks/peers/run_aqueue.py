"""aqueue's runner, in the system Python (or any env with the repo installed).

Producer: ``delay()`` 1,000 at a time with ``asyncio.gather``, as ``benchmarks/throughput.py``
does (the bulk workload: ``delay_many`` of 1,000); results awaited 1,000 at a time (pushed over
the client's reply channel, no polling). Worker: ``aqueue worker
-A tasks_aqueue -c 100``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from _common import Adapter, gather_batched, main


class AqueueAdapter(Adapter):
    name = "aqueue"
    notes = "async tasks; delay() x1000 per gather (bulk: delay_many x1000); reply channel" + (
        "; classic queues without priorities on RabbitMQ"
        if os.environ.get("BENCH_AQUEUE_NO_PRIORITIES")
        else ""
    )

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        if args.backend == args.broker and not args.broker.startswith("redis"):
            raise SystemExit("aqueue needs a result backend URL next to a non-Redis broker")

    def worker_cmd(self) -> list[str]:
        exe = Path(sys.executable).with_name("aqueue")
        aqueue = str(exe) if exe.exists() else (shutil.which("aqueue") or "aqueue")
        return [
            aqueue,
            "worker",
            "-A",
            "tasks_aqueue",
            "-c",
            str(self.args.concurrency),
            "-l",
            "warning",
        ]

    def version(self) -> str:
        import aqueue

        return aqueue.__version__

    async def setup(self) -> None:
        from tasks_aqueue import app, noop, sleep10

        app.conf.update(broker_url=self.args.broker, result_backend=self.args.backend)
        self.app, self.noop, self.sleep10 = app, noop, sleep10
        await app.broker()
        await app.result_backend()

    async def teardown(self) -> None:
        await self.app.close()

    async def send_noop(self, n: int) -> list[Any]:
        return await gather_batched(self.noop.delay, n, self.batch)

    async def send_sleep(self, n: int) -> list[Any]:
        return await gather_batched(self.sleep10.delay, n, self.batch)

    async def send_one(self) -> Any:
        return await self.noop.delay()

    async def send_noop_bulk(self, n: int) -> list[Any]:
        out: list[Any] = []
        for start in range(0, n, self.batch):
            out += await self.noop.delay_many([()] * min(self.batch, n - start))
        return out

    async def wait(self, handles: list[Any], deadline: float) -> list[float]:
        out: list[float] = []
        for start in range(0, len(handles), self.batch):  # bounded: not N subscriptions at once
            left = max(0.1, deadline - time.monotonic())
            chunk = handles[start : start + self.batch]
            out += await asyncio.gather(*(r.get(timeout=left) for r in chunk))
        return out


if __name__ == "__main__":
    main(AqueueAdapter)
