"""Shared fixtures: throwaway Redis and RabbitMQ servers, and URLs for every transport.

``broker_url`` and ``backend_url`` are parametrised over :data:`TRANSPORTS` (backends: all but
AMQP, which stores no results), so a test that asks for one runs once per transport (select one
with ``-k redis``). Each server is started only when a test that needs it runs, once per session.

With the ``amqp`` transport, ``transport_url`` and ``shared_url`` are the RabbitMQ broker URL and
``$AQUEUE_RESULT_BACKEND`` names the Redis server as result backend, for this process and the
worker processes it starts: ``tests.apps.tasks.build`` leaves an AMQP app's backend to it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiormq
import pytest

from tests.net import answers_ping, free_port
from tests.transport_choice import chosen_transports

pytest_plugins = ["pytester", "tests.e2e_fixtures"]

TRANSPORTS = chosen_transports(["memory", "sqlite", "redis", "amqp"])
BACKENDS = [t for t in TRANSPORTS if t != "amqp"]

_REDIS_START_TIMEOUT = 10.0  # seconds for redis-server to answer PING


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start ``redis-server`` on a free local port for the session; yield its URL.

    Fails (never skips) when redis-server is not installed: Redis is a supported transport.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not on PATH; the Redis transport tests need it "
            "(Debian/Ubuntu: apt-get install redis-server)",
            pytrace=False,
        )
    workdir = tmp_path_factory.mktemp("redis")
    log_path = workdir / "redis.log"
    # The port is free when chosen but may be taken before redis binds it: try a few.
    for _ in range(3):
        port = free_port()
        proc = _start_redis(binary, port, workdir, log_path)
        if proc is not None:
            break
    else:
        pytest.fail(f"redis-server did not start:\n{_tail(log_path)}", pytrace=False)
    try:
        yield f"redis://127.0.0.1:{port}"
    finally:
        _stop(proc)


def _start_redis(
    binary: str,
    port: int,
    workdir: Path,
    log_path: Path,
    *,
    listen: Sequence[str] | None = None,
    ready: Callable[[int], bool] = answers_ping,
) -> subprocess.Popen[bytes] | None:
    """Run redis-server on ``port``; the process once it answers PING, or None if it exited.

    ``listen`` replaces the ``--port`` arguments (a TLS server: ``--port 0 --tls-port ...``),
    and ``ready(port)`` then tells when it answers.
    """
    args = [binary, *(listen or ["--port", str(port)]), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no", "--dir", str(workdir), "--daemonize", "no"]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + _REDIS_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        if ready(port):
            return proc
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    pytest.fail(
        f"redis-server did not answer PING within {_REDIS_START_TIMEOUT:g}s:\n{_tail(log_path)}",
        pytrace=False,
    )


#: Seconds a refused connection (a TLS refusal, a wrong password) may take to fail: far below
#: every connect timeout, so a refusal that waited for one shows.
QUICK = 2.0


async def refused_at_once(connecting: Awaitable[object], within: float = QUICK) -> str:
    """The message of the ``BrokerConnectionError`` that awaiting ``connecting`` raises, which
    must come within ``within`` seconds (not a hang, not a wait for a timeout)."""
    from aqueue.exceptions import BrokerConnectionError

    started = time.monotonic()
    with pytest.raises(BrokerConnectionError) as info:
        await connecting
    assert time.monotonic() - started < within
    return str(info.value)


# -- Redis over TLS -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisTLS:
    """A redis-server listening for TLS only (no plain port) on a free loopback port, with a
    certificate for 127.0.0.1 from a throwaway CA.

    Attributes:
        port: the TLS port.
        certs: the directory of ``ca.pem`` (the CA to trust), ``server.pem`` / ``server.key``,
            and ``client.pem`` / ``client.key`` (a client certificate the CA signed).
    """

    port: int
    certs: Path

    @property
    def ca(self) -> str:
        return str(self.certs / "ca.pem")

    @property
    def url(self) -> str:
        """``rediss://127.0.0.1:<port>`` with no TLS options (the CA is not trusted)."""
        return f"rediss://127.0.0.1:{self.port}"

    def trusted_url(self, db: int = 0) -> str:
        """``rediss://`` to database ``db``, trusting the test CA through the URL's query."""
        return f"{self.url}/{db}?ssl_ca_certs={self.ca}&ssl_cert_reqs=required"


