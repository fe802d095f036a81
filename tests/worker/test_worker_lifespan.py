"""Issue 12, the worker side: the worker lifespan, soft time limits, per-child limits with
``--processes``, ``result_extended`` and ``task_reject_on_worker_lost``."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

import aqueue
from aqueue import Aqueue, Worker
from aqueue.exceptions import (
    ConfigurationError,
    SoftTimeLimitExceeded,
    TimeLimitExceeded,
    WorkerLostError,
)
from aqueue.results.record import ResultRecord
from aqueue.transports.base import RunTracking, queue_admin
from aqueue.worker.worker import resident_kib
from tests.workerproc import WorkerProcess


class FakePool:
    """A stand-in database pool: counts opens, closes and queries."""

    opened = 0
    closed = 0

    def __init__(self) -> None:
        FakePool.opened += 1
        self.queries: list[str] = []
        self.is_closed = False

    async def fetch(self, sql: str) -> str:
        if self.is_closed:
            raise RuntimeError("pool closed")
        self.queries.append(sql)
        await asyncio.sleep(0)
        return f"rows of {sql}"

    async def close(self) -> None:
        self.is_closed = True
        FakePool.closed += 1


def memory_app() -> Aqueue:
    url = f"memory://{uuid.uuid4().hex}"
    return Aqueue("t", broker=url, backend=url)


# -- worker lifespan --------------------------------------------------------------------------


async def test_lifespan_opens_once_reaches_tasks_and_closes_after_running_ones() -> None:
    app = memory_app()
    FakePool.opened = FakePool.closed = 0
    order: list[str] = []
    gate, began = asyncio.Event(), asyncio.Event()

    @app.worker_lifespan
    async def lifespan(worker: Worker) -> AsyncIterator[FakePool]:
        order.append(f"start {worker.hostname}")
        pool = FakePool()
        yield pool
        order.append("stop")
        await pool.close()

    @app.task
    async def query(sql: str) -> str:
        return await aqueue.worker_state(FakePool).fetch(sql)

    @app.task
    async def slow() -> str:
        began.set()
        await gate.wait()
        pool = aqueue.worker_state(FakePool)
        order.append(f"slow ends, closed={pool.is_closed}")
        return await pool.fetch("late")

    @app.task
    def in_thread() -> int:
        return len(aqueue.worker_state(FakePool).queries)

    async with Worker(app, hostname="w@x", concurrency=4, shutdown_timeout=10) as worker:
        assert FakePool.opened == 1 and isinstance(worker.state, FakePool)
        results = [await query.delay(f"q{i}") for i in range(20)]
        assert [await r.get(timeout=5) for r in results] == [f"rows of q{i}" for i in range(20)]
        assert await (await in_thread.delay()).get(timeout=5) == 20
        running = await slow.delay()
        await asyncio.wait_for(began.wait(), 5)
        stopping = asyncio.create_task(worker.stop())
        await asyncio.sleep(0.05)
        assert order == ["start w@x"]  # the stop waits for the running task
        gate.set()
        await asyncio.wait_for(stopping, 10)
    assert await running.get(timeout=5) == "rows of late"
    assert order == ["start w@x", "slow ends, closed=False", "stop"]
    assert FakePool.opened == 1 and FakePool.closed == 1


async def test_worker_state_outside_a_worker_says_why() -> None:
    app = memory_app()
    with pytest.raises(LookupError, match="worker_lifespan"):
        aqueue.worker_state()

    @app.worker_lifespan
    @asynccontextmanager
    async def lifespan(worker: Worker) -> AsyncIterator[dict[str, int]]:
        yield {"n": 1}

    @app.task
    async def kind() -> str:
        try:
            aqueue.worker_state(FakePool)
        except TypeError as exc:
            return str(exc)
        return "no error"

    async with Worker(app) as worker:
        assert worker.state == {"n": 1}
        assert "is a dict, not a FakePool" in await (await kind.delay()).get(timeout=5)
    with pytest.raises(LookupError):  # the test's own context never got the state
        aqueue.worker_state()
    with pytest.raises(ConfigurationError, match="registered already"):
        app.worker_lifespan(lifespan)


async def test_a_failing_lifespan_startup_keeps_the_worker_from_starting() -> None:
    app = memory_app()

    @app.worker_lifespan
    async def lifespan(worker: Worker) -> AsyncIterator[None]:
        raise OSError("database down")
        yield

    worker = Worker(app)
    with pytest.raises(OSError, match="database down"):
        await worker.start()
    assert worker.executor is None


def _redis_app_with_pool(redis_server: str) -> tuple[Aqueue, list[FakePool], asyncio.Event]:
    """An app on Redis whose lifespan opens a FakePool (listed) and sets the event once open."""
    app = Aqueue(
        "t", broker=redis_server, backend=redis_server,
        task_default_queue=f"q-{uuid.uuid4().hex[:12]}",
    )  # fmt: skip
    pools: list[FakePool] = []
    entered = asyncio.Event()

    @app.worker_lifespan
    async def lifespan(worker: Worker) -> AsyncIterator[FakePool]:
        pool = FakePool()
        pools.append(pool)
        try:
            entered.set()  # start() goes on to the control transport's round trips
            yield pool
        finally:
            await pool.close()

    return app, pools, entered


@asynccontextmanager
async def _started_past_lifespan(
    redis_server: str,
) -> AsyncIterator[tuple[Aqueue, list[FakePool], Worker, asyncio.Future[None]]]:
    """A worker's ``start()`` under way, past its lifespan's startup (the pool opened), with
    the app, the pools opened and the start; the app is closed after."""
    app, pools, entered = _redis_app_with_pool(redis_server)
    worker = Worker(app, hostname=f"w-{uuid.uuid4().hex[:8]}@x")
    try:
        starting = asyncio.ensure_future(worker.start())
        await asyncio.wait_for(entered.wait(), 10)
        assert not starting.done()
        yield app, pools, worker, starting
    finally:
        await app.close()


async def test_a_start_cancelled_after_the_lifespan_started_runs_its_shutdown(
    redis_server: str,
) -> None:
    """A start() cancelled once the lifespan is open (here while it subscribes to remote
    control, e.g. by ``asyncio.wait_for(worker.start(), ...)``) undoes it: the lifespan's
    shutdown runs, the pool it opened is closed. Before, it stayed open."""
    async with _started_past_lifespan(redis_server) as (app, pools, worker, starting):
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        assert [p.is_closed for p in pools] == [True]
        assert await app.control.ping(timeout=0.5, destination=[worker.hostname]) == []


async def test_a_stop_during_start_after_the_lifespan_leaves_nothing_running(
    redis_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A stop() (SIGTERM) while start() is past the lifespan's startup: once both return, the
    worker is stopped for good - no "ready" after "stopped", no runner left waiting, no remote
    control answering for it - and the lifespan closed. Before, start() went on after stop()
    had begun: the worker logged "ready" with its pool closed, its runners left waiting."""
    caplog.set_level(logging.INFO, logger="aqueue.worker")
    async with _started_past_lifespan(redis_server) as (app, pools, worker, starting):
        await asyncio.wait_for(worker.stop(), 10)
        await asyncio.wait_for(starting, 10)
        assert [p.is_closed for p in pools] == [True]
        assert f"{worker.hostname} ready" not in caplog.text
        assert all(runner.done() for runner in worker._runners)
        assert await app.control.ping(timeout=0.5, destination=[worker.hostname]) == []


