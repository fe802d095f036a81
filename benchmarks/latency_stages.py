"""Light-load latency stage by stage: where the time goes between ``delay()`` and the task.

At a light load (``--rate`` tasks/s, 200 by default) each task reaches an idle worker. The
worker process (``aqueue worker -A benchmarks.latency_stages:app -c 100``) stamps, with
``time.time()``, the moment its blocking ``XREADGROUP`` (or fetch script) returns a message and
the moment the run's start mark is sent (written, where the broker does not wait for the
answer; answered, where it does), and the task returns those stamps with the time of its
first line. Against the sender's clock (one machine, one clock), per task:

- ``delay()`` called -> the publish written to the socket, in the sender (the client's share);
- -> the worker's read returns (Redis, and waking the worker);
- -> the start mark sent (decode, admit, mark);
- -> the task's first line;
- the total.

Run from the repository root::

    python benchmarks/latency_stages.py                  # 1,000 tasks at 200/s
    python benchmarks/latency_stages.py --n 2000 --rate 100

A throwaway redis-server (no persistence) is the broker and result backend. Prints the machine
and p50/p99 in milliseconds per stage. The stamps are patched onto the Redis broker and the
executor in the worker process (``AQUEUE_LATENCY_STAGES=worker``), and onto redis-py's
connection in the sender (its first command written after each ``delay()`` call: the publish);
a task whose stamps are out of order (two messages in flight at once) is left out and counted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: import this checkout's aqueue
    sys.path.insert(0, str(REPO_ROOT))

from aqueue import Aqueue  # noqa: E402

STAMPS: dict[str, float] = {"read": 0.0, "marked": 0.0}
WRITTEN: dict[str, float] = {"at": 0.0}  # in the sender: its first write since it was reset

app = Aqueue(
    "latency-stages",
    broker=os.environ.get("AQUEUE_BROKER_URL", "memory://"),
    backend=os.environ.get("AQUEUE_BROKER_URL", "memory://"),
)


@app.task(name="latency.probe")
async def probe() -> dict[str, float]:
    """Its first line's time, with the worker's stamps of the message it runs."""
    return {"start": time.time(), **STAMPS}


def _stamp_after(owner: Any, name: str, key: str) -> None:
    """Make ``owner.name`` (a coroutine method) stamp ``STAMPS[key]`` when it returns a truthy
    value (a read that brought messages, a mark sent)."""
    original = getattr(owner, name, None)
    if original is None:  # not in this version of aqueue
        return

    async def stamped(self: Any, *args: Any, **kwargs: Any) -> Any:
        value = await original(self, *args, **kwargs)
        if value:
            STAMPS[key] = time.time()
        return value

    setattr(owner, name, stamped)


if os.environ.get("AQUEUE_LATENCY_STAGES") == "worker":
    from aqueue.transports.redis.broker import RedisBroker
    from aqueue.worker.execute import Executor

    _stamp_after(RedisBroker, "_xreadgroup", "read")
    _stamp_after(RedisBroker, "_read_ready", "read")
    _stamp_after(RedisBroker, "start_written", "marked")  # written, the answer not awaited
    _stamp_after(Executor, "_start", "marked")  # the runner's own mark, answered


def _stamp_writes() -> None:
    """In the sender: stamp ``WRITTEN["at"]`` when a command has been written to Redis (redis-py
    hands it to the socket, without waiting for the answer), unless already stamped."""
    from redis.asyncio.connection import AbstractConnection

    original = AbstractConnection.send_packed_command

    async def stamped(self: Any, command: Any, check_health: bool = True) -> None:
        await original(self, command, check_health)
        if not WRITTEN["at"]:
            WRITTEN["at"] = time.time()

    AbstractConnection.send_packed_command = stamped  # type: ignore[method-assign]


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))] * 1000


async def measure(url: str, n: int, rate: float) -> dict[str, list[float]]:
    """Send ``n`` probes at ``rate``/s to a worker process; the stage durations (s) of each."""
    from benchmarks.throughput import worker_process

    env = dict(os.environ)
    env.update(AQUEUE_BROKER_URL=url, AQUEUE_LATENCY_STAGES="worker")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    app.conf.update(broker_url=url, result_backend=url)
    stages: dict[str, list[float]] = {
        "delay() called -> the publish written": [],
        "-> the worker's read returns": [],
        "-> the start mark sent": [],
        "-> the task's first line": [],
        "total": [],
    }
    worker = worker_process(env, 100, "warning", (), app="benchmarks.latency_stages:app")
    async with worker:
        for _ in range(50):  # warm-up: connections, the reply channel, the worker's loop
            await (await probe.delay()).get(timeout=10)
        _stamp_writes()
        sent, written, handles = [], [], []
        begin = time.monotonic()
        for i in range(n):
            pause = begin + i / rate - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)  # the pace of the load, not a synchronisation
            WRITTEN["at"] = 0.0
            sent.append(time.time())
            handles.append(await probe.delay())
            written.append(WRITTEN["at"])
        stamps = [await h.get(timeout=30) for h in handles]
    await app.close()
    skipped = 0
    for at, out, s in zip(sent, written, stamps, strict=True):
        if not at <= out <= s["read"] <= s["marked"] <= s["start"]:
            skipped += 1
            continue
        row = (
            out - at,
            s["read"] - out,
            s["marked"] - s["read"],
            s["start"] - s["marked"],
            s["start"] - at,
        )
        for values, value in zip(stages.values(), row, strict=True):
            values.append(value)
    if skipped:
        print(f"{skipped} of {n} tasks left out: stamps out of order", file=sys.stderr)
    return stages


async def run(args: argparse.Namespace) -> None:
    from benchmarks.throughput import _cpu_model, redis_server

    async with redis_server() as url:
        stages = await measure(url, args.n, args.rate)
    load = os.getloadavg()[0]
    print(
        f"machine: {_cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {load:.2f} at the end"
    )
    print(f"{args.n:,} tasks at {args.rate:g}/s, one worker process (-c 100), Redis on loopback")
    print(f"{'stage':<46} {'p50 ms':>7} {'p99 ms':>7}")
    for name, values in stages.items():
        print(f"{name:<46} {_pct(values, 50):>7.2f} {_pct(values, 99):>7.2f}")
    total = stages["total"]
    print(f"mean total {statistics.mean(total) * 1000:.2f} ms over {len(total):,} tasks")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/latency_stages.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--n", type=int, default=1000, help="tasks to time (default 1000)")
    parser.add_argument("--rate", type=float, default=200.0, help="tasks per second (200)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
