"""A runner survives what a task does to it: raising a BaseException that is not an Exception
(a CancelledError of its own, a GeneratorExit), swallowing a revoke's cancellation, losing the
lease of the next message it took, and absorbing the cancellation of a cold shutdown - while a
real shutdown still hands running messages back instead of failing them."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest

from aqueue import Aqueue, Worker
from aqueue.exceptions import SoftTimeLimitExceeded, TaskError, TaskRevokedError
from aqueue.task import Request, Task
from aqueue.transports import Delivery
from aqueue.transports.base import queue_admin
from aqueue.worker import worker as worker_module

pytestmark = pytest.mark.timeout(60)


def _app(broker: str, **conf: Any) -> Aqueue:
    """An app on ``broker`` with a queue of its own and ``edges.ok``, a task that returns "ok"
    (what runs next on a runner, to show it goes on)."""
    app = Aqueue(
        "edges", broker=broker, backend=broker, task_default_queue=f"q-{uuid.uuid4().hex[:12]}",
        **conf,
    )  # fmt: skip

    @app.task(name="edges.ok")
    async def ok() -> str:
        return "ok"

    return app


@pytest.fixture
async def app(redis_server: str) -> AsyncIterator[Aqueue]:
    a = _app(redis_server)
    yield a
    await a.close()


@pytest.fixture
async def memory_app() -> AsyncIterator[Aqueue]:
    a = _app("memory://")
    yield a
    await a.close()


async def _waiting(app: Aqueue) -> int:
    """Messages ready in the app's default queue (handed back, not leased)."""
    [depth] = await queue_admin(await app.broker()).queue_depths([app.conf.task_default_queue])
    return depth.waiting


# -- a task's own BaseException ------------------------------------------------------------


async def _cancelled_helper() -> None:
    # Start a helper task, cancel it and await it without suppressing its CancelledError,
    # which then comes out of the task's own code (no cancellation of the runner requested).
    helper = asyncio.ensure_future(asyncio.Event().wait())
    await asyncio.sleep(0)
    helper.cancel()
    await helper


async def _generator_exit() -> None:
    raise GeneratorExit


class LibraryAbort(BaseException):
    """A library's own exception deriving from BaseException, not Exception."""


async def _library_abort() -> None:
    raise LibraryAbort("aborted")


BODIES: list[tuple[Callable[[], Awaitable[None]], str]] = [
    (_cancelled_helper, "CancelledError"),
    (_generator_exit, "GeneratorExit"),
    (_library_abort, "LibraryAbort"),
]


@pytest.mark.parametrize(("body", "raised"), BODIES, ids=[name for _, name in BODIES])
async def test_a_task_raising_a_base_exception_fails_and_its_runner_goes_on(
    app: Aqueue, body: Callable[[], Awaitable[None]], raised: str
) -> None:
    """A task letting out a CancelledError of its own (no cancellation of the runner asked
    for), a GeneratorExit or another BaseException gets a FAILURE with it and is acked, and
    the next task runs on the same (only) runner. Before, the runner died for good: the
    message stayed leased (renewed) for ever and nothing else ran."""

    @app.task(name="edges.bad")
    async def bad() -> None:
        await body()

    ok = app.tasks["edges.ok"]

    async with Worker(app, concurrency=1, shutdown_timeout=2) as worker:
        r_bad = await bad.delay()
        r_ok = await ok.delay()
        assert await r_ok.get(timeout=10) == "ok"
        failure = await r_bad.get(timeout=10, propagate=False)
        assert await r_bad.state() == "FAILURE"
        # Not raised as itself in the caller, where it would read as the caller's own
        # cancellation or exit: a TaskError naming it.
        assert isinstance(failure, TaskError)
        assert failure.exc_type.rsplit(".", 1)[-1] == raised
        await worker.wait_processed(2)
        assert worker.held() == []  # acked: no lease left to renew for ever


