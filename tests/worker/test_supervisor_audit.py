"""``aqueue worker --processes N`` under stress: a child that logs a very long line, a child
whose death is hidden by a process it started (which keeps its log pipe open), a child that
does not stop on SIGTERM. Real supervisor and worker processes on a SQLite broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import textwrap
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aqueue import Aqueue
from aqueue.worker.supervisor import MAX_FAILED_STARTS, RECYCLE_EXIT
from tests.net import free_port
from tests.workerproc import WorkerProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

#: The workers' app, written to a temporary directory put on the children's ``PYTHONPATH``.
APP_SOURCE = textwrap.dedent(
    '''
    import asyncio, logging, os, subprocess, sys, time

    from aqueue import Aqueue

    if os.path.exists(os.environ["AQUEUE_AUDIT_BROKEN"]):  # a deploy that broke the code
        import audit_dependency_that_is_missing  # noqa: F401
    if os.environ.get("AQUEUE_AUDIT_EXIT_AT_IMPORT"):  # e.g. EX_TEMPFAIL, a recycled child's
        sys.exit(int(os.environ["AQUEUE_AUDIT_EXIT_AT_IMPORT"]))

    if os.environ.get("AQUEUE_AUDIT_OWN_LOGGING"):  # the app logs to a file of its own
        from aqueue import signals

        @signals.setup_logging.connect
        def to_file(**_: object) -> None:
            logging.basicConfig(filename=os.environ["AQUEUE_AUDIT_OWN_LOGGING"],
                                level=logging.INFO, force=True)

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


#: A supervisor of ``audit_app:app`` whose process starts fail with EAGAIN (as fork does when
#: RLIMIT_NPROC is reached) from start number ``AQUEUE_AUDIT_FAIL_FROM`` (1-based, over all
#: children) to ``AQUEUE_AUDIT_FAIL_TO``; a death within ``AQUEUE_AUDIT_QUICK_DEATH`` seconds
#: of a start counts as quick; with ``AQUEUE_AUDIT_PORT``, its readiness is served there; the
#: log pipe of the ``AQUEUE_AUDIT_PIPE_FAILS``-th process started cannot be read. It runs
#: ``AQUEUE_AUDIT_PROCESSES`` children (2).
FLAKY_SUPERVISOR = textwrap.dedent(
    """
    import asyncio, errno, logging, os, sys

    from aqueue.worker import supervisor
    from aqueue.worker.supervisor import Supervisor

    first = int(os.environ["AQUEUE_AUDIT_FAIL_FROM"])
    last = int(os.environ["AQUEUE_AUDIT_FAIL_TO"])
    real = asyncio.create_subprocess_exec
    starts = 0


    async def flaky(*args, **kwargs):
        global starts, latest
        starts += 1
        if first <= starts <= last:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        latest = await real(*args, **kwargs)  # its pipe is connected next, at once
        return latest


    asyncio.create_subprocess_exec = flaky
    pipe_fails = int(os.environ.get("AQUEUE_AUDIT_PIPE_FAILS", "0"))
    pipes = 0
    loop_class = asyncio.get_event_loop_policy()._loop_factory
    connect_read_pipe = loop_class.connect_read_pipe


    async def broken_pipe(self, *args, **kwargs):
        global pipes
        pipes += 1
        if pipes == pipe_fails:  # the process is started, its log cannot be read
            print(f"pipe fails for pid {latest.pid}", file=sys.stderr, flush=True)
            raise OSError(errno.ENOSPC, "No space left on device")
        return await connect_read_pipe(self, *args, **kwargs)


    loop_class.connect_read_pipe = broken_pipe
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    supervisor._QUICK_DEATH = float(os.environ.get("AQUEUE_AUDIT_QUICK_DEATH", "5"))
    processes = int(os.environ.get("AQUEUE_AUDIT_PROCESSES", "2"))
    it = Supervisor("audit_app:app", processes, ["-l", "info"], shutdown_timeout=0.5)
    if os.environ.get("AQUEUE_AUDIT_ON_EXIT_FAILS"):  # a metrics file a tmp cleaner removed


        def on_exit(pid):
            raise FileNotFoundError(f"gauge_livesum_{pid}.db")


        it.on_exit = on_exit
    if os.environ.get("AQUEUE_AUDIT_PORT"):
        from aqueue.contrib.prometheus import serve

        serve(int(os.environ["AQUEUE_AUDIT_PORT"]), "127.0.0.1", ready=it.ready)
    sys.exit(it.run())
    """
)


def flaky_supervisor(
    audit: Audit,
    tmp_path: Path,
    fail: tuple[int, int],
    ready: bool = True,
    env: dict[str, str] | None = None,
) -> LongLines:
    """The supervisor of :data:`FLAKY_SUPERVISOR`, failing starts ``fail[0]`` to ``fail[1]``,
    with ``env`` added to its environment."""
    driver = tmp_path / "flaky_supervisor.py"
    driver.write_text(FLAKY_SUPERVISOR)
    env = {**audit.env, "AQUEUE_AUDIT_FAIL_FROM": str(fail[0]),
           "AQUEUE_AUDIT_FAIL_TO": str(fail[1]), **(env or {})}  # fmt: skip
    supervisor = LongLines("audit_app:app", env=env, ready=ready)
    supervisor.cmd = [sys.executable, str(driver)]
    return supervisor


async def test_a_start_that_fails_with_an_os_error_is_retried_and_others_keep_running(
    audit: Audit, tmp_path: Path
) -> None:
    # Starts 1 and 2 are the two children; 3 and 4 (replacing a killed child) fail.
    async with flaky_supervisor(audit, tmp_path, (3, 4)) as supervisor:
        r = await audit.app.send_task("audit.shout", (1,))
        victim = await r.get(timeout=20)
        children = [int(line.rsplit("pid ", 1)[1].rstrip(")")) for line in supervisor.lines
                    if "started (pid" in line]  # fmt: skip
        [survivor] = set(children) - {victim}
        os.kill(victim, signal.SIGKILL)
        await supervisor.wait_for(f"(pid {victim}) died (signal 9: SIGKILL)")
        line = await supervisor.wait_for("could not be started")
        assert "Resource temporarily unavailable" in line
        await supervisor.wait_for("started again", timeout=20)  # the third try
        assert len([x for x in supervisor.lines if "could not be started" in x]) == 2
        again = await audit.app.send_task("audit.shout", (1,))
        await again.get(timeout=20)
        assert not gone(survivor)  # untouched all along
        assert sum("started (pid" in x for x in supervisor.lines) == 2  # never restarted
        supervisor.signal(signal.SIGTERM)
        assert await supervisor.wait() == 0, "\n".join(supervisor.lines[-20:])
    assert gone(survivor)


async def test_a_failing_exit_hook_is_logged_and_the_child_started_again(
    audit: Audit, tmp_path: Path
) -> None:
    # The hook told of a child's exit (the metrics' mark_process_dead) raises: the supervisor
    # logs it and goes on replacing the child, instead of ending with it.
    env = {"AQUEUE_AUDIT_ON_EXIT_FAILS": "1"}
    async with flaky_supervisor(audit, tmp_path, (0, 0), env=env) as supervisor:
        r = await audit.app.send_task("audit.shout", (1,))
        victim = await r.get(timeout=20)
        os.kill(victim, signal.SIGKILL)
        await supervisor.wait_for(f"(pid {victim}) died (signal 9: SIGKILL)")
        await supervisor.wait_for("started again", timeout=20)
        again = await audit.app.send_task("audit.shout", (1,))
        await again.get(timeout=20)
        supervisor.signal(signal.SIGTERM)
        assert await supervisor.wait() == 0, "\n".join(supervisor.lines[-20:])
    assert any("gauge_livesum" in line for line in supervisor.lines)


async def test_a_child_that_can_never_be_started_stops_the_supervisor_cleanly(
    audit: Audit, tmp_path: Path
) -> None:
    # Child 2 is never started: its start fails MAX_FAILED_STARTS times in a row.
    starts = (2, 2 + MAX_FAILED_STARTS - 1)
    async with flaky_supervisor(audit, tmp_path, starts, ready=False) as supervisor:
        code = await supervisor.wait(timeout=40)
    text = "\n".join(supervisor.lines)
    assert code == 1, text
    assert f"failed to start {MAX_FAILED_STARTS} times in a row" in text
    assert "Traceback" not in text
    # The child that did start had its warm shutdown.
    assert any("stopped (" in line and "tasks processed" in line for line in supervisor.lines)


def http_status(url: str) -> int:
    """The status code of a GET of ``url``."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_healthz_answers_503_while_a_child_is_down(audit: Audit) -> None:
    port = free_port()
    healthz = f"http://127.0.0.1:{port}/healthz"
    args = ["--processes", "2", "--metrics-port", str(port), "--metrics-address", "127.0.0.1"]
    async with LongLines("audit_app:app", args, audit.env) as supervisor:
        assert await asyncio.to_thread(http_status, healthz) == 200  # all children are up
        r = await audit.app.send_task("audit.shout", (1,))
        victim = await r.get(timeout=20)
        audit.broken.touch()  # its replacements cannot start: it stays down
        os.kill(victim, signal.SIGKILL)
        await supervisor.wait_for(f"(pid {victim}) died (signal 9: SIGKILL)")
        assert await asyncio.to_thread(http_status, healthz) == 503
        await supervisor.wait_for("died (exit code 2)", timeout=20)
        assert await asyncio.to_thread(http_status, healthz) == 503
        supervisor.signal(signal.SIGTERM)  # (not waiting for it to give up: seconds of pauses)
        await supervisor.wait(timeout=30)


