"""taskiq + taskiq-redis runner (its own virtualenv); taskiq-aio-pika with an AMQP broker.

Producer: ``task.kiq()`` 1,000 at a time with ``asyncio.gather``; results read in send order with
``wait_result`` (taskiq's result API polls: ``check_interval`` 10 ms here, 0.2 s by default).
Worker: ``taskiq worker tasks_taskiq:broker --workers 1 --max-async-tasks 100``.
"""

from __future__ import annotations

import argparse
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from _common import Adapter, gather_batched, main

POLL = 0.01  # seconds between result checks


class TaskiqAdapter(Adapter):
    name = "taskiq"

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.amqp = args.broker.startswith("amqp")
        broker = "AioPikaBroker (qos 4 x concurrency)" if self.amqp else "RedisStreamBroker"
        self.notes = f"{broker} + RedisAsyncResultBackend; results polled every 10 ms"

    def worker_cmd(self) -> list[str]:
        return [
            str(Path(sys.executable).with_name("taskiq")),
            "worker",
            "tasks_taskiq:broker",
            "--workers",
            "1",
            "--max-async-tasks",
            str(self.args.concurrency),
            "--log-level",
            "WARNING",
        ]

    def version(self) -> str:
        out = f"taskiq {version('taskiq')}, taskiq-redis {version('taskiq-redis')}"
        return out + (f", taskiq-aio-pika {version('taskiq-aio-pika')}" if self.amqp else "")

    async def setup(self) -> None:
        import tasks_taskiq

        self.t = tasks_taskiq
        await tasks_taskiq.broker.startup()  # declares the consumer group (queue) before any send

    async def teardown(self) -> None:
        await self.t.broker.shutdown()

    async def send_noop(self, n: int) -> list[Any]:
        return await gather_batched(self.t.noop.kiq, n, self.batch)

    async def send_sleep(self, n: int) -> list[Any]:
        return await gather_batched(self.t.sleep10.kiq, n, self.batch)

    async def send_one(self) -> Any:
        return await self.t.noop.kiq()

    async def wait(self, handles: list[Any], deadline: float) -> list[float]:
        out = []
        for h in handles:
            res = await h.wait_result(check_interval=POLL, timeout=deadline - time.monotonic())
            out.append(res.return_value)
        return out


if __name__ == "__main__":
    main(TaskiqAdapter)