async def test_a_batch_task_raising_its_own_cancelled_error_fails_every_call(
    app: Aqueue,
) -> None:
    """A batch function letting out a CancelledError of its own fails every call of the batch
    (each stored and acked), and the next batch runs. Before, the batch's calls were never
    finished: no outcome, held and renewed for ever."""
    failing = asyncio.Event()

    @app.task(name="edges.batch", batch_size=2, batch_timeout=5)
    async def batch(calls: list[Request]) -> list[int]:
        if not failing.is_set():
            failing.set()
            await _cancelled_helper()
        return [1] * len(calls)

    async with Worker(app, concurrency=1, shutdown_timeout=2) as worker:
        first = [await batch.delay(), await batch.delay()]
        for r in first:
            failure = await r.get(timeout=10, propagate=False)
            assert isinstance(failure, TaskError)
            assert failure.exc_type == "asyncio.exceptions.CancelledError"
            assert await r.state() == "FAILURE"
        await worker.wait_processed(2)
        assert worker.held() == []
        second = [await batch.delay(), await batch.delay()]
        assert [await r.get(timeout=10) for r in second] == [1, 1]


@pytest.mark.parametrize("batched", [False, True], ids=["task", "batch"])
async def test_a_cold_shutdown_still_hands_running_messages_back_not_failed(
    app: Aqueue, batched: bool
) -> None:
    """The shutdown's own cancellation is not a task failure: a task (or batch) still running
    after the shutdown timeout is cancelled and its message handed back, with no FAILURE."""
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task: Task[Any, Any]
    if batched:

        @app.task(name="edges.hang_batch", batch_size=1)
        async def hang_batch(calls: list[Request]) -> list[None]:
            await hang()
            return [None]

        task = hang_batch
    else:

        @app.task(name="edges.hang")
        async def hang_one() -> None:
            await hang()

        task = hang_one

    worker = Worker(app, concurrency=1, shutdown_timeout=0.1)
    await worker.start()
    r = await task.delay()
    await asyncio.wait_for(started.wait(), 10)
    await worker.stop()
    assert await r.state() == "PENDING"  # no FAILURE stored
    assert await _waiting(app) == 1  # handed back at once, to run again


# -- a swallowed terminate -----------------------------------------------------------------


def _swallowing(app: Aqueue) -> tuple[Task[Any, Any], asyncio.Event]:
    started = asyncio.Event()

    @app.task(name="edges.swallow")
    async def swallow() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:  # as a library that turns cancellation into a return
            return "swallowed"
        return "never"

    return swallow, started


async def _swallow_one_terminate(app: Aqueue, worker: Worker) -> None:
    swallow, started = _swallowing(app)
    r = await swallow.delay()
    await asyncio.wait_for(started.wait(), 10)
    assert worker.terminate(r.id)
    assert await r.get(timeout=10) == "swallowed"


async def test_a_terminate_after_a_swallowed_one_on_the_same_runner_still_revokes(
    app: Aqueue,
) -> None:
    """After a task swallowed revoke(terminate=True) and returned, the next terminate on the
    same runner revokes its task and the runner goes on. Before, the runner's cancellation
    count stayed raised, the second terminate was taken for a shutdown and the runner died."""
    started = asyncio.Event()

    @app.task(name="edges.hang")
    async def hang() -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    ok = app.tasks["edges.ok"]

    async with Worker(app, concurrency=1, shutdown_timeout=1) as worker:
        await _swallow_one_terminate(app, worker)
        r = await hang.delay()
        await asyncio.wait_for(started.wait(), 10)
        assert worker.terminate(r.id)
        with pytest.raises(TaskRevokedError):
            await r.get(timeout=10)
        assert await (await ok.delay()).get(timeout=10) == "ok"


async def test_a_soft_time_limit_after_a_swallowed_terminate_still_raises_in_the_task(
    app: Aqueue,
) -> None:
    """After a swallowed terminate, a soft time limit on the same runner still raises
    SoftTimeLimitExceeded inside the task (which may catch it), and the runner goes on."""

    @app.task(name="edges.soft", soft_time_limit=0.2, time_limit=30)
    async def soft() -> str:
        try:
            await asyncio.Event().wait()
        except SoftTimeLimitExceeded:
            return "soft"
        return "never"

    ok = app.tasks["edges.ok"]

    async with Worker(app, concurrency=1, shutdown_timeout=1) as worker:
        await _swallow_one_terminate(app, worker)
        assert await (await soft.delay()).get(timeout=10) == "soft"
        assert await (await ok.delay()).get(timeout=10) == "ok"


# -- max_tasks_per_child and a lost hand-off -----------------------------------------------


