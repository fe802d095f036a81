"""What the chaos scenarios share: sizes, the ledger, worker processes, servers, the table."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis.asyncio as aioredis

from tests.workerproc import WorkerProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_APP = "tests.chaos.chaos_app:app"


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass(frozen=True)
class Sizes:
    """Scenario sizes from the environment; the defaults are CI's (``make chaos`` sets more)."""

    kill_tasks: int = env_int("CHAOS_N", 2_000)
    backlog: int = env_int("CHAOS_BACKLOG", 20_000)
    restart_tasks: int = env_int("CHAOS_RESTART_N", 2_000)
    proxy_tasks: int = env_int("CHAOS_PROXY_N", 1_000)
    garbage_tasks: int = env_int("CHAOS_GARBAGE_N", 2_000)


SIZES = Sizes()


@dataclass
class Result:
    """One row of the figures table."""

    scenario: str
    tasks: int
    lost: int
    duplicated: int
    duplicate_bound: int | None = None
    recovery_s: float | None = None
    peak_rss_mb: float | None = None
    wall_s: float = 0.0
    notes: dict[str, float | int | str] = field(default_factory=dict)

    def row(self) -> tuple[str, ...]:
        def fmt(value: float | int | None, spec: str) -> str:
            return "-" if value is None else format(value, spec)

        return (
            self.scenario,
            f"{self.tasks:,}",
            str(self.lost),
            str(self.duplicated),
            fmt(self.duplicate_bound, "d"),
            fmt(self.recovery_s, ".2f"),
            fmt(self.peak_rss_mb, ".0f"),
            f"{self.wall_s:.0f}",
        )

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


RESULTS: list[Result] = []


def report(result: Result) -> Result:
    """Add a row to the table and print it at once (``-s`` shows it as it comes)."""
    RESULTS.append(result)
    print(f"\nchaos: {result.as_dict()}")
    return result


class Ledger:
    """The test's side of the ledger ``chaos_app`` writes (see its docstring)."""

    def __init__(self, client: aioredis.Redis, url: str) -> None:
        self.client = client
        self.url = url
        self.run = f"chaos-{uuid.uuid4().hex[:10]}"

    async def _blpop(self, key: str, timeout: float) -> bool:
        """BLPOP in slices of 1 s (the client's socket timeout would cut a longer one)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if await self.client.blpop([key], timeout=max(0.01, min(1.0, left))) is not None:
                return True
        return False

    async def wait_finished(self, timeout: float) -> bool:
        """Wait until every distinct key has run; False if ``timeout`` passed first."""
        return await self._blpop(f"{self.run}:finished", timeout)

    async def wait_pulse(self, timeout: float) -> bool:
        """Clear the pulse, then wait for the next run to end; False on timeout."""
        await self.client.delete(f"{self.run}:pulse")
        return await self._blpop(f"{self.run}:pulse", timeout)

    async def runs(self) -> dict[int, int]:
        raw = await self.client.hgetall(f"{self.run}:runs")
        return {int(k): int(v) for k, v in raw.items()}

    async def started_by(self, pid: int) -> set[int]:
        return {int(k) for k in await self.client.smembers(f"{self.run}:started:{pid}")}

    async def duplicate_starts(self, pids: Iterable[int]) -> list[int]:
        """Keys started more than once across worker processes ``pids`` (one per extra start)."""
        seen: set[int] = set()
        extra: list[int] = []
        for pid in pids:
            for key in await self.started_by(pid):
                (extra.append(key) if key in seen else seen.add(key))
        return extra

    async def lost_and_duplicated(self, keys: Iterable[int]) -> tuple[list[int], list[int]]:
        """The keys of ``keys`` that never ran, and the keys (of any) that ran more than once."""
        runs = await self.runs()
        lost = [k for k in keys if k not in runs]
        duplicated = [k for k, n in runs.items() if n > 1 for _ in range(n - 1)]
        return lost, duplicated


def worker_env(
    broker: str, backend: str, queue: str, ledger: Ledger, **extra: str
) -> dict[str, str]:
    env = {
        "AQUEUE_BROKER_URL": broker,
        "CHAOS_BACKEND": backend,
        "CHAOS_QUEUE": queue,
        "CHAOS_LEDGER": ledger.url,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    env.update(extra)
    return env


def worker(env: dict[str, str], concurrency: int, *args: str, ready: bool = True) -> WorkerProcess:
    return WorkerProcess(WORKER_APP, ["-c", str(concurrency), *args], env, ready=ready)


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a live process, in MB (as benchmarks/memory.py reads it)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisAof:
    """A redis-server with ``appendonly yes`` / ``appendfsync always`` that keeps its port and
    its data across :meth:`kill` / :meth:`stop` and :meth:`start`."""

    START_TIMEOUT = 15.0

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> float:
        """Start the server; return the monotonic time it first answered PING."""
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory)]
        with (self.directory / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.START_TIMEOUT
        while time.monotonic() < deadline:  # a server start has no event to wait on
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited: {self.log()}")
            if answers_ping(self.port):
                return time.monotonic()
            time.sleep(0.01)
        raise AssertionError(f"redis-server did not answer within {self.START_TIMEOUT}s")

    def kill(self) -> None:
        """SIGKILL: what was fsynced to the AOF is all that survives."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM: a graceful shutdown."""
        self._end(signal.SIGTERM)

    def _end(self, sig: signal.Signals) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(timeout=30)

    def log(self) -> str:
        return (self.directory / "redis.log").read_text(errors="replace")[-2000:]
