"""The sending path under cancellation and bad input.

- A send cancelled while its idempotency mark or unique lock is being taken (a web request
  given up on) leaves neither behind: the next send of the same id or key is published.
- ``countdown``, ``eta``, ``expires`` that are not finite, a ``time_limit`` that is not a
  positive number, ids and queue names that are not strings are refused at send with
  :class:`~aqueue.exceptions.ConfigurationError`, and nothing is published (sent, the worker
  would drop the message as malformed, or run it at once).
- A route (``task_routes``) that gives something other than a queue name or a dict of options,
  or an entry of ``task_routes`` that is neither a dict nor a function, is a
  :class:`~aqueue.exceptions.ConfigurationError` naming the task, not a message in a wrong
  queue.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aqueue import Aqueue, Task
from aqueue.exceptions import ArgumentsError, BrokerConnectionError, ConfigurationError
from aqueue.message import decode
from aqueue.sending import guard as guarding
from aqueue.sending.guard import with_guards
from aqueue.sending.unique import DEFAULT_UNIQUE_TTL, UniqueLock

pytestmark = pytest.mark.timeout(60)


async def waiting(app: Aqueue, queue: str | None = None) -> list[str]:
    """The ids of the messages waiting in ``queue`` (default: the app's), taken off it."""
    broker = await app.broker()
    deliveries = await broker.fetch([queue or app.conf.task_default_queue], 100, 0.05)
    await broker.ack(deliveries)
    return [decode(d.body).id for d in deliveries]


def register(app: Aqueue, **options: Any) -> Task[Any, Any]:
    @app.task(name="audit.add", **options)
    async def add(x: int, y: int = 0) -> int:
        return x + y

    return add


# -- a send cancelled while it takes its mark or lock ------------------------------------------


@pytest.fixture(params=["sqlite", "redis"])
async def locking(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Aqueue]:
    """An app on a SQLite broker with its results (and locks) in SQLite, or on Redis."""
    if request.param == "sqlite":
        broker, backend = f"sqlite:///{tmp_path / 'broker.db'}", f"sqlite:///{tmp_path / 'r.db'}"
    else:
        broker = backend = f"{request.getfixturevalue('redis_server')}/0"
    app = Aqueue(
        "audit", broker=broker, backend=backend, task_default_queue=f"audit-{uuid.uuid4().hex}"
    )
    yield app
    await app.close()


@pytest.mark.parametrize("guard", ["task_id", "unique_key"])
async def test_a_send_cancelled_while_taking_its_lock_is_still_sent_once(
    locking: Aqueue, monkeypatch: pytest.MonkeyPatch, guard: str
) -> None:
    """The first send's lock is taken at the server, its answer slow to come back; another
    client's send of the same call finds it held and returns the first call's handle; then
    the first caller gives up. That handle must still get its call: the first send goes on and
    publishes, once; it neither leaves its lock behind with nothing sent, nor frees it with
    the other client holding a handle of a call never sent."""
    app = locking
    add = register(app)
    await app.broker()
    backend: Any = await app.result_backend()
    answered, answer = asyncio.Event(), asyncio.Event()
    real_lock = backend.lock
    slow = [True]

    async def lock(key: str, owner: str, ttl: float) -> str:
        holder = await real_lock(key, owner, ttl)  # taken at the server...
        if slow:
            slow.clear()
            answered.set()
            await answer.wait()  # ...and the first answer slow to come back
        return holder

    monkeypatch.setattr(backend, "lock", lock)
    options: dict[str, Any] = {guard: f"audit-{uuid.uuid4().hex}"}
    sending = asyncio.create_task(add.apply_async((1, 2), **options))
    await answered.wait()
    other = await add.apply_async((1, 2), **options)  # another client, meanwhile
    sending.cancel()  # the first caller gives up (a web request timing out)
    answer.set()
    with pytest.raises(asyncio.CancelledError):
        await sending
    await asyncio.gather(*list(guarding._LEFT))  # the send the caller left, to its end
    assert await waiting(app) == [other.id]
    again = await add.apply_async((1, 2), **options)  # a retry of the call
    assert again.id == other.id
    assert await waiting(app) == []


@pytest.mark.parametrize("guard", ["task_id", "unique_key"])
async def test_a_send_that_finds_a_failing_send_holding_its_lock_gets_no_handle_of_nothing(
    locking: Aqueue, monkeypatch: pytest.MonkeyPatch, guard: str
) -> None:
    """The first send of a call takes its mark or lock, and its publish is slow to fail (the
    broker refuses it); a second send of the same call finds the mark or lock held meanwhile.
    The second send must not return the first call's handle before that call is published: the
    first send fails, and the second then sends the call itself (published once)."""
    app = locking
    add = register(app)
    broker: Any = await app.broker()
    backend: Any = await app.result_backend()
    publishing, refuse, second_answered = asyncio.Event(), asyncio.Event(), asyncio.Event()
    real_publish, real_lock = broker.publish, backend.lock
    publishes, locks_taken = [0], [0]

    async def publish(messages: Any) -> None:
        publishes[0] += 1
        if publishes[0] == 1:  # the first send's publish: slow, then refused
            publishing.set()
            await refuse.wait()
            raise BrokerConnectionError("refused")
        await real_publish(messages)

    async def lock(key: str, owner: str, ttl: float) -> str:
        holder = await real_lock(key, owner, ttl)
        locks_taken[0] += 1
        if locks_taken[0] == 2:  # the second send has its answer: the lock is held
            second_answered.set()
        return holder

    monkeypatch.setattr(broker, "publish", publish)
    monkeypatch.setattr(backend, "lock", lock)
    options: dict[str, Any] = {guard: f"audit-{uuid.uuid4().hex}", "retry": False}
    first = asyncio.create_task(add.apply_async((1, 2), **options))
    await publishing.wait()
    second = asyncio.create_task(add.apply_async((1, 2), **options))
    await second_answered.wait()
    refuse.set()
    with pytest.raises(BrokerConnectionError):
        await first
    other = await second
    assert await waiting(app) == [other.id]  # the handle returned is of a call sent
    again = await add.apply_async((1, 2), **options)  # a retry of the call
    assert again.id == other.id
    assert await waiting(app) == []
    assert guarding._SENDING == {}  # no send is left noted as in flight


# -- values no message can carry ----------------------------------------------------------------


@pytest.fixture
async def app() -> AsyncIterator[Aqueue]:
    """An app on a memory broker of its own."""
    url = f"memory://audit-{uuid.uuid4().hex[:8]}"
    app = Aqueue("audit", broker=url, backend=url)
    yield app
    await app.close()


async def everything_waiting(app: Aqueue, *queues: Any) -> list[Any]:
    """The queues, of ``queues`` (any value, as a wrong route may give) and the default one,
    holding a message, due or not (each message found is dropped)."""
    broker = await app.broker()
    found = []
    for queue in (app.conf.task_default_queue, *queues):
        if await broker.purge([queue]):
            found.append(queue)
    return found


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"countdown": NAN}, "countdown"),
        ({"countdown": INF}, "countdown"),
        ({"countdown": -INF}, "countdown"),
        ({"eta": NAN}, "eta"),
        ({"eta": INF}, "eta"),
        ({"expires": NAN}, "expires"),
        ({"expires": -INF}, "expires"),
        ({"time_limit": 0}, "time_limit"),
        ({"time_limit": -1}, "time_limit"),
        ({"time_limit": "60"}, "time_limit"),
        ({"time_limit": NAN}, "time_limit"),
        ({"task_id": 5}, "task_id"),
        ({"parent_id": 5}, "parent_id"),
        ({"root_id": ["x"]}, "root_id"),
        ({"group_id": 3}, "group_id"),
        ({"queue": 5}, "queue"),
        ({"queue": ""}, "queue"),
        ({"options": "x"}, "options"),
    ],
)
async def test_a_value_no_message_can_carry_is_refused_and_nothing_is_sent(
    app: Aqueue, options: dict[str, Any], named: str
) -> None:
    add = register(app)
    with pytest.raises(ConfigurationError, match=named):
        await add.apply_async((1, 2), **options)
    assert await everything_waiting(app, 5, "") == []


