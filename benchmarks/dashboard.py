"""Dashboard page render times with 100,000 tasks in the history and 10 workers.

Run from the repository root::

    python benchmarks/dashboard.py                  # SQLite in a temporary directory
    python benchmarks/dashboard.py --broker redis   # a throwaway redis-server
    python benchmarks/dashboard.py --n 200000 --rounds 50

Steps: build ``--n`` task records from synthetic task events (received, started, then succeeded,
or failed for one in twenty; one task in ten a member or body of a 4-member chord), write them
to the history store as a running dashboard would (one journal entry per 5,000), then start a
dashboard on that server and time its start (reading the whole history back). Ten worker
heartbeats are stored in the ``workers`` table, three queues hold 1,000 messages and 20 dead
letters, beat has five entries. Then every page is requested ``--rounds`` times in-process
(httpx's ASGI transport: routing, the page's queries, template rendering; no network), and the
median, 95th percentile and maximum are printed in milliseconds, with the target (300 ms).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.throughput import BenchError, _cpu_model, redis_server, run_main  # noqa: E402

TARGET_MS = 300.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000, help="tasks in the history (100000)")
    p.add_argument("--workers", type=int, default=10, help="worker heartbeats (10)")
    p.add_argument("--rounds", type=int, default=20, help="requests per page (20)")
    p.add_argument("--broker", choices=["sqlite", "redis"], default="sqlite")
    return p.parse_args(argv)


def synthetic_events(n: int) -> list[dict[str, Any]]:
    """Events of ``n`` tasks over the last 20 minutes."""
    start = time.time() - 1200
    out: list[dict[str, Any]] = []
    i = 0
    while i < n:
        when = start + 1200 * i / n
        worker = f"worker{i % 10}@bench"
        if i % 10 == 0 and i + 5 <= n:  # a chord: 4 header members and the body
            group = f"group-{i}"
            ids = [f"{uuid.uuid4()}" for _ in range(5)]
            for k, task_id in enumerate(ids[:4]):
                out += _task(task_id, "bench.add", when, worker, i + k, group_id=group)
            out += _task(ids[4], "bench.tsum", when + 0.5, worker, i + 4, parent_id=ids[3])
            i += 5
            continue
        out += _task(str(uuid.uuid4()), "bench.add", when, worker, i)
        i += 1
    return out


def _task(task_id: str, name: str, when: float, worker: str, i: int, **links: Any) -> list[Any]:
    base = {"uuid": task_id, "hostname": worker}
    received = {
        **base,
        "type": "task-received",
        "timestamp": when,
        "name": name,
        "args": f"({i}, {i})",
        "kwargs": "{}",
        "queue": f"q{i % 3}",
        "retries": 0,
        **links,
    }
    started = {**base, "type": "task-started", "timestamp": when + 0.01}
    if i % 20 == 7:
        done = {
            **base,
            "type": "task-failed",
            "timestamp": when + 0.05,
            "exception": "ValueError('bad input')",
            "traceback": "Traceback (most recent call last):\n  ...\nValueError: bad input\n",
            "runtime": 0.04,
        }
    else:
        done = {**base, "type": "task-succeeded", "timestamp": when + 0.05, "result": str(2 * i)}
        done["runtime"] = 0.04
    return [received, started, done]


async def run(args: argparse.Namespace) -> None:
    import httpx

    from aqueue import Aqueue
    from aqueue.control.protocol import Table, dumps
    from aqueue.dashboard import Dashboard
    from aqueue.dashboard.history import TaskHistory
    from aqueue.dashboard.store import HistoryStore
    from aqueue.transports.base import Outgoing

    async with contextlib.AsyncExitStack() as stack:
        if args.broker == "redis":
            url = await stack.enter_async_context(redis_server())
        else:
            directory = stack.enter_context(tempfile.TemporaryDirectory())
            url = f"sqlite:///{directory}/bench.db"
        app = Aqueue("bench", broker=url, backend=url)

        @app.task(name="bench.add")
        async def add(x: int, y: int) -> int:
            return x + y

        stack.push_async_callback(app.close)

        t0 = time.perf_counter()
        history = TaskHistory(max_tasks=args.n)
        for event in synthetic_events(args.n):
            history.apply(event)
        built = time.perf_counter() - t0
        store = HistoryStore(await app.control_transport(), args.n, 86_400)
        records = list(history.tasks.values())
        t0 = time.perf_counter()
        for k in range(0, len(records), 5000):
            await store.save(records[k : k + 5000])
        saved = time.perf_counter() - t0

        transport = await app.control_transport()
        now = time.time()
        for w in range(args.workers):
            beat = {
                "hostname": f"worker{w}@bench",
                "pid": 1000 + w,
                "concurrency": 100,
                "prefetch": 400,
                "queues": ["q0", "q1", "q2"],
                "processed": 10_000 * w,
                "active": w,
                "held": 2 * w,
                "uptime": 3600.0,
                "events": True,
                "timestamp": now,
            }
            await transport.put(Table.WORKERS, f"node-{w}", dumps(beat), 600)
        broker = await app.broker()
        await broker.publish(
            [Outgoing(f"q{k % 3}", b'{"id":"x","task":"bench.add"}', f"m{k}") for k in range(1000)]
        )
        for delivery in await broker.fetch(["q0"], 20, 5.0):
            await broker.dead_letter(delivery, "set aside by the benchmark")
        for k in range(5):
            await app.beat.add(f"entry-{k}", task="bench.add", schedule=60 * (k + 1), args=(k, k))

        web = Dashboard(app, max_tasks=args.n)
        for w in range(args.workers):  # what the dashboard asks each new worker for
            web.monitor.registered[f"worker{w}@bench"] = [f"bench.task{k}" for k in range(30)]
        t0 = time.perf_counter()
        await web.monitor.start()
        started = time.perf_counter() - t0
        loaded = len(web.monitor.history)
        some = next(reversed(web.monitor.history.tasks))
        workflow_id = next(iter(reversed(web.monitor.history.workflows.members)))
        # Each page, with a piece of text it must contain (a check that it rendered its data).
        pages = {
            "overview": ("/", f"{loaded}</b> tasks in history"),
            "workers": ("/workers", "worker9@bench"),
            "tasks": ("/tasks", "the newest 100 shown"),
            "tasks, filtered": (
                "/tasks?state=FAILURE&name=bench.add&queue=q1&range=1h",
                "FAILURE",
            ),
            "tasks, id search": (f"/tasks?q={some}", f'data-task-id="{some}"'),
            "tasks, part of an id": (f"/tasks?q={some[:6]}", f'data-task-id="{some}"'),
            "task": (f"/tasks/{some}", "task-succeeded"),
            "workflows": ("/workflows", "bench.add"),
            "workflow (chord)": (f"/workflows/{workflow_id}", "bench.tsum"),
            "queues": ("/queues", "set aside by the benchmark"),
            "beat": ("/beat", "entry-4"),
        }
        transport_asgi = httpx.ASGITransport(app=web, client=("127.0.0.1", 5555))
        client = httpx.AsyncClient(transport=transport_asgi, base_url="http://dashboard")
        stack.push_async_callback(client.aclose)
        stack.push_async_callback(web.aclose)
        rows = []
        for name, (path, expected) in pages.items():
            for _ in range(2):  # warm-up
                response = await client.get(path)
                response.raise_for_status()
                if expected not in response.text:
                    raise BenchError(f"the {name} page ({path}) does not show {expected!r}")
            times = []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                response = await client.get(path)
                times.append((time.perf_counter() - t0) * 1000)
                response.raise_for_status()
            times.sort()
            p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
            rows.append((name, statistics.median(times), p95, times[-1], len(response.content)))

    print(
        f"aqueue dashboard render times - {args.broker}, {loaded:,} tasks, {args.workers} workers"
    )
    print(f"machine: {_cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"history built from events in {built:.2f}s; written in {saved:.2f}s")
    print(f"dashboard start (reads the history back): {started:.2f}s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process (history built, written and read back): {peak:.0f} MiB")
    print(f"{'page':24} {'median ms':>10} {'p95 ms':>8} {'max ms':>8} {'KiB':>6}")
    worst = 0.0
    for name, median, p95, top, size in rows:
        print(f"{name:24} {median:10.1f} {p95:8.1f} {top:8.1f} {size / 1024:6.0f}")
        worst = max(worst, p95)
    verdict = "under" if worst < TARGET_MS else "OVER"
    print(f"slowest p95: {worst:.1f} ms, {verdict} the {TARGET_MS:.0f} ms target")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(run, args)


if __name__ == "__main__":
    sys.exit(main())
