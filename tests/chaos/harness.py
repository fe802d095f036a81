"""What the chaos scenarios share: sizes, the ledger, worker processes, servers, a faulty
network proxy, the table."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import redis.asyncio as aioredis

from tests.net import answers_ping, free_port
from tests.workerproc import WorkerProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_APP = "tests.chaos.chaos_app:app"

T = TypeVar("T")


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

    async def wait_pulse(self, timeout: float, clear: bool = True) -> bool:
        """Clear the pulse (unless ``clear`` is False: a run that ended since the last wait
        counts), then wait for the next run to end; False on timeout."""
        if clear:
            await self.client.delete(f"{self.run}:pulse")
        return await self._blpop(f"{self.run}:pulse", timeout)

    async def wait_quiet(self, quiet: float, timeout: float) -> bool:
        """Wait until no run has ended for ``quiet`` seconds (the workers have nothing they can
        run); False if runs kept ending for ``timeout`` seconds. The pulse is left clear."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not await self.wait_pulse(quiet):
                return True
        return False

    async def distinct(self) -> int:
        """How many distinct keys have run so far."""
        return int(await self.client.get(f"{self.run}:distinct") or 0)

    async def wait_ran(self, keys: Iterable[int], timeout: float, every: float = 0.2) -> list[int]:
        """Poll until every key of ``keys`` has run, at most ``timeout`` seconds; return the
        keys that had not run by then (``[]``: all did)."""
        missing = set(keys)
        deadline = time.monotonic() + timeout
        while True:
            missing -= set(await self.runs())
            if not missing or time.monotonic() >= deadline:
                return sorted(missing)
            await asyncio.sleep(every)  # a poll with a deadline: the ledger has no event per key

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


class Stopwatch:
    """Durations of calls of one kind (``await watch.timed(call)``), to check their bound."""

    def __init__(self) -> None:
        self.durations: list[float] = []

    async def timed(self, call: Awaitable[T]) -> T:
        """Await ``call``, recording how long it took (also when it raised)."""
        started = time.monotonic()
        try:
            return await call
        finally:
            self.durations.append(time.monotonic() - started)

    @property
    def longest(self) -> float:
        return max(self.durations, default=0.0)


# -- a faulty network ------------------------------------------------------------------------


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client's socket and the server's."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    cut_in: int | None = None  # requests left to forward before the cut (None: no cut)
    cutting: bool = False  # the last request went out: its reply is swallowed, then reset
    frozen: bool = False  # half-open: nothing is forwarded any more, nothing is closed

    def reset(self) -> None:
        """Abort both sockets (an RST each way)."""
        for writer in (self.client, self.server):
            writer.transport.abort()


@dataclass
class ProxyStats:
    """What the proxy did, for the figures (and to check that each fault happened)."""

    connections: int = 0
    cut: int = 0  # connections cut after a request reached the server, its reply lost
    reset: int = 0  # connections reset by drop_all
    frozen: int = 0  # connections made half-open


class FaultProxy:
    """A loopback TCP proxy between clients and one server, with faults switched while it runs.

    It runs on an event loop of its own in a thread, so its forwarding never waits for the
    test's loop (nor do the test's timings include the proxy's own work). The faults:

    - :meth:`set_latency`: every chunk is held this long before it is forwarded, each way (order
      kept, throughput not capped: chunks wait side by side);
    - :meth:`cut_after`: each connection is cut after forwarding 1 to ``most`` more requests
      (chunks from the client): the last one reaches the server, the reply does not come back,
      and both sockets are reset - a connection dropped mid-batch, the call's outcome unknown;
    - :meth:`drop_all`: every open connection is reset now;
    - :meth:`half_open_all`: every open connection stops forwarding, both ways, for good,
      without closing: what the client writes is swallowed and nothing comes back, as when
      the peer has vanished. Connections made later are not affected.
    """

    def __init__(self, upstream_port: int, seed: int = 13) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.stats = ProxyStats()
        self._latency = 0.0
        self._cut_most: int | None = None
        self._random = random.Random(seed)
        self._links: set[_Link] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._main(ready),), name="fault-proxy", daemon=True
        )
        self._thread.start()
        if not ready.wait(10):
            raise AssertionError("the fault proxy did not start within 10 s")

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def set_latency(self, seconds: float) -> None:
        """Hold every chunk ``seconds`` before forwarding it, from now on (0: none)."""

        def apply() -> None:
            self._latency = seconds

        self._control(apply)

    def cut_after(self, most: int | None) -> None:
        """Cut every connection, open or new, after 1 to ``most`` more requests (None: stop)."""

        def apply() -> None:
            self._cut_most = most
            for link in self._links:
                link.cut_in = self._cut_budget()

        self._control(apply)

    def drop_all(self) -> None:
        def apply() -> None:
            for link in list(self._links):
                if not link.frozen:
                    self.stats.reset += 1
                    link.reset()

        self._control(apply)

    def half_open_all(self) -> None:
        def apply() -> None:
            for link in self._links:
                if not link.frozen:
                    self.stats.frozen += 1
                    link.frozen = True

        self._control(apply)

    # -- internals ---------------------------------------------------------------------------

    def _control(self, change: Callable[[], None]) -> None:
        """Run ``change`` on the proxy's loop and wait for it (a few microseconds)."""
        assert self._loop is not None

        async def run() -> None:
            change()

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def _cut_budget(self) -> int | None:
        return None if self._cut_most is None else self._random.randint(1, self._cut_most)

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for link in list(self._links):
                link.reset()
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self.stats.connections += 1
        link = _Link(writer, up_writer, cut_in=self._cut_budget())
        self._links.add(link)
        back = asyncio.create_task(self._pump(link, up_reader, writer, upstream=False))
        try:
            await self._pump(link, reader, up_writer, upstream=True)
        finally:
            # The client closed (or its socket failed): the link ends, frozen or not.
            self._links.discard(link)
            link.reset()
            back.cancel()
            await asyncio.gather(back, return_exceptions=True)

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: bool,
    ) -> None:
        """Forward one direction until its reader ends: a reader that stamps each chunk with
        when it is due, and a writer that sends it then (unless the link is frozen or being
        cut). The server's side ending resets the link unless it is frozen (the client must
        then see nothing at all)."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def deliver() -> None:
            while (item := await chunks.get()) is not None:
                due, data = item
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)  # the injected latency
                if link.frozen:
                    continue  # swallowed
                if link.cutting:
                    if not upstream:  # the reply to the last request: swallowed, then reset
                        self.stats.cut += 1
                        link.reset()
                        return
                    continue  # nothing more goes up after the last request
                writer.write(data)
                await writer.drain()
                if upstream and link.cut_in is not None:
                    link.cut_in -= 1
                    link.cutting = link.cut_in <= 0

        sender = asyncio.create_task(deliver())
        try:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    chunks.put_nowait((loop.time() + self._latency, data))
            chunks.put_nowait(None)
            with contextlib.suppress(OSError):
                await sender
        finally:
            sender.cancel()
        if not upstream and not link.frozen:
            link.reset()