async def test_a_lost_handoff_counts_so_max_tasks_per_child_still_recycles(
    memory_app: Aqueue,
) -> None:
    """A runner's next message, taken as its current one finishes, whose lease turns out lost
    (another consumer has it) counts as processed, as one found lost when it starts does: with
    max_tasks_per_child=2 the worker recycles after it. Before, it counted as taken but never
    as processed: the runners stopped at the limit, processed never reached it, and the worker
    stalled for good, neither working nor recycling."""
    app = memory_app
    queue = app.conf.task_default_queue
    gate = asyncio.Event()

    @app.task(name="edges.slow")
    async def slow() -> str:
        await gate.wait()
        return "slow"

    @app.task(name="edges.quick")
    async def quick() -> str:
        return "quick"

    a = await slow.delay()
    b = await quick.delay()
    broker = await app.broker()
    start = broker.start  # type: ignore[attr-defined]
    taken_over: list[Delivery] = []

    async def start_after_b_is_lost(
        runs: Sequence[tuple[Delivery, bool]], acks: Sequence[Delivery] = ()
    ) -> list[bool]:
        # b's lease ran out just before its start mark: another consumer has it now.
        for delivery, _ in runs:
            if b.id.encode() in delivery.body and not taken_over:
                await broker.release([delivery])
                taken_over.extend(await broker.fetch([queue], 1, 0.1))
        kept: list[bool] = await start(runs, acks)
        return kept

    broker.start = start_after_b_is_lost  # type: ignore[attr-defined]
    worker = Worker(
        app, concurrency=1, prefetch_multiplier=2, max_tasks_per_child=2, shutdown_timeout=1
    )
    await worker.start()
    try:
        gate.set()
        assert await a.get(timeout=10) == "slow"
        await asyncio.wait_for(worker.wait_stopped(), 10)  # recycled: a, and b let go
        assert len(taken_over) == 1 and b.id.encode() in taken_over[0].body
        assert worker.processed == 2
        assert worker.recycle_reason is not None
    finally:
        await worker.stop()


# -- a cold shutdown whose task absorbs the cancellation -----------------------------------


