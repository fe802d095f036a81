"""A call's arguments are checked against its task's signature before anything is sent.

As Celery's ``typing=True``: ``delay()``, ``apply_async()``, ``send_task()`` of a registered
task and ``delay_many()`` raise :class:`~aqueue.exceptions.ArgumentsError` (a ``TypeError``)
naming the task, and the queue stays empty; ``@app.task(typing=False)`` opts a task out.

A message larger than ``task_max_message_size`` is refused at send with
:class:`~aqueue.exceptions.MessageTooLarge` (an ``EncodeError``) naming the task, the size and
the limit, on every broker; a batch (``delay_many``, a group, a chain) with one such message is
refused whole, before anything of it is published.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from aqueue import Aqueue, Task, Worker, chain, group
from aqueue.exceptions import AqueueError, ArgumentsError, EncodeError, MessageTooLarge
from aqueue.message import Message, decode

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def app() -> AsyncIterator[Aqueue]:
    """An app on a memory broker of its own (a fresh queue per test)."""
    url = f"memory://checks-{uuid.uuid4().hex[:8]}"
    app = Aqueue("checks", broker=url, backend=url)
    yield app
    await app.close()


async def queued(app: Aqueue) -> list[Any]:
    """The messages waiting in the default queue (fetched, so each test reads them once)."""
    broker = await app.broker()
    deliveries = await broker.fetch([app.conf.task_default_queue], 100, 0.05)
    return [decode(d.body) for d in deliveries]


def register(app: Aqueue, **options: Any) -> Task[Any, Any]:
    @app.task(name="checks.add", **options)
    async def add(x: int, y: int, z: int = 0) -> int:
        return x + y + z

    return add


# -- refused before sending --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "wrong"),
    [
        (("a",), {}, "missing a required argument: 'y'"),
        ((1, 2, 3, 4), {}, "too many positional arguments"),
        ((1,), {"x": 2}, "multiple values for argument 'x'"),
        ((1, 2), {"w": 3}, "got an unexpected keyword argument 'w'"),
        ((), {"y": 2, "z": 3}, "missing a required argument: 'x'"),
    ],
)
async def test_a_call_that_does_not_fit_is_refused_and_nothing_is_sent(
    app: Aqueue, args: tuple[Any, ...], kwargs: dict[str, Any], wrong: str
) -> None:
    add = register(app)
    expected = f"checks.add(x, y, z=0): {wrong}"
    with pytest.raises(ArgumentsError) as delay_error:
        await add.delay(*args, **kwargs)
    assert str(delay_error.value) == expected
    assert isinstance(delay_error.value, TypeError)  # as Celery raises
    assert isinstance(delay_error.value, AqueueError)  # caught by meaning, like every error
    with pytest.raises(TypeError, match=r"^checks\.add"):
        await add.apply_async(args, kwargs, countdown=1)
    with pytest.raises(TypeError, match=r"^checks\.add"):
        await app.send_task("checks.add", args, kwargs)  # registered here: checked too
    with pytest.raises(TypeError, match=r"^checks\.add"):
        await add.s(*args, **kwargs).delay()
    assert await queued(app) == []


async def test_calls_that_fit_are_sent(app: Aqueue) -> None:
    add = register(app)
    await add.delay(1, 2)
    await add.delay(1, 2, 3)
    await add.delay(1, y=2)
    await add.delay(z=3, y=2, x=1)
    await add.apply_async((1,), {"y": 2, "z": 3})
    await app.send_task("checks.add", (1, 2))
    sent = await queued(app)
    assert [(m.args, m.kwargs) for m in sent] == [
        ((1, 2), {}),
        ((1, 2, 3), {}),
        ((1,), {"y": 2}),
        ((), {"z": 3, "y": 2, "x": 1}),
        ((1,), {"y": 2, "z": 3}),
        ((1, 2), {}),
    ]


async def test_delay_many_refuses_the_batch_when_one_call_does_not_fit(app: Aqueue) -> None:
    add = register(app)
    with pytest.raises(ArgumentsError, match=r"checks.add\(x, y, z=0\): too many positional"):
        await add.delay_many([(1, 2), (1, 2, 3, 4)])
    assert await queued(app) == []


@pytest.mark.parametrize(
    ("calls", "error"),
    [([(1, 2), (1, 2, 3, 4), (5, 6)], ArgumentsError), ([(1, 2), (object(), 1)], EncodeError)],
    ids=["arguments", "encoding"],
)
async def test_delay_many_of_a_unique_task_refuses_the_batch_whole(
    app: Aqueue, calls: list[tuple[Any, ...]], error: type[Exception]
) -> None:
    """A unique task's calls are sent one by one (each takes its lock): every one is checked
    and encoded before the first is published, so a bad item sends nothing."""
    add = register(app, unique=True)
    with pytest.raises(error):
        await add.delay_many(calls)
    assert await queued(app) == []
    sent = await add.delay_many([(1, 2), (3, 4)])  # the locks were not taken: both go
    assert sorted(m.id for m in await queued(app)) == sorted(r.id for r in sent)


async def test_a_bound_task_is_checked_without_its_self(app: Aqueue) -> None:
    @app.task(bind=True, name="checks.bound")
    async def bound(self: Task[Any, Any], x: int) -> int:
        return x

    with pytest.raises(ArgumentsError, match=r"^checks.bound\(x\): missing a required argument"):
        await bound.delay()
    with pytest.raises(ArgumentsError, match="multiple values for argument 'self'"):
        await bound.apply_async((1,), {"self": 2})
    await bound.delay(1)
    await bound.delay(x=1)
    assert len(await queued(app)) == 2


async def test_eager_mode_checks_before_running(app: Aqueue) -> None:
    app.conf.task_always_eager = True
    ran: list[int] = []

    @app.task(name="checks.record")
    def record(x: int) -> int:
        ran.append(x)
        return x

    with pytest.raises(ArgumentsError, match=r"^checks.record\(x\)"):
        await record.delay(1, 2)
    assert ran == []
    assert await (await record.delay(5)) == 5


# -- typing=False ----------------------------------------------------------------------------


async def test_typing_false_sends_any_arguments(app: Aqueue) -> None:
    add = register(app, typing=False)
    await add.delay("a")
    await app.send_task("checks.add", (1, 2, 3, 4))
    await add.delay_many([(1,), ()])
    sent = await queued(app)
    assert [m.args for m in sent] == [("a",), (1, 2, 3, 4), (1,), ()]


async def test_typing_false_on_a_base_class_applies_to_its_tasks(app: Aqueue) -> None:
    class Loose(Task[Any, Any]):
        typing = False

    @app.task(base=Loose, name="checks.loose")
    async def loose(x: int) -> int:
        return x

    await loose.delay()
    assert [m.args for m in await queued(app)] == [()]


async def test_a_name_not_registered_here_is_sent_unchecked(app: Aqueue) -> None:
    await app.send_task("elsewhere.add", ("any", "thing", 3))
    assert [m.task for m in await queued(app)] == ["elsewhere.add"]


async def test_the_worker_still_refuses_a_call_sent_unchecked(app: Aqueue) -> None:
    add = register(app)
    add.typing = False  # as a client that skips the check, or has an older copy of the task
    r = await add.delay(1, 2, 3, 4)
    add.typing = True
    async with Worker(app, concurrency=2, shutdown_timeout=5) as worker:
        with pytest.raises(TypeError, match=r"arguments do not fit checks\.add"):
            await r.get(timeout=10)
        await asyncio.wait_for(worker.wait_processed(1), 10)


async def test_a_link_that_does_not_fit_is_logged_and_the_parent_still_succeeds(
    app: Aqueue, caplog: pytest.LogCaptureFixture
) -> None:
    add = register(app)
    # The link gets the parent's result first: add(3, 1, 2, 4) has one argument too many.
    r = await add.apply_async((1, 2), link=add.s(1, 2, 4))
    async with Worker(app, concurrency=2, shutdown_timeout=5) as worker:
        assert await r.get(timeout=10) == 3
        await asyncio.wait_for(worker.wait_processed(1), 10)
    assert await queued(app) == []  # the parent was acked, and no link message was sent
    assert any(
        "could not be sent" in rec.getMessage() and "too many positional" in rec.getMessage()
        for rec in caplog.records
    ), [rec.getMessage() for rec in caplog.records]


# -- the counting fast path agrees with inspect.Signature.bind ------------------------------


def _plain(a: int, b: int, c: int = 0, d: int = 0) -> None: ...


def _required_only(a: int, b: int) -> None: ...


def _defaults_only(a: int = 0, b: int = 0) -> None: ...


def _none() -> None: ...


def _positional_only(a: int, /, b: int, c: int = 0) -> None: ...


def _star(a: int, *rest: int, k: int = 0, **more: int) -> None: ...


@pytest.mark.parametrize(
    "fn", [_plain, _required_only, _defaults_only, _none, _positional_only, _star]
)
@pytest.mark.parametrize("bind", [False, True])
def test_check_arguments_agrees_with_calling_the_function(
    app: Aqueue, fn: Callable[..., None], bind: bool
) -> None:
    """Every call of up to 5 positional arguments and any set of keywords from the parameter
    names plus one stranger: accepted exactly when ``Signature.bind`` accepts it."""
    if bind:

        def with_self(self: Any, *args: Any, **kwargs: Any) -> None: ...

        sig = inspect.signature(fn)
        params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)]
        with_self.__signature__ = sig.replace(  # type: ignore[attr-defined]
            parameters=params + list(sig.parameters.values())
        )
        task = Task(app, with_self, f"checks.{fn.__name__}", bind=True)
    else:
        task = Task(app, fn, f"checks.{fn.__name__}")
    names = [*inspect.signature(fn).parameters, "self", "stranger"]
    for count in range(6):
        args = tuple(range(count))
        for size in range(len(names) + 1):
            for keys in itertools.combinations(names, size):
                kwargs = dict.fromkeys(keys, 0)
                try:
                    inspect.signature(fn).bind(*args, **kwargs)
                    fits = True
                except TypeError:
                    fits = False
                if fits:
                    task.check_arguments(args, kwargs)
                else:
                    with pytest.raises(ArgumentsError, match=rf"^checks\.{fn.__name__}"):
                        task.check_arguments(args, kwargs)


# -- task_max_message_size -------------------------------------------------------------------


@pytest.fixture
async def sized(broker_url: str, queue_name: str) -> AsyncIterator[Aqueue]:
    """An app on each broker whose messages may be 1,000 bytes at most (no result backend
    needed: nothing is awaited)."""
    app = Aqueue(
        "sized", broker=broker_url, task_default_queue=queue_name, task_max_message_size=1000
    )
    register(app)
    yield app
    await app.close()


async def waiting(app: Aqueue) -> list[str]:
    """The ids of the messages waiting in the app's default queue (taken off it)."""
    broker = await app.broker()
    deliveries = await broker.fetch([app.conf.task_default_queue], 100, 0.05)
    await broker.ack(deliveries)
    return [decode(d.body).id for d in deliveries]


