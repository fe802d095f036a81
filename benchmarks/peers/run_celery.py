"""Celery runner (its own virtualenv).

Producer: ``task.delay()`` in a loop (Celery's client is synchronous); results read in send
order with ``AsyncResult.get()`` (the Redis backend pushes them over pub/sub). Worker: ``celery -A
tasks_celery worker -P prefork -c 2`` (two processes: one per core, Celery's default), otherwise
Celery's defaults. Tasks are plain functions, the sleep task ``time.sleep(0.01)``.
"""

from __future__ import annotations

import os
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from _common import Adapter, main


class CeleryAdapter(Adapter):
    name = "celery"
    notes = (
        "prefork -c 2 (sync tasks: sleep is time.sleep); delay() in a loop; AsyncResult.get()"
        + ("; confirm_publish=True on RabbitMQ" if os.environ.get("BENCH_CELERY_CONFIRM") else "")
    )

    def worker_cmd(self) -> list[str]:
        return [
            str(Path(sys.executable).with_name("celery")),
            "-A",
            "tasks_celery",
            "worker",
            "-P",
            "prefork",
            "-c",
            "2",
            "--loglevel",
            "WARNING",
        ]

    def version(self) -> str:
        return f"celery {version('celery')}, kombu {version('kombu')}"

    async def setup(self) -> None:
        import tasks_celery

        self.t = tasks_celery

    async def teardown(self) -> None:
        self.t.app.close()

    async def send_noop(self, n: int) -> list[Any]:
        return [self.t.noop.delay() for _ in range(n)]

    async def send_sleep(self, n: int) -> list[Any]:
        return [self.t.sleep10.delay() for _ in range(n)]

    async def send_one(self) -> Any:
        return self.t.noop.delay()

    async def wait(self, handles: list[Any], deadline: float) -> list[float]:
        return [r.get(timeout=max(0.1, deadline - time.monotonic())) for r in handles]


if __name__ == "__main__":
    main(CeleryAdapter)