@pytest.fixture(scope="session")
def tls_certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate (see
    :class:`RedisTLS`), made once per session."""
    directory = tmp_path_factory.mktemp("tls")
    _make_certificates(directory)
    _make_client_certificate(directory)
    return directory


@pytest.fixture(scope="session")
def untrusted_ca(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The ``ca.pem`` of another throwaway CA: trusting it alone, no test server verifies.
    Beside it, ``client.pem`` / ``client.key``: a client certificate no test server trusts."""
    directory = tmp_path_factory.mktemp("other-ca")
    _make_certificates(directory)
    _make_client_certificate(directory)
    return str(directory / "ca.pem")


@pytest.fixture(scope="session")
def redis_tls_server(
    tmp_path_factory: pytest.TempPathFactory, tls_certificates: Path
) -> Iterator[RedisTLS]:
    """A TLS-only redis-server for the session; clients need no certificate of their own."""
    yield from _redis_tls(tmp_path_factory, tls_certificates, client_certificates="no")


@pytest.fixture(scope="session")
def redis_mtls_server(
    tmp_path_factory: pytest.TempPathFactory, tls_certificates: Path
) -> Iterator[RedisTLS]:
    """A TLS-only redis-server that also requires a client certificate signed by its CA."""
    yield from _redis_tls(tmp_path_factory, tls_certificates, client_certificates="yes")


def _redis_tls(
    tmp_path_factory: pytest.TempPathFactory, certs: Path, client_certificates: str
) -> Iterator[RedisTLS]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not on PATH (apt-get install redis-server)", pytrace=False)
    workdir = tmp_path_factory.mktemp("redis-tls")
    log_path = workdir / "redis.log"
    files = ["--tls-cert-file", str(certs / "server.pem"), "--tls-key-file"]
    files += [str(certs / "server.key"), "--tls-ca-cert-file", str(certs / "ca.pem")]
    for _ in range(3):
        port = free_port()
        listen = ["--port", "0", "--tls-port", str(port), *files]
        listen += ["--tls-auth-clients", client_certificates]
        proc = _start_redis(
            binary,
            port,
            workdir,
            log_path,
            listen=listen,
            ready=lambda port: _answers_tls_ping(port, certs),
        )
        if proc is not None:
            break
    else:
        pytest.fail(f"redis-server (TLS) did not start:\n{_tail(log_path)}", pytrace=False)
    try:
        yield RedisTLS(port, certs)
    finally:
        _stop(proc)


def _answers_tls_ping(port: int, certs: Path) -> bool:
    """True when a TLS client trusting ``certs``' CA (and showing its client certificate) gets
    PONG."""
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    context.load_cert_chain(str(certs / "client.pem"), str(certs / "client.key"))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as s,
        ):
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# -- RabbitMQ ------------------------------------------------------------------------------------

_RABBIT_SCRIPT = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # runs in the foreground, unlike sbin's
_RABBIT_START_TIMEOUT = 60.0  # seconds; a node accepts connections about 8 s after it starts
_RABBIT_STOP_TIMEOUT = 30.0