async def test_a_value_no_message_can_carry_is_refused_in_a_workflow_too(app: Aqueue) -> None:
    add = register(app)
    with pytest.raises(ConfigurationError, match="time_limit"):
        await (add.si(1) | add.s().set(time_limit=0)).apply_async()
    with pytest.raises(ConfigurationError, match="countdown"):
        await (add.si(1) | add.s().set(countdown=NAN)).apply_async()
    assert await everything_waiting(app) == []


@pytest.mark.parametrize("name", ["", 5, None])
async def test_send_task_refuses_a_name_that_is_not_one(app: Aqueue, name: Any) -> None:
    with pytest.raises(ConfigurationError, match="task name"):
        await app.send_task(name, (1,))
    assert await everything_waiting(app, "", 5, None) == []


async def test_valid_edge_values_are_sent(app: Aqueue) -> None:
    add = register(app)
    await add.apply_async((1,), countdown=-5, expires=1e9, time_limit=0.5, priority=9)
    await add.apply_async((1,), eta=1e12, queue="other")
    assert sorted(await everything_waiting(app, "other")) == ["default", "other"]


# -- routes that give no queue ------------------------------------------------------------------


def _router(value: Any) -> Any:
    def route(name: str, args: Any, kwargs: Any, options: Any) -> Any:
        return value

    return route


