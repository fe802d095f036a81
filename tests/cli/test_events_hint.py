"""``aqueue events`` says why nothing comes: no worker, or none started with -E."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid

import pytest

from tests.workerproc import WorkerProcess

pytestmark = pytest.mark.timeout(60)


async def _events(env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aqueue", "events", "-A", "tests.apps.log_tasks", "--timeout", "1",
        env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return err.decode()


async def test_events_says_when_no_worker_runs_or_none_sends_events(redis_server: str) -> None:
    db = f"{redis_server}/{uuid.uuid4().int % 8 + 4}"  # a database no other test's worker uses
    env = {"AQUEUE_BROKER_URL": db, "AQUEUE_E2E_QUEUE": f"q-{uuid.uuid4().hex[:8]}"}
    assert "no worker is running" in await _events(env)
    async with WorkerProcess("tests.apps.log_tasks", ["-c", "1"], env) as worker:
        assert "1 worker(s) running, none sends events: start workers with -E" in await _events(env)
        worker.signal(signal.SIGTERM)  # a clean stop removes its heartbeat
        assert await worker.wait() == 0
    async with WorkerProcess("tests.apps.log_tasks", ["-c", "1", "-E"], env):
        said = await _events(env)
    assert "none sends events" not in said and "no worker" not in said