class RabbitNode:
    """A throwaway RabbitMQ node on a free loopback port, all its files in one directory.

    It keeps its data across :meth:`stop` and :meth:`start` (same node name and database), as a
    restarted server does. As root, the server runs as the ``rabbitmq`` user, as the packaged
    service does, so the directory belongs to that user. It also listens for TLS, with a
    certificate from a CA of its own (:attr:`tls_url` trusts it).

    Args:
        script: the ``rabbitmq-server`` script that runs in the foreground.
        cookie: the Erlang cookie, shared by the nodes of a cluster (:class:`RabbitCluster`);
            ``None``: the node makes one of its own.
    """

    def __init__(self, script: str, cookie: str | None = None) -> None:
        self.script = script
        self.port = free_port()
        self.tls_port = free_port()
        self.dist_port = free_port()
        self.user = "rabbitmq" if os.geteuid() == 0 else None
        # Not under pytest's tmp_path: its base directory is private to the user running pytest.
        self.dir = Path(tempfile.mkdtemp(prefix=f"aqueue-rabbit-{self.port}-"))
        self.dir.chmod(0o755)
        _make_certificates(self.dir)
        d = self.dir
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            f"listeners.ssl.default = 127.0.0.1:{self.tls_port}\n"
            f"ssl_options.cacertfile = {d}/ca.pem\n"
            f"ssl_options.certfile = {d}/server.pem\n"
            f"ssl_options.keyfile = {d}/server.key\n"
            "ssl_options.verify = verify_none\n"
            "ssl_options.fail_if_no_peer_cert = false\n"
            "log.console = false\n"
            "log.file.level = warning\n"
        )
        (self.dir / "enabled_plugins").write_text("[].\n")
        if cookie is not None:  # in HOME, for the server and for rabbitmqctl
            (self.dir / ".erlang.cookie").write_text(cookie)
            (self.dir / ".erlang.cookie").chmod(0o400)
        if self.user is not None:
            shutil.chown(self.dir, self.user, self.user)
            for path in self.dir.iterdir():
                shutil.chown(path, self.user, self.user)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def name(self) -> str:
        """The Erlang node name (``rabbitmqctl join_cluster`` takes it)."""
        return f"aqueue-test-{self.port}@localhost"

    @property
    def tls_url(self) -> str:
        """``amqps://`` to the TLS listener, trusting the node's own test CA."""
        return f"amqps://guest:guest@127.0.0.1:{self.tls_port}/?cafile={self.dir}/ca.pem"

    @property
    def env(self) -> dict[str, str]:
        """The environment of the server and of ``rabbitmqctl`` for this node."""
        d = self.dir
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": str(d),  # the Erlang cookie lives here
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(d / "feature_flags"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
        }

    def start(self) -> None:
        """Start the node; return once it accepts AMQP connections.

        Raises:
            pytest.fail.Exception: it exited or did not answer within the start timeout.
        """
        with (self.dir / "server.out").open("ab") as out:
            self.proc = subprocess.Popen(
                [self.script],
                env=self.env,
                cwd=self.dir,
                user=self.user,
                group=self.user,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal does not reach it
            )
        deadline = time.monotonic() + _RABBIT_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"rabbitmq-server exited with status {self.proc.returncode}:\n{self.log()}",
                    pytrace=False,
                )
            if _speaks_amqp(self.port):
                return
            time.sleep(0.1)
        self.stop()
        pytest.fail(
            f"rabbitmq-server did not accept connections within {_RABBIT_START_TIMEOUT:g}s:\n"
            f"{self.log()}",
            pytrace=False,
        )

    def stop(self) -> None:
        """Stop the node gracefully (SIGTERM to its start script), or kill it after a timeout."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=_RABBIT_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the script and the VM
            proc.wait()

    def kill(self) -> None:
        """Kill the node at once (SIGKILL to its start script and VM): a crash, not a stop."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def ctl(self, *args: str, tool: str = "rabbitmqctl") -> str:
        """Run ``rabbitmqctl`` (or another of RabbitMQ's tools, e.g. ``rabbitmq-queues``)
        against this node; return its output.

        Raises:
            AssertionError: it failed.
        """
        done = subprocess.run(
            [str(Path(self.script).with_name(tool)), *args],
            env=self.env,
            cwd=self.dir,
            user=self.user,
            group=self.user,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"{tool} {' '.join(args)}: {done.stderr}{done.stdout}"
        return done.stdout

    def log(self, lines: int = 30) -> str:
        texts = [_tail(self.dir / "server.out", lines)]
        texts += [_tail(path, lines) for path in sorted((self.dir / "log").glob("*.log"))]
        return "\n".join(texts)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RabbitCluster:
    """Three (or ``size``) :class:`RabbitNode` nodes on loopback made one RabbitMQ cluster: one
    Erlang cookie, each its own node name, ports and data; the others joined to the first with
    ``rabbitmqctl join_cluster``, as an operator does.

    Args:
        script: the ``rabbitmq-server`` script.
        size: how many nodes.
    """

    def __init__(self, script: str, size: int = 3) -> None:
        cookie = uuid.uuid4().hex.upper()
        self.nodes = [RabbitNode(script, cookie) for _ in range(size)]

    @property
    def url(self) -> str:
        """Every node's URL, joined by ``;`` (kombu's failover form), the first node first."""
        return ";".join(node.url for node in self.nodes)

    def start(self) -> None:
        """Start every node (at once), then join the others to the first.

        Raises:
            pytest.fail.Exception: a node did not start.
            AssertionError: a join failed.
        """
        with concurrent.futures.ThreadPoolExecutor(len(self.nodes)) as pool:
            for started in [pool.submit(node.start) for node in self.nodes]:
                started.result()
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.name)
            node.ctl("start_app")
        running = first.ctl("cluster_status", "--formatter", "json")
        for node in self.nodes:
            assert node.name in running, running

    def remove(self) -> None:
        """Stop every node and delete their files."""
        with concurrent.futures.ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(RabbitNode.remove, self.nodes))