def test_a_coroutine_function_is_refused_as_lifespan() -> None:
    app = memory_app()

    async def not_a_generator(worker: Worker) -> None:
        return None

    with pytest.raises(TypeError, match="yields once"):
        app.worker_lifespan(not_a_generator)  # type: ignore[type-var]


# -- soft time limit --------------------------------------------------------------------------


async def test_soft_time_limit_is_raised_inside_the_coroutine_which_may_clean_up() -> None:
    app = memory_app()
    app.conf.task_soft_time_limit = 0.2
    cleaned = asyncio.Event()

    @app.task
    async def cleans_up() -> str:
        try:
            await asyncio.sleep(30)
        except SoftTimeLimitExceeded:
            await asyncio.sleep(0.05)  # awaiting works during the clean-up
            cleaned.set()
            return "partial"
        return "full"

    @app.task(soft_time_limit=0.1, time_limit=5)
    async def ignores() -> None:
        await asyncio.sleep(30)

    @app.task(soft_time_limit=0.1, time_limit=0.4)
    async def swallows() -> None:
        try:
            await asyncio.sleep(30)
        except SoftTimeLimitExceeded:
            await asyncio.sleep(30)  # past the hard limit

    async with Worker(app, shutdown_timeout=2):
        r = await cleans_up.delay()
        assert await r.get(timeout=5) == "partial"
        assert cleaned.is_set()
        with pytest.raises(SoftTimeLimitExceeded, match=r"soft time limit of 0\.1s"):
            await (await ignores.delay()).get(timeout=5)
        with pytest.raises(TimeLimitExceeded):
            await (await swallows.delay()).get(timeout=5)


