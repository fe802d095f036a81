"""Redis Sentinel groups for tests: a primary, its replicas and three sentinels, all real
``redis-server`` processes on free loopback ports, started and stopped by the test's fixture;
and :func:`failover_under_load`, a failover while tasks flow through a real worker.

The primary and replicas ask for a password (``requirepass``), and so do the sentinels (a
password of their own), so every test goes through ``sentinel_kwargs`` as a deployment with
authenticated sentinels does. :class:`SentinelGroup` can also speak TLS only (``tls=``).
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from aqueue import Aqueue
from aqueue.exceptions import BrokerError
from tests.chaos import chaos_app
from tests.chaos.harness import Ledger, worker, worker_env
from tests.conftest import _start_redis, _stop, _tail
from tests.net import free_port

SERVICE = "mymaster"
PASSWORD = "primary-secret"
SENTINEL_PASSWORD = "sentinel-secret"
SETTLE_TIMEOUT = 30.0  # seconds for the group to come up, or to settle after a failover


class SentinelGroup:
    """A primary, ``replicas`` replicas and ``sentinels`` sentinels monitoring it as
    :data:`SERVICE` (quorum: a majority), in ``directory``; ``with`` starts and stops it.

    Args:
        directory: where the servers' configuration, logs and data go.
        replicas: replicas of the primary.
        sentinels: sentinel processes.
        tls: a directory with ``ca.pem``, ``server.pem``, ``server.key`` (the conftest's
            ``tls_certificates``): every server and sentinel then listens for TLS only.
    """

    def __init__(
        self, directory: Path, replicas: int = 1, sentinels: int = 3, tls: Path | None = None
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not on PATH (apt-get install redis-server)", pytrace=False)
        self.binary = binary
        self.directory = directory
        self.tls = tls
        self.data_ports = [free_port() for _ in range(1 + replicas)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    # -- URLs and options ------------------------------------------------------------------

    def url(self, db: int = 0, **query: str) -> str:
        """``redis+sentinel://`` (``rediss+sentinel://`` with TLS) to database ``db``, with the
        primary's password; a TLS group's URL trusts the test CA."""
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        if self.tls:
            query = {"ssl_ca_certs": str(self.tls / "ca.pem"), **query}
        tail = "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
        return f"{scheme}://:{PASSWORD}@{hosts}/{SERVICE}/{db}{tail}"

    def kombu_url(self, db: int = 0) -> str:
        """kombu's form: ``sentinel://:password@host:port/db;sentinel://...``."""
        return ";".join(
            f"sentinel://:{PASSWORD}@127.0.0.1:{port}/{db}" for port in self.sentinel_ports
        )

    @property
    def sentinel_kwargs(self) -> dict[str, Any]:
        """What the sentinels need besides the primary's TLS: their password."""
        return {"password": SENTINEL_PASSWORD}

    @property
    def transport_options(self) -> dict[str, Any]:
        """``broker_transport_options`` for :meth:`url`: the sentinels' password."""
        return {"sentinel_kwargs": self.sentinel_kwargs}

    # -- life --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start every server; return once each replica is in sync and every sentinel sees
        the primary, its replicas and the other sentinels.

        Raises:
            pytest.fail.Exception: a server did not start, or the group did not come up within
                :data:`SETTLE_TIMEOUT` seconds.
        """
        primary, *replicas = self.data_ports
        self._start_data(primary, [])
        for port in replicas:
            self._start_data(port, ["--replicaof", "127.0.0.1", str(primary)])
        for port in self.sentinel_ports:
            self._start_sentinel(port, primary)
        self._until(self._settled, "the Sentinel group to come up")

    def __enter__(self) -> SentinelGroup:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL after 5 s)."""
        procs, self.procs = self.procs, {}
        for proc in procs.values():
            _stop(proc)

    def kill(self, port: int) -> None:
        """SIGKILL the server on ``port`` (it stays down)."""
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait()

    # -- asking ------------------------------------------------------------------------------

    def data(self, port: int) -> redis.Redis:
        """A client of the primary or replica on ``port``."""
        return redis.Redis(port=port, password=PASSWORD, socket_timeout=5, **self._tls_kwargs())

    def sentinel(self, port: int | None = None) -> redis.Redis:
        """A client of a sentinel (the first by default)."""
        return redis.Redis(
            port=port or self.sentinel_ports[0],
            password=SENTINEL_PASSWORD,
            socket_timeout=5,
            **self._tls_kwargs(),
        )

    def primary_port(self) -> int:
        """The primary's port, as the first sentinel names it."""
        with self.sentinel() as client:
            return int(client.sentinel_get_master_addr_by_name(SERVICE)[1])

    def failover(self) -> tuple[int, int, float]:
        """``SENTINEL FAILOVER`` (Redis Sentinel's forced failover, no agreement asked); return
        once every sentinel names the new primary and it answers as one.

        Returns:
            The old primary's port, the new one's, and the ``time.monotonic()`` at which the
            command was sent.
        """
        old = self.primary_port()
        with self.sentinel() as client:
            sent = time.monotonic()
            client.execute_command("SENTINEL", "FAILOVER", SERVICE)
        return old, self._moved_from(old), sent

    def crash(self) -> tuple[int, int, float]:
        """SIGKILL the primary; return once every sentinel names a new primary (after
        ``down-after-milliseconds``, 2 s here, and an election) and it answers as one.

        Returns:
            As :meth:`failover`: the time is the kill's.
        """
        old = self.primary_port()
        sent = time.monotonic()
        self.kill(old)
        return old, self._moved_from(old), sent

    def _moved_from(self, old: int) -> int:
        """Wait until every sentinel names one primary other than ``old``, answering as a
        primary; return its port."""

        def moved() -> bool:
            ports = {self._named_by(port) for port in self.sentinel_ports}
            if len(ports) != 1 or old in ports:
                return False
            with self.data(ports.pop()) as client:
                return bool(client.execute_command("ROLE")[0] in (b"master", "master"))

        self._until(moved, "every sentinel to name the new primary")
        return self.primary_port()

    # -- internals ---------------------------------------------------------------------------

    def _tls_kwargs(self) -> dict[str, Any]:
        if self.tls is None:
            return {}
        return {"ssl": True, "ssl_ca_certs": str(self.tls / "ca.pem")}

    def _listen(self, port: int) -> list[str]:
        """The port arguments (or configuration lines' words) of a server on ``port``."""
        if self.tls is None:
            return ["--port", str(port)]
        t = self.tls
        return [
            "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(t / "server.pem"),
            "--tls-key-file", str(t / "server.key"), "--tls-ca-cert-file", str(t / "ca.pem"),
            "--tls-auth-clients", "no", "--tls-replication", "yes",
        ]  # fmt: skip

    def _start_data(self, port: int, extra: list[str]) -> None:
        workdir = self.directory / f"redis-{port}"
        workdir.mkdir()
        args = [*self._listen(port), "--requirepass", PASSWORD, "--masterauth", PASSWORD]
        # A replica that took writes the promoted one lacks needs a full sync with the new
        # primary; Redis holds a diskless one back 5 s by default to serve several at once.
        args += ["--repl-diskless-sync-delay", "0"]
        proc = _start_redis(
            self.binary,
            port,
            workdir,
            workdir / "redis.log",
            listen=[*args, *extra],
            ready=lambda p: self._answers(self.data, p),
        )
        if proc is None:
            pytest.fail(f"redis-server did not start:\n{_tail(workdir / 'redis.log')}")
        self.procs[port] = proc

    def _start_sentinel(self, port: int, primary: int) -> None:
        workdir = self.directory / f"sentinel-{port}"
        workdir.mkdir()
        conf = workdir / "sentinel.conf"
        words = self._listen(port)
        lines = [f"{words[i].removeprefix('--')} {words[i + 1]}" for i in range(0, len(words), 2)]
        lines += [
            "bind 127.0.0.1",
            f"dir {workdir}",
            f"requirepass {SENTINEL_PASSWORD}",
            f"sentinel sentinel-pass {SENTINEL_PASSWORD}",
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary} {len(self.sentinel_ports) // 2 + 1}",
            f"sentinel auth-pass {SERVICE} {PASSWORD}",
            f"sentinel down-after-milliseconds {SERVICE} 2000",
            f"sentinel failover-timeout {SERVICE} 10000",
        ]
        conf.write_text("\n".join(lines) + "\n")
        log_path = workdir / "sentinel.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [self.binary, str(conf), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
            )
        self.procs[port] = proc
        self._until(lambda: self._answers(self.sentinel, port), f"sentinel {port} to answer")

    def _answers(self, connect: Callable[[int], redis.Redis], port: int) -> bool:
        try:
            with connect(port) as client:
                return bool(client.ping())
        except (redis.RedisError, OSError, ssl.SSLError):
            return False

    def _named_by(self, sentinel: int) -> int:
        with self.sentinel(sentinel) as client:
            return int(client.sentinel_get_master_addr_by_name(SERVICE)[1])

    def _settled(self) -> bool:
        """Every replica in sync with the primary the sentinels name, and every sentinel sees
        it up, with every replica and every other sentinel."""
        primary = self._named_by(self.sentinel_ports[0])
        for port in self.data_ports:
            if port == primary or port not in self.procs:
                continue
            with self.data(port) as client:
                info = client.info("replication")
            if info.get("master_port") != primary or info.get("master_link_status") != "up":
                return False
        live_replicas = sum(1 for p in self.data_ports if p != primary and p in self.procs)
        for port in self.sentinel_ports:
            with self.sentinel(port) as client:
                state = client.sentinel_master(SERVICE)
            if (
                state["port"] != primary
                or state["is_sdown"]
                or state["num-other-sentinels"] < len(self.sentinel_ports) - 1
                or state["num-slaves"] < live_replicas
            ):
                return False
        return True

    def settle(self) -> None:
        """Wait until the group is whole again after a failover: the old primary turned into a
        replica of the new one (Sentinel does that about ten seconds after the switch) and in
        sync, and every sentinel agrees."""
        self._until(self._settled, "the group to settle")

    def _until(self, ready: Callable[[], bool], what: str) -> None:
        """Poll ``ready`` until it is true (a server has no event to wait on), at most
        :data:`SETTLE_TIMEOUT` seconds."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while time.monotonic() < deadline:
            for port, proc in self.procs.items():
                if proc.poll() is not None:
                    pytest.fail(f"the server on port {port} exited:\n{self._logs()}")
            try:
                if ready():
                    return
            except (redis.RedisError, OSError, ssl.SSLError):
                pass
            time.sleep(0.05)
        pytest.fail(f"timed out waiting for {what}:\n{self._logs()}", pytrace=False)

    def _logs(self) -> str:
        return "\n".join(
            f"--- {path.parent.name}\n{_tail(path, 8)}"
            for path in sorted(self.directory.glob("*/*.log"))
        )


# -- a failover under load ----------------------------------------------------------------------


@dataclass
class FailoverFigures:
    """What one run of :func:`failover_under_load` measured.

    Attributes:
        tasks: ``delay()`` calls made.
        acknowledged: calls that returned (the message is the broker's).
        failed_sends: calls that raised (nothing promised).
        lost: acknowledged keys that never ran.
        duplicated: extra runs of any key.
        first_task_s: seconds from ``SENTINEL FAILOVER`` to the first run of a task sent after
            every sentinel named the new primary.
        switch_s: seconds from ``SENTINEL FAILOVER`` to every sentinel naming the new primary.
        longest_send_s: the longest ``delay()`` call.
        wall_s: the whole run, worker start to last check.
        wait_replicas: the broker's ``wait_replicas``.
        replicas: the group's replicas.
        crash: the primary was killed (else ``SENTINEL FAILOVER``).
    """

    tasks: int
    acknowledged: int
    failed_sends: int
    lost: int
    duplicated: int
    first_task_s: float
    switch_s: float
    longest_send_s: float
    wall_s: float
    wait_replicas: int
    replicas: int
    crash: bool

    def line(self) -> str:
        return "sentinel failover: " + ", ".join(
            f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in asdict(self).items()
        )


async def failover_under_load(
    group: SentinelGroup,
    ledger: Ledger,
    *,
    total: int,
    rate: float,
    wait_replicas: int,
    concurrency: int = 50,
    tick: float = 0.05,
    visibility: float = 5.0,
    crash: bool = False,
) -> FailoverFigures:
    """Send ``total`` tasks at ``rate`` per second through ``group`` (broker and results) to a
    real worker process; at 40 % of the sends, ``SENTINEL FAILOVER`` (``crash``: the primary
    is killed instead); then wait until every acknowledged task ran and no redelivery is left,
    and count (the ledger is another server).

    Every ``delay()`` runs on its own, as concurrent callers' would (those of one loop turn share
    a round trip). Neither the worker nor the producer is told of the failover. Runs whose ack
    died with the old primary are delivered again after ``visibility`` seconds (the worker's
    and the producer's ``visibility_timeout``), which the count waits for.
    """
    started = time.monotonic()
    url = group.url(0, sentinel_password=SENTINEL_PASSWORD)
    queue = f"failover-{uuid.uuid4().hex[:8]}"
    producer = chaos_app.build(url, url, queue, visibility)
    producer.conf.broker_transport_options = {
        "visibility_timeout": visibility,
        "wait_replicas": wait_replicas,
        "wait_timeout": 0.5,
    }
    work = producer.tasks["chaos.work"]
    env = worker_env(url, url, queue, ledger, CHAOS_VISIBILITY=str(visibility))
    acknowledged: set[int] = set()
    failed: set[int] = set()
    durations: list[float] = []
    after_switch: list[int] = []  # keys whose delay() began once every sentinel had switched
    switched = asyncio.Event()
    switch_times: list[float] = []  # time.monotonic() when every sentinel named the new primary
    loop = asyncio.get_running_loop()

    async def send(key: int) -> None:
        began = time.monotonic()
        try:
            await work.delay(ledger.run, key, 0.0, total)
        except BrokerError:
            failed.add(key)
        else:
            acknowledged.add(key)
        finally:
            durations.append(time.monotonic() - began)

    async with worker(env, concurrency), _closing(producer):
        calls: set[asyncio.Task[None]] = set()
        per_tick = max(1, round(rate * tick))
        failover: asyncio.Task[tuple[int, int, float]] | None = None
        first_run: asyncio.Task[float] | None = None
        first = loop.time()
        key = 0
        # ``total`` keys; then, if the switch came after them (a slow machine), one more key
        # sent after it, to time the first task after the failover.
        while key < total or first_run is None:
            if key % per_tick == 0:
                # The rate of the load (not a synchronisation): the next group's time.
                await asyncio.sleep(max(0.0, first + key // per_tick * tick - loop.time()))
            if failover is None and key >= total * 0.4:
                fault = group.crash if crash else group.failover
                failover = asyncio.create_task(asyncio.to_thread(fault))
                failover.add_done_callback(lambda _: switched.set())
                failover.add_done_callback(lambda _: switch_times.append(time.monotonic()))
            if switched.is_set() and len(after_switch) < 100:
                after_switch.append(key)
                if first_run is None:
                    assert failover is not None
                    since = failover.result()[2]
                    first_run = asyncio.create_task(_first_run(ledger, after_switch, since))
            call = asyncio.create_task(send(key))
            calls.add(call)
            call.add_done_callback(calls.discard)
            key += 1
            if key == total and first_run is None and failover is not None:
                await asyncio.wait({failover})  # then one more key
        assert failover is not None and first_run is not None
        _, _, failover_sent = await failover
        switch_s = switch_times[0] - failover_sent
        first_task_s = await first_run
        await asyncio.gather(*calls)
        missing = await ledger.wait_ran(sorted(acknowledged), timeout=60, every=0.5)
        # Runs whose ack died with the old primary are delivered again after the visibility
        # timeout: wait for them before counting (a reclaim pass runs every quarter of the timeout).
        await ledger.wait_quiet(visibility * 1.25 + 2, timeout=60)
        lost, duplicated = await ledger.lost_and_duplicated(sorted(acknowledged))
    assert set(lost) <= set(missing)
    return FailoverFigures(
        tasks=key,
        acknowledged=len(acknowledged),
        failed_sends=len(failed),
        lost=len(lost),
        duplicated=len(duplicated),
        first_task_s=first_task_s,
        switch_s=switch_s,
        longest_send_s=max(durations),
        wall_s=time.monotonic() - started,
        wait_replicas=wait_replicas,
        replicas=len(group.data_ports) - 1,
        crash=crash,
    )


@asynccontextmanager
async def ledger_on(server: str, db: int = 3) -> AsyncIterator[Ledger]:
    """A ledger of task runs (:class:`tests.chaos.harness.Ledger`) in database ``db`` of the
    plain Redis server at ``server`` (never a server under test)."""
    url = f"{server}/{db}"
    client = aioredis.Redis.from_url(url)
    try:
        yield Ledger(client, url)
    finally:
        await client.aclose()


@asynccontextmanager
async def _closing(app: Aqueue) -> AsyncIterator[Aqueue]:
    try:
        yield app
    finally:
        await app.close()


async def _first_run(ledger: Ledger, keys: list[int], since: float, limit: float = 30.0) -> float:
    """Seconds from ``since`` (``time.monotonic()``) to the first of ``keys`` (a list the caller
    may still be adding to) having run; polled every 10 ms (the ledger has no event per key),
    for at most ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if any(await ledger.client.hmget(f"{ledger.run}:runs", [str(k) for k in keys])):
            return time.monotonic() - since
        await asyncio.sleep(0.01)
    raise AssertionError(f"no task sent after the failover ran within {limit:g}s")