async def test_healthz_answers_503_while_the_supervisor_stops(audit: Audit) -> None:
    port = free_port()
    healthz = f"http://127.0.0.1:{port}/healthz"
    args = ["--processes", "2", "-c", "1", "--metrics-port", str(port),
            "--metrics-address", "127.0.0.1"]  # fmt: skip
    async with LongLines("audit_app:app", args, audit.env) as supervisor:
        assert await asyncio.to_thread(http_status, healthz) == 200
        await audit.app.send_task("audit.hog", (40.0,))
        await supervisor.wait_for("hogging the loop")
        supervisor.signal(signal.SIGTERM)
        await supervisor.wait_for("SIGTERM received: warm shutdown")
        # The hogging child holds the shutdown up for 0.5 + 10 s: the server still answers.
        assert await asyncio.to_thread(http_status, healthz) == 503
        assert await supervisor.wait(timeout=30) == 1


async def test_readyz_answers_503_while_a_dead_child_waits_to_be_started_again(
    audit: Audit, tmp_path: Path
) -> None:
    port = free_port()
    readyz = f"http://127.0.0.1:{port}/readyz"
    # Every death counts as quick: the second in a row is followed by a pause of 1 s.
    env = {"AQUEUE_AUDIT_QUICK_DEATH": "600", "AQUEUE_AUDIT_PORT": str(port)}
    async with flaky_supervisor(audit, tmp_path, (0, 0), env=env) as supervisor:
        [first] = [line for line in supervisor.lines if "worker process 1 started (pid" in line]
        pid = int(first.rsplit("pid ", 1)[1].rstrip(")"))
        for restart in (1, 2):
            os.kill(pid, signal.SIGKILL)
            found = await supervisor.wait_for(f"(pid {pid}) died (signal 9: SIGKILL)")
            assert found.endswith("starting another in 0s" if restart == 1 else "in 1s")
            if restart == 2:
                # Down until then: not ready (the child's own ready line is long gone).
                assert await asyncio.to_thread(http_status, readyz) == 503
            line = await supervisor.wait_for(f"restart {restart})", timeout=20)
            pid = int(line.split("(pid ", 1)[1].split(",", 1)[0])
            await supervisor.wait_for(f"), pid {pid};", timeout=20)  # its ready line
            assert await asyncio.to_thread(http_status, readyz) == 200
        supervisor.signal(signal.SIGTERM)
        assert await supervisor.wait() == 0


