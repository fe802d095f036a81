"""Throughput on Redis Cluster: N no-op tasks over 8 queues spread over 3 primaries, through 1,
2 and 4 worker processes, results stored on the cluster too.

Run from the repository root (``make bench-cluster``)::

    python benchmarks/cluster.py                 # starts a throwaway 3-primary cluster
    python benchmarks/cluster.py --n 50000 --workers 1,2,4

A cluster of ``--primaries`` ``redis-server --cluster-enabled yes`` processes (no persistence,
no replicas) is started on free loopback ports, joined with ``redis-cli --cluster create`` and
stopped at the end. Eight queue names are picked so that every primary serves some (their keys
share a hash tag per queue: ``aqueue:{<queue>}:...``). For each worker count, that many
``aqueue worker -A benchmarks.bench_tasks -Q <the 8 queues> -c 100`` processes are started; N
``noop.delay()`` calls go round-robin over the queues, ``--batch`` at a time, and every result
is awaited. Measured per worker count, after a warm-up:

- enqueue/s: the N sends;
- drained tasks/s: N over the time from the first send to the last result read back.

The producer runs in this process, on the same machine: on 2 cores, it and the workers share
the CPU with the three servers, which is what the figures measure. Not a test: it asserts
nothing but that every task finished.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.throughput import (  # noqa: E402  (after the sys.path line)
    READY_TIMEOUT,
    WARMUP,
    BenchError,
    _cpu_model,
    _free_port,
    _stop,
    run_main,
    worker_process,
)

QUEUES = 8


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/cluster.py",
        description="N no-op tasks over 8 queues on a Redis Cluster, 1, 2 and 4 worker processes.",
    )
    parser.add_argument("--n", type=int, default=20_000, help="tasks per run (default 20000)")
    parser.add_argument(
        "--workers", default="1,2,4", help="worker process counts to run (default 1,2,4)"
    )
    parser.add_argument("--primaries", type=int, default=3, help="cluster primaries (default 3)")
    parser.add_argument(
        "--concurrency", type=int, default=100, help="each worker's -c (default 100)"
    )
    parser.add_argument(
        "--batch", type=int, default=1_000, help="delay() calls gathered at once (default 1000)"
    )
    args = parser.parse_args(argv)
    try:
        args.worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        parser.error("--workers must be comma-separated numbers, e.g. 1,2,4")
    if args.n < 1 or args.batch < 1 or args.primaries < 3 or not args.worker_counts:
        parser.error("--n and --batch must be at least 1, --primaries at least 3")
    return args


@contextlib.asynccontextmanager
async def redis_cluster(primaries: int) -> AsyncIterator[tuple[str, list[int]]]:
    """A throwaway Redis Cluster of ``primaries`` primaries; yields its ``redis+cluster://``
    URL and the primaries' ports."""
    import redis.asyncio as aioredis

    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        raise BenchError("redis-server or redis-cli is missing (apt-get install redis-server)")
    procs: list[asyncio.subprocess.Process] = []
    ports = [_free_port() for _ in range(primaries)]
    with tempfile.TemporaryDirectory(prefix="aqueue-bench-cluster-") as tmp:
        try:
            for port in ports:
                workdir = Path(tmp, str(port))
                await asyncio.to_thread(workdir.mkdir)
                procs.append(
                    await asyncio.create_subprocess_exec(
                        server,
                        *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)),
                        *("--save", "", "--appendonly", "no", "--cluster-enabled", "yes"),
                        *("--cluster-port", str(_free_port())),
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=asyncio.subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
            deadline = time.monotonic() + READY_TIMEOUT
            for port in ports:
                node = aioredis.Redis(host="127.0.0.1", port=port)
                try:
                    while True:
                        try:
                            await node.ping()
                            break
                        except (OSError, aioredis.ConnectionError):
                            if time.monotonic() > deadline:
                                raise BenchError(f"redis-server :{port} did not start") from None
                            await asyncio.sleep(0.05)
                finally:
                    await node.aclose()
            create = await asyncio.create_subprocess_exec(
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                *("--cluster-replicas", "0", "--cluster-yes"),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await create.communicate()
            if create.returncode != 0:
                raise BenchError(f"redis-cli --cluster create failed:\n{out.decode()}")
            await _settled(ports, deadline + 30)
            yield "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports), ports
        finally:
            for proc in procs:
                await _stop(proc, "redis-server")


async def _settled(ports: list[int], deadline: float) -> None:
    """Wait until every node reports ``cluster_state:ok``."""
    import redis.asyncio as aioredis

    for port in ports:
        node = aioredis.Redis(host="127.0.0.1", port=port)
        try:
            while (await node.cluster("info"))["cluster_state"] != "ok":
                if time.monotonic() > deadline:
                    raise BenchError(f"the cluster was not ok on :{port} in time")
                await asyncio.sleep(0.1)
        finally:
            await node.aclose()


async def spread_queues(url: str, ports: list[int]) -> list[str]:
    """:data:`QUEUES` queue names spread as evenly as names allow over the primaries."""
    from redis.asyncio.cluster import RedisCluster

    from aqueue.transports.redis.keys import CLUSTER

    client = RedisCluster(host="127.0.0.1", port=ports[0])
    try:
        await client.initialize()  # the slot map
        taken: dict[str, int] = {}
        cap = -(-QUEUES // len(ports))
        for i in itertools.count():
            name = f"bench-{i}"
            node = client.get_node_from_key(CLUSTER.stream(name, 0))
            owner = int(node.port) if node is not None else -1
            if list(taken.values()).count(owner) < cap:
                taken[name] = owner
            if len(taken) == QUEUES:
                return list(taken)
    finally:
        await client.aclose()
    raise AssertionError("unreachable")


async def server_usage(ports: list[int]) -> dict[int, tuple[float, int]]:
    """Each primary's CPU seconds used so far (user + system, ``INFO cpu``) and commands
    processed (``INFO stats``)."""
    import redis.asyncio as aioredis

    usage = {}
    for port in ports:
        node = aioredis.Redis(host="127.0.0.1", port=port)
        try:
            info = await node.info()
        finally:
            await node.aclose()
        cpu = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        usage[port] = (cpu, int(info["total_commands_processed"]))
    return usage


async def measure(n: int, batch: int, queues: list[str]) -> dict[str, float]:
    """Send ``n`` no-op tasks round-robin over ``queues`` and await them all; the timings."""
    from benchmarks.bench_tasks import noop

    warm = await asyncio.gather(
        *(noop.apply_async(queue=queues[i % len(queues)]) for i in range(WARMUP))
    )
    await asyncio.gather(*warm)
    results: list[Any] = []
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        results += await asyncio.gather(
            *(
                noop.apply_async(queue=queues[i % len(queues)])
                for i in range(start, min(n, start + batch))
            )
        )
    enqueued = time.perf_counter() - t0
    for start in range(0, n, batch):
        await asyncio.gather(*results[start : start + batch])
    return {"enqueue_s": enqueued, "drain_s": time.perf_counter() - t0}


async def run(args: argparse.Namespace) -> None:
    from benchmarks.bench_tasks import app

    rows: list[tuple[int, dict[str, float], dict[int, tuple[float, int]]]] = []
    async with redis_cluster(args.primaries) as (url, ports):
        queues = await spread_queues(url, ports)
        env = dict(os.environ)
        env["AQUEUE_BROKER_URL"] = env["AQUEUE_RESULT_BACKEND"] = url
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        app.conf.update(broker_url=url, result_backend=url)
        try:
            for count in args.worker_counts:
                async with contextlib.AsyncExitStack() as stack:
                    for _ in range(count):
                        await stack.enter_async_context(
                            worker_process(env, args.concurrency, extra=["-Q", ",".join(queues)])
                        )
                    before = await server_usage(ports)
                    timings = await measure(args.n, args.batch, queues)
                    after = await server_usage(ports)
                    used = {
                        p: (after[p][0] - before[p][0], after[p][1] - before[p][1]) for p in ports
                    }
                    rows.append((count, timings, used))
        finally:
            await app.close()
    print(
        f"machine      {_cpu_model()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, Redis Cluster of {args.primaries} primaries (no "
        f"replicas) on this machine"
    )
    print(
        f"run          {args.n:,} no-op tasks per row over {QUEUES} queues on every primary, "
        f"results stored on the cluster, worker -c {args.concurrency}"
    )
    for count, m, used in rows:
        print(
            f"{count} worker{'s' if count > 1 else ' '}    enqueue {args.n / m['enqueue_s']:>7,.0f}"
            f" tasks/s   drained {args.n / m['drain_s']:>7,.0f} tasks/s  "
            f"({m['drain_s']:.1f} s, first send to last result)"
        )
        per_node = ", ".join(
            f"{cpu / args.n * 1e6:.0f} us + {commands / args.n:.1f} commands"
            for cpu, commands in used.values()
        )
        print(
            f"             per task, on each primary (CPU, commands; warm-up included): {per_node}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
