"""A real Redis Cluster for tests: ``primaries`` ``redis-server --cluster-enabled yes``
processes on free loopback ports (each with its own directory, node file and cluster bus
port), joined by ``redis-cli --cluster create`` with no replicas, and stopped afterwards."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import _start_redis, _stop, _tail
from tests.net import free_port

SETTLE_TIMEOUT = 30.0  # seconds for every node to report cluster_state:ok


class RedisClusterGroup:
    """``primaries`` Redis Cluster primaries in ``directory``; ``with`` starts and stops them.

    Attributes:
        ports: each primary's client port, in creation order.
    """

    def __init__(self, directory: Path, primaries: int = 3) -> None:
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if binary is None or cli is None:
            pytest.fail("redis-server / redis-cli are not on PATH (apt-get install redis-server)")
        self.binary, self.cli = binary, cli
        self.directory = directory
        self.primaries = primaries
        self.ports: list[int] = []
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """``redis+cluster://`` naming every primary."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def __enter__(self) -> RedisClusterGroup:
        try:
            for index in range(self.primaries):
                self._start_node(index)
            self._create()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every node (idempotent)."""
        procs, self._procs = self._procs, []
        for proc in procs:
            _stop(proc)

    def cli_call(self, port: int, *args: str) -> str:
        """``redis-cli -p port args...``'s output (raises on failure)."""
        done = subprocess.run(
            [self.cli, "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout

    def _info(self, port: int) -> str:
        return self.cli_call(port, "cluster", "info")

    def _start_node(self, index: int) -> None:
        workdir = self.directory / f"node{index}"
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = workdir / "redis.log"
        for _ in range(3):
            port = free_port()
            listen = ["--port", str(port), "--cluster-enabled", "yes"]
            listen += ["--cluster-config-file", str(workdir / "nodes.conf")]
            listen += ["--cluster-port", str(free_port()), "--cluster-node-timeout", "5000"]
            proc = _start_redis(self.binary, port, workdir, log_path, listen=listen)
            if proc is not None:
                self._procs.append(proc)
                self.ports.append(port)
                return
        pytest.fail(f"redis-server (cluster) did not start:\n{_tail(log_path)}", pytrace=False)

    def _create(self) -> None:
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        done = subprocess.run(
            [self.cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            pytest.fail(f"redis-cli --cluster create failed:\n{done.stdout}\n{done.stderr}")
        deadline = time.monotonic() + SETTLE_TIMEOUT
        waiting = list(self.ports)
        while waiting:
            waiting = [p for p in waiting if "cluster_state:ok" not in self._info(p)]
            if not waiting:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"cluster not ok within {SETTLE_TIMEOUT:g}s on ports {waiting}")
            time.sleep(0.1)