async def test_stop_cancels_again_a_task_that_absorbed_the_shutdown_cancellation(
    memory_app: Aqueue, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A task that absorbs the cold shutdown's cancellation and goes on is named in the log
    and cancelled again a CANCEL_INTERVAL later; stop() then returns and the message is
    handed back. Before, stop() waited for it for ever."""
    monkeypatch.setattr(worker_module, "CANCEL_INTERVAL", 0.2)
    app = memory_app
    started, absorbed = asyncio.Event(), asyncio.Event()

    @app.task(name="edges.stubborn")
    async def stubborn() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            absorbed.set()  # absorbed: goes on with its work
        await asyncio.Event().wait()
        return "never"

    worker = Worker(app, concurrency=1, shutdown_timeout=0.1)
    await worker.start()
    r = await stubborn.delay()
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.wait_for(worker.stop(), 10)
    assert absorbed.is_set()
    assert f"edges.stubborn[{r.id}]" in caplog.text  # named as still running
    assert await r.state() == "PENDING"
    assert await _waiting(app) == 1  # handed back: runs again


async def test_stop_gives_up_on_a_task_absorbing_every_cancellation_and_hands_it_back(
    memory_app: Aqueue, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A task absorbing every cancellation gets CANCEL_ROUNDS of them; then stop() returns
    without it, logging so, and its message is handed back (nothing lost)."""
    monkeypatch.setattr(worker_module, "CANCEL_INTERVAL", 0.1)
    monkeypatch.setattr(worker_module, "CANCEL_ROUNDS", 3)
    app = memory_app
    started, release = asyncio.Event(), asyncio.Event()
    absorbed = 0

    @app.task(name="edges.deaf")
    async def deaf() -> str:
        nonlocal absorbed
        started.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                absorbed += 1
        return "done"

    worker = Worker(app, concurrency=1, shutdown_timeout=0.1)
    await worker.start()
    await deaf.delay()
    await asyncio.wait_for(started.wait(), 10)
    try:
        await asyncio.wait_for(worker.stop(), 10)
        assert absorbed == 3
        assert "still running after 3 cancellations at shutdown" in caplog.text
        assert await _waiting(app) == 1  # handed back while it still runs here
    finally:
        release.set()
        await asyncio.wait(worker._runners, timeout=10)  # it ends before the app closes


async def test_a_second_signal_during_the_cancel_rounds_stops_at_once(
    memory_app: Aqueue, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A second SIGTERM (or Ctrl-C) while a task absorbs the cold shutdown's cancellations
    ends the shutdown at once, as it says ("stopping now"): the message is handed back and the
    worker stops, without the rest of the CANCEL_ROUNDS. Before, it still waited for them
    (here 10 rounds of 5 s)."""
    monkeypatch.setattr(worker_module, "CANCEL_INTERVAL", 5.0)
    app = memory_app
    started, absorbed, release = asyncio.Event(), asyncio.Event(), asyncio.Event()

    @app.task(name="edges.deaf_to_signals")
    async def deaf() -> str:
        started.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                absorbed.set()
        return "done"

    loop = asyncio.get_running_loop()
    worker = Worker(app, concurrency=1, shutdown_timeout=0.1)
    running = asyncio.ensure_future(worker.run(install_signal_handlers=True))
    try:
        await deaf.delay()
        await asyncio.wait_for(started.wait(), 10)
        os.kill(os.getpid(), signal.SIGTERM)  # warm shutdown: 0.1 s, then the cancel rounds
        await asyncio.wait_for(absorbed.wait(), 10)
        os.kill(os.getpid(), signal.SIGTERM)  # the second one: stop now
        await asyncio.wait_for(running, 3)  # not 10 rounds of 5 s
        assert "second SIGTERM" in caplog.text
        assert "still running after a second signal" in caplog.text  # named, given up
        assert await _waiting(app) == 1  # handed back: runs again
    finally:
        release.set()
        loop.remove_signal_handler(signal.SIGTERM)
        loop.remove_signal_handler(signal.SIGINT)
        if not running.done():
            running.cancel()
        await asyncio.wait([running, *worker._runners], timeout=10)


# -- a cancelled stop() --------------------------------------------------------------------


async def test_a_cancelled_stop_call_still_stops_the_worker_and_hands_back(
    memory_app: Aqueue,
) -> None:
    """Cancelling a stop() call (``asyncio.wait_for(worker.stop(), 5)`` timing out) does not
    cut the shutdown short: it goes on, the running task finishes, the message that had not
    started is handed back, and ``wait_stopped()`` returns. Before, the shutdown died with
    the call: that message was neither run nor handed back (left to its lease) and
    ``wait_stopped()`` never returned."""
    app = memory_app
    started, release = asyncio.Event(), asyncio.Event()

    @app.task(name="edges.blocker")
    async def blocker() -> str:
        started.set()
        await release.wait()
        return "released"

    @app.task(name="edges.later")
    async def later() -> str:
        return "later"

    running = await blocker.delay()
    waiting = await later.delay()
    worker = Worker(app, concurrency=1, shutdown_timeout=10)
    await worker.start()
    try:
        await asyncio.wait_for(started.wait(), 10)
        assert len(worker.held()) == 2  # the second one waits for the only runner
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(worker.stop(), 0.2)
        release.set()
        await asyncio.wait_for(worker.wait_stopped(), 10)
        assert await running.get(timeout=5) == "released"
        assert await waiting.state() == "PENDING"
        assert await _waiting(app) == 1  # handed back, to run elsewhere
    finally:
        release.set()
        await asyncio.wait(worker._runners, timeout=10)


# -- threads given up on -------------------------------------------------------------------------


async def test_a_thread_kept_by_a_run_past_its_time_limit_is_not_one_of_the_next_runs(
    tmp_path: Any,
) -> None:
    """A plain function past its ``time_limit`` runs on in its thread (it cannot be
    interrupted). With one thread per concurrency slot, the next plain task waited for that
    thread and failed its own time limit without having started; it runs now."""
    import threading

    from aqueue.exceptions import TimeLimitExceeded

    url = f"sqlite:///{tmp_path}/threads.db"
    app = Aqueue("threads", broker=url, backend=url)
    release = threading.Event()

    @app.task(name="threads.stuck", time_limit=0.5)
    def stuck() -> str:
        release.wait(30)
        return "late"

    @app.task(name="threads.quick", time_limit=5)
    def quick() -> str:
        return "quick"

    try:
        async with Worker(app, concurrency=1, shutdown_timeout=1):
            first = await stuck.delay()
            with pytest.raises(TimeLimitExceeded):
                await first.get(timeout=10)
            second = await quick.delay()
            assert await second.get(timeout=10) == "quick"
    finally:
        release.set()
        await app.close()
