"""Tasks for the RabbitMQ cluster tests (tests/cluster): quorum queues over every node's URL.

``build(url, queue)`` makes a fresh app; worker subprocesses use ``-A
tests.apps.cluster_tasks:app``, built from ``$AQUEUE_BROKER_URL`` (the nodes joined by ``;``),
``$AQUEUE_CLUSTER_QUEUE`` and ``$AQUEUE_RESULT_BACKEND`` (Redis, which also counts each task's
runs, so that a task run twice is seen).
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis.asyncio

from aqueue import Aqueue, Task

#: Redis hash of runs per task id.
RUNS = "aqueue-test:cluster:runs"

_clients: dict[str, redis.asyncio.Redis] = {}


def runs_client(url: str) -> redis.asyncio.Redis:
    """One Redis client per process (a worker runs one event loop)."""
    if url not in _clients:
        _clients[url] = redis.asyncio.Redis.from_url(url)
    return _clients[url]


def build(url: str, queue: str, **settings: Any) -> Aqueue:
    """A fresh app on the cluster at ``url`` (quorum queues; results on
    ``$AQUEUE_RESULT_BACKEND``) with ``cluster.stamp``."""
    app = Aqueue(
        "cluster",
        broker=url,
        task_default_queue=queue,
        broker_transport_options={"queue_type": "quorum", "reconnect_interval": 0.5},
        **settings,
    )

    @app.task(name="cluster.stamp", bind=True)
    async def stamp(self: Task[Any, Any], i: int) -> float:
        """Counts its runs in Redis; returns when it started (epoch seconds)."""
        started = time.time()
        backend = os.environ["AQUEUE_RESULT_BACKEND"]
        await runs_client(backend).hincrby(RUNS, str(self.request.id), 1)
        return started

    return app


# For worker subprocesses: ``aqueue worker -A tests.apps.cluster_tasks:app``.
app = build(
    os.environ.get("AQUEUE_BROKER_URL", "memory://"),
    os.environ.get("AQUEUE_CLUSTER_QUEUE", "cluster"),
)
