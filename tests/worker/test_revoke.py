"""Revoking tasks: delayed ones never run (also on a worker started later), running ones are
terminated, and the state is REVOKED - on every transport, and across real worker processes."""

from __future__ import annotations

import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aqueue import Worker
from aqueue.exceptions import TaskRevokedError
from aqueue.transports.base import queue_admin
from tests.apps.ops_tasks import (
    OPS_TRANSPORTS,
    SHARED_TRANSPORTS,
    EventLog,
    OpsTasks,
    build,
    env_of,
    url_for,
)
from tests.transport_choice import chosen_transports
from tests.workerproc import WorkerProcess

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0  # seconds a wait that should end at once may take


@pytest.fixture(params=OPS_TRANSPORTS)
async def t(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpsTasks]:
    tasks = build(url_for(request.param, request, tmp_path), f"q-{uuid.uuid4().hex[:12]}")
    yield tasks
    await tasks.app.close()


async def test_a_revoked_delayed_task_never_runs_even_on_a_worker_started_later(
    t: OpsTasks,
) -> None:
    async with Worker(t.app, hostname="a@revoke", shutdown_timeout=5):
        r = await t.record.apply_async(("late",), countdown=1.0)
        await r.revoke()
        assert await r.state() == "REVOKED"  # at once: waiters need not wait for the eta
        with pytest.raises(TaskRevokedError):
            await r.get(timeout=5)
    # The first worker is gone; one started now learns the revocation from the store, not
    # from a broadcast it never heard, and discards the message when its eta comes.
    async with (
        EventLog(t.app) as log,
        Worker(t.app, hostname="b@revoke", send_events=True, shutdown_timeout=5) as later,
    ):
        assert r.id in later.revocations
        event = await log.wait(type="task-revoked", uuid=r.id)
        assert event["hostname"] == "b@revoke" and event["reason"] == "revoked"
        assert await t.record.delay("after") is not None  # the worker goes on
        await log.wait(type="task-succeeded", name="ops.record")
    assert r.id not in dict(t.starts)
    assert await r.state() == "REVOKED"
    [depth] = await queue_admin(await t.app.broker()).queue_depths([t.app.conf.task_default_queue])
    assert depth.waiting == depth.unacked == 0  # consumed, not left waiting


async def test_revoking_with_no_worker_running_holds_for_the_next_one(t: OpsTasks) -> None:
    r = await t.record.delay("never")
    await t.app.control.revoke(r.id)
    async with (
        EventLog(t.app) as log,
        Worker(t.app, hostname="a@revoke", send_events=True, shutdown_timeout=5),
    ):
        await log.wait(type="task-revoked", uuid=r.id)
        revoked = await t.app.control.inspect().revoked()
        assert r.id in revoked["a@revoke"]
    assert r.id not in dict(t.starts)


async def test_terminate_cancels_a_running_task_and_its_state_is_revoked(t: OpsTasks) -> None:
    async with (
        EventLog(t.app) as log,
        Worker(t.app, hostname="a@revoke", send_events=True, shutdown_timeout=5),
    ):
        r = await t.block.delay(30)
        await log.wait(type="task-started", uuid=r.id)
        active = await t.app.control.inspect().active()
        assert [(a["id"], a["name"]) for a in active["a@revoke"]] == [(r.id, "ops.block")]
        await r.revoke(terminate=True)
        event = await log.wait(type="task-revoked", uuid=r.id)
        assert event["terminated"] is True
        assert r.id in t.cancelled and r.id not in t.finished  # cancelled, not run to the end
        assert await r.state() == "REVOKED"
        info = await r.info()
        assert "terminated" in str(info.result)
        with pytest.raises(TaskRevokedError):
            await r.get(timeout=5)
        assert (await t.app.control.inspect().active())["a@revoke"] == []
        assert await (await t.add.delay(1, 1)).get(timeout=10) == 2  # the runner is free again


async def test_terminate_of_a_thread_task_revokes_it_at_once(t: OpsTasks) -> None:
    # Python cannot stop a thread: the worker stops waiting and records REVOKED now; the
    # thread runs to its end in the background and its result is discarded.
    async with (
        EventLog(t.app) as log,
        Worker(t.app, hostname="a@revoke", send_events=True, shutdown_timeout=5),
    ):
        r = await t.block_sync.delay(1.0)
        await log.wait(type="task-started", uuid=r.id)
        await r.revoke(terminate=True)
        event = await log.wait(type="task-revoked", uuid=r.id)
        assert event["terminated"] is True
        assert r.id not in t.finished
        assert await r.state() == "REVOKED"


# -- across real worker processes ----------------------------------------------------------------


@pytest.fixture(params=SHARED_TRANSPORTS)
async def shared(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpsTasks]:
    tasks = build(url_for(request.param, request, tmp_path), f"q-{uuid.uuid4().hex[:12]}")
    yield tasks
    await tasks.app.close()


# Transports one process's apps share (not memory://), and in `make test-cluster` the one named.
@pytest.mark.parametrize("t", chosen_transports(SHARED_TRANSPORTS), indirect=True)
async def test_a_revoke_from_another_client_reaches_the_senders_own_handle_at_once(
    t: OpsTasks,
) -> None:
    """The handle ``apply_async`` returned waits on its client's reply channel (Redis), not on
    the task's: a revocation made by another client must reach it too, not an hour later when
    a worker meets the message."""
    r = await t.record.apply_async(("late",), countdown=3600)
    other = build(t.app.conf.broker_url or "", t.app.conf.task_default_queue)
    try:
        await other.app.control.revoke(r.id)
    finally:
        await other.app.close()
    with pytest.raises(TaskRevokedError):
        await r.get(timeout=WAIT)  # no worker runs: only the revocation can end this wait


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_a_restarted_worker_process_honours_a_revoke_made_before(
    shared: OpsTasks, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    env = env_of(shared)
    async with WorkerProcess("tests.apps.ops_tasks:app", ["-c", "2"], env) as first:
        r = await shared.block.apply_async((0.0, str(marks)), countdown=1.5)
        kept = await shared.block.apply_async((0.0, str(marks)), countdown=1.5)
        await r.revoke()
        first.signal(signal.SIGTERM)
        assert await first.wait() == 0
    async with WorkerProcess("tests.apps.ops_tasks:app", ["-c", "2"], env) as second:
        await second.wait_for(f"ops.block[{r.id}] revoked: revoked")
        assert await kept.get(timeout=20) == "finished"
    assert [p.name for p in marks.iterdir()] == [kept.id]  # the revoked one never ran
    assert await r.state() == "REVOKED"
