"""The observability demo in one process on the embedded default (no server needed): a worker
with Prometheus metrics on a free port, 50 orders sent, then the metrics it serves.

    python -m examples.observability.run
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import urllib.request

from aqueue import Worker
from aqueue.contrib.prometheus import Metrics, serve
from examples.observability.app import app, charge

SHOWN = ("aqueue_tasks_succeeded_total", "aqueue_tasks_failed_total", "aqueue_tasks_retried_total",
         "aqueue_task_runtime_seconds_count", "aqueue_tasks_in_flight")  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return f"{response.status} " + response.read().decode()


async def main() -> None:
    metrics = Metrics(interval=0.5)
    metrics.install(app)
    port = free_port()
    server = serve(port, "127.0.0.1", alive=metrics.alive, ready=metrics.ready)
    try:
        async with Worker(app, concurrency=20):
            results = await charge.delay_many([(order,) for order in range(50)])
            for result in results:
                with contextlib.suppress(ValueError):
                    await result.get(timeout=30)
            text = await asyncio.to_thread(get, f"http://127.0.0.1:{port}/metrics")
            print("readyz", await asyncio.to_thread(get, f"http://127.0.0.1:{port}/readyz"))
        for line in text.splitlines():
            if line.startswith(SHOWN):
                print(line)
    finally:
        server.close()
        await app.close()


if __name__ == "__main__":
    asyncio.run(main())
