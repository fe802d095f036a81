"""Connections one Redis app holds: a worker (``-c 100``, beat and events on) and a producer.

Run from the repository root (``make bench-connections``)::

    python benchmarks/connections.py             # starts a throwaway redis-server
    python benchmarks/connections.py --n 5000 --concurrency 100

One worker process (``aqueue worker -c 100 -B -E``: broker, result backend, reply channels,
remote control, events and beat on one Redis URL) runs while this process sends ``--n`` no-op
tasks concurrently and awaits their results. Meanwhile ``CLIENT LIST`` is read every 0.2 s and
each connection is traced to its process (the socket's inode under ``/proc``); the peak count
per process is printed, with the last command each connection ran. Every role of an app shares
one connection pool, so the counts are those of one pool (the blocking fetch, the pub/sub
reader, and the commands in flight). Prints the figures and the machine; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.throughput import _cpu_model, redis_server, run_main, worker_process  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="tasks sent (default 2000)")
    p.add_argument("--concurrency", type=int, default=100, help="worker -c (default 100)")
    return p.parse_args(argv)


def _socket_owners() -> dict[int, int]:
    """Local TCP port -> pid, for this machine's processes (Linux /proc)."""
    inode_port: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                inode_port[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
    owners: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    port = inode_port.get(target[8:-1])
                    if port is not None:
                        owners[port] = int(proc.name)
    return owners


async def _sample(
    url: str, worker_pid: int, peaks: dict[str, int], cmds: dict[str, set[str]]
) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    me = os.getpid()
    try:
        while True:
            listing = await client.client_list()
            owners = _socket_owners()
            counts: collections.Counter[str] = collections.Counter()
            for entry in listing:
                port = int(str(entry["addr"]).rsplit(":", 1)[1])
                pid = owners.get(port)
                who = "worker" if pid == worker_pid else "producer" if pid == me else "other"
                counts[who] += 1
                cmds[who].add(str(entry.get("cmd", "")))
            counts["producer"] -= 1  # this sampling connection
            for who, n in counts.items():
                peaks[who] = max(peaks.get(who, 0), n)
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()


async def run(args: argparse.Namespace) -> None:
    from benchmarks.bench_tasks import app, noop

    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(redis_server())
        app.conf.update(broker_url=url, result_backend=url)
        stack.push_async_callback(app.close)
        env = dict(os.environ)
        env["AQUEUE_BROKER_URL"] = env["AQUEUE_RESULT_BACKEND"] = url
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        proc = await stack.enter_async_context(
            worker_process(env, args.concurrency, extra=("-B", "-E"))
        )
        peaks: dict[str, int] = {}
        cmds: dict[str, set[str]] = collections.defaultdict(set)
        sampler = asyncio.create_task(_sample(url, proc.pid, peaks, cmds))
        try:
            for start in range(0, args.n, 1000):
                batch = [noop.delay() for _ in range(min(1000, args.n - start))]
                results = await asyncio.gather(*batch)
                await asyncio.gather(*(r.get(timeout=60) for r in results))
            await app.control.ping()  # remote control over the same pool
            await asyncio.sleep(0.5)  # one more sample after the last results
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
    print(
        f"machine      {_cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        f"workload     {args.n:,} no-op tasks sent concurrently and awaited; one worker "
        f"-c {args.concurrency} -B -E; broker, results, control, beat on one Redis URL"
    )
    for who in ("worker", "producer"):
        used = ", ".join(sorted(c for c in cmds[who] if c)) or "-"
        print(f"{who:<12} peak {peaks.get(who, 0)} connections (last commands seen: {used})")


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