async def test_a_message_over_task_max_message_size_is_refused_and_nothing_is_sent(
    sized: Aqueue,
) -> None:
    add = sized.tasks["checks.add"]
    big = "x" * 2000
    with pytest.raises(MessageTooLarge) as refused:
        await sized.send_task("checks.add", (big, 1))
    error = refused.value
    assert isinstance(error, EncodeError)
    assert (error.task, error.limit) == ("checks.add", 1000)
    assert error.size > 2000
    assert str(error).startswith(
        f"message of checks.add is {error.size} bytes, more than task_max_message_size=1000: "
        "nothing was sent"
    )
    with pytest.raises(MessageTooLarge):
        await add.apply_async((1, 2), {"z": 0}, headers={"blob": big})
    with pytest.raises(MessageTooLarge):
        await add.apply_async((1, 2), countdown=30, link=add.s(big, 1))
    small = await add.delay(1, 2)
    assert await waiting(sized) == [small.id]  # only the call that fits


async def test_a_batch_with_one_message_too_large_is_refused_whole(sized: Aqueue) -> None:
    add = sized.tasks["checks.add"]
    calls = [(i, i) for i in range(5)] + [("x" * 2000, 1)] + [(9, 9)]
    with pytest.raises(MessageTooLarge, match=r"^message of checks\.add is \d+ bytes"):
        await add.delay_many(calls)
    with pytest.raises(MessageTooLarge):
        await group(add.s(*call) for call in calls).delay()
    with pytest.raises(MessageTooLarge):
        await chain(add.s(1, 2), add.s("x" * 2000)).delay()  # the chain rides in the first
    members = [add.s(i, i).set(task_id=f"member-{i}") for i in range(1500)]  # two batches
    members.append(add.s("x" * 2000, 1))
    with pytest.raises(MessageTooLarge):
        await group(members).delay()
    assert await waiting(sized) == []


async def test_the_limit_counts_the_signature_and_a_message_at_the_limit_is_sent(
    sized: Aqueue,
) -> None:
    add = sized.tasks["checks.add"]
    fixed = Message("fixed", "checks.add", (1, 2))
    sized.conf.task_max_message_size = len(fixed.encode())
    assert sized.sender.encode(fixed) == fixed.encode()  # exactly at the limit: sent
    sized.conf.task_max_message_size = len(fixed.encode()) - 1
    with pytest.raises(MessageTooLarge, match=f"is {len(fixed.encode())} bytes"):
        sized.sender.encode(fixed)

    sized.conf.task_max_message_size = 1
    with pytest.raises(MessageTooLarge) as probe:
        await add.apply_async((1, 2), task_id="at-limit")
    size = probe.value.size  # give or take a digit of the time it was sent at
    sized.conf.task_max_message_size = size + 20
    await add.apply_async((1, 2), task_id="at-limit")
    sized.conf.task_signing_key = "send-checks-key-0123456789abcdef"  # adds 75 bytes
    with pytest.raises(MessageTooLarge) as signed:
        await add.apply_async((1, 2), task_id="at-limit")
    assert size + 70 <= signed.value.size <= size + 80
    assert await waiting(sized) == ["at-limit"]
