"""Waiting for a result while the result backend closes: the waiter is told
(:class:`~aqueue.exceptions.BrokerConnectionError`), or gets the record that arrived before,
and never waits for ever. On ``memory://`` only the closing loop's waiters end."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from aqueue import Aqueue, AsyncResult
from aqueue.exceptions import BrokerConnectionError
from aqueue.results.record import ResultRecord
from aqueue.transports.memory.results import MemoryBackend

pytestmark = pytest.mark.timeout(60)

WAIT = 5.0  # seconds a waiter that is told may take; more means it hangs


async def until(check: Callable[[], bool], what: str) -> None:
    """Let the event loop run until ``check()`` (a state of this process) is true."""
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT}s: {what}")
        await asyncio.sleep(0.001)


def _all_read(members: list[AsyncResult[Any]], result: Any) -> bool:
    """Every member's last record read has ``result``."""
    return all(r._record is not None and r._record.result == result for r in members)


def _record(task_id: str, status: str, result: Any = None) -> bytes:
    return ResultRecord(task_id=task_id, status=status, result=result).encode("json", None)


async def _waiting_get(app: Aqueue, task_id: str) -> asyncio.Task[Any]:
    """A ``get()`` (no timeout) of ``task_id``, returned once it watches: a STARTED record
    stored first reaches its ``on_message``, which it reads after subscribing."""
    backend = await app.result_backend()
    await backend.store([(task_id, _record(task_id, "STARTED"))], 60)
    seen = asyncio.Event()
    waiter = asyncio.create_task(
        app.AsyncResult(task_id).get(on_message=lambda message: seen.set())
    )
    async with asyncio.timeout(WAIT):
        await seen.wait()
    return waiter


async def _ends_when_closed(app: Aqueue, waiter: asyncio.Task[Any], what: str) -> None:
    """Close ``app``: ``waiter``, waiting, must end with BrokerConnectionError (``what`` names
    the wait in the failure)."""
    try:
        await app.close()
        done, _ = await asyncio.wait([waiter], timeout=WAIT)
        assert done, f"{what} still waiting after the result backend closed"
        with pytest.raises(BrokerConnectionError):
            waiter.result()
    finally:
        waiter.cancel()
        await app.close()


async def _told_on_close(app: Aqueue, waiter: asyncio.Task[Any], box: Any, what: str) -> None:
    """Once ``waiter`` waits on mailbox ``box``, :func:`_ends_when_closed`."""
    try:
        await until(lambda: bool(box._waiters), f"{what} waits on the mailbox")
    except BaseException:
        waiter.cancel()
        await app.close()
        raise
    await _ends_when_closed(app, waiter, what)


def _never_run(app: Aqueue, queue: str | None = None) -> Any:
    """A task of ``app`` that is sent and never run (no worker)."""

    @app.task(name="closing.never_run", queue=queue)
    async def never_run() -> None:
        """Sent, never run: no worker."""

    return never_run


async def test_a_get_waiting_when_the_app_closes_is_told(backend_url: str) -> None:
    """``get()`` waiting (no timeout) when ``app.close()`` runs raises BrokerConnectionError;
    before, the memory and SQLite watches were dropped (Redis: cleared) and it waited for ever."""
    app = Aqueue("closing", broker="memory://", backend=backend_url)
    waiter = await _waiting_get(app, uuid.uuid4().hex)
    await _ends_when_closed(app, waiter, "get()")


async def test_a_record_stored_before_close_is_still_returned(backend_url: str) -> None:
    """A record put on the watch before the backend closes is handed out first: the waiter gets
    the result, not the error."""
    app = Aqueue("closing", broker="memory://", backend=backend_url)
    backend = await app.result_backend()
    task_id = uuid.uuid4().hex
    try:
        async with backend.watch(task_id) as changes:
            await backend.store([(task_id, _record(task_id, "SUCCESS", 7))], 60)
            if backend_url.startswith("redis"):  # published: read by the pub/sub reader
                await until(lambda: not changes.empty(), "the record reaches the watch")
            await backend.close()
            async with asyncio.timeout(WAIT):
                first = await changes.get()
                assert ResultRecord.decode(first, frozenset({"json"}), None, task_id).result == 7
                with pytest.raises(BrokerConnectionError):
                    await changes.get()
    finally:
        await app.close()


