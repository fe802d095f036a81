"""aqueue.sync: the blocking client, from many threads and from a forked child, against a real
worker process on Redis and on SQLite; file descriptors counted in /proc/self/fd."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from aqueue import Aqueue, sync
from aqueue.exceptions import TimeoutError
from aqueue.transports.base import QueueAdmin
from tests.apps import tasks as e2e
from tests.apps.tasks import Tasks
from tests.syncworker import WorkerThreadless

THREADS = 8
CALLS = 500  # per thread: a send and a get each, so 8,000 blocking calls


def open_fds() -> int:
    """How many file descriptors this process has open (``/proc/self/fd``)."""
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(params=["redis", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        return f"{request.getfixturevalue('redis_server')}/0"
    return f"sqlite:///{tmp_path}/sync.db"


@pytest.fixture
def t(url: str) -> Iterator[Tasks]:
    """The test tasks on a fresh queue, and a worker process running them."""
    queue = f"q-{uuid.uuid4().hex[:12]}"
    worker = WorkerThreadless(
        "tests.apps.tasks", {"AQUEUE_BROKER_URL": url, "AQUEUE_E2E_QUEUE": queue}
    )
    try:
        yield e2e.build(url, queue=queue)
    finally:
        sync.shutdown()  # closes the app's connections on the background loop
        worker.stop()


async def _commands_at_once(t: Tasks, n: int) -> None:
    await asyncio.gather(*(t.app.AsyncResult(str(uuid.uuid4())).state() for _ in range(n)))


def in_threads(t: Tasks, threads: int, calls: int) -> list[str]:
    """``calls`` sends and gets in each of ``threads`` threads; the wrong answers, if any."""

    def one_thread(n: int) -> list[str]:
        wrong = []
        for i in range(calls):
            got = sync.delay(t.add, n, i).get(timeout=30)
            if got != n + i:
                wrong.append(f"add({n}, {i}) = {got}")
        return wrong

    with ThreadPoolExecutor(threads) as pool:
        return [w for ws in pool.map(one_thread, range(threads)) for w in ws]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_threads_share_one_loop_and_fds_stay_flat(
    t: Tasks, capsys: pytest.CaptureFixture[str]
) -> None:
    # The first event loop of a process may open what lives as long as the process (uvloop:
    # libuv's signal pipe, two fds): made before counting, so only a leak is counted.
    sync.call(asyncio.sleep, 0)
    sync.shutdown()
    before = open_fds()
    assert in_threads(t, THREADS, CALLS // 4) == []  # warm-up: 2,000 calls
    # A Redis pool opens connections up to the most commands ever in flight at once (here at
    # most one per thread): open that many now, so that growth later could only be a leak.
    sync.call(_commands_at_once, t, 2 * THREADS)
    warm = open_fds()
    assert in_threads(t, THREADS, CALLS) == []  # 8 threads x 500: 8,000 calls
    steady = open_fds()
    sync.shutdown()
    after = open_fds()
    with capsys.disabled():
        print(f"\nfds: before {before}, warmed up {warm}, after 10,000 calls {steady}, "
              f"after shutdown {after}")  # fmt: skip
    assert steady == warm, "file descriptors grew with calls"
    assert after == before, "shutdown left file descriptors open"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_forked_child_gets_its_own_loop_and_connections(
    url: str, t: Tasks, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sync.delay(t.add, 1, 1).get(timeout=30) == 2  # the parent's loop is running
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report as JSON on the pipe, never return into pytest
        code = 1
        try:
            os.close(read_end)
            report = _child(t)
            os.write(write_end, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    report = json.loads(_read_all(read_end, timeout=240))
    assert _wait(pid, timeout=30) == 0
    with capsys.disabled():
        print(f"\nchild fds: {report['fds']}")
    assert report["wrong"] == []
    assert report["own_loop"], "the child used its parent's event loop"
    before, after_first, after_second = report["fds"]
    # SQLite keeps one descriptor of a file that another connection in the process has open
    # (the parent's, inherited and never touched), rather than drop that connection's POSIX
    # locks: it is the one it reuses next time, so the count is flat from then on.
    shared_file = 1 if url.startswith("sqlite") else 0
    assert after_first == before + shared_file, "the child's shutdown left descriptors open"
    assert after_second == after_first, "file descriptors grew with the child's calls"
    # The parent's connections were not disturbed by the child's.
    assert in_threads(t, 4, 25) == []


def _child(t: Tasks) -> dict[str, Any]:
    """In the forked child: two rounds of calls, each closed with shutdown()."""
    parent_loop = sync._inherited[-1].loop if sync._inherited else None
    before = open_fds()
    wrong = in_threads(t, 4, CALLS // 4)
    own_loop = sync._portal is not None and sync._portal.loop is not parent_loop
    sync.shutdown()
    after_first = open_fds()
    wrong += in_threads(t, 4, CALLS // 4)
    sync.shutdown()
    return {"wrong": wrong, "own_loop": own_loop, "fds": [before, after_first, open_fds()]}


def _read_all(fd: int, timeout: float) -> str:
    chunks: list[bytes] = []
    done = threading.Event()

    def read() -> None:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(timeout), "the child did not report in time"
    os.close(fd)
    return b"".join(chunks).decode()


def _wait(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, 9)
    raise AssertionError("the child did not exit")


def test_celery_names_on_the_blocking_handle(t: Tasks) -> None:
    r = sync.apply_async(t.add, (2, 3), countdown=0)
    assert r.get(timeout=30) == 5
    assert r.state == r.status == "SUCCESS"
    assert r.ready() and r.successful() and not r.failed()
    assert r.result == 5 and r.info().retries == 0
    again = sync.AsyncResult(t.app, r.id)
    assert again.get(timeout=30) == 5 and again.task_id == r.id
    by_name = sync.send_task(t.app, "e2e.add", (1, 2))
    assert by_name.get(timeout=30) == 3
    with pytest.raises(ValueError, match="broken"):
        sync.delay(t.always_fails, "broken").get(timeout=30)
    failed = sync.delay(t.always_fails, "again")
    assert isinstance(failed.get(timeout=30, propagate=False), ValueError)
    assert failed.failed() and "ValueError" in (failed.traceback or "")
    with pytest.raises(TimeoutError):
        sync.delay(t.sleep_then_mark, 5, "/nonexistent", "never").get(timeout=0.2)
    handle = sync.call(t.app.send_task, "e2e.add", (4, 4))  # any coroutine function
    assert sync.call(handle.get, timeout=30) == 8


def run_script(script: Path) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter under ``-X dev`` (ResourceWarnings shown) from the
    repository root; it must exit 0."""
    done = subprocess.run(
        [sys.executable, "-X", "dev", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr
    return done


async def test_calling_from_a_running_loop_is_refused() -> None:
    t = e2e.build("memory://")
    with pytest.raises(RuntimeError, match="await the async API"):
        sync.delay(t.add, 1, 2)
    await t.app.close()


def test_the_loop_is_closed_at_exit(tmp_path: Path) -> None:
    """A script that never calls shutdown() exits at once, its connections closed (no
    ResourceWarning under -X dev)."""
    script = tmp_path / "script.py"
    script.write_text(
        "from aqueue import Aqueue, Worker, sync\n"
        f"app = Aqueue('s', broker='sqlite:///{tmp_path}/s.db')\n"
        "@app.task(name='s.add')\n"
        "async def add(x: int, y: int) -> int:\n"
        "    return x + y\n"
        "worker = Worker(app)\n"
        "sync.call(worker.start)\n"
        "print(sync.delay(add, 2, 2).get(timeout=10))\n"
        "sync.call(worker.stop)\n"
    )
    done = run_script(script)
    assert done.stdout.strip() == "4"
    assert "unclosed" not in done.stderr.lower() and "Error" not in done.stderr, done.stderr


def test_exit_waits_for_the_calls_of_other_non_daemon_threads(tmp_path: Path) -> None:
    """The main thread ends while another (non-daemon) thread's call is in flight: that call
    completes and the thread's next send is published, as plain code in that thread would run
    to its end; the connections are closed after it (no ResourceWarning under -X dev)."""
    script = tmp_path / "script.py"
    script.write_text(
        "import asyncio, threading\n"
        "from aqueue import Aqueue, sync\n"
        f"app = Aqueue('s', broker='sqlite:///{tmp_path}/s.db')\n"
        "exiting, in_flight = threading.Event(), threading.Event()\n"
        "# Registered after aqueue.sync's exit hook, so it runs first: the interpreter is\n"
        "# exiting from here on.\n"
        "threading._register_atexit(exiting.set)\n"
        "async def until_exit() -> str:\n"
        "    in_flight.set()\n"
        "    while not exiting.is_set():\n"
        "        await asyncio.sleep(0.01)\n"
        "    return 'ok'\n"
        "def producer() -> None:\n"
        "    print('call:', sync.call(until_exit), flush=True)\n"
        "    print('sent:', sync.call(app.send_task, 's.add', (1, 2)).id, flush=True)\n"
        "threading.Thread(target=producer).start()\n"
        "in_flight.wait()\n"
    )
    done = run_script(script)
    lines = done.stdout.splitlines()
    assert lines[:1] == ["call: ok"], done.stderr
    assert len(lines) == 2 and lines[1].startswith("sent: "), done.stderr
    assert "unclosed" not in done.stderr.lower() and "Error" not in done.stderr, done.stderr
    assert asyncio.run(_ready(f"sqlite:///{tmp_path}/s.db")) == 1  # published, not just said


async def _ready(url: str) -> int:
    """How many messages wait in the default queue of the broker at ``url``."""
    app = Aqueue("reader", broker=url)
    try:
        broker = await app.broker()
        assert isinstance(broker, QueueAdmin)
        [depth] = await broker.queue_depths([app.conf.task_default_queue])
        return depth.ready
    finally:
        await app.close()


async def _exits() -> None:
    raise SystemExit(3)


async def _one() -> int:
    return 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_call_raising_system_exit_raises_it_in_the_caller_and_the_loop_serves_on(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SystemExit (or KeyboardInterrupt) out of the coroutine is the caller's: raised in the
    calling thread, not out of the background loop, which serves every thread of the process."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    monkeypatch.setenv("AQUEUE_LOOP", loop)
    sync.shutdown()  # the next call starts a loop of this kind
    try:
        with pytest.raises(SystemExit) as raised:
            sync.call(_exits)
        assert raised.value.code == 3
        portal = sync._current()
        assert sync.call(_one) == 1
        assert portal.thread.is_alive() and not portal.loop.is_closed()
    finally:
        sync.shutdown()
