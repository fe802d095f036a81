"""Real worker processes: SIGKILL mid-task, SIGTERM during work, the CLI's `call`."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.apps import tasks as e2e
from tests.apps.tasks import Tasks
from tests.workerproc import WorkerProcess

pytestmark = pytest.mark.slow


@pytest.fixture
async def producer(shared_url: str) -> AsyncIterator[Tasks]:
    tasks = e2e.build(shared_url, queue=f"q-{uuid.uuid4().hex[:12]}")
    yield tasks
    await tasks.app.close()


def worker_env(t: Tasks, visibility: float = 30.0) -> dict[str, str]:
    return {
        "AQUEUE_BROKER_URL": t.app.conf.broker_url or "",
        "AQUEUE_E2E_QUEUE": t.app.conf.task_default_queue,
        "AQUEUE_E2E_VISIBILITY": str(visibility),
    }


@pytest.mark.timeout(90)
async def test_sigkill_mid_task_is_finished_by_another_worker(
    producer: Tasks, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    env = worker_env(producer, visibility=1.5)
    r = await producer.sleep_then_mark.delay(2.0, str(marks), "long")
    async with WorkerProcess("tests.apps.tasks:app", ["-c", "4"], env) as first:
        await first.wait_for(f"{r.id}] started")
        first.signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
    assert await r.state() == "PENDING"
    async with WorkerProcess("tests.apps.tasks:app", ["-c", "4"], env) as second:
        assert await r.get(timeout=30) == "long"
        assert second.proc is not None
        [mark] = list(marks.iterdir())  # run to the end once, by the second worker
        assert mark.read_text() == str(second.proc.pid)
        redelivered = await second.wait_for(f"{r.id}] started")
        assert redelivered


@pytest.mark.timeout(90)
async def test_sigterm_during_work_loses_nothing(producer: Tasks, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    env = worker_env(producer)
    results = [await producer.sleep_then_mark.delay(0.3, str(marks), f"t{i}") for i in range(30)]
    async with WorkerProcess("tests.apps.tasks:app", ["-c", "5"], env) as first:
        await first.wait_for("started")
        first.signal(signal.SIGTERM)
        assert await first.wait() == 0
        assert any("warm shutdown" in line for line in first.lines)
    finished_first = sum([await r.ready() for r in results])
    assert 1 <= finished_first < 30  # some ran to the end before the stop, the rest waited
    async with WorkerProcess("tests.apps.tasks:app", ["-c", "10"], env):
        values = await asyncio.gather(*(r.get(timeout=30) for r in results))
    assert values == [f"t{i}" for i in range(30)]
    names = sorted(p.name.split(".")[0] for p in marks.iterdir())
    assert names == sorted(f"t{i}" for i in range(30))  # each ran exactly once


@pytest.mark.timeout(60)
async def test_cli_call_wait_prints_the_result(producer: Tasks) -> None:
    env = worker_env(producer)
    async with WorkerProcess("tests.apps.tasks:app", ["-c", "2"], env):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "aqueue",
            "call",
            "-A",
            "tests.apps.tasks:app",
            "e2e.add",
            "--args",
            "[2, 3]",
            "--wait",
            "--timeout",
            "20",
            env={**__import__("os").environ, **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "5"


def run_cli(*args: str, env: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aqueue", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def test_cli_version() -> None:
    done = run_cli("--version")
    assert done.returncode == 0
    assert done.stdout.startswith("aqueue ")


def test_cli_bad_app_says_what_was_tried() -> None:
    done = run_cli("worker", "-A", "no_such_module_xyz")
    assert done.returncode == 2
    assert "module 'no_such_module_xyz' not found (run from the directory" in done.stderr
    done = run_cli("worker", "-A", "tests.apps.tasks:nothing")
    assert done.returncode == 2
    assert "tests.apps.tasks.nothing is missing, not an Aqueue app" in done.stderr
    done = run_cli("worker", "-A", "json")
    assert done.returncode == 2
    assert "has no Aqueue app" in done.stderr