async def until(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> float:
    """Poll ``check()`` (every 50 ms) until it is true; return the seconds it took. For what
    a server does in the background and tells nobody of (RabbitMQ dead-lettering, a cluster
    electing a leader).

    Raises:
        AssertionError: not within ``seconds`` (says ``what``).
    """
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > seconds:
            raise AssertionError(f"not within {seconds}s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def _make_certificates(directory: Path) -> None:
    """A throwaway CA (``ca.pem``) and a server certificate for 127.0.0.1 signed by it."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    new_key = ["-newkey", "rsa:2048", "-nodes", "-days", "2"]
    openssl("req", "-x509", *new_key, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=ca")
    openssl("req", *new_key[:3], "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=x")
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", "server.pem",
    )  # fmt: skip


def _make_client_certificate(directory: Path) -> None:
    """``client.pem`` / ``client.key``: a client certificate signed by the CA in ``directory``
    (made by :func:`_make_certificates`)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out",
            "client.csr", "-subj", "/CN=aqueue-client")  # fmt: skip
    openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", "client.pem")  # fmt: skip


def _speaks_amqp(port: int) -> bool:
    """True when the server answers the AMQP 0-9-1 protocol header with a method frame."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"AMQP\x00\x00\x09\x01")
            return s.recv(1) == b"\x01"  # frame type 1: connection.start
    except OSError:
        return False


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[RabbitNode]:
    """Start a RabbitMQ node on a free local port for the session; yield it (``.url``).

    Fails (never skips) when rabbitmq-server is not installed: AMQP is a supported transport.
    """
    script = _RABBIT_SCRIPT if os.path.exists(_RABBIT_SCRIPT) else shutil.which("rabbitmq-server")
    if script is None:
        pytest.fail(
            "rabbitmq-server is not installed; the AMQP transport tests need it "
            "(Debian/Ubuntu: apt-get install rabbitmq-server; the tests start their own node, "
            "the system service is not used)",
            pytrace=False,
        )
    node = RabbitNode(script)
    try:
        node.start()
        # In a thread of its own: this fixture may be set up from inside a running event loop
        # (an async fixture asking for it with request.getfixturevalue).
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, _declare_delay_chain(node.url)).result()
        yield node
    finally:
        node.remove()


@pytest.fixture(scope="session")
def rabbitmq_cluster() -> Iterator[RabbitCluster]:
    """A 3-node RabbitMQ cluster on loopback for the session (``make test-cluster``).

    Fails (never skips) when rabbitmq-server is not installed.
    """
    script = _RABBIT_SCRIPT if os.path.exists(_RABBIT_SCRIPT) else shutil.which("rabbitmq-server")
    if script is None:
        pytest.fail("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
    cluster = RabbitCluster(script)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


async def _declare_delay_chain(url: str) -> None:
    """Declare the delay chains (classic and quorum), as on any broker that has had delayed
    messages before.

    Declaring one takes a fresh broker ~0.2 s once (more on a loaded machine; the quorum one
    more), which the first delayed publish of the session would otherwise pay inside a test
    that times its eta.
    """
    from aqueue.transports.amqp.delay import declare_levels

    connection = await aiormq.connect(url)
    try:
        for quorum in (False, True):
            await declare_levels([await connection.channel() for _ in range(8)], quorum)
    finally:
        await connection.close()


def _url(transport: str, request: pytest.FixtureRequest, tmp_path: Path, name: str) -> str:
    if transport == "memory":
        return "memory://"
    if transport == "sqlite":
        return f"sqlite:///{tmp_path}/{name}.db"
    if transport == "redis":
        return f"{request.getfixturevalue('redis_server')}/0"
    if transport == "amqp":
        return str(request.getfixturevalue("rabbitmq_server").url)
    if transport == "sentinel":
        return sentinel_url(request)
    if transport == "cluster":
        return str(request.getfixturevalue("redis_cluster").url)
    raise AssertionError(f"unknown transport {transport!r}")


def sentinel_url(request: pytest.FixtureRequest) -> str:
    """A ``redis+sentinel://`` URL (database 0) of the session's Sentinel group, carrying the
    sentinels' password, so that a role made from the URL alone connects."""
    from tests.transports.sentinels import SENTINEL_PASSWORD

    group = request.getfixturevalue("sentinel_group")
    return str(group.url(0, sentinel_password=SENTINEL_PASSWORD))


@pytest.fixture(scope="session")
def sentinel_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Redis Sentinel group for the session: a primary, a replica and three sentinels
    (:class:`tests.transports.sentinels.SentinelGroup`); nobody fails it over."""
    from tests.transports.sentinels import SentinelGroup

    with SentinelGroup(tmp_path_factory.mktemp("sentinel")) as group:
        yield group


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Redis Cluster for the session: three primaries, no replicas, on free loopback ports
    (:class:`tests.transports.redis_cluster.RedisClusterGroup`); ``.url`` is its
    ``redis+cluster://`` URL."""
    from tests.transports.redis_cluster import RedisClusterGroup

    with RedisClusterGroup(tmp_path_factory.mktemp("redis-cluster")) as group:
        yield group


def _transport_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """``_url`` for the end-to-end fixtures; an AMQP broker gets Redis as result backend."""
    if request.param == "amqp":
        backend = f"{request.getfixturevalue('redis_server')}/0"
        request.getfixturevalue("monkeypatch").setenv("AQUEUE_RESULT_BACKEND", backend)
    return _url(request.param, request, tmp_path, "aqueue")


@pytest.fixture(params=TRANSPORTS)
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A broker URL for each transport, fresh per test (Redis: a shared server, db 0)."""
    return _url(request.param, request, tmp_path, "broker")


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A result backend URL for each transport, fresh per test (Redis: a shared server, db 0)."""
    return _url(request.param, request, tmp_path, "results")


@pytest.fixture
def queue_name() -> str:
    """A queue name no other test uses, so tests sharing a Redis server don't see each other."""
    return f"q-{uuid.uuid4().hex}"


@pytest.fixture(params=TRANSPORTS)
def transport_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One URL for both broker and result backend, per transport (end-to-end suites).

    AMQP: the broker's URL; the result backend is ``$AQUEUE_RESULT_BACKEND`` (Redis).
    """
    return _transport_url(request, tmp_path)


@pytest.fixture(params=[t for t in TRANSPORTS if t != "memory"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL that several processes can share: every transport but memory (AMQP: as above)."""
    return _transport_url(request, tmp_path)


@pytest.fixture
def clean_signals() -> Iterator[None]:
    """Every signal's receivers as they were before the test (receivers a test connects go)."""
    from aqueue import signals

    kept = {name: list(getattr(signals, name).receivers) for name in signals.__all__[1:]}
    yield
    for name, receivers in kept.items():
        getattr(signals, name).receivers = receivers
