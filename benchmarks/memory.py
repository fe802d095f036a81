"""Worker memory with a backlog: 100,000 tasks waiting, one worker process holding what it may.

Run from the repository root (``make bench-memory``)::

    python benchmarks/memory.py                 # starts a throwaway redis-server
    python benchmarks/memory.py --n 200000

The queue is filled first (``delay_many``, no worker running) with tasks that each hold a
concurrency slot for ``--hold`` seconds; then one worker starts (``aqueue worker -c 100``, the
default prefetch multiplier 4) and, once it has run for ``--settle`` seconds, its resident set
size is read from ``/proc/<pid>/status`` along with how many messages it has leased (the
consumer group's pending count). Prefetch is bounded, so neither grows with the backlog: the
rest waits in Redis. Prints the figures and the machine; asserts nothing but that it ran.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.throughput import _cpu_model, redis_server, run_main, worker_process  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000, help="tasks waiting (default 100000)")
    p.add_argument("--concurrency", type=int, default=100, help="worker -c (default 100)")
    p.add_argument("--hold", type=float, default=10.0, help="seconds each task runs (10)")
    p.add_argument("--settle", type=float, default=3.0, help="seconds before measuring (3)")
    return p.parse_args(argv)


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of ``pid``, in kB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


async def run(args: argparse.Namespace) -> None:
    import redis.asyncio as aioredis

    from aqueue.transports.redis import keys
    from benchmarks.bench_tasks import app, hold

    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(redis_server())
        app.conf.update(broker_url=url, result_backend=url)
        stack.push_async_callback(app.close)
        t0 = time.perf_counter()
        for start in range(0, args.n, 1000):
            await hold.delay_many([(args.hold,)] * min(1000, args.n - start))
        fill_s = time.perf_counter() - t0
        env = dict(os.environ)
        env["AQUEUE_BROKER_URL"] = env["AQUEUE_RESULT_BACKEND"] = url
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        proc = await stack.enter_async_context(worker_process(env, args.concurrency))
        await asyncio.sleep(args.settle)  # a measurement delay, not synchronisation
        mem = _status(proc.pid)
        client = aioredis.Redis.from_url(url)
        try:
            stream = keys.stream(app.conf.task_default_queue, 0)
            pending = (await client.xpending(stream, keys.GROUP))["pending"]
            waiting = await client.xlen(stream) - pending
            version = (await client.info("server"))["redis_version"]
        finally:
            await client.aclose()
    print(
        f"machine      {_cpu_model()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, redis-server {version}"
    )
    print(
        f"backlog      {args.n:,} tasks sent with delay_many in {fill_s:.1f} s; one worker, "
        f"concurrency {args.concurrency}"
    )
    print(f"leased       {pending:,} messages held by the worker; {waiting:,} waiting in Redis")
    print(
        f"worker RSS   {mem['VmRSS'] / 1024:,.1f} MB after {args.settle:g} s "
        f"(peak {mem['VmHWM'] / 1024:,.1f} MB)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
