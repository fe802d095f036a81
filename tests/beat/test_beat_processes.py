"""Beat in real processes: three beats on one Redis (one killed midway), ``worker -B``, the CLI.

This module is also the app those processes load (``-A tests.beat.test_beat_processes:app``),
configured by environment variables so each test gets its own namespace and queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import re
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aqueue import Aqueue
from aqueue.beat.entry import tick_task_id
from aqueue.cli import cli
from aqueue.message import decode
from tests.workerproc import WorkerProcess

APP = "tests.beat.test_beat_processes:app"
_QUEUE = "AQUEUE_BEAT_TEST_QUEUE"

app = Aqueue(os.environ.get("AQUEUE_BEAT_TEST_APP", "beat-test"))
if _QUEUE in os.environ:
    app.conf.task_default_queue = os.environ[_QUEUE]
    app.conf.beat_schedule = {"each-second": {"task": "beat_test.noop", "schedule": 1.0}}


@app.task(name="beat_test.noop")
async def noop() -> str:
    return "ok"


pytestmark = pytest.mark.slow

_SENT = re.compile(
    r"beat: sent '(?P<entry>[^']+)' \((?P<task>[^)]+)\) for tick (?P<tick>\S+), task id (?P<id>\S+)"
)


def sends(lines: Sequence[str]) -> list[tuple[str, float, str]]:
    """(entry, tick in epoch seconds, task id) of every send logged in ``lines``."""
    out = []
    for line in lines:
        m = _SENT.search(line)
        if m:
            tick = datetime.fromisoformat(m["tick"]).timestamp()
            out.append((m["entry"], tick, m["id"]))
    return out


def each_tick_once(
    beats: Sequence[WorkerProcess],
) -> tuple[list[tuple[str, float, str]], list[float]]:
    """The sends the beats logged, and their ticks in order, asserting that no tick was sent
    twice and that none is missing between the first and the last (an entry every second)."""
    records = [r for b in beats for r in sends(b.lines)]
    ticks = sorted(tick for _, tick, _ in records)
    duplicates = [t for t, n in Counter(ticks).items() if n > 1]
    assert duplicates == [], f"ticks sent twice: {duplicates}"
    gaps = [(a, b) for a, b in itertools.pairwise(ticks) if b - a != 1.0]
    assert gaps == [], f"ticks missing between {gaps}"
    return records, ticks


class BeatProcess(WorkerProcess):
    """``python -m aqueue beat -A <app>``, its log collected; entering waits until it started."""

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__(APP, (), env)
        self.cmd = [sys.executable, "-m", "aqueue", "beat", "-A", APP, "-l", "info"]

    async def __aenter__(self) -> BeatProcess:
        self.proc = await asyncio.create_subprocess_exec(
            *self.cmd,
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        await self.wait_for("beat started", timeout=20)
        return self

    async def wait_sent(self, more_than: int) -> None:
        """Wait until this process has logged more than ``more_than`` sends."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(sends(self.lines)) > more_than)


def beat_env(url: str, backend: str | None = None) -> dict[str, str]:
    return {
        "AQUEUE_BROKER_URL": url,
        "AQUEUE_RESULT_BACKEND": backend or url,
        "AQUEUE_BEAT_TEST_APP": f"beat-{uuid.uuid4().hex[:8]}",
        _QUEUE: f"q-{uuid.uuid4().hex[:8]}",
    }


@contextlib.asynccontextmanager
async def beat_processes(env: dict[str, str], n: int = 3) -> AsyncIterator[list[BeatProcess]]:
    """``n`` beats on ``env``, started together; on exit, any still running is killed."""
    beats = [BeatProcess(env) for _ in range(n)]
    try:
        await asyncio.gather(*(b.__aenter__() for b in beats))
        yield beats
    finally:
        for b in beats:
            await b.__aexit__(None, None, None)


async def stop_beats(beats: Sequence[BeatProcess]) -> list[int]:
    """SIGTERM every one of ``beats``; their exit statuses, once each has exited."""
    for b in beats:
        b.signal(signal.SIGTERM)
    return [await b.wait() for b in beats]


async def drain(url: str, queue: str) -> list[str]:
    """Take every message off ``queue``; their task ids."""
    reader = Aqueue("drain", broker=url, backend=url)
    try:
        broker = await reader.broker()
        ids: list[str] = []
        while deliveries := await broker.fetch([queue], 100, 0.2):
            await broker.ack(deliveries)
            ids.extend(decode(d.body).id for d in deliveries)
        return ids
    finally:
        await reader.close()


