"""What ``wait_replicas`` costs a producer: ``delay()`` with and without ``WAIT`` for a replica.

Run from the repository root::

    python benchmarks/replication.py                 # 2,000 one at a time, 20,000 in gathers

A primary and one replica are started (``redis-server`` on free loopback ports, no
persistence) and stopped at the end. For ``wait_replicas`` 0 and 1 (``broker_transport_options``;
each publish then ends with ``WAIT 1 <wait_timeout>`` in its round trip), it measures:

- one at a time: ``--n`` ``delay()`` calls, each awaited before the next: the round trip of one
  publish (p50, p99, mean in microseconds);
- in gathers: ``--n`` x 10 ``delay()`` calls, :data:`BATCH` at a time with ``asyncio.gather``
  (concurrent sends share one publish, and so one ``WAIT``): sends per second.

No worker runs: the messages stay queued. On loopback the replica acknowledges within one of
its event-loop turns, so this is the least ``WAIT`` can cost; across a network add a round trip
to the replica per publish.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.throughput import READY_TIMEOUT, BenchError, _free_port, _stop, run_main  # noqa: E402

BATCH = 1_000  # delay() calls gathered at once, as benchmarks/throughput.py's default


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python benchmarks/replication.py", description=__doc__)
    parser.add_argument("--n", type=int, default=2_000, help="sends one at a time (default 2000)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    return args


@contextlib.asynccontextmanager
async def primary_and_replica() -> AsyncIterator[str]:
    """A primary and a replica of it, in sync; yields the primary's URL."""
    import redis.asyncio as aioredis

    exe = shutil.which("redis-server")
    if exe is None:
        raise BenchError("redis-server is not installed (apt-get install redis-server)")
    ports = [_free_port(), _free_port()]
    procs = []
    async with contextlib.AsyncExitStack() as stack:
        # The replica's copy of the primary (dump.rdb) goes here, not in the working directory.
        directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="aqueue-bench-"))
        for port, extra in (
            (ports[0], []),
            (ports[1], ["--replicaof", "127.0.0.1", str(ports[0])]),
        ):
            proc = await asyncio.create_subprocess_exec(
                exe,
                *["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                *["--dir", directory, "--dbfilename", f"dump-{port}.rdb"],
                *extra,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
            procs.append(proc)
            stack.push_async_callback(_stop, proc, f"redis-server {port}")
        replica = aioredis.Redis(port=ports[1])
        stack.push_async_callback(replica.aclose)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:  # a server has no event to wait on: poll with a deadline
            with contextlib.suppress(OSError, aioredis.RedisError):
                info = await replica.info("replication")
                if info.get("master_link_status") == "up":
                    break
            if time.monotonic() > deadline or any(p.returncode is not None for p in procs):
                raise BenchError("the replica did not come in sync")
            await asyncio.sleep(0.05)
        yield f"redis://127.0.0.1:{ports[0]}/0"


async def measure(url: str, wait_replicas: int, args: argparse.Namespace) -> dict[str, float]:
    from aqueue import Aqueue

    app = Aqueue(
        "replication-bench",
        broker=url,
        backend=url,
        task_default_queue=f"wait-{wait_replicas}",
        broker_transport_options={"wait_replicas": wait_replicas},
    )

    @app.task(name="bench.noop", ignore_result=True)
    async def noop() -> None:
        return None

    try:
        for _ in range(200):  # warm-up: connections, scripts
            await noop.delay()
        latencies = []
        for _ in range(args.n):
            started = time.perf_counter()
            await noop.delay()
            latencies.append(time.perf_counter() - started)
        total = args.n * 10
        started = time.perf_counter()
        for at in range(0, total, BATCH):
            await asyncio.gather(*(noop.delay() for _ in range(min(BATCH, total - at))))
        elapsed = time.perf_counter() - started
    finally:
        await app.close()
    latencies.sort()
    return {
        "p50_us": latencies[len(latencies) // 2] * 1e6,
        "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
        "mean_us": statistics.fmean(latencies) * 1e6,
        "sends_per_s": total / elapsed,
    }


async def run(args: argparse.Namespace) -> None:
    async with primary_and_replica() as url:
        rows = {w: await measure(url, w, args) for w in (0, 1)}
    print(f"one at a time ({args.n:,} delay() awaited in turn), then {args.n * 10:,} in gathers")
    print(f"of {BATCH:,}; a primary and one replica on loopback")
    print(f"{'wait_replicas':>13}  {'p50 µs':>8}  {'p99 µs':>8}  {'mean µs':>8}  {'sends/s':>9}")
    for wait, row in rows.items():
        print(
            f"{wait:>13}  {row['p50_us']:>8.0f}  {row['p99_us']:>8.0f}  {row['mean_us']:>8.0f}"
            f"  {row['sends_per_s']:>9,.0f}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
