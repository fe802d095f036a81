"""End-to-end throughput: N no-op tasks through one worker process, results stored.

Run from the repository root (``make bench``)::

    python benchmarks/throughput.py                       # starts a throwaway redis-server
    python benchmarks/throughput.py --n 50000 --broker redis://127.0.0.1:6379/15
    python benchmarks/throughput.py --broker amqp://guest:guest@127.0.0.1:5672/
    python benchmarks/throughput.py --broker amqp://... --no-priorities   # FIFO classic queues
    python benchmarks/throughput.py --processes 2 --n 40000   # one process vs --processes 2

With an ``amqp://`` broker (RabbitMQ), results go to a throwaway redis-server (RabbitMQ stores no
results); the queue should be empty.

With no ``--broker``, a ``redis-server`` is started on a free port with no persistence
(``--save '' --appendonly no``) and stopped at the end; a ``--broker`` should name an empty
database, since the benchmark uses the default queue. One worker process is started
(``aqueue worker -A benchmarks.bench_tasks -c 100 -l warning``) and stopped with SIGTERM.

Measured, after a warm-up:

- enqueue/s: N ``noop.delay()`` calls, ``--batch`` at a time with ``asyncio.gather``;
- drained tasks/s: N over the time from the first ``delay()`` to the last result read back;
- latency p50/p99: from the ``delay()`` call to the task's first line, per task (the task
  returns ``time.time()`` at its start). The producer sends faster than one worker runs, so this
  includes the time spent queued behind the earlier tasks of the burst.

With ``--processes N``, the benchmark measures something else, across cores: a pre-filled
queue's drain rate, first with one worker process (``aqueue worker ...``), then with ``aqueue
worker ... --processes N``, in the same run. Each time, ``--n`` no-op tasks are sent with no
worker running (and without a reply channel: reading 20,000 results a second back would take
most of a core from the workers on a 2-core machine), then the worker is started; drained
tasks/s is n over the time from the earliest task start (so the worker's boot is not counted)
to the queue holding nothing, ready or leased (read every 10 ms). The ratio of the two is
printed (issue #20's target: ``--processes 2`` >= 1.6x one process on 2 cores), with the CPU
each drain took per task - the worker's (its processes', from ``/proc``) and the Redis
server's - and the ceiling they set: when the workers and Redis share the cores, no more than
``cores / (worker + Redis CPU per task)`` tasks/s, however well the processes scale.

Not a test: it asserts nothing but that every task finished.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(REPO_ROOT))

WORKER_APP = "benchmarks.bench_tasks"
READY_TIMEOUT = 30.0  # seconds for redis-server to answer / the worker to log `ready`
READY = re.compile(r"\bready\b", re.IGNORECASE)  # "ready", not "already"
WARMUP = 200  # tasks sent and awaited before the clock starts


class BenchError(Exception):
    """A process the benchmark needs did not start."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/throughput.py",
        description="N no-op tasks through one aqueue worker process (Redis or RabbitMQ).",
    )
    parser.add_argument("--n", type=int, default=20_000, help="tasks to run (default 20000)")
    parser.add_argument(
        "--broker",
        default=None,
        help="redis:// URL of an empty database, or amqp:// URL of a RabbitMQ vhost "
        "(default: start a throwaway redis-server)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=100, help="the worker's -c (default 100)"
    )
    parser.add_argument(
        "--worker-loglevel", default="warning", help="the worker's -l (default warning)"
    )
    parser.add_argument(
        "--batch", type=int, default=1_000, help="delay() calls gathered at once (default 1000)"
    )
    parser.add_argument(
        "--no-priorities",
        action="store_true",
        help="with an amqp:// broker: classic queues declared without priorities "
        "(broker_transport_options={'priorities': False}); use a vhost where the queue does "
        "not exist with them",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        metavar="N",
        help="instead: a pre-filled queue's drain with one worker process, then with "
        "`aqueue worker --processes N`, and their ratio",
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.concurrency < 1 or args.batch < 1:
        parser.error("--n, --concurrency and --batch must be at least 1")
    if args.processes is not None and args.processes < 2:
        parser.error("--processes must be at least 2 (one process is measured anyway)")
    if args.broker is not None and not args.broker.startswith(
        ("redis://", "rediss://", "amqp://", "amqps://")
    ):
        parser.error("--broker must be a redis://, rediss://, amqp:// or amqps:// URL")
    if args.no_priorities and not (args.broker or "").startswith(("amqp://", "amqps://")):
        parser.error("--no-priorities needs an amqp:// --broker")
    return args


# -- child processes ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _stop(proc: asyncio.subprocess.Process, name: str) -> None:
    for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, None)):
        if proc.returncode is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), grace)
    if proc.returncode not in (0, -signal.SIGTERM):
        print(f"warning: {name} exited with status {proc.returncode}", file=sys.stderr)