async def first_to_send(beats: Sequence[BeatProcess]) -> BeatProcess:
    """The first of ``beats`` to log a new send from now on."""
    waiters = {asyncio.create_task(b.wait_sent(len(sends(b.lines)))): b for b in beats}
    done, pending = await asyncio.wait(waiters, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    assert done, "no beat sent anything for 10 s"
    return waiters[done.pop()]


@pytest.mark.timeout(60)
async def test_three_beats_send_each_tick_once_even_when_one_is_killed(redis_server: str) -> None:
    url = f"{redis_server}/0"
    env = beat_env(url)
    async with beat_processes(env) as beats:
        all_ready = time.time()
        await asyncio.sleep(2.5)  # the span measured, not a synchronisation
        # Killed just after it sent a tick: the next ticks are the others' to send.
        victim = await first_to_send(beats)
        victim.signal(signal.SIGKILL)
        assert await victim.wait() == -signal.SIGKILL
        killed = time.time()
        await asyncio.sleep(2.5)
        survivors = [b for b in beats if b is not victim]
        stopping = time.time()
        assert await stop_beats(survivors) == [0, 0]

    records, ticks = each_tick_once(beats)
    assert ticks[0] <= math.ceil(all_ready)  # from the start...
    assert ticks[-1] >= stopping - 2.0  # ...to the end, across the kill:
    assert len([t for t in ticks if t > killed]) >= 2
    assert len(ticks) >= 5
    for entry, tick, task_id in records:
        assert task_id == tick_task_id(entry, tick)
    # Each tick is one message on the queue, nothing more.
    assert sorted(await drain(url, env[_QUEUE])) == sorted(r[2] for r in records)


@pytest.mark.timeout(60)
async def test_worker_dash_b_runs_beat_in_the_worker(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/aqueue.db"
    env = beat_env(url)
    queue = env[_QUEUE]
    async with WorkerProcess(APP, ["-B", "-Q", queue, "-c", "2"], env) as worker:
        line = await worker.wait_for("beat: sent 'each-second'", timeout=10)
        [(_, _, task_id)] = sends([line])
        await worker.wait_for(f"beat_test.noop[{task_id}] succeeded", timeout=10)
        started = [i for i, line in enumerate(worker.lines) if "beat started" in line]
        ready = [i for i, line in enumerate(worker.lines) if "ready" in line]
        assert len(started) == 1 and len(ready) == 1  # "ready" is still the worker's alone
        worker.signal(signal.SIGTERM)
        assert await worker.wait() == 0
    assert any("beat stopped" in line for line in worker.lines)


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aqueue",
        "beat",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.timeout(60)
async def test_cli_adds_an_entry_that_a_running_beat_sends_then_removes_it(
    redis_server: str,
) -> None:
    env = beat_env(f"{redis_server}/0")
    async with BeatProcess(env) as beat:
        code, out, err = await run_cli(
            "-A", APP, "add", "often", "--task", "beat_test.noop", "--every", "0.5", env=env
        )
        assert (code, out.strip()) == (0, "added often: beat_test.noop every 0.5s"), err
        await beat.wait_for("beat: sent 'often'", timeout=10)  # no restart needed
        code, out, err = await run_cli("list", "-A", APP, env=env)
        assert code == 0, err
        rows = {line.split("\t")[0]: line.split("\t") for line in out.splitlines()}
        assert rows["often"][1:4] == ["beat_test.noop", "every 0.5s", "stored"]
        assert rows["often"][4].startswith("last 20")  # a time: it ran
        assert rows["each-second"][2:4] == ["every 1s", "code"]
        code, out, err = await run_cli("remove", "-A", APP, "often", env=env)
        assert (code, out.strip()) == (0, "removed often"), err


# The beat CLI in this process, on the memory transport (the store is per app and process).
memory_app = Aqueue("beat-cli", broker="memory://")
memory_app.conf.beat_schedule = {"in-code": {"task": "beat_test.noop", "schedule": 60}}


def test_cli_commands_and_their_errors() -> None:
    runner = CliRunner()
    spec = "tests.beat.test_beat_processes:memory_app"

    def beat(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(cli, ["beat", *args])
        return result.exit_code, result.stdout, result.stderr

    assert (
        beat("add", "-A", spec, "nightly", "-t", "beat_test.noop", "--cron", "30 2 * * *")[0] == 0
    )
    assert beat("-A", spec, "add", "often", "-t", "beat_test.noop", "--every", "5")[0] == 0
    code, out, _ = beat("list", "-A", spec)
    assert code == 0
    rows = [line.split("\t") for line in out.splitlines()]
    assert [r[:4] for r in rows] == [
        ["in-code", "beat_test.noop", "every 60s", "code"],
        ["nightly", "beat_test.noop", "cron '30 2 * * *'", "stored"],
        ["often", "beat_test.noop", "every 5s", "stored"],
    ]
    assert [r[4] for r in rows] == ["last never"] * 3
    assert beat("remove", "-A", spec, "often")[:2] == (0, "removed often\n")
    code, _, err = beat("remove", "-A", spec, "often")
    assert code == 1 and "no stored entry" in err
    code, _, err = beat("remove", "-A", spec, "in-code")
    assert code == 2 and "beat_schedule" in err
    code, _, err = beat("add", "-A", spec, "x", "-t", "beat_test.noop")
    assert code == 2 and "--every" in err
    code, _, err = beat("add", "-A", spec, "x", "-t", "beat_test.noop", "--cron", "61 * * * *")
    assert code == 2 and "minute" in err
    code, _, err = beat("add", "-A", spec, "x", "-t", "t", "--every", "1", "--args", "{")
    assert code == 2 and "--args must be JSON" in err
    code, _, err = beat("list")
    assert code == 2 and "-A/--app is required" in err