async def test_a_child_whose_log_cannot_be_read_is_stopped_and_started_again(
    audit: Audit, tmp_path: Path
) -> None:
    env = {"AQUEUE_AUDIT_PIPE_FAILS": "2"}
    async with flaky_supervisor(audit, tmp_path, (0, 0), env=env) as supervisor:
        line = await supervisor.wait_for("pipe fails for pid")
        orphan = int(line.rsplit(" ", 1)[1])
        await supervisor.wait_for("could not be started ([Errno 28] No space left on device)")
        # Not left running unwatched (a second worker of the same name), nor a zombie.
        assert gone(orphan)
        supervisor.signal(signal.SIGTERM)
        assert await supervisor.wait() == 0
    assert sum("started (pid" in x for x in supervisor.lines) == 2


async def test_a_child_that_logs_elsewhere_is_ready_and_its_deaths_are_not_failed_starts(
    audit: Audit, tmp_path: Path
) -> None:
    """The app's logging (``setup_logging``) writes to a file: the children's ready lines never
    reach the supervisor, yet it knows they are ready."""
    env = {"AQUEUE_AUDIT_OWN_LOGGING": str(tmp_path / "app.log"), "AQUEUE_AUDIT_PROCESSES": "1",
           "AQUEUE_AUDIT_QUICK_DEATH": "0"}  # fmt: skip
    async with flaky_supervisor(audit, tmp_path, (0, 0), ready=False, env=env) as supervisor:
        await supervisor.wait_for("supervisor ready", timeout=20)
        pid = 0
        for restart in range(1, MAX_FAILED_STARTS + 1):
            r = await audit.app.send_task("audit.shout", (1,))
            served = await r.get(timeout=20)
            assert served != pid  # a new child, which started and ran a task
            pid = served
            os.kill(pid, signal.SIGKILL)
            await supervisor.wait_for(f"(pid {pid}) died (signal 9: SIGKILL)")
            # Not taken for a child that cannot start: started again every time.
            await supervisor.wait_for(f"restart {restart})", timeout=20)
        r = await audit.app.send_task("audit.shout", (1,))
        assert await r.get(timeout=20) != pid
        supervisor.signal(signal.SIGTERM)
        assert await supervisor.wait() == 0
    assert "ready: consuming" in (tmp_path / "app.log").read_text()  # where it went


async def test_a_child_exiting_with_the_recycle_code_before_it_is_ready_is_not_restarted_forever(
    audit: Audit, tmp_path: Path
) -> None:
    env = {"AQUEUE_AUDIT_EXIT_AT_IMPORT": str(RECYCLE_EXIT), "AQUEUE_AUDIT_PROCESSES": "1"}
    async with flaky_supervisor(audit, tmp_path, (0, 0), ready=False, env=env) as supervisor:
        code = await supervisor.wait(timeout=30)
    text = "\n".join(supervisor.lines)
    assert code == RECYCLE_EXIT, text[-3000:]
    assert f"failed to start {MAX_FAILED_STARTS} times in a row" in text
    assert sum("started" in line for line in supervisor.lines) == MAX_FAILED_STARTS
