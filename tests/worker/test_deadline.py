"""Slow and stuck tasks: a run past its soft deadline is reported (log line, ``task-slow`` event,
``task_slow`` signal) and not stopped; ``inspect active`` shows run times; a worker that stops
heartbeating without shutting down shows as lost in ``status``."""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aqueue import Aqueue, Worker, signals
from aqueue.cli.ops import _running
from aqueue.control.queues import cluster_status
from tests.apps.ops_tasks import (
    OPS_TRANSPORTS,
    SHARED_TRANSPORTS,
    EventLog,
    build,
    env_of,
    run_aqueue,
    url_for,
)
from tests.conftest import until
from tests.workerproc import WorkerProcess

pytestmark = pytest.mark.timeout(60)

RELEASE: dict[str, asyncio.Event] = {}  # per test: lets the slow tasks finish


def slow_app(url: str, queue: str, key: str) -> Aqueue:
    app = Aqueue("slow", broker=url, backend=url, task_default_queue=queue)

    @app.task(name="slow.stuck", soft_deadline=0.2)
    async def stuck() -> str:
        await RELEASE[key].wait()
        return "finished"

    @app.task(name="slow.patient", soft_deadline=60)
    async def patient() -> str:
        await RELEASE[key].wait()
        return "finished"

    @app.task(name="slow.plain")
    async def plain() -> str:
        await RELEASE[key].wait()
        return "finished"

    return app


@pytest.fixture(params=OPS_TRANSPORTS)
async def app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Aqueue]:
    key = uuid.uuid4().hex
    RELEASE[key] = asyncio.Event()
    a = slow_app(url_for(request.param, request, tmp_path), f"q-{key}", key)
    yield a
    await a.close()


def release(app: Aqueue) -> None:
    """Let the slow tasks of ``app`` finish (its queue is named after its key)."""
    RELEASE[app.conf.task_default_queue.removeprefix("q-")].set()


@pytest.mark.usefixtures("clean_signals")
async def test_a_run_past_its_soft_deadline_is_reported_once_and_runs_on(
    app: Aqueue, caplog: pytest.LogCaptureFixture
) -> None:
    app.conf.task_soft_deadline = 0.3  # the default, for slow.plain
    reported: list[dict[str, Any]] = []
    seen = asyncio.Event()

    @signals.task_slow.connect
    def on_slow(sender: Any, **named: Any) -> None:
        reported.append({"sender": sender, **named})
        if len(reported) == 2:
            seen.set()

    caplog.set_level(logging.WARNING, logger="aqueue.worker")
    host = f"slow-{uuid.uuid4().hex[:6]}@test"
    async with (
        EventLog(app) as log,
        Worker(app, hostname=host, send_events=True, shutdown_timeout=5),
    ):
        stuck = await app.tasks["slow.stuck"].delay()
        patient = await app.tasks["slow.patient"].delay()
        plain = await app.tasks["slow.plain"].delay()
        event = await log.wait(type="task-slow", uuid=stuck.id)
        assert event["deadline"] == 0.2 and event["runtime"] > 0.2
        assert event["name"] == "slow.stuck" and event["hostname"] == host
        await asyncio.wait_for(seen.wait(), 10)
        by_id = {r["task_id"]: r for r in reported}
        assert set(by_id) == {stuck.id, plain.id}  # not patient: its deadline is 60 s
        assert by_id[plain.id]["deadline"] == 0.3 and by_id[plain.id]["runtime"] > 0.3
        assert by_id[stuck.id]["sender"] is app.tasks["slow.stuck"]
        assert by_id[stuck.id]["request"].id == stuck.id
        assert f"slow.stuck[{stuck.id}] has been running for" in caplog.text
        assert "past its soft deadline of 0.2s" in caplog.text

        active = (await app.control.inspect(destination=[host]).active())[host]
        runtimes = {a["id"]: (a["runtime"], a["soft_deadline"]) for a in active}
        assert set(runtimes) == {stuck.id, patient.id, plain.id}
        assert runtimes[stuck.id][0] > 0.2 and runtimes[stuck.id][1] == 0.2
        assert runtimes[patient.id][1] == 60

        release(app)
        for r in (stuck, patient, plain):
            assert await r.get(timeout=10) == "finished"  # reported, never stopped
    assert len(reported) == 2  # once per run
    slow_events = [e for e in log.events if e["type"] == "task-slow"]
    assert sorted(e["uuid"] for e in slow_events) == sorted([stuck.id, plain.id])


@pytest.fixture(params=SHARED_TRANSPORTS)
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return url_for(request.param, request, tmp_path)


@pytest.mark.timeout(90)
async def test_a_killed_worker_shows_as_lost_in_status(shared_url: str) -> None:
    queue = f"q-{uuid.uuid4().hex[:12]}"
    t = build(shared_url, queue)
    env = env_of(t)
    try:
        host = f"doomed-{uuid.uuid4().hex[:6]}@test"
        async with WorkerProcess("tests.apps.ops_tasks:app", ["-n", host], env) as proc:

            async def live() -> bool:
                return host in {w.hostname for w in (await cluster_status(t.app)).workers}

            await until(live, 20, "the worker's first heartbeat")
            proc.signal(signal.SIGKILL)
            await proc.wait()

            async def lost() -> bool:
                status = await cluster_status(t.app, [queue])
                return host in {w.hostname for w in status.lost} and not await live()

            await until(lost, 30, "the killed worker shown as lost")
        status = await cluster_status(t.app, [queue])
        [gone] = [w for w in status.lost if w.hostname == host]
        assert gone.last_seen > 2.0  # missed its heartbeats
        assert host in {w["hostname"] for w in status.as_dict()["lost"]}
        code, out, err = await run_aqueue(
            t, "status", "-A", "tests.apps.ops_tasks:app", "-Q", queue
        )
        assert code == 0, err
        assert "lost (no heartbeat, not shut down)" in out and host in out
    finally:
        await t.app.close()


async def test_a_worker_that_shuts_down_is_not_lost(app: Aqueue) -> None:
    host = f"clean-{uuid.uuid4().hex[:6]}@test"
    async with Worker(app, hostname=host, shutdown_timeout=5):
        assert host in {w.hostname for w in (await cluster_status(app)).workers}
    status = await cluster_status(app)
    assert host not in {w.hostname for w in status.workers}
    assert host not in {w.hostname for w in status.lost}


def test_inspect_active_shows_the_run_time_and_a_passed_deadline() -> None:
    assert _running({"runtime": 42.0, "soft_deadline": 30}) == (
        "running 42.0s, past its soft deadline of 30s"
    )
    assert _running({"runtime": 75.5, "soft_deadline": None}) == "running 1m 15s"