async def test_a_group_waiting_when_the_app_closes_is_told(backend_url: str) -> None:
    """``GroupResult.get()`` waits on one watch per pending member: closing ends them too."""
    app = Aqueue("closing", broker="memory://", backend=backend_url)
    backend = await app.result_backend()
    ids = [uuid.uuid4().hex, uuid.uuid4().hex]
    members = [app.AsyncResult(task_id) for task_id in ids]
    waiter = asyncio.create_task(app.GroupResult("g-" + ids[0], members).get())
    try:
        # The group reads its members before and after subscribing: a record stored once each
        # member showed an earlier one is read after the first read, so the watches are on.
        for step in (0, 1):
            await backend.store([(t, _record(t, "STARTED", step)) for t in ids], 60)
            await until(functools.partial(_all_read, members, step), f"members read {step}")
        await _ends_when_closed(app, waiter, "GroupResult.get()")
    finally:
        waiter.cancel()
        await app.close()


async def test_a_sent_tasks_get_waiting_on_its_reply_mailbox_is_told(redis_server: str) -> None:
    """On Redis, a handle from ``delay()`` waits on this client's reply channel (a mailbox),
    not on a watch; closing the backend ends that wait too."""
    url = f"{redis_server}/0"
    app = Aqueue("closing", broker=url, backend=url)
    r = await _never_run(app).delay()
    assert r._mailbox is not None, "the Redis backend gives a sent task a reply mailbox"
    await _told_on_close(app, asyncio.create_task(r.get()), r._mailbox, "get()")


async def test_memory_close_ends_only_the_closing_loops_watches() -> None:
    """One ``MemoryBackend`` shared by two event loops: closing it on one ends that loop's
    watches; a watch on the other loop still gets the record stored afterwards."""
    backend = MemoryBackend()
    task_id = uuid.uuid4().hex
    watching = threading.Event()
    got: list[bytes | BaseException] = []

    async def other_loop() -> None:
        async with backend.watch(task_id) as changes:
            watching.set()
            try:
                got.append(await asyncio.wait_for(changes.get(), WAIT))
            except BaseException as exc:  # reported to the test below
                got.append(exc)

    thread = threading.Thread(target=asyncio.run, args=(other_loop(),))
    thread.start()
    try:
        assert await asyncio.to_thread(watching.wait, WAIT)
        async with backend.watch(task_id) as mine:
            await backend.close()
            with pytest.raises(BrokerConnectionError):
                await asyncio.wait_for(mine.get(), WAIT)
        record = _record(task_id, "SUCCESS", 1)
        await backend.store([(task_id, record)], 60)
    finally:
        await asyncio.to_thread(thread.join, WAIT)
    assert got == [record]


async def test_an_rpc_get_waiting_when_the_app_closes_is_told(rabbitmq_server: Any) -> None:
    """``rpc://``: a sent task's ``get()`` waits on its reply-queue mailbox; closing the app
    (which deletes the reply queue) ends that wait with BrokerConnectionError."""
    app = Aqueue("closing", broker=rabbitmq_server.url, backend="rpc://")
    r = await _never_run(app, f"closing-{uuid.uuid4().hex[:10]}").delay()
    assert r._mailbox is not None, "rpc:// gives a sent task a reply mailbox"
    await _told_on_close(app, asyncio.create_task(r.get()), r._mailbox, "get()")


async def test_an_rpc_watch_waiting_when_the_app_closes_is_told(rabbitmq_server: Any) -> None:
    """``rpc://``: a handle made from the id (``app.AsyncResult(id)``) of a task this client
    sent watches its mailbox through a queue of its own; closing the app ends that wait too."""
    app = Aqueue("closing", broker=rabbitmq_server.url, backend="rpc://")
    sent = await _never_run(app, f"closing-{uuid.uuid4().hex[:10]}").delay()
    backend = await app.result_backend()
    box = backend._inbox.get(sent.id)  # type: ignore[attr-defined]
    assert box is not None
    waiter = asyncio.create_task(app.AsyncResult(sent.id).get())
    await _told_on_close(app, waiter, box, "a watch of the mailbox")