async def test_soft_time_limit_on_a_thread_logs_and_the_task_runs_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = memory_app()
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    @app.task(soft_time_limit=0.1)
    def blocking() -> str:
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(5)
        return "done"

    warned = asyncio.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "soft time limit" in record.getMessage():
                loop.call_soon_threadsafe(warned.set)

    logging.getLogger("aqueue.worker").addHandler(handler := Seen())
    try:
        async with Worker(app):
            r = await blocking.delay()
            await asyncio.wait_for(warned.wait(), 5)
            release.set()
            assert await r.get(timeout=5) == "done"
    finally:
        logging.getLogger("aqueue.worker").removeHandler(handler)
    assert "cannot be interrupted" in caplog.text


async def test_a_soft_limit_does_not_swallow_a_revoke_terminate() -> None:
    app = memory_app()

    began = asyncio.Event()

    @app.task(soft_time_limit=5)
    async def long() -> None:
        began.set()
        await asyncio.sleep(30)

    async with Worker(app) as worker:
        r = await long.delay()
        await asyncio.wait_for(began.wait(), 5)
        assert worker.terminate(r.id)
        with pytest.raises(aqueue.exceptions.TaskRevokedError):
            await r.get(timeout=5)


# -- result_extended --------------------------------------------------------------------------


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
async def test_result_extended_stores_name_args_kwargs_worker_queue(serializer: str) -> None:
    app = memory_app()
    app.conf.update(result_extended=True, result_serializer=serializer,
                    accept_content=["json", "msgpack"])  # fmt: skip

    @app.task(name="proj.mul")
    async def mul(x: int, y: int, scale: float = 1.0) -> float:
        return x * y * scale

    @app.task(name="proj.boom")
    async def boom(when: str) -> None:
        raise ValueError(when)

    async with Worker(app, hostname="w1@box"):
        r = await mul.delay(3, 4, scale=0.5)
        assert await r.get(timeout=5) == 6.0
        assert (r.name, r.args, r.kwargs) == ("proj.mul", (3, 4), {"scale": 0.5})
        assert (r.worker, r.queue) == ("w1@box", "default")
        other = app.AsyncResult(r.id)  # another handle, by id: reads the stored record
        assert await other.state() == "SUCCESS"
        assert (other.name, other.args, other.worker) == ("proj.mul", (3, 4), "w1@box")
        f = await boom.delay("now")
        with pytest.raises(ValueError, match="now"):
            await f.get(timeout=5)
        assert (f.args, f.worker) == (("now",), "w1@box")


async def test_without_result_extended_records_stay_small() -> None:
    app = memory_app()

    @app.task
    async def mul(x: int, y: int) -> int:
        return x * y

    async with Worker(app):
        r = await mul.delay(3, 4)
        assert await r.get(timeout=5) == 12
        assert r.name is not None and r.args is None and r.worker is None and r.queue is None


# -- per-child limits -------------------------------------------------------------------------


