"""``aqueue worker --processes N``: N worker processes under a supervisor that restarts a child
that dies and stops them all cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aqueue.worker.supervisor import child_hostname
from tests.apps.ops_tasks import SHARED_TRANSPORTS, OpsTasks, build, url_for
from tests.workerproc import WorkerProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

APP = "tests.apps.ops_tasks:app"


def test_children_are_named_after_the_worker() -> None:
    assert child_hostname("aqueue@box", 2) == "aqueue-2@box"
    assert child_hostname("solo", 1) == "solo-1"
    assert child_hostname(None, 3).startswith("aqueue-3@")


@pytest.fixture(params=SHARED_TRANSPORTS)
async def t(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpsTasks]:
    tasks = build(url_for(request.param, request, tmp_path), f"q-{uuid.uuid4().hex[:12]}")
    yield tasks
    await tasks.app.close()


def started_pids(lines: list[str]) -> dict[int, int]:
    """Child index -> pid of the latest ``worker process <i> started (pid <p>)`` lines."""
    pids: dict[int, int] = {}
    for line in lines:
        found = re.search(r"worker process (\d+) started \(pid (\d+)\)", line)
        if found:
            pids[int(found.group(1))] = int(found.group(2))
    return pids


async def test_two_processes_share_the_work_and_a_killed_one_is_replaced(t: OpsTasks) -> None:
    env = {
        "AQUEUE_BROKER_URL": t.app.conf.broker_url or "",
        "AQUEUE_OPS_QUEUE": t.app.conf.task_default_queue,
        "AQUEUE_OPS_VISIBILITY": "1.5",  # the killed child's task comes back after 1.5 s
    }
    # One task at a time per child, so that both children must take part.
    args = ["--processes", "2", "-c", "1", "--prefetch-multiplier", "1"]
    async with WorkerProcess(APP, args, env) as supervisor:
        await supervisor.wait_for("supervisor ready: all 2 worker processes are ready")
        children = started_pids(supervisor.lines)
        assert sorted(children) == [1, 2] and os.getpid() not in children.values()

        first = [await t.pid_after.delay(0.3) for _ in range(6)]
        served = set(await asyncio.gather(*(r.get(timeout=30) for r in first)))
        assert served == set(children.values())  # both processes ran tasks

        running = await t.pid_after.delay(2.0)
        await supervisor.wait_for(f"ops.pid_after[{running.id}] started")
        active = await t.app.control.inspect(timeout=5).active()
        [(name, tasks)] = [(n, a) for n, a in active.items() if a]
        assert [a["id"] for a in tasks] == [running.id] and name.startswith("aqueue-")
        victim = tasks[0]["worker_pid"]
        index = next(i for i, pid in children.items() if pid == victim)
        os.kill(victim, signal.SIGKILL)

        await supervisor.wait_for(f"(pid {victim}) died (signal 9: SIGKILL)")
        line = await supervisor.wait_for(f"worker process {index} started again")
        found = re.search(r"pid (\d+)", line)
        assert found is not None
        replacement = int(found.group(1))
        await supervisor.wait_for(f"(prefetch 1), pid {replacement}")  # its ready line
        alive = {replacement, *children.values()} - {victim}
        # Nothing is lost: the killed child's task runs again (after the visibility timeout).
        assert await running.get(timeout=30) in alive
        later = [await t.pid_after.delay(0.05) for _ in range(4)]
        assert set(await asyncio.gather(*(r.get(timeout=30) for r in later))) <= alive

        supervisor.signal(signal.SIGTERM)
        assert await supervisor.wait() == 0
    assert any("all worker processes stopped" in line for line in supervisor.lines)
    for pid in alive:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # every child has exited