@contextlib.asynccontextmanager
async def redis_server() -> AsyncIterator[str]:
    """A throwaway ``redis-server`` on a free port, with no persistence; yields its URL."""
    import redis.asyncio as aioredis

    exe = shutil.which("redis-server")
    if exe is None:
        raise BenchError("redis-server is not installed (apt-get install redis-server)")
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        exe,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C reaches only us; we stop it in order
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = aioredis.Redis.from_url(url)
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while True:
                if proc.returncode is not None:
                    raise BenchError(f"redis-server exited with status {proc.returncode}")
                try:
                    await client.ping()
                    break
                except (OSError, aioredis.ConnectionError):
                    if time.monotonic() > deadline:
                        raise BenchError("redis-server did not answer PING in time") from None
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        yield url
    finally:
        await _stop(proc, "redis-server")


async def _forward(stream: asyncio.StreamReader) -> None:
    while line := await stream.readline():  # keep the pipe drained so the worker never blocks
        sys.stderr.write(f"worker: {line.decode(errors='replace')}")


@contextlib.asynccontextmanager
async def worker_process(
    env: dict[str, str],
    concurrency: int,
    loglevel: str = "warning",
    extra: Sequence[str] = (),
    app: str = WORKER_APP,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``aqueue worker -A <app>`` (``benchmarks.bench_tasks`` by default) until the block
    exits; enters (yielding the process) once it is ready."""
    exe = Path(sys.executable).with_name("aqueue")
    cmd = [str(exe) if exe.exists() else (shutil.which("aqueue") or "aqueue")]
    cmd += ["worker", "-A", app, "-c", str(concurrency), "-l", loglevel, *extra]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    forwarder: asyncio.Task[None] | None = None
    try:
        seen: list[str] = []
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                while not (seen and READY.search(seen[-1])):
                    raw = await proc.stdout.readline()
                    if not raw:
                        raise BenchError(
                            f"the worker exited with status {await proc.wait()}:\n"
                            + "".join(seen[-20:])
                        )
                    seen.append(raw.decode(errors="replace"))
        except TimeoutError:
            raise BenchError(
                f"the worker logged no `ready` line within {READY_TIMEOUT:g}s:\n"
                + "".join(seen[-20:])
            ) from None
        forwarder = asyncio.create_task(_forward(proc.stdout))
        yield proc
    finally:
        await _stop(proc, "the worker")
        if forwarder is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(forwarder, 5.0)


# -- measuring ---------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    rank = max(1, round(pct / 100 * len(values)))
    return values[min(rank, len(values)) - 1]


async def measure(n: int, batch: int) -> dict[str, Any]:
    """Send ``n`` no-op tasks and await them all; return the timings."""
    from benchmarks.bench_tasks import noop

    sent_at: dict[str, float] = {}

    async def send() -> Any:
        called = time.time()
        result = await noop.delay()
        sent_at[result.id] = called
        return result

    warm = await asyncio.gather(*(noop.delay() for _ in range(WARMUP)))
    await asyncio.gather(*warm)

    results: list[Any] = []
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        results += await asyncio.gather(*(send() for _ in range(min(batch, n - start))))
    enqueued = time.perf_counter() - t0
    started_at: list[float] = []
    for start in range(0, n, batch):  # bounded, so as not to hold N subscriptions at once
        started_at += await asyncio.gather(*results[start : start + batch])
    drained = time.perf_counter() - t0

    latencies = sorted(s - sent_at[r.id] for r, s in zip(results, started_at, strict=True))
    return {
        "enqueue_s": enqueued,
        "drain_s": drained,
        "p50": _percentile(latencies, 50),
        "p99": _percentile(latencies, 99),
    }


async def prefilled_drain(
    n: int, batch: int, worker: contextlib.AbstractAsyncContextManager[Any]
) -> tuple[float, float]:
    """Send ``n`` no-op tasks with no worker running, then start ``worker``; its drain rate
    (tasks/s, from the earliest task start to the queue holding nothing, ready or leased), and
    the Redis server's CPU per task meanwhile (µs, ``INFO cpu``).

    The tasks are sent without a reply channel and their results (stored all the same) are
    not read back one by one: on 2 cores, a client collecting 20,000 results a second takes
    most of a core from the workers it measures. The end is seen by reading the queue's depth
    every 10 ms; the earliest start, from the first ``batch`` results.
    """
    from aqueue import Aqueue
    from aqueue.transports.base import queue_admin
    from benchmarks.bench_tasks import app, noop

    sender = Aqueue("bench-sender", broker=app.conf.broker_url)  # no backend: no reply channel
    sender.conf.task_default_queue = app.conf.task_default_queue
    ids: list[str] = []
    try:
        for start in range(0, n, batch):
            calls = [sender.send_task(noop.name) for _ in range(min(batch, n - start))]
            ids += [r.id for r in await asyncio.gather(*calls)]
    finally:
        await sender.close()
    import redis.asyncio as aioredis

    admin = queue_admin(await app.broker())
    queue = app.conf.task_default_queue
    server = aioredis.Redis.from_url(app.conf.broker_url)

    async def redis_cpu() -> float:
        info = await server.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    cpu_before = await redis_cpu()
    async with worker as proc:
        worker_before = tree_cpu(proc.pid)
        while True:
            [depth] = await admin.queue_depths([queue])
            if not depth.ready and not depth.unacked and not depth.delayed:
                break
            await asyncio.sleep(0.01)  # a poll of the broker, not a synchronisation
        done = time.time()
        worker_us = (tree_cpu(proc.pid) - worker_before) / n * 1e6
    redis_us = (await redis_cpu() - cpu_before) / n * 1e6
    await server.aclose()
    first = await asyncio.gather(*(app.AsyncResult(i).get(timeout=60) for i in ids[:batch]))
    return n / (done - min(first)), redis_us, worker_us


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) used so far by ``root`` and its live descendants (the
    worker: with ``--processes``, its supervisor and children), from ``/proc``."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    used: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        pid = int(stat.parent.name)
        parent[pid] = int(fields[1])  # the fields after the name: state ppid ... utime stime
        used[pid] = int(fields[11]) + int(fields[12])
    total = 0
    for pid, ticks in used.items():
        ancestor = pid
        while ancestor not in (root, 0, 1) and ancestor in parent:
            ancestor = parent[ancestor]
        total += ticks if ancestor == root else 0
    return total / tick


async def run(args: argparse.Namespace) -> None:
    import redis.asyncio as aioredis

    from benchmarks.bench_tasks import app

    async with contextlib.AsyncExitStack() as stack:
        url = args.broker or await stack.enter_async_context(redis_server())
        amqp = url.startswith(("amqp://", "amqps://"))
        # RabbitMQ stores no results: they go to a throwaway redis-server.
        backend = await stack.enter_async_context(redis_server()) if amqp else url
        client = aioredis.Redis.from_url(backend)
        try:
            servers = f"redis-server {(await client.info('server'))['redis_version']}"
        finally:
            await client.aclose()
        if amqp:
            servers = f"RabbitMQ {await _rabbitmq_version(url)}, results on {servers}"
        env = dict(os.environ)
        env["AQUEUE_BROKER_URL"], env["AQUEUE_RESULT_BACKEND"] = url, backend
        if args.no_priorities:
            env["BENCH_AMQP_PRIORITIES"] = "off"  # read by benchmarks.bench_tasks
            app.conf.broker_transport_options = {"priorities": False}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        app.conf.update(broker_url=url, result_backend=backend)
        stack.push_async_callback(app.close)
        await app.broker()
        await app.result_backend()
        if args.processes is not None:
            drains = []
            for extra in ((), ("--processes", str(args.processes))):
                worker = worker_process(env, args.concurrency, args.worker_loglevel, extra)
                drains.append(await prefilled_drain(args.n, args.batch, worker))
        else:
            await stack.enter_async_context(
                worker_process(env, args.concurrency, args.worker_loglevel)
            )
            m = await measure(args.n, args.batch)

    machine = (
        f"{_cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, {servers}"
    )
    if args.processes is not None:
        cores = min(os.cpu_count() or 1, args.processes + 1)
        ceiling = min(
            cores * 1e6 / (drains[0][2] + drains[0][1]), args.processes * 1e6 / drains[0][2]
        )
        _print_rows(
            [
                ("machine", machine),
                (
                    "run",
                    f"{args.n:,} no-op tasks pre-filled, then the worker started; "
                    f"concurrency {args.concurrency} per process, results stored",
                ),
                (
                    "1 process",
                    f"{drains[0][0]:>9,.0f} tasks/s  (first task start to the queue empty; "
                    f"CPU per task: worker {drains[0][2]:.1f} µs, Redis {drains[0][1]:.1f} µs)",
                ),
                (
                    f"{args.processes} processes",
                    f"{drains[1][0]:>9,.0f} tasks/s  ({drains[1][0] / drains[0][0]:.2f}x one "
                    f"process; CPU per task: workers {drains[1][2]:.1f} µs, Redis "
                    f"{drains[1][1]:.1f} µs)",
                ),
                (
                    "ceiling",
                    f"{ceiling:>9,.0f} tasks/s  ({ceiling / drains[0][0]:.2f}x one process: "
                    f"{cores} cores shared by the workers and Redis at one process's CPU per task)",
                ),
            ]
        )
        return
    rows = [
        ("machine", machine),
        (
            "run",
            f"{args.n:,} no-op tasks, 1 worker process, concurrency {args.concurrency}, "
            f"results stored{', queues without priorities' if args.no_priorities else ''}",
        ),
        (
            "enqueue",
            f"{args.n / m['enqueue_s']:>9,.0f} tasks/s  ({m['enqueue_s']:.2f} s, "
            f"delay() x {args.batch:,} per gather)",
        ),
        (
            "drained",
            f"{args.n / m['drain_s']:>9,.0f} tasks/s  ({m['drain_s']:.2f} s, "
            f"first send to last result)",
        ),
        ("latency p50", f"{m['p50'] * 1000:>9,.1f} ms    (delay() called to task started)"),
        ("latency p99", f"{m['p99'] * 1000:>9,.1f} ms"),
    ]
    _print_rows(rows)


def _print_rows(rows: Sequence[tuple[str, str]]) -> None:
    for label, value in rows:
        print(f"{label:<12} {value}")


async def _rabbitmq_version(url: str) -> str:
    import aio_pika

    connection = await aio_pika.connect(url)
    try:
        assert connection.transport is not None
        version = connection.transport.connection.server_properties.get("version", "?")
    finally:
        await connection.close()
    return version.decode() if isinstance(version, bytes) else str(version)


def run_main(run: Callable[[argparse.Namespace], Awaitable[None]], args: argparse.Namespace) -> int:
    """Run one benchmark's ``run(args)``; its exit status (an error is printed, not raised)."""
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
