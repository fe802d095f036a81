"""The result side under stress: records that are no result record, and a waiter whose
deadline runs out just as its subscription is confirmed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from aqueue import Aqueue
from aqueue.exceptions import DecodeError
from aqueue.exceptions import TimeoutError as ResultTimeout
from aqueue.results.record import ResultRecord
from aqueue.transports.memory.results import MemoryBackend
from aqueue.transports.redis.results import RedisBackend
from aqueue.transports.sqlite.results import SQLiteBackend
from tests.results.test_waiter_edges import WAIT, subscribers, until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def app(backend_url: str) -> AsyncIterator[Aqueue]:
    """An app on each result backend (memory, SQLite, Redis); nothing runs its tasks."""
    url = backend_url if backend_url != "memory://" else f"memory://audit-{uuid.uuid4().hex[:8]}"
    app = Aqueue("audit", broker=url, backend=url)
    yield app
    await app.close()


def watchers(backend: object, task_id: str) -> int:
    """How many watches of ``task_id`` are live on ``backend`` (memory, SQLite, Redis)."""
    if isinstance(backend, RedisBackend):
        return len(backend._watchers.get(backend._keys.result_channel(task_id).encode(), ()))
    if isinstance(backend, SQLiteBackend):
        return sum(w.ready for w in backend._watchers.of(task_id))
    assert isinstance(backend, MemoryBackend)
    return len(backend._watchers.of(task_id))


# -- records that are no result record ----------------------------------------------------------

FOREIGN = [
    pytest.param(b"[1, 2]", id="a-json-list"),
    pytest.param(b'"SUCCESS"', id="a-json-string"),
    pytest.param(b'{"task_id": "t", "status": ["SUCCESS"]}', id="a-list-status"),
    pytest.param(b'{"task_id": "t", "status": null}', id="a-null-status"),
    pytest.param(b'{"task_id": ["t"], "status": "SUCCESS"}', id="a-list-task-id"),
]


@pytest.mark.parametrize("raw", FOREIGN)
async def test_a_foreign_record_already_stored_is_a_decode_error(app: Aqueue, raw: bytes) -> None:
    """A value under a task's id that is JSON but no result record (written by another program,
    or by hand) is a ``DecodeError`` for whoever reads it: before, a list or string crashed
    ``get()`` and ``state()`` with an ``AttributeError``, a list status with a ``TypeError``,
    and a null status read as a state that never finishes (``get()`` waited for ever)."""
    backend = await app.result_backend()
    task_id = str(uuid.uuid4())
    await backend.store([(task_id, raw)], 60)
    with pytest.raises(DecodeError, match="malformed result record"):
        await app.AsyncResult(task_id).get(timeout=WAIT)
    with pytest.raises(DecodeError, match="malformed result record"):
        await app.AsyncResult(task_id).state()


@pytest.mark.parametrize("raw", FOREIGN)
async def test_a_foreign_record_arriving_while_waited_is_a_decode_error(
    app: Aqueue, raw: bytes
) -> None:
    """The same record stored while ``get()`` waits (it comes over the backend's push path)
    ends that wait with a ``DecodeError``, and a group waiting on it too."""
    backend = await app.result_backend()
    task_id = str(uuid.uuid4())
    handle = app.AsyncResult(task_id)
    group = app.GroupResult(str(uuid.uuid4()), [app.AsyncResult(task_id)])
    waiter = asyncio.ensure_future(handle.get(timeout=WAIT))
    joined = asyncio.ensure_future(group.get(timeout=WAIT))
    await until(lambda: watchers(backend, task_id) == 2, "both waiters subscribed")
    await backend.store([(task_id, raw)], 60)
    outcomes = await asyncio.gather(waiter, joined, return_exceptions=True)
    for raised in outcomes:
        assert isinstance(raised, DecodeError), raised
        assert "malformed result record" in str(raised)


# -- a deadline running out as the subscription is confirmed ------------------------------------


async def test_a_waiter_cancelled_as_its_subscribe_is_confirmed_stays_cancelled(
    redis_server: str,
) -> None:
    """A second ``get()`` of a task joins a SUBSCRIBE still unconfirmed; its deadline (a
    cancellation) comes in the same loop step as the confirmation. It must end cancelled: on
    Python 3.11, ``asyncio.wait_for`` swallowed that cancellation, so the waiter went on to wait
    for the record with its deadline spent - for ever, ``timeout=`` or not."""
    url = f"{redis_server}/0"
    app = Aqueue("audit", broker=url, backend=url)
    admin = aioredis.from_url(url)
    task_id = str(uuid.uuid4())
    try:
        backend = await app.result_backend()
        assert isinstance(backend, RedisBackend)
        channel = backend._keys.result_channel(task_id).encode()
        async with backend.watch(str(uuid.uuid4())):  # the pub/sub connection is open
            await admin.client_pause(3000)  # the server answers the SUBSCRIBE below late
            first = asyncio.ensure_future(app.AsyncResult(task_id).get(timeout=WAIT))
            await until(lambda: bool(backend._confirmations.get(channel)), "SUBSCRIBE sent")
            second = asyncio.ensure_future(app.AsyncResult(task_id).get())
            await until(lambda: len(backend._watchers.get(channel, ())) == 2, "second joined")
            await asyncio.sleep(0)  # the second awaits the confirmation
            backend._confirmations[channel][-1].set_result(None)  # as the reader does
            second.cancel()  # as its deadline does, in the same step
            done, _ = await asyncio.wait([second], timeout=WAIT)
            assert second in done and second.cancelled()  # before the fix: still waiting
            first.cancel()
            await asyncio.wait([first])
        await until(lambda: channel not in backend._watchers, "every watch of the task left")
    finally:
        await admin.aclose()
        await app.close()


async def test_many_waiters_with_tiny_deadlines_all_end_and_leave_nothing(
    redis_server: str,
) -> None:
    """Hundreds of ``get()``s of three tasks, each with a deadline of 0 to 10 ms, all end with
    a timeout (before the fix some hung, see above), leave no watcher behind, and a waiter
    afterwards still gets the result."""
    url = f"{redis_server}/0"
    app = Aqueue("audit", broker=url, backend=url)
    ids = [str(uuid.uuid4()) for _ in range(3)]
    try:
        backend = await app.result_backend()
        assert isinstance(backend, RedisBackend)

        async def waits(i: int) -> None:
            with pytest.raises(TimeoutError):  # aqueue's TimeoutError is one
                await app.AsyncResult(ids[i % 3]).get(timeout=(i % 11) / 1000)

        for _ in range(5):
            await asyncio.wait_for(asyncio.gather(*(waits(i) for i in range(100))), WAIT)
        assert backend._watchers == {} and backend._watched_ids == {}
        last = asyncio.ensure_future(app.AsyncResult(ids[0]).get(timeout=WAIT))
        await until(lambda: bool(backend._watchers), "the last waiter subscribed")
        record = ResultRecord(task_id=ids[0], status="SUCCESS", result=7)
        await backend.store([(ids[0], record.encode())], 60)
        assert await last == 7
    finally:
        await app.close()


# -- forget() and the reply channel -------------------------------------------------------------


async def test_a_forgotten_result_is_not_returned_again_from_the_reply_channel(
    redis_server: str,
) -> None:
    """A handle from a send (its records come on the client's reply channel) is forgotten after
    its task succeeded: its state reads PENDING, and ``get()`` must wait as for any pending
    task - before, it returned the forgotten value at once from the records already arrived,
    unlike a handle made from the id. A record stored afterwards (the task run again) is
    what it returns."""
    url = f"{redis_server}/0"
    app = Aqueue("audit", broker=url, backend=url)
    try:
        backend = await app.result_backend()
        assert isinstance(backend, RedisBackend)
        r = await app.send_task("audit.nobody_runs_it")
        assert r._mailbox is not None  # records come on the reply channel
        channel = await backend.reply_channel()

        async def stored(value: int) -> None:
            record = ResultRecord(task_id=r.id, status="SUCCESS", result=value)
            await backend.store([(r.id, record.encode())], 60, {r.id: channel})

        await stored(1)
        assert await r.get(timeout=WAIT) == 1
        await r.forget()
        assert await r.state() == "PENDING"
        with pytest.raises(ResultTimeout):
            await r.get(timeout=0.2)  # before the fix: 1
        again = asyncio.ensure_future(r.get(timeout=WAIT))
        await stored(2)
        assert await again == 2
    finally:
        await app.close()


async def test_a_forgotten_group_members_results_are_not_returned_again(
    redis_server: str,
) -> None:
    """The same through ``GroupResult.forget()`` of a group made of sent tasks' handles: a
    member handle awaited afterwards waits instead of returning its forgotten value."""
    url = f"{redis_server}/0"
    app = Aqueue("audit", broker=url, backend=url)
    try:
        backend = await app.result_backend()
        assert isinstance(backend, RedisBackend)
        sent = [await app.send_task("audit.nobody_runs_it") for _ in range(2)]
        g = app.GroupResult(str(uuid.uuid4()), sent)
        channel = await backend.reply_channel()
        for value, member in enumerate(g.results):
            assert member._mailbox is not None
            record = ResultRecord(task_id=member.id, status="SUCCESS", result=value)
            await backend.store([(member.id, record.encode())], 60, {member.id: channel})
        assert await g.get(timeout=WAIT) == [0, 1]
        assert await g.results[1].get(timeout=WAIT) == 1
        await g.forget()
        with pytest.raises(ResultTimeout):
            await g.results[1].get(timeout=0.2)  # before the fix: 1
    finally:
        await app.close()


# -- a waiter cancelled again while it leaves ---------------------------------------------------


async def test_a_waiter_cancelled_twice_still_leaves_its_watch(redis_server: str) -> None:
    """A ``get()`` is cancelled (its deadline, say) and, while its watch waits to unsubscribe
    (another watch is subscribing meanwhile), cancelled again (its caller gives up too). Its
    watch must still go: before, the second cancellation stopped the unsubscribe half-way,
    leaving the task's channel subscribed, its queue fed and its id renewed in the watched set
    for the client's whole life."""
    url = f"{redis_server}/0"
    app = Aqueue("audit", broker=url, backend=url)
    task_id = str(uuid.uuid4())
    try:
        backend = await app.result_backend()
        assert isinstance(backend, RedisBackend)
        channel = backend._keys.result_channel(task_id).encode()
        waiter = asyncio.ensure_future(app.AsyncResult(task_id).get())
        await until(lambda: watchers(backend, task_id) == 1, "the waiter subscribed")
        await until(lambda: task_id in backend._watched_ids.values(), "the waiter watching")
        async with backend._subscribing:  # as another watch sending its SUBSCRIBE does
            waiter.cancel()
            await until(lambda: bool(backend._subscribing._waiters), "the waiter leaving")
            waiter.cancel()
            await asyncio.wait([waiter])
        await until(lambda: channel not in backend._watchers, "the watch gone")  # before: kept
        assert backend._watched_ids == {}
        await until(lambda: not backend._subscribing.locked(), "the UNSUBSCRIBE sent")
        assert await subscribers(url, channel) == 0
    finally:
        await app.close()