async def test_max_tasks_per_child_stops_the_worker_after_finishing_running_tasks() -> None:
    app = memory_app()
    began, release = asyncio.Event(), asyncio.Event()

    @app.task
    async def hold(i: int) -> int:
        began.set()
        await release.wait()
        return i

    worker = Worker(app, concurrency=3, max_tasks_per_child=3, shutdown_timeout=10)
    await worker.start()
    results = [await hold.delay(i) for i in range(6)]
    await asyncio.wait_for(began.wait(), 5)
    release.set()
    await asyncio.wait_for(worker.wait_stopped(), 10)
    assert worker.recycle_reason == "worker_max_tasks_per_child=3 reached"
    done = [await r.ready() for r in results]
    assert sum(done) == 3  # the three it had started finished; the rest were handed back
    async with Worker(app):  # another worker takes the rest
        assert [await r.get(timeout=5) for r in results] == list(range(6))


async def test_per_child_settings_alone_do_not_stop_a_single_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = memory_app()
    app.conf.update(worker_max_tasks_per_child=1, worker_max_memory_per_child=1)

    @app.task
    async def one() -> int:
        return 1

    async with Worker(app) as worker:
        assert [await (await one.delay()).get(timeout=5) for _ in range(3)] == [1, 1, 1]
        assert worker.recycle_reason is None
    assert "applies only to the worker processes of `aqueue worker --processes N`" in caplog.text


