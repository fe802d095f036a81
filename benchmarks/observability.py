"""The cost of observability per task: worker CPU per no-op task with nothing connected, with a
receiver on every task signal, with Prometheus metrics, and with OpenTelemetry tracing.

Run from the repository root::

    python benchmarks/observability.py                 # 20,000 tasks, 3 interleaved rounds
    python benchmarks/observability.py --n 5000 --rounds 1
    python benchmarks/observability.py --configs nothing      # runs on any aqueue version
    python benchmarks/observability.py --configs nothing --rounds 1 --profile 25  # cProfile

A throwaway redis-server (no persistence) holds the queue; for each configuration a fresh app
pre-fills the queue with ``delay_many``, then one in-process worker (concurrency 100) drains
it. The figure is the process CPU time of the drain divided by the tasks (µs per task; the
producer's work is done before the clock starts), the median over rounds, and its difference
from nothing connected. Tracing exports to an exporter that drops the spans (the cost of making
them, not of shipping them). Not a test: it asserts nothing but that every task finished.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aqueue import Aqueue, Worker, loops
from benchmarks.throughput import _cpu_model, redis_server

TASK_SIGNALS = ("task_received", "task_prerun", "task_postrun", "task_success")


def _nothing(app: Aqueue) -> Callable[[], None]:
    return lambda: None


def _signals(app: Aqueue) -> Callable[[], None]:
    from aqueue import signals

    def receiver(**kwargs: Any) -> None:
        pass

    for name in TASK_SIGNALS:
        getattr(signals, name).connect(receiver)

    def undo() -> None:
        for name in TASK_SIGNALS:
            getattr(signals, name).disconnect(receiver)

    return undo


def _prometheus(app: Aqueue) -> Callable[[], None]:
    from prometheus_client import CollectorRegistry

    from aqueue.contrib.prometheus import Metrics

    Metrics(CollectorRegistry(), interval=60).install(app)
    return lambda: None


def _otel(app: Aqueue) -> Callable[[], None]:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from aqueue.contrib.otel import OpenTelemetry

    class _Drop(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Drop()))
    OpenTelemetry(provider).install(app)
    return provider.shutdown


CONFIGS: dict[str, Callable[[Aqueue], Callable[[], None]]] = {
    "nothing": _nothing,
    "signals": _signals,
    "prometheus": _prometheus,
    "otel": _otel,
}
LABELS = {
    "nothing": "nothing connected",
    "signals": "signals (4 receivers)",
    "prometheus": "prometheus",
    "otel": "opentelemetry",
}


async def drain(
    url: str,
    n: int,
    setup: Callable[[Aqueue], Callable[[], None]],
    profile: cProfile.Profile | None = None,
) -> float:
    """CPU µs per task of one in-process worker draining ``n`` pre-filled no-op tasks (under
    ``profile`` from the worker's start to its last task when one is given)."""
    app = Aqueue("obs", broker=url, backend=url)
    app.conf.task_default_queue = f"obs-{uuid.uuid4().hex[:8]}"

    @app.task(name="obs.noop")
    async def noop() -> None:
        return None

    undo = setup(app)
    try:
        for start in range(0, n, 1000):
            await noop.delay_many([()] * min(1000, n - start))
        worker = Worker(app, concurrency=100)
        cpu = time.process_time()
        if profile is not None:
            profile.enable()
        await worker.start()
        await worker.wait_processed(n)
        if profile is not None:
            profile.disable()
        used = time.process_time() - cpu
        await worker.stop()
    finally:
        undo()
        await app.close()
    return used / n * 1e6


async def run(args: argparse.Namespace) -> None:
    chosen = args.configs.split(",")
    if args.profile:
        async with redis_server() as url:
            profile = cProfile.Profile()
            used = await drain(url, args.n, CONFIGS[chosen[0]], profile)
        print(f"{LABELS[chosen[0]]}: {used:.1f} µs/task (profiled, so slower)")
        pstats.Stats(profile).sort_stats(args.sort).print_stats(args.profile)
        return
    figures: dict[str, list[float]] = {name: [] for name in chosen}
    async with redis_server() as url:
        for round_ in range(args.rounds):
            for name in chosen:
                figures[name].append(await drain(url, args.n, CONFIGS[name]))
            print(f"round {round_ + 1} done", file=sys.stderr)
    base = statistics.median(figures[chosen[0]])
    print(f"\nworker CPU per no-op task, median of {args.rounds} round(s), {args.n:,} tasks")
    print(f"{'configuration':<24} {'µs/task':>8} {'extra µs':>9}")
    for name, values in figures.items():
        value = statistics.median(values)
        print(f"{LABELS[name]:<24} {value:>8.1f} {value - base:>+9.1f}")
    print(
        f"\nmachine: {_cpu_model()}, Python {platform.python_version()}, "
        f"{sys.platform}, one worker process (concurrency 100), Redis on loopback"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="tasks per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help="comma-separated, the first is the baseline (default: %(default)s)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="TOP",
        help="run the first configuration once under cProfile and print its TOP functions",
    )
    parser.add_argument("--sort", default="tottime", help="pstats order for --profile")
    parser.add_argument(
        "--loop", choices=("asyncio", "uvloop"), default="asyncio", help="the worker's loop"
    )
    args = parser.parse_args(argv)
    os.environ[loops.LOOP_ENV] = args.loop  # aqueue.loops picks it (uvloop missing: an error)
    loops.run(run(args))


if __name__ == "__main__":
    main()
