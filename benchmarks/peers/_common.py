"""What every runner of ``benchmarks/peers`` shares: standard library only.

Each ``run_<system>.py`` runs in its own virtualenv, so this module must not import anything
outside the standard library: a tiny Redis client (for ``CONFIG RESETSTAT``, ``INFO
commandstats`` and ``FLUSHALL``), the worker process, and the four workloads, driven through
an :class:`Adapter` that each runner writes for its library.

A runner prints one JSON line per workload as it finishes (``{"workload": ..., ...}``) and a last
``{"done": true}`` line, so the orchestrator keeps the figures of the workloads that finished
even when a later one hangs and the runner is killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WARMUP = 200  # tasks sent and awaited before the first measurement (also proves the worker is up)
WORKER_UP_TIMEOUT = 90.0  # seconds for the warm-up batch to come back through a fresh worker
STOP_GRACE = 15.0  # seconds a worker gets after SIGTERM before SIGKILL
# Commands the benchmark itself sends to Redis (not the system under test): left out of counts.
OWN_COMMANDS = frozenset({"info", "config", "flushall"})


# -- a minimal RESP client ---------------------------------------------------------------------


class Redis:
    """Just enough RESP2 for the benchmark's own commands, so that no runner needs a client."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @classmethod
    def from_url(cls, url: str) -> Redis:
        rest = url.split("://", 1)[1].split("/", 1)[0]
        host, _, port = rest.rpartition(":")
        return cls(host or "127.0.0.1", int(port or 6379))

    async def command(self, *args: str) -> Any:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        parts = [f"*{len(args)}\r\n".encode()]
        for a in args:
            b = a.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
        self._writer.write(b"".join(parts))
        await self._writer.drain()
        return await self._read()

    async def _read(self) -> Any:
        assert self._reader is not None
        line = (await self._reader.readline()).rstrip(b"\r\n")
        if not line:
            raise ConnectionError("redis closed the connection")
        kind, body = line[:1], line[1:]
        if kind == b"+":
            return body.decode()
        if kind == b"-":
            raise RuntimeError(body.decode())
        if kind == b":":
            return int(body)
        if kind == b"$":
            size = int(body)
            if size < 0:
                return None
            data = await self._reader.readexactly(size + 2)
            return data[:-2].decode()
        if kind == b"*":
            return [await self._read() for _ in range(int(body))]
        raise RuntimeError(f"unexpected RESP reply {line!r}")

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._writer = None

    async def reset_stats(self) -> None:
        await self.command("CONFIG", "RESETSTAT")

    async def command_calls(self) -> dict[str, int]:
        """Calls per command since the last reset, the benchmark's own commands left out."""
        text = await self.command("INFO", "commandstats")
        calls: dict[str, int] = {}
        for line in text.splitlines():
            if not line.startswith("cmdstat_"):
                continue
            name, _, fields = line[len("cmdstat_") :].partition(":")
            if name.split("|")[0] in OWN_COMMANDS:
                continue
            stats = dict(f.split("=", 1) for f in fields.split(","))
            calls[name] = int(stats["calls"])
        return calls


# -- the worker process ------------------------------------------------------------------------


class WorkerProcess:
    """A peer's worker, started from its own command line in its own process group."""

    def __init__(self, cmd: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.cmd, self.env, self.log = list(cmd), env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        try:
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=HERE,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # stopped as a group: some peers fork their own children
            )
        finally:
            out.close()

    def check(self) -> None:
        """Raise if the worker has exited (it should run until stopped)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"the worker exited with status {self.proc.returncode}: {self.tail()}"
            )

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig, grace in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        # The group may outlive its leader (pool children): make sure nothing of it is left.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


# -- the adapter each runner writes ------------------------------------------------------------


class Adapter:
    """How one system sends tasks and reads their start times. Subclass per library.

    ``send_*`` return one handle per task, in send order; ``wait`` returns each task's start
    time (``time.time()`` in the worker) in the same order, and must give up at ``deadline``
    (``time.monotonic()``) with ``TimeoutError``.
    """

    name = "?"
    notes = ""  # printed under the table: what differs from the common setup
    batch = 1_000  # sends in flight at once for the async peers

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def worker_cmd(self) -> list[str]:
        raise NotImplementedError

    def worker_env(self) -> dict[str, str]:
        env = dict(os.environ)  # carries BENCH_BROKER_URL etc., set by main()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        return env

    async def setup(self) -> None:
        """Connect the producer (and declare whatever must exist before the first send)."""

    async def teardown(self) -> None:
        """Close the producer's connections."""

    async def send_noop(self, n: int) -> list[Any]:
        raise NotImplementedError

    async def send_sleep(self, n: int) -> list[Any]:
        raise NotImplementedError

    async def send_one(self) -> Any:
        """One no-op task, for the paced latency workload."""
        raise NotImplementedError

    async def send_noop_bulk(self, n: int) -> list[Any]:
        """``n`` no-op tasks through the system's bulk call, 1,000 per call (workload 5).

        Systems without one keep this default and skip the workload.
        """
        raise NotImplementedError

    @property
    def has_bulk(self) -> bool:
        return type(self).send_noop_bulk is not Adapter.send_noop_bulk

    async def wait(self, handles: list[Any], deadline: float) -> list[float]:
        raise NotImplementedError

    def version(self) -> str:
        return ""


