"""Shared fixtures: a throwaway Redis server, and URLs for every transport.

``broker_url`` and ``backend_url`` are parametrised over :data:`TRANSPORTS`, so a test that asks
for one runs once per transport (select one with ``-k redis``). The Redis server is started
only when a Redis test runs, once per session.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TRANSPORTS = ["memory", "sqlite", "redis"]

_REDIS_START_TIMEOUT = 10.0  # seconds for redis-server to answer PING


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


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
        port = _free_port()
        proc = _start_redis(binary, port, workdir, log_path)
        if proc is not None:
            break
    else:
        pytest.fail(f"redis-server did not start:\n{_tail(log_path)}", pytrace=False)
    try:
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _start_redis(
    binary: str, port: int, workdir: Path, log_path: Path
) -> subprocess.Popen[bytes] | None:
    """Run redis-server on ``port``; the process once it answers PING, or None if it exited."""
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no", "--dir", str(workdir), "--daemonize", "no"]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + _REDIS_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        if _answers_ping(port):
            return proc
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    pytest.fail(
        f"redis-server did not answer PING within {_REDIS_START_TIMEOUT:g}s:\n{_tail(log_path)}",
        pytrace=False,
    )


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _url(transport: str, request: pytest.FixtureRequest, tmp_path: Path, name: str) -> str:
    if transport == "memory":
        return "memory://"
    if transport == "sqlite":
        return f"sqlite:///{tmp_path}/{name}.db"
    if transport == "redis":
        return f"{request.getfixturevalue('redis_server')}/0"
    raise AssertionError(f"unknown transport {transport!r}")


@pytest.fixture(params=TRANSPORTS)
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A broker URL for each transport, fresh per test (Redis: a shared server, db 0)."""
    return _url(request.param, request, tmp_path, "broker")


@pytest.fixture(params=TRANSPORTS)
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A result backend URL for each transport, fresh per test (Redis: a shared server, db 0)."""
    return _url(request.param, request, tmp_path, "results")


@pytest.fixture
def queue_name() -> str:
    """A queue name no other test uses, so tests sharing a Redis server don't see each other."""
    return f"q-{uuid.uuid4().hex}"


@pytest.fixture(params=TRANSPORTS)
def transport_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One URL for both broker and result backend, per transport (end-to-end suites)."""
    return _url(request.param, request, tmp_path, "aqueue")


@pytest.fixture(params=[t for t in TRANSPORTS if t != "memory"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL that several processes can share: every transport but memory."""
    return _url(request.param, request, tmp_path, "aqueue")
