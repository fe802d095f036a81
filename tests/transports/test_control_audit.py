"""Edge cases of the control transports (Redis, SQLite, memory) and of the memory broker.

Each test pins a failure a task queue must not have: a waiter on a closed event loop breaking
everyone else's publish, a field written by another program stopping a table's readers, one
host's clock expiring entries for every other, a reader deleting an entry just put again, a
subscription coming alive after close(), a consumer waiting for ever on a subscription its
transport closed (or one loop's close ending another loop's), a very slow rate failing every
acquire, and racing threads taking more tokens than the rate gives.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from aqueue.control.events import events
from aqueue.exceptions import BrokerConnectionError
from aqueue.transports import Outgoing, transport_for
from aqueue.transports.memory import MemoryBroker, MemoryControl
from aqueue.transports.redis import keys
from aqueue.transports.redis.control import RedisControl
from aqueue.transports.sqlite.control import SQLiteControl
from tests.apps.ops_tasks import OPS_TRANSPORTS, build, url_for

pytestmark = pytest.mark.timeout(60)


def name() -> str:
    return f"t-{uuid.uuid4().hex}"


@pytest.fixture
async def redis_url(redis_server: str) -> str:
    return f"{redis_server}/0"


@pytest.fixture
async def control(redis_url: str) -> AsyncIterator[RedisControl]:
    transport = RedisControl(redis_url)
    await transport.connect()
    yield transport
    await transport.close()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client of the same server: another program writing what it likes."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


# -- memory broker --------------------------------------------------------------------------


def test_memory_publish_works_after_a_fetching_loop_was_closed() -> None:
    """A fetch left waiting on a loop that was then closed (a thread's loop torn down) must
    not make every later publish fail: its waiter is skipped."""
    broker = MemoryBroker()
    dead = asyncio.new_event_loop()
    # One step of the fetch: it registers its waiter, then awaits it for 60 s.
    task = dead.create_task(broker.fetch(["q"], 1, 60))
    dead.run_until_complete(asyncio.sleep(0))
    assert not task.done()
    dead.close()

    async def publish_then_fetch() -> list[bytes]:
        await broker.publish([Outgoing("q", b"body", "id-1")])
        return [d.body for d in await broker.fetch(["q"], 1, 1)]

    assert asyncio.run(publish_then_fetch()) == [b"body"]


# -- Redis tables ---------------------------------------------------------------------------


async def test_redis_table_read_skips_a_field_that_is_not_utf8(
    control: RedisControl, raw: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A field name another program wrote in another encoding must not make the table
    unreadable (a worker's revocations sync would stop): it is skipped, with a log."""
    table = name()
    await control.put(table, "good", b"kept", None)
    await raw.hset(keys.SINGLE.control_table(table), b"bad-\xff", b"0:x")
    with caplog.at_level(logging.WARNING, "aqueue.transports.redis.control"):
        version, entries = await control.read(table)
    assert entries == {"good": b"kept"}
    assert version > 0
    assert any("bad-" in record.getMessage() for record in caplog.records)


class _Clock:
    """This host's clock, ``offset`` seconds off (the module's ``time``, monotonic kept)."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def time(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic()


@pytest.mark.parametrize("writer_offset, reader_offset", [(-3600.0, 0.0), (0.0, 3600.0)])
async def test_redis_table_ttl_holds_whatever_the_hosts_clocks_say(
    control: RedisControl,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    writer_offset: float,
    reader_offset: float,
) -> None:
    """An entry's ttl is timed by the server, as the token buckets are: a writer whose clock is
    an hour slow, or a reader whose clock is an hour fast, must not see (and delete for
    everyone) a heartbeat with 60 s left as expired."""
    from aqueue.transports.redis import control as module

    table = name()
    other = RedisControl(redis_url)
    try:
        monkeypatch.setattr(module, "time", _Clock(writer_offset))
        await control.put(table, "beat", b"alive", 60)
        monkeypatch.setattr(module, "time", _Clock(reader_offset))
        assert (await other.read(table))[1] == {"beat": b"alive"}
        monkeypatch.setattr(module, "time", time)
        assert (await control.read(table))[1] == {"beat": b"alive"}
    finally:
        await other.close()


async def test_redis_table_ttl_expires_even_if_the_writers_clock_is_fast(
    control: RedisControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer whose clock is an hour fast must not make a 0.2 s entry live for an hour."""
    from aqueue.transports.redis import control as module

    table = name()
    monkeypatch.setattr(module, "time", _Clock(3600.0))
    await control.put(table, "short", b"x", 0.2)
    monkeypatch.setattr(module, "time", time)
    assert (await control.read(table))[1] == {"short": b"x"}
    await asyncio.sleep(0.3)  # the ttl itself is what is tested
    assert (await control.read(table))[1] == {}


async def test_redis_cluster_tables_expire_by_the_server_clock(redis_cluster: Any) -> None:
    """On Redis Cluster a table's scripts run on its hash slot's primary (both keys share
    a hash tag)."""
    transport = transport_for(str(redis_cluster.url), shared=False).control()
    await transport.connect()
    try:
        table = name()
        await transport.put(table, "kept", b"1", None)
        await transport.put(table, "short", b"2", 0.2)
        version, entries = await transport.read(table)
        assert entries == {"kept": b"1", "short": b"2"}
        assert version == await transport.version(table) == 2
        await asyncio.sleep(0.3)  # the ttl itself is what is tested
        assert (await transport.read(table))[1] == {"kept": b"1"}
        await transport.put(table, "kept", None, None)
        assert await transport.read(table) == (3, {})
    finally:
        await transport.close()


# -- Redis channels -------------------------------------------------------------------------


async def _subscribers(raw: aioredis.Redis, channel: str) -> int:
    [(_, count)] = await raw.pubsub_numsub(keys.control_channel(channel))
    return int(count)


async def test_redis_close_while_subscribing_leaves_no_subscription_behind(
    control: RedisControl, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() while a subscribe waits for the server's confirmation: the subscribe fails
    with BrokerConnectionError instead of coming alive later on the closed transport (a
    reader and a connection nobody would end)."""
    channel = name()
    waiting = asyncio.Event()
    confirmation = control._shared.next_message

    async def next_message(pubsub: Any, timeout: float) -> Any:
        waiting.set()
        return await confirmation(pubsub, timeout)

    monkeypatch.setattr(control._shared, "next_message", next_message)
    entered = False

    async def enter() -> None:
        nonlocal entered
        async with control.subscribe(channel):
            entered = True

    await raw.client_pause(500)  # SUBSCRIBE is answered late
    entering = asyncio.create_task(enter())
    await waiting.wait()
    await control.close()
    with pytest.raises(BrokerConnectionError, match="closed"):
        await entering
    assert not entered
    assert not control._readers
    assert await _subscribers(raw, channel) == 0


# -- ending subscriptions -------------------------------------------------------------------


async def test_sqlite_close_while_subscribing_fails_the_subscribe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() while a subscribe reads its starting point: the subscribe fails with
    BrokerConnectionError instead of handing out a queue nobody feeds (its consumer would
    wait for ever)."""
    control = SQLiteControl(f"sqlite:///{tmp_path}/control.db")
    await control.connect()
    reading, release = asyncio.Event(), asyncio.Event()
    call = control._db.call

    async def held_call(fn: Any) -> Any:
        reading.set()
        await release.wait()
        return await call(fn)

    monkeypatch.setattr(control._db, "call", held_call)
    entered = False

    async def enter() -> None:
        nonlocal entered
        async with control.subscribe(name()) as queue:
            entered = True
            await queue.get()

    entering = asyncio.create_task(enter())
    await reading.wait()
    await control.close()
    release.set()
    try:
        with pytest.raises(BrokerConnectionError, match="closed"):
            await asyncio.wait_for(entering, 10)
        assert not entered
    finally:
        monkeypatch.undo()
        await control.close()


def test_memory_close_ends_only_the_closing_loops_subscriptions() -> None:
    """The memory control transport is shared by every loop of the process (a worker's
    thread and the caller's), each closing it with the app: one loop's close must not end
    another loop's subscription (a worker's remote control)."""
    control = MemoryControl(f"memory://{name()}")
    channel = name()
    subscribed, go_on = threading.Event(), threading.Event()
    got: list[bytes] = []

    async def listen() -> None:
        async with control.subscribe(channel) as queue:
            subscribed.set()
            await asyncio.get_running_loop().run_in_executor(None, go_on.wait)
            got.append(await asyncio.wait_for(queue.get(), 10))

    thread = threading.Thread(target=asyncio.run, args=(listen(),))
    thread.start()
    try:
        assert subscribed.wait(10)

        async def close_then_publish() -> None:
            async with control.subscribe(channel) as mine:
                await control.close()
                with pytest.raises(BrokerConnectionError, match="closed"):
                    mine.get_nowait()
            await control.publish(channel, [b"still heard"])

        asyncio.run(close_then_publish())
    finally:
        go_on.set()
        thread.join(10)
    assert got == [b"still heard"]


@pytest.mark.parametrize("transport", OPS_TRANSPORTS)
async def test_an_events_listener_ends_when_its_app_closes(
    transport: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """``events()`` (``aqueue events``, the dashboard) waiting for the next event when the app
    closes on its loop raises instead of waiting for ever."""
    app = build(url_for(transport, request, tmp_path), f"q-{name()}").app
    live = asyncio.Event()

    async def listen() -> None:
        async for _ in events(app, on_ready=live.set):
            pass

    listening = asyncio.create_task(listen())
    try:
        await asyncio.wait_for(live.wait(), 10)
        await app.close()
        with pytest.raises(BrokerConnectionError, match="closed"):
            await asyncio.wait_for(listening, 10)
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await app.close()


# -- token buckets --------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["memory", "redis"])
async def test_a_very_slow_rate_gives_its_first_token_and_then_a_long_wait(
    transport: str, request: pytest.FixtureRequest
) -> None:
    """``rate_limit=1e-17`` (a number is accepted as per second) is one task, then none for
    ages: the idle expiry of the Redis bucket, which grows as the rate falls, must stay within
    what PEXPIRE accepts instead of failing every acquire."""
    url = "memory://" if transport == "memory" else f"{request.getfixturevalue('redis_server')}/0"
    control = transport_for(url, shared=False).control()
    await control.connect()
    try:
        bucket = name()
        assert await control.acquire(bucket, 1e-17, 1.0) == 0
        assert await control.acquire(name(), 1e-310, 1.0) == 0  # capacity / rate: inf
        assert await control.acquire(bucket, 1e-17, 1.0) >= 1e16
    finally:
        await control.close()


def test_memory_bucket_gives_no_extra_token_when_threads_race(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two threads acquiring at once: one that read the clock first but took the lock second
    must not move the bucket's time back, which would count a stretch of refill twice and
    hand out a token before the rate allows."""
    from aqueue.transports.memory import control as module

    memory = MemoryControl()
    times = iter([0.0, 10.0, 11.0, 11.5])  # the first acquire, A, B, then C
    waits: list[float] = []
    other = threading.Thread(target=lambda: waits.append(asyncio.run(memory.acquire("b", 1, 1))))

    class Clock:
        def monotonic(self) -> float:
            now = next(times)
            if now == 10.0:  # A reads its clock; B runs now, as far as the lock lets it
                other.start()
                if not memory._lock.locked():  # A has no lock yet: B goes to the end
                    other.join()
            return now

    monkeypatch.setattr(module, "time", Clock())
    assert asyncio.run(memory.acquire("b", 1.0, 1.0)) == 0  # at 0: the bucket starts full
    waits.append(asyncio.run(memory.acquire("b", 1.0, 1.0)))  # A
    other.join()
    waits.append(asyncio.run(memory.acquire("b", 1.0, 1.0)))  # C
    # From 10 to 11.5 at 1 token/s, the full bucket of 10 gives 2: at 10 (or 11) and at 11.
    assert sorted(waits) == [0, 0, pytest.approx(0.5)]


async def test_redis_read_does_not_delete_an_entry_put_again_after_it_expired(
    control: RedisControl, raw: aioredis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader deletes the expired fields it saw; a writer putting the same key afresh in
    between (a worker's heartbeat after a late one) must keep its new entry."""
    table = name()
    await raw.hset(keys.SINGLE.control_table(table), "beat", b"1:old")  # expired in 1970
    writer = RedisControl(redis_url)
    client = await control._connection()
    pipeline = client.pipeline
    landed = False

    def hooked(*args: Any, **kwargs: Any) -> Any:
        pipe = pipeline(*args, **kwargs)
        execute = pipe.execute

        async def execute_then_put(*args: Any, **kwargs: Any) -> Any:
            nonlocal landed
            result = await execute(*args, **kwargs)
            if not landed:  # right after the read's snapshot, before any deletion
                landed = True
                await writer.put(table, "beat", b"fresh", 60)
            return result

        monkeypatch.setattr(pipe, "execute", execute_then_put)
        return pipe

    monkeypatch.setattr(client, "pipeline", hooked)
    try:
        assert (await control.read(table))[1] == {}
        assert landed
        assert (await writer.read(table))[1] == {"beat": b"fresh"}
    finally:
        await writer.close()