async def gather_batched(make: Callable[[], Awaitable[Any]], n: int, batch: int) -> list[Any]:
    """``n`` calls of ``make()``, ``batch`` in flight at a time, results in call order."""
    out: list[Any] = []
    for start in range(0, n, batch):
        out += await asyncio.gather(*(make() for _ in range(min(batch, n - start))))
    return out


# -- the workloads -----------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    rank = max(1, round(pct / 100 * len(values)))
    return values[min(rank, len(values)) - 1]


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


class Bench:
    """Runs the workloads of one system and prints their figures as JSON lines."""

    def __init__(self, adapter: Adapter, args: argparse.Namespace) -> None:
        self.a = adapter
        self.args = args
        self.redis = Redis.from_url(args.stats_url) if args.stats_url else None
        log = Path(args.log_dir) / f"worker-{adapter.name}.log"
        self.worker = WorkerProcess(adapter.worker_cmd(), adapter.worker_env(), log)

    def deadline(self) -> float:
        return time.monotonic() + self.args.timeout

    async def _wait(self, handles: list[Any], deadline: float) -> list[float]:
        waiting = asyncio.ensure_future(self.a.wait(handles, deadline))
        try:
            while not waiting.done():  # notice a dead worker instead of waiting out the timeout
                await asyncio.wait({waiting}, timeout=0.5)
                if not waiting.done():
                    self.worker.check()
                    if time.monotonic() > deadline + 5:
                        raise TimeoutError
        finally:
            if not waiting.done():
                waiting.cancel()
                with contextlib.suppress(BaseException):
                    await waiting
        started: list[float] = waiting.result()
        return started

    async def prefilled(self, n: int) -> dict[str, Any]:
        """Workload 2: the queue filled first, then the worker started; worker-only rate."""
        deadline = self.deadline()
        t0 = time.perf_counter()
        handles = await self.a.send_noop(n)
        fill_s = time.perf_counter() - t0
        self.worker.start()
        started = await self._wait(handles, deadline)
        done = time.time()
        return {"prefill_per_s": n / fill_s, "drain_per_s": n / (done - min(started))}

    async def warmup(self) -> None:
        deadline = time.monotonic() + WORKER_UP_TIMEOUT
        await self._wait(await self.a.send_noop(WARMUP), deadline)

    async def noop(self, n: int) -> dict[str, Any]:
        """Workload 1: send n no-op tasks while the worker drains; Redis commands counted."""
        deadline = self.deadline()
        if self.redis is not None:
            await self.redis.reset_stats()
        t0 = time.perf_counter()
        handles = await self.a.send_noop(n)
        sent = time.perf_counter() - t0
        await self._wait(handles, deadline)
        drained = time.perf_counter() - t0
        out: dict[str, Any] = {"enqueue_per_s": n / sent, "drain_per_s": n / drained}
        if self.redis is not None:
            calls = await self.redis.command_calls()
            out["cmds_per_task"] = sum(calls.values()) / n
            out["cmds"] = dict(sorted(calls.items(), key=lambda kv: -kv[1])[:12])
        return out

    async def sleep(self, n: int) -> dict[str, Any]:
        """Workload 3: n tasks that sleep 10 ms, sent at once, drained by the worker."""
        deadline = self.deadline()
        t0 = time.perf_counter()
        handles = await self.a.send_sleep(n)
        await self._wait(handles, deadline)
        return {"drain_per_s": n / (time.perf_counter() - t0)}

    async def bulk(self, n: int) -> dict[str, Any]:
        """Workload 5: n no-op tasks sent through the bulk call while the worker drains."""
        deadline = self.deadline()
        t0 = time.perf_counter()
        handles = await self.a.send_noop_bulk(n)
        sent = time.perf_counter() - t0
        await self._wait(handles, deadline)
        return {"enqueue_per_s": n / sent, "drain_per_s": n / (time.perf_counter() - t0)}

    async def latency(self, n: int, rate: float) -> dict[str, Any]:
        """Workload 4: n no-op tasks sent one by one at ``rate``/s; enqueue-to-start times."""
        deadline = self.deadline() + n / rate
        handles: list[Any] = []
        sent_at: list[float] = []
        start = time.monotonic()
        for i in range(n):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at.append(time.time())
            handles.append(await self.a.send_one())
        send_rate = n / (time.monotonic() - start)
        started = await self._wait(handles, deadline)
        lat = sorted(s - t for s, t in zip(started, sent_at, strict=True))
        return {
            "p50_ms": percentile(lat, 50) * 1000,
            "p99_ms": percentile(lat, 99) * 1000,
            "send_rate": send_rate,
        }

    async def run(self) -> None:
        args = self.args
        try:
            await self.a.setup()
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            for name in args.workloads:
                emit(workload=name, error=f"setup: {type(exc).__name__}: {exc}"[:300])
            return
        try:
            # Warm up (connections, consumer groups, imports) with a first worker, then stop it
            # so that workload 2's worker starts on a full queue, as a restarted worker does.
            self.worker.start()
            try:
                await self.warmup()
            except Exception as exc:
                traceback.print_exc(file=sys.stderr)
                why = "timeout" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
                for name in args.workloads:
                    emit(workload=name, error=f"warm-up: {why}"[:300])
                return
            if "prefilled" in args.workloads:
                self.worker.stop()
                await self._step("prefilled", self.prefilled(args.n))
                if self.worker.proc is None:
                    self.worker.start()
            await self._step("noop", self.noop(args.n))
            if self.a.has_bulk:
                await self._step("bulk", self.bulk(args.n))
            await self._step("sleep", self.sleep(args.sleep_n))
            await self._step("latency", self.latency(args.latency_n, args.rate))
        finally:
            self.worker.stop()
            await self.a.teardown()
            if self.redis is not None:
                await self.redis.close()

    async def _step(self, name: str, coro: Awaitable[dict[str, Any]]) -> None:
        if name not in self.args.workloads:
            if asyncio.iscoroutine(coro):
                coro.close()
            return
        try:
            emit(workload=name, **(await coro))
        except TimeoutError:
            emit(workload=name, error="timeout")
        except Exception as exc:  # a failed workload is reported; the next one still runs
            traceback.print_exc(file=sys.stderr)
            emit(workload=name, error=f"{type(exc).__name__}: {exc}"[:300])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="one system's workloads (run by bench.py)")
    p.add_argument("--broker", required=True, help="broker URL")
    p.add_argument("--backend", default=None, help="result backend URL (default: --broker)")
    p.add_argument("--stats-url", default=None, help="redis:// URL whose commands are counted")
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--sleep-n", type=int, default=5_000)
    p.add_argument("--latency-n", type=int, default=2_000)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--timeout", type=float, default=180.0, help="seconds per workload")
    p.add_argument("--log-dir", default="/tmp")
    p.add_argument(
        "--workloads", default="prefilled,noop,bulk,sleep,latency", type=lambda s: s.split(",")
    )
    args = p.parse_args(argv)
    args.backend = args.backend or args.broker
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(make: Callable[[argparse.Namespace], Adapter]) -> None:
    """Entry point of a runner: parse arguments, run the workloads, always stop the worker."""
    args = parse_args()
    # SIGTERM from the orchestrator (a timeout) unwinds through `finally`, stopping the worker.
    signal.signal(signal.SIGTERM, _interrupt)
    # Task modules read their URLs from the environment, in the worker and in this producer.
    os.environ.update(
        BENCH_BROKER_URL=args.broker,
        BENCH_BACKEND_URL=args.backend,
        BENCH_CONCURRENCY=str(args.concurrency),
    )
    adapter = make(args)
    emit(system=adapter.name, version=adapter.version(), notes=adapter.notes)
    bench = Bench(adapter, args)
    try:
        asyncio.run(bench.run())
    except KeyboardInterrupt:
        bench.worker.stop()
        emit(interrupted=True)
        sys.exit(130)
    emit(done=True)
