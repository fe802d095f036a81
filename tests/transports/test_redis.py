"""What only the Redis broker and backend promise, beyond the contract suites.

Key layout, error translation, one round trip per fetch, the surplus buffer of a blocking read,
recovery from a flushed database and from a dropped or half-open pub/sub connection; and the
edges: the surplus buffer against the broker's own reclaim pass, malformed delayed members (due
or not), a poll right after a blocking read, dead letters written by hand.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from aqueue.exceptions import BrokerConnectionError, ConfigurationError
from aqueue.transports.base import MIN_SOCKET_TIMEOUT, Outgoing
from aqueue.transports.redis import keys
from aqueue.transports.redis.broker import RedisBroker
from aqueue.transports.redis.client import redacted_url
from aqueue.transports.redis.results import RedisBackend
from tests.chaos.harness import FaultProxy
from tests.net import free_port

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def url(redis_server: str) -> str:
    return f"{redis_server}/0"


@pytest.fixture
async def client(url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(url)
    yield client
    await client.aclose()


@pytest.fixture
async def brokers(url: str) -> AsyncIterator[list[RedisBroker]]:
    """Brokers a test creates; closed at the end."""
    made: list[RedisBroker] = []
    yield made
    for broker in made:
        await broker.close()


async def new_broker(made: list[RedisBroker], url: str, **options: Any) -> RedisBroker:
    broker = RedisBroker(url, options)
    await broker.connect()
    made.append(broker)
    return broker


def out(queue: str, body: bytes, priority: int = 0, eta: float | None = None) -> Outgoing:
    return Outgoing(queue, body, uuid.uuid4().hex, priority, eta)


def closed_port_url(password: str = "") -> str:
    port = free_port()
    auth = f":{password}@" if password else ""
    return f"redis://{auth}127.0.0.1:{port}/0"


def test_redacted_url_masks_password_and_drops_query() -> None:
    assert redacted_url("redis://:s3cret@host:6379/2") == "redis://:**@host:6379/2"
    assert redacted_url("rediss://user:s3cret@host/0?password=x") == "rediss://user:**@host/0"
    assert redacted_url("redis://localhost") == "redis://localhost"


def test_unknown_transport_option_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="visibility_timout"):
        RedisBroker("redis://localhost", {"visibility_timout": 5})
    with pytest.raises(ConfigurationError, match="visibility_timeout"):
        RedisBroker("redis://localhost", {"visibility_timeout": 0})


@pytest.mark.timeout(60)
async def test_unreachable_server_raises_broker_connection_error() -> None:
    url = closed_port_url(password="s3cret")
    broker, backend = RedisBroker(url, {}), RedisBackend(url)

    with pytest.raises(BrokerConnectionError) as broker_error:
        await broker.connect()
    with pytest.raises(BrokerConnectionError) as backend_error:
        await backend.store([("id", b"x")], expires=None)

    for error in (broker_error, backend_error):
        message = str(error.value)
        assert "127.0.0.1" in message
        assert "s3cret" not in message
    await broker.close()
    await backend.close()


async def test_every_key_is_prefixed(
    url: str, client: aioredis.Redis, brokers: list[RedisBroker], queue_name: str
) -> None:
    broker = await new_broker(brokers, url)
    backend = RedisBackend(url)
    await broker.publish([out(queue_name, b"a", 3), out(queue_name, b"b", eta=time.time() + 60)])
    got = await broker.fetch([queue_name], 10, 5)
    await broker.dead_letter(got[0], "test")
    await backend.store([(queue_name, b"r")], expires=60)
    await backend.add_member(queue_name, "m", expires=60)
    await backend.close()

    found = [k async for k in client.scan_iter(match=f"*{queue_name}*")]

    assert found, "nothing stored"
    assert all(k.startswith(keys.PREFIX.encode()) for k in found)
    assert {k.decode() for k in found} >= {
        keys.stream(queue_name, 3),
        keys.dlq(queue_name),
        keys.result(queue_name),
        keys.members(queue_name),
    }


async def test_ack_deletes_the_entry(
    url: str, client: aioredis.Redis, brokers: list[RedisBroker], queue_name: str
) -> None:
    broker = await new_broker(brokers, url)
    await broker.publish([out(queue_name, b"%d" % i) for i in range(10)])
    got = await broker.fetch([queue_name], 10, 5)

    await broker.ack(got)

    assert await client.xlen(keys.stream(queue_name, 0)) == 0
    assert (await client.xpending(keys.stream(queue_name, 0), keys.GROUP))["pending"] == 0


async def test_fetch_with_ready_messages_is_one_round_trip(
    url: str, brokers: list[RedisBroker], queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = await new_broker(brokers, url)
    await broker.publish([out(queue_name, b"warm-up")])
    await broker.ack(await broker.fetch([queue_name, "other"], 10, 5))  # groups, script loaded
    await broker.publish([out(queue_name, b"%d" % i, i % 10) for i in range(30)])
    client, _ = await broker._session()
    sent: list[Any] = []
    original: Any = client.execute_command

    async def spy(*args: Any, **options: Any) -> Any:
        sent.append(args[0])
        return await original(*args, **options)

    monkeypatch.setattr(client, "execute_command", spy)
    got = await broker.fetch([queue_name, "other"], 20, 5)

    assert len(got) == 20
    assert [d.body for d in got[:3]] == [b"9", b"19", b"29"]
    assert sent == ["EVALSHA"]


async def spy_commands(
    monkeypatch: pytest.MonkeyPatch, broker: RedisBroker, blocking: asyncio.Event
) -> list[Any]:
    """The names of the commands ``broker`` sends from now on, as they go; ``blocking`` is set
    as each blocking XREADGROUP goes (on its own connection, not through execute_command)."""
    client, _ = await broker._session()
    sent: list[Any] = []
    execute: Any = client.execute_command
    read: Any = broker._wakeable_read

    async def spy(*args: Any, **options: Any) -> Any:
        sent.append(args[0])
        return await execute(*args, **options)

    async def spy_read(*args: Any) -> Any:
        sent.append("XREADGROUP")
        blocking.set()
        return await read(*args)

    monkeypatch.setattr(client, "execute_command", spy)
    monkeypatch.setattr(broker, "_wakeable_read", spy_read)
    return sent


async def test_fetch_after_a_blocking_read_that_emptied_the_queue_blocks_at_once(
    url: str, brokers: list[RedisBroker], queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A light load: each task arrives while the worker blocks. The fetch that follows goes
    # straight back to XREADGROUP: the script would find nothing, at a round trip per task.
    broker = await new_broker(brokers, url)
    producer = await new_broker(brokers, url)
    await broker.ack(await broker.fetch([queue_name], 10, 0.05))  # groups, script loaded
    blocking = asyncio.Event()
    sent = await spy_commands(monkeypatch, broker, blocking)
    fetching = asyncio.create_task(broker.fetch([queue_name], 10, 5))
    await blocking.wait()  # the script ran, found nothing; now it blocks
    await producer.publish([out(queue_name, b"one")])
    first = await fetching
    sent.clear()
    fetching = asyncio.create_task(broker.fetch([queue_name], 10, 5))
    await producer.publish([out(queue_name, b"two")])
    second = await fetching

    assert [d.body for d in first + second] == [b"one", b"two"]
    assert sent == ["XREADGROUP"]
    await broker.ack(first + second)


async def test_a_trickle_of_ready_messages_does_not_hold_up_a_delayed_one(
    url: str, brokers: list[RedisBroker], queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Delayed messages are moved by the fetch script, which the fetches that block again at
    # once skip: it must still run at least every second, or another producer's delayed
    # message would wait for the trickle to stop.
    worker = await new_broker(brokers, url)
    producer = await new_broker(brokers, url)
    await worker.ack(await worker.fetch([queue_name], 10, 0.05))
    blocking = asyncio.Event()
    await spy_commands(monkeypatch, worker, blocking)
    seen: list[bytes] = []
    skipped = 0
    for i in range(250):  # about 5 s of trickle; the delayed message is due 0.3 s into it
        if i == 3:  # once the worker skips the script: it has not seen this one
            await producer.publish([out(queue_name, b"later", eta=time.time() + 0.3)])
        blocking.clear()
        skipped += worker._drained is not None
        fetching = asyncio.create_task(worker.fetch([queue_name], 10, 5))
        waiting = asyncio.create_task(blocking.wait())
        await asyncio.wait({fetching, waiting}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if not fetching.done():  # each message arrives while the worker blocks
            await asyncio.sleep(0.02)
            await producer.publish([out(queue_name, b"now")])
        got = await fetching
        await worker.ack(got)
        seen += [d.body for d in got]
        if b"later" in seen:
            break
    assert b"later" in seen
    assert skipped > 10  # the fetches did skip the script in between


async def test_surplus_of_a_blocking_read_is_buffered_then_released_on_close(
    url: str, brokers: list[RedisBroker], queue_name: str
) -> None:
    first = await new_broker(brokers, url)
    second = await new_broker(brokers, url)
    await first.publish([out(queue_name, b"low", 0), out(queue_name, b"high", 9)])
    plan = first._plan([queue_name])
    await first._ensure_groups((await first._session())[0], plan.streams)

    # Entries already waiting when XREADGROUP BLOCK is called come from every stream.
    got = await first._read_blocking((await first._session())[0], plan, 1, 0.1)
    assert [d.body for d in got] == [b"high"]
    assert [d.body for d in first._buffer] == [b"low"]

    await first.close()
    again = await second.fetch([queue_name], 10, 5)
    assert [(d.body, d.delivery_count) for d in again] == [(b"low", 1)]
    await second.ack(again + got)


async def test_buffered_delivery_is_handed_out_by_the_next_fetch(
    url: str, brokers: list[RedisBroker], queue_name: str
) -> None:
    broker = await new_broker(brokers, url, visibility_timeout=0.4)
    await broker.publish([out(queue_name, b"a", 1), out(queue_name, b"b", 2)])
    plan = broker._plan([queue_name])
    client, _ = await broker._session()
    await broker._ensure_groups(client, plan.streams)
    first = await broker._read_blocking(client, plan, 1, 0.1)
    await asyncio.sleep(0.15)  # older than a quarter lease: renewed before it is handed out

    second = await broker.fetch([queue_name], 10, 5)

    assert [d.body for d in first + second] == [b"b", b"a"]
    assert broker._buffer == []
    await broker.ack(first + second)


async def test_delivery_count_after_release_and_expiry(
    url: str, brokers: list[RedisBroker], queue_name: str
) -> None:
    broker = await new_broker(brokers, url, visibility_timeout=0.3)
    await broker.publish([out(queue_name, b"x")])
    counts = []
    got = await broker.fetch([queue_name], 1, 5)
    counts.append(got[0].delivery_count)
    await broker.start([(got[0], False)])  # running when the lease ran out: counted
    got = await broker.fetch([queue_name], 1, 5)  # lease ran out
    counts.append(got[0].delivery_count)
    await broker.release(got)
    got = await broker.fetch([queue_name], 1, 5)
    counts.append(got[0].delivery_count)
    got = await broker.fetch([queue_name], 1, 5)  # lease ran out again, never started
    counts.append(got[0].delivery_count)
    await broker.start([(got[0], False)])
    got = await broker.fetch([queue_name], 1, 5)  # lease ran out again, running
    counts.append(got[0].delivery_count)

    assert counts == [1, 2, 2, 2, 3]
    await broker.ack(got)


async def test_renew_does_not_take_back_a_reclaimed_message(
    url: str, client: aioredis.Redis, brokers: list[RedisBroker], queue_name: str
) -> None:
    slow = await new_broker(brokers, url, visibility_timeout=0.3)
    other = await new_broker(brokers, url, visibility_timeout=0.3)
    await slow.publish([out(queue_name, b"x")])
    stale = await slow.fetch([queue_name], 1, 5)
    assert await slow.start([(stale[0], False)]) == [True]
    taken = await other.fetch([queue_name], 1, 5)  # after the lease ran out
    assert taken[0].delivery_count == 2

    await slow.renew(stale)

    pending = await client.xpending_range(keys.stream(queue_name, 0), keys.GROUP, "-", "+", 10)
    assert [p["consumer"] for p in pending] == [other._consumer.encode()]
    await other.ack(taken)


async def test_fetch_recovers_from_a_flushed_database(
    url: str, client: aioredis.Redis, brokers: list[RedisBroker], queue_name: str
) -> None:
    broker = await new_broker(brokers, url)
    assert await broker.fetch([queue_name], 1, 0) == []
    for priority in keys.PRIORITIES:  # as FLUSHDB would, without disturbing other tests
        await client.delete(keys.stream(queue_name, priority))
    await broker.publish([out(queue_name, b"after flush")])

    got = await broker.fetch([queue_name], 1, 5)

    assert [d.body for d in got] == [b"after flush"]
    await broker.ack(got)


async def test_close_removes_an_idle_consumer(
    url: str, client: aioredis.Redis, brokers: list[RedisBroker], queue_name: str
) -> None:
    broker = await new_broker(brokers, url)
    await broker.publish([out(queue_name, b"x")])
    await broker.ack(await broker.fetch([queue_name], 1, 5))
    stream = keys.stream(queue_name, 0)
    assert len(await client.xinfo_consumers(stream, keys.GROUP)) == 1

    await broker.close()

    assert await client.xinfo_consumers(stream, keys.GROUP) == []


async def test_result_without_expiry_has_no_ttl(url: str, client: aioredis.Redis) -> None:
    backend = RedisBackend(url)
    task_id = str(uuid.uuid4())
    await backend.store([(task_id, b"x")], expires=None)
    await backend.store([(f"{task_id}-2", b"y")], expires=60)
    await backend.close()

    assert await client.ttl(keys.result(task_id)) == -1
    assert 0 < await client.ttl(keys.result(f"{task_id}-2")) <= 60


async def test_watch_survives_a_dropped_pubsub_connection(url: str, client: aioredis.Redis) -> None:
    backend = RedisBackend(url)
    task_id = str(uuid.uuid4())
    async with backend.watch(task_id) as queue:
        await client.client_kill_filter(_type="pubsub")
        # Stored while the watcher may still be reconnecting: it arrives either as the message
        # published after re-subscribing or as the record re-read once re-subscribed.
        await backend.store([(task_id, b"SUCCESS")], expires=60)

        assert await asyncio.wait_for(queue.get(), 10) == b"SUCCESS"
    await backend.close()


async def test_a_record_is_published_on_its_own_channel_only_when_watched(
    url: str, client: aioredis.Redis
) -> None:
    """The store script publishes a record on its task's channel only for a watcher (one that
    went through ``watch``), whether or not it also goes to a reply channel: a plain
    subscriber gets the marker published after the store first, a watcher gets the record."""
    backend = RedisBackend(url)
    unwatched, watched = str(uuid.uuid4()), str(uuid.uuid4())
    pubsub = client.pubsub()
    channel = keys.result_channel(unwatched)
    await pubsub.subscribe(channel)
    assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"
    try:
        async with backend.watch(watched) as queue:
            await backend.store([(unwatched, b"NOBODY"), (watched, b"SUCCESS")], expires=60)
            assert await asyncio.wait_for(queue.get(), 10) == b"SUCCESS"
        await client.publish(channel, b"marker")  # after the store: arrives after the record
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        assert message is not None and message["data"] == b"marker"
        assert await client.get(keys.result(unwatched)) == b"NOBODY"  # stored all the same
    finally:
        await pubsub.aclose()
        await backend.close()


# -- reply channels (aqueue.results.mailbox) -------------------------------------------------


def test_reply_batches_round_trip_and_a_cut_batch_is_refused() -> None:
    from aqueue.results.mailbox import pack, unpack

    items = [("a-1", b'{"status":"SUCCESS"}'), ("b-2", b"\x00\xff:binary:"), ("c", b"")]
    assert unpack(pack(items)) == items
    with pytest.raises(ValueError):
        unpack(pack(items)[:-3])
    with pytest.raises(ValueError):
        unpack(b"not a batch")


async def test_records_reach_the_sender_on_its_reply_channel(url: str) -> None:
    backend = RedisBackend(url)
    channel = await backend.reply_channel()
    assert channel.startswith(keys.REPLY_PREFIX)
    mine, unrelated = backend.expect("t-1"), str(uuid.uuid4())
    other = RedisBackend(url)  # a worker's backend: publishes to the channel named in messages
    await other.store(
        [("t-1", b"STARTED"), ("t-1", b"SUCCESS"), (unrelated, b"x")],
        60,
        {"t-1": channel, unrelated: "not-a-reply-channel"},
    )
    assert await asyncio.wait_for(mine.read_from(0), 10) == [b"STARTED", b"SUCCESS"]
    await other.close()
    await backend.close()


async def test_reply_channel_survives_a_dropped_pubsub_connection(
    url: str, client: aioredis.Redis
) -> None:
    backend = RedisBackend(url)
    channel = await backend.reply_channel()
    task_id = str(uuid.uuid4())
    mailbox = backend.expect(task_id)
    await client.client_kill_filter(_type="pubsub")
    # Published while the reply subscription may be down: re-read once it is back.
    other = RedisBackend(url)
    await other.store([(task_id, b"SUCCESS")], 60, {task_id: channel})
    assert b"SUCCESS" in await asyncio.wait_for(mailbox.read_from(0), 10)
    await other.close()
    await backend.close()


@pytest.mark.slow
async def test_reply_channel_survives_a_half_open_pubsub_connection(
    redis_server: str, url: str
) -> None:
    """A pub/sub connection that stops answering without closing (its peer vanished) is sent a
    PING after a socket timeout of silence, and replaced when that goes unanswered as long."""
    proxy = FaultProxy(int(redis_server.rsplit(":", 1)[1]))
    proxy.start()
    backend = RedisBackend(f"{proxy.url(0)}?socket_timeout={MIN_SOCKET_TIMEOUT}")
    other = RedisBackend(url)
    try:
        channel = await backend.reply_channel()
        task_id = str(uuid.uuid4())
        mailbox = backend.expect(task_id)
        proxy.half_open_all()
        reading = asyncio.ensure_future(mailbox.read_from(0))
        deadline = time.monotonic() + 4 * MIN_SOCKET_TIMEOUT + 2
        while not reading.done() and time.monotonic() < deadline:
            # Published again and again: only a subscription on a new connection gets it.
            await other.store([(task_id, b"SUCCESS")], 60, {task_id: channel})
            await asyncio.wait({reading}, timeout=0.5)
        assert reading.done(), "the reply channel never came back from a half-open connection"
        assert b"SUCCESS" in reading.result()
    finally:
        await other.close()
        await backend.close()
        proxy.close()


async def test_a_mailbox_lives_only_as_long_as_its_handle(url: str) -> None:
    backend = RedisBackend(url)
    await backend.reply_channel()
    kept = backend.expect("kept")
    backend.expect("gone")  # no reference kept: dropped at once (reference counting)
    assert backend._inbox.expected() == ["kept"]
    del kept
    assert backend._inbox.expected() == []
    await backend.close()


async def test_sending_needs_only_the_broker_when_the_backend_is_down(url: str) -> None:
    from aqueue import Aqueue

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{s.getsockname()[1]}/0"  # nothing listens there once closed
    queue = f"q-{uuid.uuid4().hex[:8]}"
    app = Aqueue("down", broker=url, backend=dead, task_default_queue=queue)

    @app.task(name="down.add")
    async def add(x: int, y: int) -> int:
        return x + y

    try:
        first = await add.delay(1, 2)
        second = await add.delay(3, 4)  # within the pause: no second connection attempt
        assert first._mailbox is None and second._mailbox is None
        delivered = await (await app.broker()).fetch([queue], 10, 1)
        assert len(delivered) == 2
        assert all(b'"reply_to":null' in d.body for d in delivered)
    finally:
        await app.close()


async def test_a_burst_beyond_the_pool_bound_waits_instead_of_failing(url: str) -> None:
    from aqueue.transports.redis.client import MAX_CONNECTIONS, open_client

    client = open_client(url)
    try:
        answers = await asyncio.gather(*(client.ping() for _ in range(3 * MAX_CONNECTIONS)))
        assert all(answers)
        pool = client.connection_pool
        assert len(pool._available_connections) + len(pool._in_use_connections) <= MAX_CONNECTIONS
    finally:
        await client.aclose()


async def _pending_counts(client: aioredis.Redis, queue: str) -> list[int]:
    pending = await client.xpending_range(keys.stream(queue, 0), keys.GROUP, "-", "+", 10)
    return [p["times_delivered"] for p in pending]


async def test_a_written_start_mark_sets_the_counter_and_is_answered(
    url: str, client: aioredis.Redis, brokers: list[RedisBroker], queue_name: str
) -> None:
    broker = await new_broker(brokers, url)
    await broker.publish([out(queue_name, b"a"), out(queue_name, b"b")])
    got = await broker.fetch([queue_name], 2, 5)

    answer = await broker.start_written([(got[0], False), (got[1], True)])

    assert answer is not None
    await answer
    assert await _pending_counts(client, queue_name) == [2, 3]  # running; running isolated
    await broker.ack(got)


async def test_a_stale_lease_is_not_marked_unanswered(
    url: str, client: aioredis.Redis, brokers: list[RedisBroker], queue_name: str
) -> None:
    broker = await new_broker(brokers, url, visibility_timeout=0.4)
    await broker.publish([out(queue_name, b"a")])
    [got] = await broker.fetch([queue_name], 1, 5)
    # Taken longer ago than half the visibility timeout: its mark needs an owner check.
    older = dataclasses.replace(got.token, received=got.token.received - 0.3)
    stale = dataclasses.replace(got, token=older)

    assert await broker.start_written([(stale, False)]) is None
    assert await _pending_counts(client, queue_name) == [1]  # nothing was sent
    await broker.ack([got])


async def test_written_acks_and_marks_after_a_script_flush_are_made_all_the_same(
    url: str, client: aioredis.Redis, brokers: list[RedisBroker], queue_name: str
) -> None:
    broker = await new_broker(brokers, url)
    await broker.publish([out(queue_name, b"a"), out(queue_name, b"b")])
    done, following = await broker.fetch([queue_name], 2, 5)
    await client.script_flush()  # as after a restart: EVALSHA answers NOSCRIPT

    answer = await broker.start_written([(following, False)], [done])

    assert answer is not None
    await answer
    assert await _pending_counts(client, queue_name) == [2]  # "a" acked, "b" running
    assert await client.xlen(keys.stream(queue_name, 0)) == 1  # and its entry deleted
    await broker.ack([following])


async def test_written_acks_ride_with_the_marks(
    url: str, client: aioredis.Redis, brokers: list[RedisBroker], queue_name: str
) -> None:
    broker = await new_broker(brokers, url)
    await broker.publish([out(queue_name, b"%d" % i) for i in range(4)])
    got = await broker.fetch([queue_name], 4, 5)

    answer = await broker.start_written([(got[2], False), (got[3], False)], got[:2])

    assert answer is not None
    await answer
    assert await _pending_counts(client, queue_name) == [2, 2]
    await broker.ack(got[2:])
    assert await _pending_counts(client, queue_name) == []


async def test_a_written_mark_whose_answer_is_cut_off_raises_and_frees_the_pool(
    redis_server: str, brokers: list[RedisBroker], queue_name: str
) -> None:
    proxy = FaultProxy(int(redis_server.rsplit(":", 1)[1]))
    proxy.start()
    try:
        broker = await new_broker(brokers, proxy.url(0))
        await broker.publish([out(queue_name, b"a")])
        [got] = await broker.fetch([queue_name], 1, 5)
        proxy.set_latency(0.5)  # the answer is still on its way when the connection is cut
        answer = await broker.start_written([(got, False)])
        assert answer is not None
        proxy.drop_all()
        with pytest.raises(BrokerConnectionError):
            await answer
        proxy.set_latency(0.0)
        await broker.ack([got])  # the pool works on: the cut connection was dropped
    finally:
        proxy.close()


# -- edges ---------------------------------------------------------------------------------


# -- the surplus buffer ----------------------------------------------------------------------


async def test_a_buffered_lease_its_own_reclaim_pass_took_over_is_handed_out_once(
    url: str, client: aioredis.Redis, brokers: list[RedisBroker], queue_name: str
) -> None:
    """A blocking read's surplus waits in the broker's buffer, leased but not renewed. Once
    its lease ran out, the broker's own fetch script may reclaim it (XAUTOCLAIM takes the
    claimant's own entries too) and hand it out; the buffered copy must then be forgotten,
    not handed out by the next fetch while the first run is under way."""
    a = await new_broker(brokers, url)
    b = await new_broker(brokers, url)
    await a.publish(
        [out(queue_name, b"p2", 2), out(queue_name, b"p1", 1), out(queue_name, b"p0", 0)]
    )
    plan = a._plan([queue_name])
    raw, _ = await a._session()
    await a._ensure_groups(raw, plan.streams)
    # Entries waiting when XREADGROUP BLOCK is called come one per stream: one handed out,
    # two kept in A's buffer (leased to A).
    [p2] = await a._read_blocking(raw, plan, 1, 0.1)
    assert p2.body == b"p2"
    assert sorted(d.body for d in a._buffer) == [b"p0", b"p1"], "setup: surplus not buffered"
    await a.ack([p2])
    # A stays busy for longer than the visibility timeout: its buffered leases run out on the
    # server (XCLAIM ... IDLE, owner unchanged) and are old for A.
    for d in a._buffer:
        await client.xclaim(
            d.token.stream, keys.GROUP, a._consumer, 0, [d.token.entry_id], idle=60_000, justid=True
        )
        d.token = dataclasses.replace(d.token, received=d.token.received - a._visibility)
    # Broker B, with one free slot, reclaims the first of them (p1).
    [got_b] = await b.fetch([queue_name], 1, 0)
    assert got_b.body == b"p1"
    # A frees a slot: its buffered p1 is found lost (B has it), so A runs its fetch script,
    # whose reclaim pass takes over p0, an entry still in A's buffer.
    [got_a] = await a.fetch([queue_name], 1, 0)
    assert got_a.body == b"p0"
    assert await a.start([(got_a, False)]) == [True]

    again = await a.fetch([queue_name], 1, 0)  # another free slot

    assert [d.token.entry_id for d in again] != [got_a.token.entry_id], "p0 handed out twice"
    assert a._buffer == []
    await a.ack([got_a, *again])
    await b.ack([got_b])


# -- malformed delayed members ---------------------------------------------------------------

NON_UTF8_STREAM = b"3:\xff\xfe\xfd1:xbody"
# A UTF-8 stream name that is no queue stream, long enough that the fetch script's reason (its
# first 80 bytes) cuts a 3-byte character in half.
EURO_STREAM = b"%d:%s1:xbody" % (3 * 40, "\u20ac".encode() * 40)


@pytest.mark.parametrize(
    "member", [NON_UTF8_STREAM, EURO_STREAM], ids=["non-utf8-stream", "euro-signs-cut-at-80-bytes"]
)
async def test_a_due_malformed_delayed_member_does_not_fail_the_fetch(
    url: str,
    client: aioredis.Redis,
    brokers: list[RedisBroker],
    queue_name: str,
    member: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The fetch script sets a malformed member aside and reports why, quoting up to 80 bytes
    of it; that report may not be UTF-8. Logging it must not fail the fetch, which would
    strand the messages the same script run leased until the visibility timeout."""
    broker = await new_broker(brokers, url)
    await broker.publish([out(queue_name, b"good message")])
    await client.zadd(keys.delayed(), {member: 1})  # due long ago
    try:
        with caplog.at_level(logging.ERROR, logger="aqueue"):
            found = await broker.fetch([queue_name], 10, 0)
    finally:
        await client.zrem(keys.delayed(), member)

    assert [d.body for d in found] == [b"good message"]
    assert any("set aside" in r.getMessage() for r in caplog.records)
    entries: Any = await client.xrange(keys.delayed_rejected())
    aside = [entry_id for entry_id, fields in entries if fields[b"m"] == member]
    assert len(aside) == 1
    await client.xdel(keys.delayed_rejected(), *aside)
    await broker.ack(found)


