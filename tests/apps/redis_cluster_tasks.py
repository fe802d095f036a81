"""Tasks for the Redis Cluster tests (tests/cluster/test_redis_cluster.py) and benchmark.

``build(url)`` makes a fresh app on the cluster at ``url`` (``redis+cluster://``), broker and
results both; worker subprocesses use ``-A tests.apps.redis_cluster_tasks:app``, built from
``$AQUEUE_BROKER_URL`` and ``$AQUEUE_RCLUSTER_QUEUE`` (the default queue). Each run of
``rcluster.add`` is counted in a hash on the cluster, so that a task run twice is seen.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio.cluster import RedisCluster

from aqueue import Aqueue, Task

#: Hash (on the cluster) of runs per task id.
RUNS = "aqueue-test:rcluster:runs"

_clients: dict[str, RedisCluster] = {}


def runs_client(url: str) -> RedisCluster:
    """One cluster client per process and URL (a worker runs one event loop), on the URL's
    first node."""
    if url not in _clients:
        host, _, port = urlsplit(url).netloc.rpartition("@")[2].split(",")[0].partition(":")
        _clients[url] = RedisCluster(host=host, port=int(port or 6379))
    return _clients[url]


def build(url: str, queue: str = "rcluster", **settings: Any) -> Aqueue:
    """A fresh app with broker and results on the cluster at ``url``, default queue
    ``queue``, with ``rcluster.add`` (counts its runs) and ``rcluster.tsum``."""
    app = Aqueue("rcluster", broker=url, backend=url, task_default_queue=queue, **settings)

    @app.task(name="rcluster.add", bind=True)
    async def add(self: Task[Any, Any], x: int, y: int) -> int:
        """``x + y``, its run counted in :data:`RUNS`."""
        await runs_client(url).hincrby(RUNS, str(self.request.id), 1)
        return x + y

    @app.task(name="rcluster.tsum")
    async def tsum(values: list[int]) -> int:
        """The sum of ``values`` (a chord's body)."""
        return sum(values)

    @app.task(name="rcluster.noop")
    async def noop() -> None:
        """Nothing (the benchmark's task)."""

    return app


# For worker subprocesses: ``aqueue worker -A tests.apps.redis_cluster_tasks:app``.
app = build(
    os.environ.get("AQUEUE_BROKER_URL", "memory://"),
    os.environ.get("AQUEUE_RCLUSTER_QUEUE", "rcluster"),
)
