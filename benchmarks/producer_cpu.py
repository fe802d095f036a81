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
    python benchmarks/producer_cpu.py --live          # plus what a waiting delay() keeps alive
    python benchmarks/producer_cpu.py --rate 200 --n 1000 --rounds 3   # one call at a time

Prints the machine, then microseconds of producer CPU per ``delay()`` for each setup, and the
broker server's (redis-server's, or RabbitMQ's processes') over all rounds. With
``--live``, also the objects the garbage collector tracks that one ``delay()`` keeps alive while
it waits for its publish to be answered (100 calls held at the broker, counted by type, less
the benchmark's own ``gather``): each one is scanned by every collection that runs meanwhile, and
the more there are, the more often collections run.

With ``--rate R``, the calls are made one at a time instead, each awaited before the next, at
``R`` calls a second (``0``: back to back), as a web app at a light load makes them: the CPU
counted is only that of each call, from ``delay()`` called to it returning (the pauses between
calls are not). Between two calls at 200/s the process is idle for about 5 ms, and its first
instructions after that run on a cold core.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import gc
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: import this checkout's aqueue
    sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks" / "peers"))

import bench  # type: ignore[import-not-found]  # noqa: E402  (benchmarks/peers/bench.py)

from aqueue import Aqueue, loops  # noqa: E402
from benchmarks.throughput import tree_cpu  # noqa: E402

# What asyncio.gather() keeps per call, as any caller's task waiting on a future would (a Task,
# two contexts, its weak reference in asyncio's task set, its wake-up callback, the iterator of
# the future it awaits; measured with plain coroutines awaiting plain futures): not aqueue's.
GATHER_OWN = {
    "Task": 1,
    "Context": 2,
    "ReferenceType": 1,
    "builtin_function_or_method": 1,
    "FutureIter": 1,
}


async def measure(
    broker: str, backend: str, args: argparse.Namespace, server: int | None = None
) -> tuple[list[float], float | None]:
    """µs of CPU per ``delay()`` for each round, and the broker server's (process ``server``
    and its children, all rounds together; ``None`` without one); with ``--profile``, print a
    profile of one round."""
    app = Aqueue("producer-cpu", broker=broker, backend=backend)

    @app.task(name="producer_cpu.noop")
    async def noop() -> None:
        """Never runs: no worker is started, only the producer is measured."""

    await noop.delay()  # connects, subscribes the reply channel
    if args.live:  # first: later, the rounds' garbage would blur the count
        await live_objects(app, noop)
    for _ in range(args.n // args.gather):  # warm-up round
        await asyncio.gather(*(noop.delay() for _ in range(args.gather)))
    per_call = []
    server_before = tree_cpu(server) if server is not None else 0.0
    for _ in range(args.rounds):
        gc.collect()
        if args.rate is not None:
            per_call.append(await paced(noop, args.n, args.rate) / args.n * 1e6)
            continue
        start = time.process_time()
        for _ in range(args.n // args.gather):
            await asyncio.gather(*(noop.delay() for _ in range(args.gather)))
        per_call.append((time.process_time() - start) / args.n * 1e6)
    server_us = None
    if server is not None:
        server_us = (tree_cpu(server) - server_before) / (args.n * args.rounds) * 1e6
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(args.n // args.gather):
            await asyncio.gather(*(noop.delay() for _ in range(args.gather)))
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(15)
    await app.close()
    return per_call, server_us


async def paced(noop: Any, n: int, rate: float) -> float:
    """``n`` calls of ``noop.delay()``, one at a time at ``rate`` calls a second (``0``: back to
    back); the process's CPU seconds spent inside the calls, the pauses left out."""
    loop = asyncio.get_running_loop()
    begin = loop.time()
    used = 0.0
    for i in range(n):
        if rate:
            pause = begin + i / rate - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)  # the pace of the load, not a synchronisation
        start = time.process_time()
        await noop.delay()
        used += time.process_time() - start
    return used


async def live_objects(app: Aqueue, noop: Any) -> None:
    """Print the GC-tracked objects one waiting ``delay()`` keeps alive (see the docstring)."""
    broker = await app.broker()
    publish = broker.publish
    held, release = asyncio.Event(), asyncio.Event()

    async def holding(outgoing: Any) -> Any:
        held.set()
        await release.wait()
        return await publish(outgoing)

    broker.publish = holding  # type: ignore[method-assign]
    gc.collect()
    gc.disable()
    try:
        before = collections.Counter(type(o).__name__ for o in gc.get_objects())
        calls = 100
        sending = asyncio.gather(*(noop.delay() for _ in range(calls)))
        await held.wait()
        after = collections.Counter(type(o).__name__ for o in gc.get_objects())
        release.set()
        await sending
    finally:
        gc.enable()
        broker.publish = publish  # type: ignore[method-assign]
    alive = {k: (v - GATHER_OWN.get(k, 0) * calls) / calls for k, v in (after - before).items()}
    shown = {k: v for k, v in sorted(alive.items(), key=lambda kv: -kv[1]) if v >= 0.5}
    print(f"objects alive per waiting delay(): {sum(shown.values()):.1f}", end=" (")
    print(", ".join(f"{k} {v:g}" for k, v in shown.items()) + ")")


def report(name: str, measured: tuple[list[float], float | None]) -> None:
    per_call, server_us = measured
    rounds = ", ".join(f"{v:.1f}" for v in per_call)
    print(f"{name}: {statistics.median(per_call):.1f} µs CPU per delay() (median; rounds {rounds})")
    if server_us is not None:
        print(f"  the broker server's CPU per delay(), all rounds: {server_us:.1f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=20_000, help="delay() calls per round")
    parser.add_argument("--gather", type=int, default=1000, help="calls gathered at once")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--amqp", action="store_true", help="also RabbitMQ as broker")
    parser.add_argument("--profile", action="store_true", help="print a cProfile top-15")
    parser.add_argument("--live", action="store_true", help="count objects a delay() keeps")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="instead of gathers: one call at a time, at this many a second (0: back to back)",
    )
    parser.add_argument(
        "--loop", choices=("asyncio", "uvloop"), default="asyncio", help="the client's loop"
    )
    args = parser.parse_args()
    if args.rate is not None and args.rate < 0:
        parser.error("--rate must be 0 or more")
    os.environ[loops.LOOP_ENV] = args.loop  # aqueue.loops picks it (uvloop missing: an error)

    def run(broker: str, backend: str, server: str) -> tuple[list[float], float | None]:
        pid = next((p.pid for name, p in services.procs if name == server), None)
        return loops.run(measure(broker, backend, args, pid))

    work = Path(tempfile.mkdtemp(prefix="aqueue-producer-cpu-"))
    services = bench.Services(work, f"producer-cpu-{time.time_ns()}")
    try:
        redis = services.start_redis()
        print(f"{bench.machine(redis)}; client loop: {args.loop}")
        if args.rate is None:
            print(f"calls: in gathers of {args.gather}, {args.n:,} a round")
        else:
            pace = f"at {args.rate:g}/s" if args.rate else "back to back"
            print(f"calls: one at a time, {pace}, {args.n:,} a round")
        report("redis", run(redis, redis, "redis-server"))
        if args.amqp:
            if not Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists():
                print("amqp: skipped (rabbitmq-server is not installed)")
            else:
                amqp = services.start_rabbitmq()
                report("amqp (results in redis)", run(amqp, redis, "rabbitmq-server"))
    finally:
        services.stop()


if __name__ == "__main__":
    main()
