"""Redis's CPU per result record stored: the result backend's store script, against the
cheapest script that stores a record with an expiry, and against a pipeline of plain ``SET``s.

The store script publishes a record on its task's own channel (for a waiter elsewhere) unless
it goes to its sender's reply channel, which gets one message per batch: ``store script``
stores records sent without a reply channel, ``store script, reply`` records sent with one
(as from an app that waits for its results), ``store script, waiters`` checks the waiter set
of ``apply_async(after=...)`` too, as a worker does.

Each way stores ``--batches`` batches of ``--batch`` records of ``--size`` bytes (a worker's
runners finishing together), and reads the server's CPU time (``INFO cpu``) around them; the
ways alternate, round after round, on one throwaway ``redis-server``; the figures are medians.
Run from the repository root::

    python benchmarks/redis_store.py            # --batch 100 --batches 300 --size 200 --rounds 3

Prints the machine, then per way: Redis's µs of CPU per record, and the client's wall time per
record (what the worker waits and parses).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script: import this checkout's aqueue
    sys.path.insert(0, str(REPO_ROOT))

import redis.asyncio as aioredis  # noqa: E402

from aqueue.transports.redis.results import RedisBackend  # noqa: E402
from benchmarks.throughput import _cpu_model, redis_server  # noqa: E402

# The least a script can do per record: SET with an expiry.
_BARE = "for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ARGV[1]) end"
_PX = 86_400_000  # one day, as result_expires does by default
_REPLY = "aqueue:reply:bench"  # a sender's reply channel: one PUBLISH per batch, none per record

Way = Callable[[list[tuple[str, bytes]]], Awaitable[object]]


async def _cpu(client: aioredis.Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def measure(url: str, args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    client = aioredis.Redis.from_url(url)
    backend = RedisBackend(url)
    bare = client.register_script(_BARE)

    async def pipelined(items: list[tuple[str, bytes]]) -> object:
        async with client.pipeline(transaction=False) as pipe:
            for task_id, record in items:
                pipe.set("aqueue-result:" + task_id, record, px=_PX)
            return await pipe.execute()

    ways: dict[str, Way] = {
        "store script": lambda items: backend.store(items, _PX / 1000),
        "store script, reply": lambda items: backend.store(
            items, _PX / 1000, dict.fromkeys((i for i, _ in items), _REPLY)
        ),
        "store script, waiters": lambda items: backend.store_waited(items, _PX / 1000),
        "bare SET PX script": lambda items: bare(
            keys=["aqueue-result:" + i for i, _ in items], args=[_PX, *(r for _, r in items)]
        ),
        "pipeline of SET PX": pipelined,
    }
    found: dict[str, list[tuple[float, float]]] = {way: [] for way in ways}
    record = b"x" * args.size
    try:
        for round_ in range(args.rounds):
            for way, store in ways.items():
                await client.flushdb()
                cpu, t0 = await _cpu(client), time.perf_counter()
                for b in range(args.batches):
                    await store([(f"{round_}-{b}-{i}", record) for i in range(args.batch)])
                wall = time.perf_counter() - t0
                n = args.batches * args.batch
                found[way].append(((await _cpu(client) - cpu) / n * 1e6, wall / n * 1e6))
    finally:
        await backend.close()
        await client.aclose()
    return found


async def run(args: argparse.Namespace) -> None:
    async with redis_server() as url:
        client = aioredis.Redis.from_url(url)
        try:
            info = await client.info("server")
        finally:
            await client.aclose()
        print(
            f"{_cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"redis-server {info['redis_version']}; {args.batches} batches of {args.batch} "
            f"records of {args.size} bytes, {args.rounds} rounds"
        )
        for way, figures in (await measure(url, args)).items():
            cpu = statistics.median(f[0] for f in figures)
            wall = statistics.median(f[1] for f in figures)
            print(f"  {way:24s} Redis {cpu:5.2f} µs of CPU per record, client {wall:5.2f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--batch", type=int, default=100, help="records per store call")
    parser.add_argument("--batches", type=int, default=300, help="store calls per way and round")
    parser.add_argument("--size", type=int, default=200, help="bytes per record")
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