async def test_max_memory_per_child_is_resident_kib() -> None:
    assert 1024 < resident_kib() < 64 * 1024 * 1024  # this interpreter: between 1 MiB and 64 GiB
    app = memory_app()

    @app.task
    async def one() -> int:
        return 1

    worker = Worker(app, max_memory_per_child=1024)  # 1 MiB: exceeded after the first task
    await worker.start()
    await one.delay()
    await asyncio.wait_for(worker.wait_stopped(), 10)
    assert worker.recycle_reason is not None
    assert re.fullmatch(
        r"worker_max_memory_per_child=1024 KiB exceeded \(\d+ KiB resident\)",
        worker.recycle_reason,
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("limit", ["tasks", "memory"])
async def test_processes_children_recycle_and_each_runs_its_lifespan(
    limit: str, redis_server: str, tmp_path: Path
) -> None:
    queue = f"q-{uuid.uuid4().hex[:12]}"
    env = {
        "AQUEUE_BROKER_URL": f"{redis_server}/0",
        "AQUEUE_LS_QUEUE": queue,
        "AQUEUE_LS_DIR": str(tmp_path),
        "AQUEUE_LS_MAX_TASKS" if limit == "tasks" else "AQUEUE_LS_MAX_MEMORY": (
            "4" if limit == "tasks" else "1024"
        ),
    }
    client = Aqueue("client", broker=f"{redis_server}/0", backend=f"{redis_server}/0")
    client.conf.task_default_queue = queue
    try:
        args = ["--processes", "2", "-c", "1", "--prefetch-multiplier", "1"]
        async with WorkerProcess("tests.apps.lifespan_tasks:app", args, env) as sup:
            await sup.wait_for("supervisor ready: all 2 worker processes are ready")
            results = [await client.send_task("ls.whoami", (f"t{i}",)) for i in range(12)]
            pids = [await r.get(timeout=30) for r in results]
            await sup.wait_for("reached its per-child limit; replacing it", timeout=30)
            sup.signal(signal.SIGTERM)
            assert await sup.wait(timeout=40) == 0
        per_child = 4 if limit == "tasks" else 1
        counts = {pid: pids.count(pid) for pid in set(pids)}
        assert max(counts.values()) <= per_child  # no child ran past its limit
        assert len(counts) >= 12 // per_child
        starts, stops, served = _lifespan_files(tmp_path)
        assert {str(p) for p in counts} <= starts  # every child that ran tasks started its own
        assert starts == stops  # and closed it: at recycling and at the final SIGTERM
        assert served == sorted(f"t{i}" for i in range(12))  # each run used its own process state
    finally:
        await client.close()


def _lifespan_files(where: Path) -> tuple[set[str], set[str], list[str]]:
    """The pids that started and stopped a lifespan, and the tags their states served."""
    starts = {p.name.split("-")[1] for p in where.glob("start-*")}
    stops = {p.name.split("-")[1] for p in where.glob("stop-*")}
    served = sorted(t for p in where.glob("stop-*") for t in p.read_text().split(",") if t)
    return starts, stops, served


# -- task_reject_on_worker_lost ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("reject", [True, False])
async def test_reject_on_worker_lost(reject: bool, redis_server: str, tmp_path: Path) -> None:
    url = f"{redis_server}/0"
    queue = f"q-{uuid.uuid4().hex[:12]}"
    env = {"AQUEUE_BROKER_URL": url, "AQUEUE_LS_QUEUE": queue, "AQUEUE_LS_DIR": str(tmp_path),
           "AQUEUE_LS_VISIBILITY": "1.5", "AQUEUE_LS_REJECT": "1" if reject else "0"}  # fmt: skip
    client = Aqueue("client", broker=url, backend=url)
    client.conf.task_default_queue = queue
    try:
        r = await client.send_task("ls.hang", (1.0,))
        async with WorkerProcess("tests.apps.lifespan_tasks:app", ["-c", "2"], env) as first:
            await first.wait_for(f"{r.id}] started")
            first.signal(signal.SIGKILL)
            assert await first.wait() == -signal.SIGKILL
        async with WorkerProcess("tests.apps.lifespan_tasks:app", ["-c", "2"], env) as second:
            if reject:  # aqueue's default, Celery's True: run again
                assert await r.get(timeout=30) == "woke"
            else:  # Celery's default: a WorkerLostError failure, not run again
                with pytest.raises(WorkerLostError, match="task_reject_on_worker_lost is False"):
                    await r.get(timeout=30)
                assert not any(f"{r.id}] started" in line for line in second.lines)
    finally:
        await client.close()


async def test_the_example_pool_is_shared_and_closed() -> None:
    from examples.worker_lifespan import tasks as example

    url = f"memory://{uuid.uuid4().hex}"
    saved = (example.app.conf.broker_url, example.app.conf.result_backend)
    example.app.conf.update(broker_url=url, result_backend=url)
    try:
        async with Worker(example.app) as worker:
            results = [await example.user_name.delay(i) for i in (1, 2, 3)]
            assert [await r.get(timeout=5) for r in results] == ["ada", "grace", None]
            pool = worker.state.db
            assert not pool.closed
        assert pool.closed
    finally:
        await example.app.close()
        example.app.conf.update(broker_url=saved[0], result_backend=saved[1])


@pytest.mark.timeout(60)
async def test_a_run_that_finished_before_its_worker_died_keeps_its_result(
    tmp_path: Path,
) -> None:
    """``task_reject_on_worker_lost=False``: a worker stored a task's SUCCESS and died before
    acking its message. The message comes back as from a dead worker, but the run was over:
    its result must stand (not be overwritten with a WorkerLostError), and the message acked."""
    url = f"sqlite:///{tmp_path}/lost.db"
    app = Aqueue("lost", broker=url, backend=url)
    app.conf.task_reject_on_worker_lost = False
    app.conf.broker_transport_options = {"visibility_timeout": 0.5}

    @app.task(name="lost.answer")
    async def answer() -> int:
        return 42

    try:
        r = await answer.delay()
        # The first worker: leases the message, marks its run, stores its result, and dies.
        broker = await app.broker()
        assert isinstance(broker, RunTracking)
        queue = app.conf.task_default_queue
        [delivery] = await broker.fetch([queue], 1, 5)
        assert await broker.start([(delivery, False)]) == [True]
        done = ResultRecord(r.id, "SUCCESS", 42, None, time.time(), 0, "lost.answer")
        backend = await app.result_backend()
        await backend.store([(r.id, done.encode("json", None))], None)
        async with Worker(app, hostname="second@lost", shutdown_timeout=5):
            admin = queue_admin(broker)
            for _ in range(1000):  # until the lease ran out and the worker settled the message
                [depth] = await admin.queue_depths([queue])
                if depth.waiting == depth.unacked == 0:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the message was not settled")
        assert await r.get(timeout=5) == 42
    finally:
        await app.close()
