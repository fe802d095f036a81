"""Waiting for a result at the edges: a waiter giving up while its subscription is still being
made, a reply channel whose first SUBSCRIBE failed, and a builtin ``TimeoutError`` that is not
the wait's own deadline (a task's, or ``on_message``'s)."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from aqueue import Aqueue, Worker, group
from aqueue.exceptions import BrokerConnectionError
from aqueue.exceptions import TimeoutError as ResultTimeout
from aqueue.results.record import ResultRecord
from aqueue.transports.redis.results import RedisBackend
from tests.conftest import _start_redis, _stop
from tests.net import free_port

pytestmark = pytest.mark.timeout(60)

WAIT = 15.0  # seconds any wait that should succeed may take


async def until(check: Callable[[], bool], what: str, seconds: float = WAIT) -> None:
    """Let the event loop run until ``check()`` (a state of this process) is true."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds}s: {what}")
        await asyncio.sleep(0.001)


async def subscribers(url: str, channel: str | bytes) -> int:
    """How many connections the server has subscribed to ``channel`` (PUBSUB NUMSUB)."""
    admin = aioredis.from_url(url)
    try:
        [(_, count)] = await admin.pubsub_numsub(channel)
        return int(count)
    finally:
        await admin.aclose()


# -- a waiter cancelled while subscribing -------------------------------------------------------


async def test_a_waiter_cancelled_while_subscribing_does_not_strand_another(
    redis_server: str,
) -> None:
    """Two ``get()``s of one task (its own channel); the first is cancelled while its pub/sub
    connection is still being opened (Redis paused), the second queued behind it. The second
    must make the subscription itself: before, it took the cancelled one's for live, so the
    record published later reached nobody and it waited until its timeout."""
    url = f"{redis_server}/0"
    app = Aqueue("edges", broker=url, backend=url)
    storer = Aqueue("edges", broker=url, backend=url)  # a worker's client
    admin = aioredis.from_url(url)
    task_id = str(uuid.uuid4())
    try:
        backend = await app.result_backend()
        assert isinstance(backend, RedisBackend)
        channel = backend._keys.result_channel(task_id)
        await admin.client_pause(2000)  # every client: Redis slow for 2 s
        # A command holding the pooled connection: the pub/sub one the first waiter takes is
        # then a new one, whose handshake waits out the pause.
        busy = asyncio.ensure_future(backend._client.ping())  # type: ignore[union-attr]
        pool: Any = backend._client.connection_pool  # type: ignore[union-attr]
        await until(lambda: bool(pool._in_use_connections), "the ping holding the connection")
        first = asyncio.ensure_future(app.AsyncResult(task_id).get())
        await until(backend._subscribing.locked, "the first waiter subscribing")
        second = asyncio.ensure_future(app.AsyncResult(task_id).get(timeout=WAIT))
        await until(lambda: bool(backend._subscribing._waiters), "the second waiter queued")
        # No SUBSCRIBE has gone out yet (the reader starts after the first one).
        assert backend._reader is None and not first.done()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await until(
            lambda: any(
                q._getters  # type: ignore[attr-defined]
                for q in backend._watchers.get(channel.encode(), ())
            ),
            "the second waiter waiting for the next record (subscribed, record read)",
        )
        assert await subscribers(url, channel) == 1  # before the fix: 0
        record = ResultRecord(task_id=task_id, status="SUCCESS", result=42)
        await (await storer.result_backend()).store([(task_id, record.encode("json", None))], 60)
        assert await second == 42
        await busy
    finally:
        await admin.aclose()
        await app.close()
        await storer.close()


# -- the reply channel after an outage ----------------------------------------------------------


