"""The chaos suite (``make chaos``): fault scenarios with figures, kept out of ``make test``.

Every test here is marked ``chaos``; each adds a row (lost, duplicated, recovery time, peak
worker RSS) to a table printed at the end of the run, and written as JSON to
``$CHAOS_RESULTS`` when that is set. Sizes come from the environment (``harness.Sizes``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.chaos.harness import RESULTS, Ledger, RedisAof

CHAOS_DIR = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: a fault-injection scenario (make chaos)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if CHAOS_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.chaos)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    header = (
        "scenario",
        "tasks",
        "lost",
        "dup",
        "dup bound",
        "recovery s",
        "peak RSS MB",
        "wall s",
    )
    rows = [header] + [r.row() for r in RESULTS]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    terminalreporter.section("chaos figures")
    for row in rows:
        cells = (cell.rjust(width) for cell, width in zip(row, widths, strict=True))
        terminalreporter.write_line("  ".join(cells))
    machine = f"{os.cpu_count()} CPUs, {_cpu_model()}"
    terminalreporter.write_line(f"machine: {machine}")
    target = os.environ.get("CHAOS_RESULTS")
    if target:
        payload = {"machine": machine, "results": [r.as_dict() for r in RESULTS]}
        Path(target).write_text(json.dumps(payload, indent=2) + "\n")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return "unknown CPU"


@pytest.fixture
async def ledger(redis_server: str) -> AsyncIterator[Ledger]:
    """The ledger: the session's Redis server, database 2 (never the server under test)."""
    url = f"{redis_server}/2"
    client = aioredis.Redis.from_url(url)
    yield Ledger(client, url)
    await client.aclose()


@pytest.fixture
def redis_aof() -> Iterator[RedisAof]:
    """A dedicated redis-server with ``appendonly yes`` and ``appendfsync always``."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not on PATH", pytrace=False)
    directory = Path(tempfile.mkdtemp(prefix="aqueue-chaos-redis-"))
    server = RedisAof(binary, directory)
    try:
        server.start()
        yield server
    finally:
        server.kill()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def rabbit_node() -> Iterator[object]:
    """A RabbitMQ node of this module's own, to restart without disturbing other tests."""
    from tests.conftest import _RABBIT_SCRIPT, RabbitNode

    script = _RABBIT_SCRIPT if os.path.exists(_RABBIT_SCRIPT) else shutil.which("rabbitmq-server")
    if script is None:
        pytest.fail("rabbitmq-server is not installed", pytrace=False)
    node = RabbitNode(script)
    try:
        node.start()
        yield node
    finally:
        node.remove()
