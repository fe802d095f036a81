"""task_always_eager: delay() runs the task inline, with no broker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aqueue import Aqueue, Task
from aqueue.exceptions import SoftTimeLimitExceeded, TaskError

pytestmark = pytest.mark.timeout(60)


def make_app() -> Aqueue:
    return Aqueue("eager", broker="redis://127.0.0.1:1/0", task_always_eager=True)


async def test_eager_runs_inline_without_touching_the_broker() -> None:
    app = make_app()  # the broker URL points nowhere: eager mode must not connect

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    r = await add.delay(2, 3)
    assert await r == 5
    assert await r.state() == "SUCCESS"


async def test_eager_retries_and_propagates() -> None:
    app = make_app()
    attempts: list[int] = []

    @app.task(bind=True, max_retries=2)
    async def flaky(self: Task[[], int]) -> int:
        attempts.append(self.request.retries)
        if self.request.retries < 2:
            raise self.retry(exc=OSError("again"), countdown=5)
        return self.request.retries

    assert await (await flaky.delay()) == 2
    assert attempts == [0, 1, 2]

    @app.task
    def boom() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        await boom.delay()
    app.conf.task_eager_propagates = False
    r = await boom.delay()
    assert await r.failed()
    with pytest.raises(ValueError):
        await r.get()


async def test_eager_autoretry_honours_retry_kwargs_max_retries() -> None:
    """As the worker does, ``retry_kwargs={"max_retries": n}`` bounds the automatic retries
    (not the task's ``max_retries``, 3 by default)."""
    app = make_app()
    runs: list[int] = []

    @app.task(bind=True, autoretry_for=(ValueError,), retry_kwargs={"max_retries": 5})
    async def flaky(self: Task[[], int]) -> int:
        runs.append(self.request.retries)
        if self.request.retries < 5:
            raise ValueError("again")
        return self.request.retries

    assert await (await flaky.delay()) == 5
    assert runs == [0, 1, 2, 3, 4, 5]


async def test_eager_raises_soft_time_limit_inside_a_coroutine() -> None:
    """A task's ``soft_time_limit`` raises SoftTimeLimitExceeded inside it, as in a worker."""
    app = make_app()

    @app.task(soft_time_limit=0.05, time_limit=10)
    async def slow() -> str:
        try:
            await asyncio.sleep(30)  # the soft limit ends it long before
        except SoftTimeLimitExceeded:
            return "cleaned up"
        return "never"

    assert await (await slow.delay()) == "cleaned up"


@pytest.mark.parametrize("propagates", [True, False])
async def test_eager_a_cancelled_error_of_the_tasks_own_is_its_failure(propagates: bool) -> None:
    """A task that lets out a CancelledError of its own (a helper it cancelled and awaited)
    failed, as in a worker: the caller is not cancelled, and gets a TaskError naming it."""
    app = make_app()
    app.conf.task_eager_propagates = propagates

    @app.task
    async def cancels_helper() -> None:
        helper = asyncio.ensure_future(asyncio.Event().wait())
        await asyncio.sleep(0)
        helper.cancel()
        await helper

    if propagates:
        with pytest.raises(TaskError, match="CancelledError"):
            await cancels_helper.delay()
    else:
        r = await cancels_helper.delay()
        assert await r.failed()
        with pytest.raises(TaskError, match="CancelledError"):
            await r.get()
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("propagates", [True, False])
async def test_eager_runs_link_and_link_error_as_a_worker_does(propagates: bool) -> None:
    """``link`` gets the value of a success, ``link_error`` (a task of this app) the failed
    call's (request, exception, traceback), as the worker calls them: not left unrun."""
    app = make_app()
    app.conf.task_eager_propagates = propagates
    seen: list[Any] = []

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task
    async def record(value: int) -> None:
        seen.append(value)

    @app.task
    def boom() -> None:
        raise ValueError("no")

    @app.task
    def on_error(request: Any, exc: BaseException, tb: str) -> None:
        seen.append((request.id, type(exc).__name__, "ValueError" in tb))

    r = await add.apply_async((2, 2), link=record.s())
    assert await r == 4
    assert seen == [4]
    if propagates:
        with pytest.raises(ValueError, match="no"):
            await boom.apply_async(task_id="b-1", link_error=on_error.s())
    else:
        failed = await boom.apply_async(task_id="b-1", link_error=on_error.s())
        assert await failed.failed()
    assert seen == [4, ("b-1", "ValueError", True)]


async def test_eager_a_failing_link_leaves_its_parents_result_alone() -> None:
    """As in the worker, the link's own failure is the link's: the parent succeeded."""
    app = make_app()

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task
    async def refuse(value: int) -> None:
        raise ValueError(f"not {value}")

    r = await add.apply_async((1, 2), link=refuse.s())
    assert await r == 3


class _Hooked(Task[..., Any]):
    """Records the outcome hooks the worker calls."""

    calls: list[tuple[str, ...]] = []

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        self.calls.append(("success", task_id, repr(retval)))

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: str
    ) -> None:
        self.calls.append(("failure", task_id, repr(exc)))

    def on_retry(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: str
    ) -> None:
        self.calls.append(("retry", task_id, repr(exc)))

    async def after_return(
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        self.calls.append(("after_return", task_id, status))


async def test_eager_calls_the_outcome_hooks_as_a_worker_does() -> None:
    app = make_app()
    app.conf.task_eager_propagates = False
    _Hooked.calls = []

    @app.task(base=_Hooked)
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(base=_Hooked, autoretry_for=(ValueError,), max_retries=1)
    async def boom() -> None:
        raise ValueError("no")

    await add.apply_async((1, 2), task_id="a")
    await boom.apply_async(task_id="b")
    assert _Hooked.calls == [
        ("success", "a", "3"),
        ("after_return", "a", "SUCCESS"),
        ("retry", "b", "ValueError('no')"),
        ("after_return", "b", "RETRY"),
        ("failure", "b", "ValueError('no')"),
        ("after_return", "b", "FAILURE"),
    ]


async def test_eager_sends_the_task_signals_as_celery_does() -> None:
    """As Celery's eager ``apply()`` does: ``task_prerun`` and ``task_postrun`` around every
    attempt, ``task_retry`` for a retry, then ``task_success`` or ``task_failure``."""
    from aqueue import signals

    app = make_app()
    app.conf.task_eager_propagates = False
    seen: list[tuple[str, str, Any]] = []

    def prerun(sender: Any, task_id: str, **kw: Any) -> None:
        seen.append(("prerun", task_id, kw["request"].retries))

    def postrun(sender: Any, task_id: str, state: str, **kw: Any) -> None:
        seen.append(("postrun", task_id, state))

    def success(sender: Any, result: Any, request: Any, **kw: Any) -> None:
        seen.append(("success", request.id, result))

    def failure(sender: Any, task_id: str, exception: BaseException, **kw: Any) -> None:
        seen.append(("failure", task_id, repr(exception)))

    def retry(sender: Any, request: Any, reason: BaseException, **kw: Any) -> None:
        seen.append(("retry", request.id, repr(reason)))

    receivers = [
        (signals.task_prerun, prerun),
        (signals.task_postrun, postrun),
        (signals.task_success, success),
        (signals.task_failure, failure),
        (signals.task_retry, retry),
    ]
    for sig, receiver in receivers:
        sig.connect(receiver)
    try:

        @app.task
        async def add(x: int, y: int) -> int:
            return x + y

        @app.task(autoretry_for=(ValueError,), max_retries=1)
        async def boom() -> None:
            raise ValueError("no")

        await add.apply_async((1, 2), task_id="a")
        await boom.apply_async(task_id="b")
    finally:
        for sig, receiver in receivers:
            sig.disconnect(receiver)
    assert seen == [
        ("prerun", "a", 0),
        ("success", "a", 3),
        ("postrun", "a", "SUCCESS"),
        ("prerun", "b", 0),
        ("retry", "b", "ValueError('no')"),
        ("postrun", "b", "RETRY"),
        ("prerun", "b", 1),
        ("failure", "b", "ValueError('no')"),
        ("postrun", "b", "FAILURE"),
    ]
