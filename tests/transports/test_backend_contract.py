"""The ResultBackend Protocol contract, run against every transport (``backend_url``, conftest).

A new result backend is done when it passes this file unchanged. Watch tests wait on the queue
(with a timeout), never on sleeps; sleeps appear only to let a record expire.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from aqueue.transports import (
    Locks,
    ReplyChannels,
    ResultBackend,
    Waiters,
    backend_from_url,
    has_locks,
    has_waiters,
    waiters_key,
)

pytestmark = pytest.mark.timeout(30)

NOTIFY_TIMEOUT = 5.0  # seconds a watcher may wait for a stored record to reach its queue


@pytest.fixture
async def backend(backend_url: str) -> AsyncIterator[ResultBackend]:
    backend = backend_from_url(backend_url)
    await backend.connect()
    yield backend
    await backend.close()


def new_id() -> str:
    return str(uuid.uuid4())


async def next_record(queue: asyncio.Queue[bytes]) -> bytes:
    return await asyncio.wait_for(queue.get(), NOTIFY_TIMEOUT)


async def test_store_and_get_many(backend: ResultBackend) -> None:
    a, b, missing = new_id(), new_id(), new_id()
    await backend.store([(a, b"record a"), (b, bytes(range(256)))], expires=None)

    assert await backend.get_many([b, missing, a]) == [bytes(range(256)), None, b"record a"]
    assert await backend.get_many([]) == []


async def test_a_burst_beyond_the_connection_bound_waits_instead_of_failing(
    backend: ResultBackend,
) -> None:
    """Three times the Redis clients' connection bound of reads at once, all of one key (so
    one node of a cluster): the ones past the bound wait for a connection, on one server, over
    Sentinel and on Redis Cluster alike (whose own pools would fail them)."""
    from aqueue.transports.redis.client import MAX_CONNECTIONS

    task_id = new_id()
    await backend.store([(task_id, b"SUCCESS")], 60)
    answers = await asyncio.gather(
        *(backend.get_many([task_id]) for _ in range(3 * MAX_CONNECTIONS))
    )
    assert answers == [[b"SUCCESS"]] * (3 * MAX_CONNECTIONS)


async def test_store_replaces(backend: ResultBackend) -> None:
    task_id = new_id()
    await backend.store([(task_id, b"STARTED")], expires=None)
    await backend.store([(task_id, b"SUCCESS")], expires=None)

    assert await backend.get_many([task_id]) == [b"SUCCESS"]


async def test_store_many_in_one_call(backend: ResultBackend) -> None:
    items = [(new_id(), b"record %d" % i) for i in range(500)]
    await backend.store(items, expires=60)

    assert await backend.get_many([task_id for task_id, _ in items]) == [r for _, r in items]


async def test_delete(backend: ResultBackend) -> None:
    keep, gone, never = new_id(), new_id(), new_id()
    await backend.store([(keep, b"keep"), (gone, b"gone")], expires=None)

    await backend.delete([gone, never])
    await backend.delete([])

    assert await backend.get_many([keep, gone, never]) == [b"keep", None, None]


async def test_records_expire(backend: ResultBackend) -> None:
    short, kept = new_id(), new_id()
    await backend.store([(short, b"short-lived")], expires=0.3)
    await backend.store([(kept, b"kept")], expires=60)
    assert await backend.get_many([short]) == [b"short-lived"]

    deadline = time.monotonic() + 3
    while await backend.get_many([short]) != [None]:
        assert time.monotonic() < deadline, "the record did not expire within 3 s"
        await asyncio.sleep(0.1)  # letting the expiry pass is what this test is about

    assert await backend.get_many([kept]) == [b"kept"]


async def test_add_member_counts_distinct_members(backend: ResultBackend) -> None:
    key = new_id()
    assert await backend.add_member(key, "a", expires=60) == 1
    assert await backend.add_member(key, "b", expires=60) == 2
    # A member added again (a retried call, a task run twice) is not counted again.
    assert await backend.add_member(key, "a", expires=None) == 2
    assert await backend.add_member(key, "b", expires=60) == 2
    assert await backend.add_member(new_id(), "a", expires=60) == 1


@pytest.fixture
async def clients(backend_url: str) -> AsyncIterator[list[ResultBackend]]:
    """Two connected clients where the transport allows it (one on memory), as two workers
    would be."""
    backends = [backend_from_url(backend_url)]
    if not backend_url.startswith("memory"):
        backends.append(backend_from_url(backend_url))
    for b in backends:
        await b.connect()
    yield backends
    for b in backends:
        await b.close()


async def test_add_member_is_atomic_with_duplicates(clients: list[ResultBackend]) -> None:
    backends = clients
    key = new_id()
    members = [f"m{i}" for i in range(25)] * 2  # every member added twice

    values = await asyncio.gather(
        *(backends[i % len(backends)].add_member(key, m, 60) for i, m in enumerate(members))
    )

    # Each first addition saw a size of its own; exactly 25 distinct members in the end.
    assert set(values) == set(range(1, 26))
    assert values.count(1) <= 2  # only m0's two additions can see a set of one
    assert await backends[-1].add_member(key, "m0", 60) == 25


async def test_member_sets_expire(backend: ResultBackend) -> None:
    key = new_id()
    assert await backend.add_member(key, "a", expires=0.3) == 1
    assert await backend.add_member(key, "b", expires=0.3) == 2

    await asyncio.sleep(0.5)  # letting the set expire is what this test is about

    assert await backend.add_member(key, "c", expires=60) == 1


async def test_watch_receives_records_stored_after_entering(backend: ResultBackend) -> None:
    task_id = new_id()
    async with backend.watch(task_id) as queue:
        await backend.store([(task_id, b"STARTED")], expires=None)
        assert await next_record(queue) == b"STARTED"

        await backend.store([(task_id, b"PROGRESS")], expires=None)
        await backend.store([(task_id, b"SUCCESS")], expires=None)
        assert [await next_record(queue), await next_record(queue)] == [b"PROGRESS", b"SUCCESS"]


async def test_two_watchers_of_one_id_both_receive(backend: ResultBackend) -> None:
    task_id = new_id()
    async with backend.watch(task_id) as first, backend.watch(task_id) as second:
        await backend.store([(task_id, b"SUCCESS")], expires=None)

        assert await next_record(first) == b"SUCCESS"
        assert await next_record(second) == b"SUCCESS"


async def test_watchers_only_get_their_own_id(backend: ResultBackend) -> None:
    ids = [new_id() for _ in range(20)]
    async with backend.watch(ids[0]) as first, backend.watch(ids[1]) as second:
        await backend.store([(task_id, task_id.encode()) for task_id in ids], expires=None)

        assert await next_record(first) == ids[0].encode()
        assert await next_record(second) == ids[1].encode()
        await backend.store([(ids[1], b"again")], expires=None)
        assert await next_record(second) == b"again"
        assert first.empty()


async def test_many_watchers_at_once(backend: ResultBackend) -> None:
    ids = [new_id() for _ in range(100)]

    async def wait_for_record(task_id: str, subscribed: asyncio.Event) -> bytes:
        async with backend.watch(task_id) as queue:
            subscribed.set()
            return await next_record(queue)

    events = [asyncio.Event() for _ in ids]
    waiters = [asyncio.create_task(wait_for_record(i, e)) for i, e in zip(ids, events, strict=True)]
    await asyncio.gather(*(e.wait() for e in events))
    await backend.store([(task_id, b"done " + task_id.encode()) for task_id in ids], expires=60)

    assert await asyncio.gather(*waiters) == [b"done " + task_id.encode() for task_id in ids]


async def test_record_stored_before_watching_is_read_not_queued(backend: ResultBackend) -> None:
    task_id = new_id()
    await backend.store([(task_id, b"STARTED")], expires=None)

    async with backend.watch(task_id) as queue:
        assert await backend.get_many([task_id]) == [b"STARTED"]
        await backend.store([(task_id, b"SUCCESS")], expires=None)

        # The first record on the queue is the one stored after entering.
        assert await next_record(queue) == b"SUCCESS"
        assert queue.empty()


async def test_leaving_a_watch_stops_delivery(backend: ResultBackend) -> None:
    task_id = new_id()
    async with backend.watch(task_id) as staying:
        async with backend.watch(task_id) as leaving:
            pass
        await backend.store([(task_id, b"after leaving")], expires=None)

        assert await next_record(staying) == b"after leaving"
        assert leaving.empty()

    # After the last watcher left, watching the id again works.
    async with backend.watch(task_id) as queue:
        await backend.store([(task_id, b"watched again")], expires=None)
        assert await next_record(queue) == b"watched again"


async def test_connect_and_close_are_idempotent(backend_url: str) -> None:
    backend = backend_from_url(backend_url)
    await backend.connect()
    await backend.connect()
    task_id = new_id()
    await backend.store([(task_id, b"x")], expires=60)
    await backend.close()
    await backend.close()

    await backend.connect()  # usable again after close
    async with backend.watch(task_id) as queue:
        await backend.store([(task_id, b"y")], expires=60)
        assert await next_record(queue) == b"y"
    await backend.close()


# -- Locks and Waiters (unique tasks, idempotent sends, dependencies) -------------------------


def locks_of(backend: ResultBackend) -> Locks:
    assert has_locks(backend), f"{type(backend).__name__} keeps no locks"
    return backend


def waiters_of(backend: ResultBackend) -> Waiters:
    assert has_waiters(backend), f"{type(backend).__name__} keeps no waiter sets"
    return backend


async def test_lock_is_taken_once_and_kept_by_its_owner(backend: ResultBackend) -> None:
    locks, key = locks_of(backend), new_id()
    assert await locks.lock(key, "first", 60) == "first"
    assert await locks.lock(key, "second", 60) == "first"  # held: the holder is answered
    assert await locks.lock(key, "first", 60) == "first"  # the owner renews it

    assert not await locks.unlock(key, "second")  # not its lock: left alone
    assert await locks.lock(key, "second", 60) == "first"
    assert await locks.unlock(key, "first")
    assert not await locks.unlock(key, "first")  # freed already
    assert await locks.lock(key, "second", 60) == "second"


async def test_lock_expires(backend: ResultBackend) -> None:
    locks, key = locks_of(backend), new_id()
    assert await locks.lock(key, "first", 0.3) == "first"
    assert await locks.lock(key, "second", 60) == "first"

    await asyncio.sleep(0.5)  # letting the lock expire is what this test is about

    assert not await locks.unlock(key, "first")  # expired: no longer its
    assert await locks.lock(key, "second", 60) == "second"


async def test_lock_is_atomic_across_clients(clients: list[ResultBackend]) -> None:
    backends = clients
    keys = [new_id() for _ in range(10)]
    calls = [(keys[i % 10], f"owner-{i}") for i in range(200)]

    holders = await asyncio.gather(
        *(locks_of(backends[i % len(backends)]).lock(k, o, 60) for i, (k, o) in enumerate(calls))
    )

    # One winner per key, and every call for that key was told the same winner.
    winners: dict[str, set[str]] = {}
    for (key, _), holder in zip(calls, holders, strict=True):
        winners.setdefault(key, set()).add(holder)
    assert all(len(found) == 1 for found in winners.values())
    assert sum(holder == owner for (_, owner), holder in zip(calls, holders, strict=True)) == 10


async def test_store_waited_reports_ids_with_waiters(backend: ResultBackend) -> None:
    waiters, waited, alone = waiters_of(backend), new_id(), new_id()
    assert await waiters.members(waiters_key(waited)) == []
    await waiters.add_waiter(waited, "d1", 60)
    await waiters.add_waiter(waited, "d2", 60)

    found = await waiters.store_waited([(waited, b"done"), (alone, b"done too")], 60)

    assert found == [waited]
    assert sorted(await waiters.members(waiters_key(waited))) == ["d1", "d2"]
    assert await backend.get_many([waited, alone]) == [b"done", b"done too"]
    assert await waiters.store_waited([], 60) == []


async def test_a_record_replied_is_stored_by_the_time_the_reply_arrives(
    backend_url: str, backend: ResultBackend
) -> None:
    """A sender that reads a record after its reply (``AsyncResult.state()`` after ``get()``)
    must find it: on Redis Cluster the reply channel and the record are on different nodes."""
    if not isinstance(backend, ReplyChannels):
        pytest.skip(f"{type(backend).__name__} has no reply channels")
    worker = backend_from_url(backend_url)  # another client stores, as a worker does
    await worker.connect()
    try:
        channel = await backend.reply_channel()
        ids = [new_id() for _ in range(50)]
        boxes = [backend.expect(task_id) for task_id in ids]
        await worker.store([(i, f"r-{i}".encode()) for i in ids], 60, dict.fromkeys(ids, channel))
        for task_id, box in zip(ids, boxes, strict=True):
            async with asyncio.timeout(NOTIFY_TIMEOUT):
                assert await box.read_from(0) == [f"r-{task_id}".encode()]
            assert await backend.get_many([task_id]) == [f"r-{task_id}".encode()]
    finally:
        await worker.close()