class Server:
    """A redis-server of the test's own, stopped and started again on the same port."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.binary, self.workdir, self.port = binary, workdir, free_port()
        self.proc: Any = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = _start_redis(self.binary, self.port, self.workdir, self.workdir / "r.log")
        assert self.proc is not None, "redis-server did not start"

    def stop(self) -> None:
        _stop(self.proc)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Server]:
    server = Server(tmp_path)
    yield server
    server.stop()


async def test_the_reply_channel_is_subscribed_once_the_backend_is_back(
    own_redis: Server,
) -> None:
    """The reply channel's first SUBSCRIBE fails (the result backend is down). Once the server
    is back, ``reply_channel()`` must subscribe it before returning, and records stored for
    this client must arrive: before, it returned at once, subscribed to nothing, for the
    client's whole life (every ``delay()`` handle then waited on a channel nobody heard)."""
    backend = RedisBackend(own_redis.url)
    worker = RedisBackend(own_redis.url)  # a worker's: stores and publishes the records
    try:
        assert await backend.get_many(["x"]) == [None]  # connected
        own_redis.stop()
        with pytest.raises(BrokerConnectionError):
            await backend.get_many(["x"])  # a failed command: its pooled connection is dropped
        with pytest.raises(BrokerConnectionError):
            await backend.reply_channel()  # so its pub/sub connection is refused
        own_redis.start()
        channel = await backend.reply_channel()
        assert await subscribers(own_redis.url, channel) == 1  # before the fix: 0
        task_id = str(uuid.uuid4())
        mailbox = backend.expect(task_id)
        await worker.store([(task_id, b"SUCCESS")], 60, {task_id: channel})
        assert await asyncio.wait_for(mailbox.read_from(0), WAIT) == [b"SUCCESS"]
    finally:
        await worker.close()
        await backend.close()


# -- a builtin TimeoutError that is not the deadline --------------------------------------------


@pytest.fixture
async def app() -> AsyncIterator[Aqueue]:
    url = f"memory://edges-{uuid.uuid4().hex[:8]}"
    app = Aqueue("edges", broker=url, backend=url)

    @app.task(name="edges.gives_up")
    async def gives_up() -> None:
        await asyncio.wait_for(asyncio.Event().wait(), 0.01)  # raises the builtin TimeoutError

    @app.task(name="edges.ok")
    async def ok() -> int:
        return 1

    yield app
    await app.close()


@pytest.mark.parametrize("timeout", [None, 30.0])
async def test_a_members_own_timeout_error_is_raised_as_it_is(
    app: Aqueue, timeout: float | None
) -> None:
    """A group member that failed with the builtin ``TimeoutError`` is raised by
    ``GroupResult.get`` as that member's exception, as documented: before, it became a group
    timeout ("0 of 2 tasks finished within 30s") or, without a timeout, a ``TypeError``."""
    async with Worker(app, concurrency=2, shutdown_timeout=5):
        g = await group(app.signature("edges.gives_up"), app.signature("edges.ok")).delay()
        with pytest.raises(TimeoutError):
            await g.results[0].get(timeout=WAIT)  # finished: it failed with TimeoutError
        with pytest.raises(TimeoutError) as raised:
            await g.get(timeout=timeout)
    assert not isinstance(raised.value, ResultTimeout), raised.value


async def test_a_group_past_its_deadline_still_raises_a_group_timeout(app: Aqueue) -> None:
    """The deadline itself running out (no worker) is still aqueue's ``TimeoutError``."""
    g = await group(app.signature("edges.ok"), app.signature("edges.ok")).delay()
    with pytest.raises(ResultTimeout, match=r"0 of 2 tasks finished within 0\.2s"):
        await g.get(timeout=0.2)


@pytest.mark.parametrize("timeout", [None, 30.0])
async def test_on_messages_own_timeout_error_is_raised_as_it_is(
    app: Aqueue, timeout: float | None
) -> None:
    """A builtin ``TimeoutError`` raised by ``on_message`` comes out of ``AsyncResult.get`` as
    it is: before, it became "did not finish within 30s" or, without a timeout, a
    ``TypeError``."""
    mine = TimeoutError("on_message gave up")

    def on_message(message: dict[str, Any]) -> None:
        raise mine

    async with Worker(app, concurrency=1, shutdown_timeout=5):
        r = await app.signature("edges.ok").delay()
        with pytest.raises(TimeoutError) as raised:
            await r.get(timeout=timeout, on_message=on_message)
    assert raised.value is mine


async def test_a_get_past_its_deadline_still_raises_a_result_timeout(app: Aqueue) -> None:
    """The deadline itself running out (no worker) is still aqueue's ``TimeoutError``."""
    r = await app.signature("edges.ok").delay()
    with pytest.raises(ResultTimeout, match=r"did not finish within 0\.2s"):
        await r.get(timeout=0.2)