@pytest.mark.parametrize(
    "routes",
    [
        {"audit.*": 5},
        {"audit.*": ["q"]},
        {"audit.*": {"queue": 5}},
        {"audit.*": {"queue": ""}},
        _router(5),
        _router(["q"]),
        _router({"queue": b"q"}),
    ],
)
async def test_a_route_that_gives_no_queue_is_a_clear_error_and_nothing_is_sent(
    routes: Any,
) -> None:
    url = f"memory://audit-{uuid.uuid4().hex[:8]}"
    app = Aqueue("audit", broker=url, backend=url, task_routes=routes)
    try:
        add = register(app)
        with pytest.raises(ConfigurationError, match=r"audit\.add"):
            await add.delay(1)
        assert await everything_waiting(app, 5, "", "q", b"q") == []
    finally:
        await app.close()


async def test_routes_that_match_still_route() -> None:
    url = f"memory://audit-{uuid.uuid4().hex[:8]}"
    routes = [{"other.*": "x"}, _router(None), {"audit.*": {"queue": "q"}}]
    app = Aqueue("audit", broker=url, backend=url, task_routes=routes)
    try:
        add = register(app)
        await add.delay(1)
        assert await everything_waiting(app, "q", "x") == ["q"]
    finally:
        await app.close()


# -- calls a worker could not read ---------------------------------------------------------------


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
async def test_keyword_names_that_are_not_strings_are_refused(app: Aqueue, serializer: str) -> None:
    with pytest.raises(ArgumentsError, match="keyword"):
        await app.send_task("audit.elsewhere", (), {1: 2}, serializer=serializer)
    add = register(app, typing=False)
    with pytest.raises(ArgumentsError, match="keyword"):
        await add.apply_async((1,), {("y",): 2})
    assert await everything_waiting(app) == []


@pytest.mark.parametrize(
    "link",
    [
        {"task": 5},
        [{"task": "audit.add", "args": "12"}],
        {"task": "audit.add", "kwargs": [1]},
        {"task": "audit.add", "options": "x"},
    ],
)
async def test_a_link_given_as_a_dict_no_worker_can_read_is_refused(app: Aqueue, link: Any) -> None:
    add = register(app)
    with pytest.raises(ConfigurationError, match="link"):
        await add.apply_async((1,), link=link)
    with pytest.raises(ConfigurationError, match="link_error"):
        await add.apply_async((1,), link_error=link)
    assert await everything_waiting(app) == []


async def test_a_link_given_as_a_dict_that_fits_is_sent(app: Aqueue) -> None:
    add = register(app)
    await add.apply_async((1,), link={"task": "audit.add", "args": (2,), "kwargs": None})
    broker = await app.broker()
    (delivery,) = await broker.fetch([app.conf.task_default_queue], 10, 0.05)
    assert decode(delivery.body).link[0]["args"] == [2]


# -- self.retry(...): the time of the next run ----------------------------------------------------


@pytest.fixture
def far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's local time zone is nine hours off UTC."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_retry_at_a_naive_eta_reads_it_as_utc_as_apply_async_does(
    app: Aqueue, far_from_utc: None
) -> None:
    add = register(app)
    naive = datetime(2030, 1, 1, 12, 0)
    when = add.retry(eta=naive).when
    assert isinstance(when, datetime)
    # The worker publishes the retry at when.timestamp(): the same instant apply_async(eta=)
    # gives a naive datetime, not one nine hours off.
    assert when.timestamp() == naive.replace(tzinfo=UTC).timestamp()


def test_a_retry_at_an_eta_in_epoch_seconds_is_at_that_time(app: Aqueue) -> None:
    add = register(app)
    at = time.time() + 60
    when = add.retry(eta=at).when  # as apply_async(eta=) takes it
    assert isinstance(when, datetime)
    assert when.timestamp() == pytest.approx(at)


@pytest.mark.parametrize("countdown", [NAN, INF, -INF])
def test_a_retry_with_a_countdown_that_is_no_time_is_refused(app: Aqueue, countdown: float) -> None:
    add = register(app)
    with pytest.raises(ConfigurationError, match="countdown"):
        add.retry(countdown=countdown)
    with pytest.raises(ConfigurationError, match="eta"):
        add.retry(eta=NAN)


# -- a unique call due later than its lock would last ---------------------------------------------


@pytest.mark.parametrize(
    ("options", "least"),
    [
        ({"countdown": 7200}, 7200 + DEFAULT_UNIQUE_TTL),
        ({"countdown": 7200, "expires": 9000}, 9000),
        ({"countdown": 10}, 10 + DEFAULT_UNIQUE_TTL),
        ({}, DEFAULT_UNIQUE_TTL),
    ],
)
async def test_a_unique_call_due_later_stays_locked_until_it_runs(
    app: Aqueue, options: dict[str, Any], least: float
) -> None:
    """The lock of a queued unique call lasts one hour (``unique_ttl``'s default) from when
    it is due, not from the send: locked for an hour only, a call due in two would let a second
    call be sent meanwhile."""
    add = register(app, unique=True)
    message = app.sender.build_message("audit.add", (1, 2), {}, add, options)
    lock = UniqueLock.from_message(with_guards(message, add, options))
    assert lock is not None
    assert least - 5 <= lock.ttl <= least + 5
