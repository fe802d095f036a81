"""``aqueue worker --processes N`` under stress: a child that logs a very long line, a child
whose death is hidden by a process it started (which keeps its log pipe open), a child that
does not stop on SIGTERM. Real supervisor and worker processes on a SQLite broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aqueue import Aqueue
from tests.workerproc import WorkerProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

#: The workers' app, written to a temporary directory put on the children's ``PYTHONPATH``.
APP_SOURCE = textwrap.dedent(
    '''
    import asyncio, logging, os, subprocess, sys, time

    from aqueue import Aqueue

    if os.path.exists(os.environ["AQUEUE_AUDIT_BROKEN"]):  # a deploy that broke the code
        import audit_dependency_that_is_missing  # noqa: F401

    url = os.environ["AQUEUE_BROKER_URL"]
    app = Aqueue("audit", broker=url, backend=url,
                 task_default_queue=os.environ["AQUEUE_AUDIT_QUEUE"],
                 worker_shutdown_timeout=0.5)
    log = logging.getLogger("audit")


    @app.task(name="audit.shout")
    async def shout(size: int) -> int:
        log.warning("long line: %s", "x" * size)
        return os.getpid()


    HELPER = """
    import os, sys, time
    fifo = os.open(sys.argv[1], os.O_RDWR)  # (Linux) without waiting for a writer
    print("helper waiting", file=sys.stderr, flush=True)
    os.read(fifo, 1)  # until the test writes to the FIFO
    print("helper still here", file=sys.stderr, flush=True)
    time.sleep(60)
    """


    @app.task(name="audit.spawn")
    async def spawn(fifo: str) -> list[int]:
        """Start a process that inherits this worker's stderr and outlives it; it writes a line
        there once ``fifo`` is written to."""
        helper = subprocess.Popen([sys.executable, "-c", HELPER, fifo])
        return [os.getpid(), helper.pid]


    @app.task(name="audit.extra")
    async def extra() -> None:
        """Logs fields JSON cannot carry as they are: a dict of int keys, a 70-bit integer."""
        log.warning("counted", extra={"counts": {1: 2}, "big": 2**70})


    @app.task(name="audit.hog")
    async def hog(seconds: float) -> None:
        """Blocks the worker's event loop: its SIGTERM handler cannot run meanwhile."""
        log.warning("hogging the loop")
        time.sleep(seconds)
    '''
)


@dataclass
class Audit:
    app: Aqueue
    env: dict[str, str]
    broken: Path  # while this file exists, the app cannot be imported


class LongLines(WorkerProcess):
    """A :class:`WorkerProcess` that reads log lines of any length (the default stream limit
    is 64 KiB)."""

    async def __aenter__(self) -> LongLines:
        self.proc = await asyncio.create_subprocess_exec(
            *self.cmd,
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            cwd=os.getcwd(),
            limit=2**22,
        )
        self._reader = asyncio.create_task(self._read())
        if self.ready:
            await self.wait_for("supervisor ready", timeout=30)
        return self


@pytest.fixture
async def audit(tmp_path: Path) -> AsyncIterator[Audit]:
    (tmp_path / "audit_app.py").write_text(APP_SOURCE)
    url = f"sqlite:///{tmp_path}/audit.db"
    queue = f"q-{uuid.uuid4().hex[:12]}"
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    env = {"AQUEUE_BROKER_URL": url, "AQUEUE_AUDIT_QUEUE": queue, "PYTHONPATH": path,
           "AQUEUE_AUDIT_BROKEN": str(tmp_path / "broken")}  # fmt: skip
    app = Aqueue("producer", broker=url, backend=url, task_default_queue=queue)
    yield Audit(app, env, tmp_path / "broken")
    await app.close()


@contextlib.contextmanager
def killed_at_exit(pids: list[int]) -> Iterator[list[int]]:
    """Kill the processes in ``pids`` (filled by the block) when it ends."""
    try:
        yield pids
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_a_log_line_over_64_kib_is_relayed_and_the_supervisor_goes_on(
    audit: Audit,
) -> None:
    args = ["--processes", "2", "-c", "1"]
    async with LongLines("audit_app:app", args, audit.env) as supervisor:
        r = await audit.app.send_task("audit.shout", (200_000,))
        await r.get(timeout=20)
        # The long line reached the supervisor's stderr whole, and so did the next ones.
        await supervisor.wait_for(f"audit.shout[{r.id}] succeeded")
        assert any(line.endswith("x" * 200_000) for line in supervisor.lines)
        again = await audit.app.send_task("audit.shout", (10,))
        await again.get(timeout=20)
        supervisor.signal(signal.SIGTERM)
        assert await supervisor.wait() == 0
    assert any("all worker processes stopped" in line for line in supervisor.lines)


async def test_a_dead_child_is_replaced_though_its_own_child_holds_its_stderr(
    audit: Audit, tmp_path: Path
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with killed_at_exit([]) as leftovers:
        async with LongLines("audit_app:app", ["--processes", "2"], audit.env) as supervisor:
            r = await audit.app.send_task("audit.spawn", (str(fifo),))
            worker_pid, helper_pid = await r.get(timeout=20)
            leftovers.append(helper_pid)
            await supervisor.wait_for("helper waiting")
            os.kill(worker_pid, signal.SIGKILL)
            await supervisor.wait_for(f"(pid {worker_pid}) died (signal 9: SIGKILL)")
            await supervisor.wait_for("started again")
            # What the process it left behind writes is still relayed.
            go = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # the helper holds it open
            os.write(go, b"!")
            os.close(go)
            await supervisor.wait_for("helper still here")
            supervisor.signal(signal.SIGTERM)
            assert await supervisor.wait() == 0
        assert not gone(helper_pid)  # it held the pipe all along


async def test_a_child_that_does_not_stop_is_killed_and_the_exit_code_says_so(
    audit: Audit,
) -> None:
    args = ["--processes", "2", "-c", "1"]
    async with LongLines("audit_app:app", args, audit.env) as supervisor:
        children = [int(line.rsplit("pid ", 1)[1].rstrip(")")) for line in supervisor.lines
                    if "started (pid" in line]  # fmt: skip
        assert len(children) == 2
        await audit.app.send_task("audit.hog", (40.0,))
        await supervisor.wait_for("hogging the loop")
        supervisor.signal(signal.SIGTERM)
        # Killed worker_shutdown_timeout (0.5 s) + 10 s after the signal.
        await supervisor.wait_for("did not stop: killing it", timeout=20)
        code = await supervisor.wait(timeout=20)
    assert code == 1, "\n".join(supervisor.lines[-20:])
    assert any("not stop cleanly" in line for line in supervisor.lines[-5:])
    assert all(gone(pid) for pid in children)  # nothing left behind


async def test_a_child_that_cannot_start_again_stops_the_supervisor_with_its_code(
    audit: Audit,
) -> None:
    async with LongLines("audit_app:app", ["--processes", "2"], audit.env) as supervisor:
        r = await audit.app.send_task("audit.shout", (1,))
        victim = await r.get(timeout=20)
        audit.broken.touch()  # from now on, a new child fails to import the app
        os.kill(victim, signal.SIGKILL)
        await supervisor.wait_for(f"(pid {victim}) died (signal 9: SIGKILL)")
        line = await supervisor.wait_for("times in a row", timeout=40)
        code = await supervisor.wait(timeout=20)
        assert "failed to start 5 times in a row (last: exit code 2," in line
    assert code == 2
    assert "audit_dependency_that_is_missing" in "\n".join(supervisor.lines)
    # The other child had a warm shutdown.
    assert any("stopped (" in line and "tasks processed" in line for line in supervisor.lines)


async def test_json_log_lines_with_fields_json_cannot_carry_are_not_lost(audit: Audit) -> None:
    args = ["--processes", "2", "--log-format", "json"]
    async with LongLines("audit_app:app", args, audit.env) as supervisor:
        r = await audit.app.send_task("audit.extra")
        await r.get(timeout=20)
        found = await supervisor.wait_for('"message":"counted"')
        supervisor.signal(signal.SIGTERM)
        assert await supervisor.wait() == 0
    line = json.loads(found)
    assert line["task_id"] == r.id
    assert line["counts"] == {"1": 2} and line["big"] == str(2**70)
    assert not any("Logging error" in line for line in supervisor.lines)