async def test_removing_a_dead_consumer_with_an_undecodable_name_does_not_fail_the_fetch(
    url: str,
    client: aioredis.Redis,
    brokers: list[RedisBroker],
    queue_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The reclaim pass removes consumers holding nothing that have been idle for a
    visibility timeout and reports their names, which anyone may have chosen: logging one
    that is not UTF-8 must not fail the fetch."""
    broker = await new_broker(brokers, url, visibility_timeout=0.4)
    await broker.fetch([queue_name], 1, 0)  # the groups exist
    stream = keys.stream(queue_name, 0)
    await client.xgroup_createconsumer(stream, keys.GROUP, b"dead-\xff")
    await broker.publish([out(queue_name, b"good message")])
    await asyncio.sleep(0.5)  # only has to be long enough: idle past a visibility timeout

    with caplog.at_level(logging.INFO, logger="aqueue"):
        found = await broker.fetch([queue_name], 10, 0)

    assert [d.body for d in found] == [b"good message"]
    assert any("dead-\ufffd" in r.getMessage() for r in caplog.records)
    names = [c["name"] for c in await client.xinfo_consumers(stream, keys.GROUP)]
    assert b"dead-\xff" not in names
    await broker.ack(found)


@pytest.mark.parametrize(
    "member",
    [
        b"garbage without any framing",
        b"1x:abc",  # a length that is not a number
        NON_UTF8_STREAM,  # framed, but its stream name does not decode
        None,  # this queue's stream, but no message id after it
    ],
    ids=["no-framing", "length-not-digits", "non-utf8-stream", "own-stream-no-message-id"],
)
async def test_a_malformed_delayed_member_not_yet_due_is_skipped_by_depths_and_purge(
    url: str,
    client: aioredis.Redis,
    brokers: list[RedisBroker],
    queue_name: str,
    member: bytes | None,
) -> None:
    """Until a malformed member is due (the fetch script then sets it aside) it stays in the
    delayed set, where counting and purging read every member: they skip it (it is counted
    nowhere and left in place) and still count and purge the well-formed ones."""
    if member is None:
        target = keys.stream(queue_name, 0).encode()
        member = b"%d:%s" % (len(target), target)
    broker = await new_broker(brokers, url)
    await broker.publish([out(queue_name, b"ready"), out(queue_name, b"later", eta=2**40)])
    await client.zadd(keys.delayed(), {member: 2**50})  # far in the future
    try:
        [depth] = await broker.queue_depths([queue_name])
        everywhere = {d.queue: d for d in await broker.queue_depths()}
        purged = await broker.purge([queue_name])
        left = await client.zscore(keys.delayed(), member)
    finally:
        await client.zrem(keys.delayed(), member)

    assert (depth.ready, depth.delayed) == (1, 1)
    assert everywhere[queue_name] == depth
    assert purged == 2
    assert left is not None  # the fetch script sets it aside once due
    [after] = await broker.queue_depths([queue_name])
    assert (after.ready, after.delayed) == (0, 0)


async def test_a_queue_named_in_any_script_has_its_delayed_messages_counted_and_purged(
    url: str, brokers: list[RedisBroker]
) -> None:
    """Counting checks that a member's stream name is UTF-8 (its caller decodes it): names
    with two-, three- and four-byte characters pass."""
    queue = f"q-\u00e9\u20ac\U0001f600-{uuid.uuid4().hex}"
    broker = await new_broker(brokers, url)
    await broker.publish([out(queue, b"later", 5, eta=2**40)])

    [depth] = await broker.queue_depths([queue])
    purged = await broker.purge([queue])

    assert (depth.ready, depth.delayed, purged) == (0, 1, 1)


# -- a poll --------------------------------------------------------------------------------


async def test_a_poll_right_after_a_blocking_read_that_drained_the_queue_finds_a_new_message(
    url: str, brokers: list[RedisBroker], queue_name: str
) -> None:
    """A blocking read that returned fewer than it could take marks its streams drained, and
    the next fetch skips the fetch script to block again at once. A poll (timeout 0) does not
    block, so it must run the script: skipping both returned nothing with a message ready."""
    broker = await new_broker(brokers, url)
    await broker.publish([out(queue_name, b"one")])
    plan = broker._plan([queue_name])
    raw, _ = await broker._session()
    await broker._ensure_groups(raw, plan.streams)
    # What a fetch's blocking read does when one message wakes it: 1 < limit 2.
    first = await broker._read_blocking(raw, plan, 2, 0.1)
    assert [d.body for d in first] == [b"one"]
    assert broker._drained == plan.streams, "setup: streams not marked drained"
    await broker.publish([out(queue_name, b"two")])

    second = await broker.fetch([queue_name], 2, 0)

    assert [d.body for d in second] == [b"two"]
    await broker.ack(first + second)


# -- dead letters written by hand ------------------------------------------------------------


async def test_a_dead_letter_written_by_hand_is_listed_with_the_others(
    url: str, client: aioredis.Redis, brokers: list[RedisBroker], queue_name: str
) -> None:
    """An entry of the dead-letter stream with an undecodable reason and a time that is no
    number is listed as well as it can be read, and the entries after it are listed too."""
    broker = await new_broker(brokers, url)
    dlq = broker._keys.dlq(queue_name)
    await client.xadd(dlq, {b"b": b"body-1", b"r": b"\xffbad", b"t": b"soon"})
    await client.xadd(dlq, {b"b": b"body-2", b"r": b"no handler", b"t": b"1700000000.5"})
    first, second = await broker.dead_letters(queue_name)
    assert (first.body, first.reason, first.time) == (b"body-1", "\ufffdbad", 0.0)
    assert (second.body, second.reason, second.time) == (b"body-2", "no handler", 1700000000.5)


async def test_a_fetch_cancelled_while_renewing_buffered_leases_keeps_them(
    url: str, client: aioredis.Redis, brokers: list[RedisBroker], queue_name: str
) -> None:
    """A fetch renews buffered leases that waited long before handing them out; cancelled
    there (a worker stopping), it must leave them in the buffer, which close() releases, not
    out of it and leased to no one until the visibility timeout."""
    a = await new_broker(brokers, url)
    await a.publish([out(queue_name, b"p1", 1), out(queue_name, b"p0", 0)])
    plan = a._plan([queue_name])
    raw, _ = await a._session()
    await a._ensure_groups(raw, plan.streams)
    [p1] = await a._read_blocking(raw, plan, 1, 0.1)
    [buffered] = a._buffer
    buffered.token = dataclasses.replace(
        buffered.token, received=buffered.token.received - a._visibility
    )
    pool: Any = raw.connection_pool
    idle = len(pool._in_use_connections)
    # The renewal waits on the server for 1 s (CLIENT UNPAUSE would wait out the pause too).
    await client.client_pause(1000)
    fetch = asyncio.ensure_future(a.fetch([queue_name], 1, 0))
    for _ in range(500):  # until the renewal holds a connection: it is on the server
        if len(pool._in_use_connections) > idle or fetch.done():
            break
        await asyncio.sleep(0.001)
    assert not fetch.done()
    fetch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fetch
    assert a._buffer == [buffered]
    await a.ack([p1])
    await a.close()  # releases the buffer: ready again at once
    c = await new_broker(brokers, url)
    [again] = await c.fetch([queue_name], 1, 1.0)
    assert again.body == b"p0"
    await c.ack([again])


# Busy on the server for 300 ms: commands other connections send meanwhile wait their turn.
BUSY_SCRIPT = """
local t = redis.call('TIME')
while true do
    local n = redis.call('TIME')
    if (n[1] - t[1]) * 1000000 + (n[2] - t[2]) > 300000 then return 1 end
end
"""


async def hold_the_server(client: aioredis.Redis, url: str) -> asyncio.Future[Any]:
    """Start :data:`BUSY_SCRIPT` on ``client``; return once it holds the server."""
    busy = asyncio.ensure_future(client.eval(BUSY_SCRIPT, 0))
    # Until the busy script runs: a PING on a connection of its own then waits behind it.
    probe = aioredis.Redis.from_url(url)
    try:
        for _ in range(100):
            try:
                await asyncio.wait_for(probe.ping(), 0.05)
            except TimeoutError:
                return busy
        raise AssertionError("setup: the busy script never held the server")
    finally:
        await probe.aclose()


async def until_sent(pool: Any, idle: int, call: asyncio.Future[Any]) -> None:
    """Wait until ``call`` holds one more connection of ``pool`` than ``idle``: its command
    is on its way to the server."""
    for _ in range(500):
        if len(pool._in_use_connections) > idle or call.done():
            break
        await asyncio.sleep(0.001)
    assert not call.done(), "setup: the call did not wait behind the busy script"


async def test_a_blocking_read_cancelled_as_an_entry_arrives_loses_no_lease(
    url: str, client: aioredis.Redis, brokers: list[RedisBroker], queue_name: str
) -> None:
    """A worker's stop cancels its fetch, which may be blocked in XREADGROUP. If Redis served
    the read before the cancellation reached it, the entry is leased to this consumer: it
    must reach the buffer, which close() releases, not wait out the visibility timeout."""
    a, b = await new_broker(brokers, url), await new_broker(brokers, url)
    assert await a.fetch([queue_name], 10, 0) == []  # the server has the script, the groups
    await b.publish([out(f"{queue_name}-warm", b"w", 0)])  # b's client and script are ready
    blocked = int((await client.info("clients"))["blocked_clients"])
    fetch = asyncio.ensure_future(a.fetch([queue_name], 10, 5.0))
    for _ in range(500):  # until a's read blocks on the server
        if int((await client.info("clients"))["blocked_clients"]) > blocked:
            break
        await asyncio.sleep(0.001)
    else:
        raise AssertionError("setup: the fetch never blocked")
    busy = await hold_the_server(client, url)
    # Behind the busy script: the publish, then whatever the cancellation sends. The server
    # takes them in that order, so the publish serves the blocked read first.
    raw, _ = await b._session()
    pool: Any = raw.connection_pool
    idle = len(pool._in_use_connections)
    publish = asyncio.ensure_future(b.publish([out(queue_name, b"late", 0)]))
    await until_sent(pool, idle, publish)
    fetch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fetch
    assert await busy == 1
    await publish
    await a.close()  # releases what the woken read leased: ready again at once
    c = await new_broker(brokers, url)
    got = await c.fetch([queue_name], 10, 1.0)
    assert [d.body for d in got] == [b"late"]
    await c.ack(got)


async def test_a_fetch_cancelled_while_its_script_runs_loses_no_lease(
    url: str, client: aioredis.Redis, brokers: list[RedisBroker], queue_name: str
) -> None:
    """A worker's stop cancels its fetch. Redis still runs a fetch script whose command it
    received (redis-py only drops the connection), leasing the batch: what it leased must
    reach the buffer, which close() releases, not wait out the visibility timeout."""
    a = await new_broker(brokers, url)
    assert await a.fetch([queue_name], 10, 0) == []  # the server has the script, the groups
    await a.publish([out(queue_name, b"m%d" % i, 0) for i in range(3)])
    raw, _ = await a._session()
    pool: Any = raw.connection_pool
    busy = await hold_the_server(client, url)
    idle = len(pool._in_use_connections)
    fetch = asyncio.ensure_future(a.fetch([queue_name], 10, 0))
    await until_sent(pool, idle, fetch)  # the script run's command is on its way
    fetch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fetch
    assert await busy == 1
    await a.close()
    c = await new_broker(brokers, url)
    got = await c.fetch([queue_name], 10, 1.0)
    assert sorted(d.body for d in got) == [b"m0", b"m1", b"m2"]
    await c.ack(got)
