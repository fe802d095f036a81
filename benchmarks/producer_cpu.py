"""Producer CPU per ``delay()``: what one single-message send costs the calling process.

A web app calls ``await task.delay()`` one request at a time, so this measures that path, not
``delay_many``: rounds of ``await asyncio.gather(*(noop.delay() for _ in range(--gather)))``, the
client process's CPU time (``time.process_time``, user + system: building the message, the
batcher, the broker client, the event loop's I/O) divided by the number of calls. CPU time, not
wall-clock throughput, so that a busy machine (the broker shares its cores) barely moves it. The
figure is the median over ``--rounds`` rounds of ``--n`` calls each.

Two setups, each against throwaway servers on free loopback ports (``benchmarks/peers``'
``Services``): Redis as broker and result backend, then RabbitMQ as broker with results in Redis
(``--amqp``; skipped when RabbitMQ is not installed). Run from the repository root::

    python benchmarks/producer_cpu.py                 # Redis only
    python benchmarks/producer_cpu.py --amqp          # Redis, then AMQP
    python benchmarks/producer_cpu.py --profile       # plus a cProfile top-15 (by own time)
    python benchmarks/producer_cpu.py --loop uvloop   # the client on uvloop (default: asyncio's)

Prints the machine, then microseconds of producer CPU per ``delay()`` for each setup.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: import this checkout's aqueue
    sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks" / "peers"))

import bench  # type: ignore[import-not-found]  # noqa: E402  (benchmarks/peers/bench.py)

from aqueue import Aqueue, loops  # noqa: E402


async def measure(broker: str, backend: str, args: argparse.Namespace) -> list[float]:
    """µs of CPU per ``delay()`` for each round; with ``--profile``, print a profile of one."""
    app = Aqueue("producer-cpu", broker=broker, backend=backend)

    @app.task(name="producer_cpu.noop")
    async def noop() -> None:
        """Never runs: no worker is started, only the producer is measured."""

    await noop.delay()  # connects, subscribes the reply channel
    for _ in range(args.n // args.gather):  # warm-up round
        await asyncio.gather(*(noop.delay() for _ in range(args.gather)))
    per_call = []
    for _ in range(args.rounds):
        gc.collect()
        start = time.process_time()
        for _ in range(args.n // args.gather):
            await asyncio.gather(*(noop.delay() for _ in range(args.gather)))
        per_call.append((time.process_time() - start) / args.n * 1e6)
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(args.n // args.gather):
            await asyncio.gather(*(noop.delay() for _ in range(args.gather)))
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(15)
    await app.close()
    return per_call


def report(name: str, per_call: list[float]) -> None:
    rounds = ", ".join(f"{v:.1f}" for v in per_call)
    print(f"{name}: {statistics.median(per_call):.1f} µs CPU per delay() (median; rounds {rounds})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=20_000, help="delay() calls per round")
    parser.add_argument("--gather", type=int, default=1000, help="calls gathered at once")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--amqp", action="store_true", help="also RabbitMQ as broker")
    parser.add_argument("--profile", action="store_true", help="print a cProfile top-15")
    parser.add_argument(
        "--loop", choices=("asyncio", "uvloop"), default="asyncio", help="the client's loop"
    )
    args = parser.parse_args()
    os.environ[loops.LOOP_ENV] = args.loop  # aqueue.loops picks it (uvloop missing: an error)

    def run(broker: str, backend: str) -> list[float]:
        return loops.run(measure(broker, backend, args))

    work = Path(tempfile.mkdtemp(prefix="aqueue-producer-cpu-"))
    services = bench.Services(work, f"producer-cpu-{time.time_ns()}")
    try:
        redis = services.start_redis()
        print(f"{bench.machine(redis)}; client loop: {args.loop}")
        report("redis", run(redis, redis))
        if args.amqp:
            if not Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists():
                print("amqp: skipped (rabbitmq-server is not installed)")
            else:
                amqp = services.start_rabbitmq()
                report("amqp (results in redis)", run(amqp, redis))
    finally:
        services.stop()


if __name__ == "__main__":
    main()
