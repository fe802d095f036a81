"""The operations commands, as a user runs them: real ``aqueue`` processes against worker
processes, on the transports that several processes can share (SQLite, Redis, and RabbitMQ with
Redis for results and control)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from tests.apps.ops_tasks import SHARED_TRANSPORTS, OpsTasks, build, env_of, run_aqueue, url_for
from tests.workerproc import WorkerProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

APP = "tests.apps.ops_tasks:app"


@pytest.fixture(params=[*SHARED_TRANSPORTS, "amqp"])
async def t(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpsTasks]:
    tasks = build(url_for(request.param, request, tmp_path), f"q-{uuid.uuid4().hex[:12]}")
    yield tasks
    await tasks.app.close()


def depth(t: OpsTasks, ready: int, delayed: int, dead: int = 0) -> dict[str, int | None]:
    """A queue's row in ``status --json``, as ``t``'s broker counts it (nothing unacked).

    RabbitMQ says nothing of unacked messages nor of a queue's own delayed ones (one delay chain
    for every queue), and counts consumers (none here): docs/amqp.md.
    """
    if (t.app.conf.broker_url or "").startswith("amqp"):
        return {"ready": ready, "delayed": None, "unacked": None, "dead": dead, "consumers": 0}
    return {"ready": ready, "delayed": delayed, "unacked": 0, "dead": dead, "consumers": None}


async def test_status_purge_and_the_dead_letter_queue(t: OpsTasks) -> None:
    queue = t.app.conf.task_default_queue
    for i in range(4):
        await t.add.delay(i, i)
    await t.add.apply_async((9, 9), countdown=600)
    code, out, err = await run_aqueue(t, "status", "-A", APP, "-Q", queue, "--json")
    assert code == 0, err
    status = orjson.loads(out)
    assert status["queues"] == [{"queue": queue, **depth(t, ready=4, delayed=1)}]
    code, out, _ = await run_aqueue(t, "status", "-A", APP, "-Q", queue)  # the table
    assert code == 0 and queue in out and "Workers:" in out

    # RabbitMQ: the delayed message waits in the shared delay chain, which a queue's purge
    # leaves alone (`aqueue purge -Q aqueue.delay.*` empties the chain).
    waiting = 4 if (t.app.conf.broker_url or "").startswith("amqp") else 5
    code, out, _ = await run_aqueue(t, "purge", "-A", APP, "-Q", queue, stdin=b"n\n")
    assert code == 1 and f"Purge {waiting} message(s) from" in out  # declined: nothing removed
    code, out, _ = await run_aqueue(t, "purge", "-A", APP, "-Q", queue, "-f")
    assert code == 0 and f"Purged {waiting} message(s) from 1 queue(s) ({queue})." in out
    code, out, _ = await run_aqueue(t, "purge", "-A", APP, "-Q", queue, "-f")
    assert f"No messages to purge in {queue}." in out

    bad = await t.app.send_task("ops.not_registered")
    async with WorkerProcess(APP, ["-c", "2"], env_of(t)) as w:
        with pytest.raises(Exception, match="not registered"):
            await bad.get(timeout=20)
        w.signal(signal.SIGTERM)  # a warm stop: it finishes moving the message to the DLQ
        assert await w.wait() == 0
    code, out, _ = await run_aqueue(t, "dlq", "list", "-A", APP, "--json")
    [letter] = orjson.loads(out)
    assert (letter["id"], letter["task"], letter["queue"]) == (bad.id, bad.task_name, queue)
    assert "unknown task" in letter["reason"]
    code, out, _ = await run_aqueue(t, "dlq", "replay", "-A", APP, "-f")
    assert code == 0 and "Replayed 1 dead letter(s)" in out
    code, out, _ = await run_aqueue(t, "status", "-A", APP, "-Q", queue, "--json")
    assert orjson.loads(out)["queues"][0] == {"queue": queue, **depth(t, ready=1, delayed=0)}


async def test_inspect_and_control_a_running_worker(t: OpsTasks, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    args = ["-c", "4", "-n", "cli@test"]
    async with WorkerProcess(APP, args, env_of(t)) as w:
        code, out, err = await run_aqueue(t, "control", "-A", APP, "ping")
        assert code == 0, err
        assert "cli@test" in out and "pong" in out
        code, out, _ = await run_aqueue(t, "status", "-A", APP, "--json")
        [me] = [s for s in orjson.loads(out)["workers"] if s["hostname"] == "cli@test"]
        assert w.proc is not None and me["pid"] == w.proc.pid
        assert (me["concurrency"], me["queues"]) == (4, [t.app.conf.task_default_queue])

        r = await t.block.delay(30, str(marks))
        await w.wait_for(f"ops.block[{r.id}] started")
        code, out, _ = await run_aqueue(t, "inspect", "active", "-A", APP, "--json")
        [active] = orjson.loads(out)["cli@test"]
        assert (active["id"], active["name"], active["args"]) == (
            r.id,
            "ops.block",
            [30, str(marks)],
        )
        code, out, _ = await run_aqueue(t, "inspect", "active", "-A", APP)  # the table
        assert r.id in out and "running" in out

        code, out, _ = await run_aqueue(t, "control", "-A", APP, "revoke", r.id, "--terminate")
        assert code == 0 and "flagged as revoked" in out
        await w.wait_for(f"ops.block[{r.id}] revoked: terminated")
        assert await r.state() == "REVOKED"
        assert list(marks.iterdir()) == []  # cancelled before its end

        code, out, _ = await run_aqueue(t, "control", "-A", APP, "rate_limit", "ops.add", "10/m")
        assert code == 0 and "new rate limit set successfully" in out
        code, out, _ = await run_aqueue(t, "inspect", "registered", "-A", APP, "--json")
        assert "ops.add [rate_limit=10/m]" in orjson.loads(out)["cli@test"]
        code, out, _ = await run_aqueue(t, "control", "-A", APP, "rate_limit", "ops.add", "0")
        assert code == 0

        code, _, err = await run_aqueue(t, "control", "-A", APP, "rate_limit", "ops.add")
        assert code == 2 and "usage" in err

        code, out, _ = await run_aqueue(t, "control", "-A", APP, "shutdown")
        assert code == 0 and "shutting down" in out
        assert await w.wait() == 0
    code, _, err = await run_aqueue(t, "inspect", "ping", "-A", APP, "-t", "0.3", "-d", "cli@test")
    assert code == 1 and "no worker replied within 0.3s" in err


async def test_call_wait_shows_progress_and_events_streams_json_lines(t: OpsTasks) -> None:
    async with WorkerProcess(APP, ["-c", "2", "-E"], env_of(t)):
        events = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "aqueue",
            "events",
            "-A",
            APP,
            "-n",
            "3",
            "--timeout",
            "30",
            env={**os.environ, **env_of(t)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert events.stderr is not None
        line = await asyncio.wait_for(events.stderr.readline(), 20)
        assert b"listening for events" in line
        # The countdown lets `call` subscribe before the first progress report.
        call = ["call", "-A", APP, "ops.progress", "--args", "[4, 0.05]", "--countdown", "0.5"]
        code, out, err = await run_aqueue(t, *call, "--wait", "--timeout", "20")
        assert code == 0, err
        assert out.strip() == '"done"'
        lines = err.splitlines()
        assert lines.index("progress: 1/4 (25%)") < lines.index("progress: 4/4 (100%)")
        assert lines[-1] == "state: SUCCESS"
        out_b, _ = await asyncio.wait_for(events.communicate(), 30)
    got = [orjson.loads(line) for line in out_b.decode().splitlines()]
    task_events = [e["type"] for e in got if e["type"].startswith("task-")]
    assert task_events == ["task-received", "task-started", "task-succeeded"][: len(task_events)]
    assert len(got) == 3
