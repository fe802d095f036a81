"""Leases a broker holds for a consumer that has not handed them out yet, and the clock leases
are timed by.

- Redis: a blocking read (or a cancelled fetch) can lease more entries than the fetch asked for;
  the surplus waits in the broker's buffer. A busy worker does not fetch, so the surplus must
  not stay leased to it, unrenewed, until the visibility timeout hands it to someone else.
- Memory: a lease never leaves the process, so a step of the wall clock (NTP) must neither
  expire nor extend it.

Brokers here are real: a Redis server started by the test session, the in-process broker.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from aqueue.transports.base import Outgoing
from aqueue.transports.memory.broker import MemoryBroker
from aqueue.transports.redis.broker import RedisBroker
from tests.transports import test_redis
from tests.transports.test_redis import hold_the_server, new_broker, until_sent

pytestmark = pytest.mark.timeout(60)


def out(queue: str, body: bytes, priority: int = 0, eta: float | None = None) -> Outgoing:
    return Outgoing(queue, body, uuid.uuid4().hex, priority, eta)


# -- Redis: the surplus buffer ------------------------------------------------------------------


# The Redis suite's fixtures, shared.
url, client, brokers = test_redis.url, test_redis.client, test_redis.brokers


async def with_surplus(broker: RedisBroker, queue: str) -> bytes:
    """Publish ``p1`` (priority 1) and ``p0`` (priority 0) to ``queue`` and lease both with one
    blocking read asked for one: ``p1`` is handed out and acked, ``p0`` waits in the buffer.
    Returns p0's entry id."""
    await broker.publish([out(queue, b"p1", 1), out(queue, b"p0", 0)])
    plan = broker._plan([queue])
    raw, _ = await broker._session()
    await broker._ensure_groups(raw, plan.streams)
    # Entries waiting when XREADGROUP BLOCK is called come one per stream.
    [p1] = await broker._read_blocking(raw, plan, 1, 0.1)
    assert p1.body == b"p1"
    [p0] = broker._buffer
    assert p0.body == b"p0", "setup: the surplus was not buffered"
    await broker.ack([p1])
    return p0.token.entry_id


async def test_renewing_hands_the_buffered_surplus_back_at_once(
    url: str, brokers: list[RedisBroker], queue_name: str
) -> None:
    """A worker whose runners are all busy does not fetch, so a blocking read's surplus would
    stay leased to it, never renewed, for a whole visibility timeout (30 s by default) while
    other workers idle, then be taken over. The worker's lease renewal (every third of the
    timeout, with the messages it holds) hands the surplus back: another consumer gets it at
    once, and the busy one never hands it out."""
    busy = await new_broker(brokers, url)
    idle = await new_broker(brokers, url)
    await busy.publish([out(queue_name, b"running", 5)])
    [running] = await busy.fetch([queue_name], 1, 0)
    await with_surplus(busy, queue_name)

    await busy.renew([running])  # the worker's renewer: its one runner is busy

    got = await idle.fetch([queue_name], 10, 0)
    assert [(d.body, d.delivery_count) for d in got] == [(b"p0", 1)]
    assert busy._buffer == []
    assert await busy.fetch([queue_name], 10, 0) == [], "p0 handed out twice"
    await idle.ack(got)
    await busy.ack([running])


async def test_a_renewal_cancelled_while_handing_back_the_surplus_hands_it_out_once(
    url: str, client: aioredis.Redis, brokers: list[RedisBroker], queue_name: str
) -> None:
    """Cancelled (a worker stopping) while handing the surplus back, the broker cannot know
    whether Redis ran the release: the entries stay in the buffer, for the owner check at
    hand-out to decide. Here the release did run (Redis runs a command it received), so the
    buffered copy is dropped and the message handed out once, as the entry it was re-added as;
    without the owner check both would be."""
    a = await new_broker(brokers, url)
    old_id = await with_surplus(a, queue_name)
    raw, _ = await a._session()
    pool: Any = raw.connection_pool
    busy = await hold_the_server(client, url)
    in_use = len(pool._in_use_connections)
    # Holding nothing else, the renewal's one command is the release of the surplus.
    renewal = asyncio.ensure_future(a.renew([]))
    await until_sent(pool, in_use, renewal)  # the release waits behind the busy script
    renewal.cancel()
    with pytest.raises(asyncio.CancelledError):
        await renewal
    assert [d.token.entry_id for d in a._buffer] == [old_id]

    assert await busy == 1

    got = await a.fetch([queue_name], 10, 1.0)  # the release ran: Redis had received it

    assert [d.body for d in got] == [b"p0"]
    assert got[0].token.entry_id != old_id, "the released entry handed out, not its copy"
    assert a._buffer == []
    assert await a.fetch([queue_name], 10, 0) == [], "p0 handed out twice"
    await a.ack(got)


# -- memory: leases and the wall clock ----------------------------------------------------------


async def test_a_wall_clock_step_forward_does_not_expire_a_memory_lease(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An NTP step of the wall clock must not make a fresh lease run out: the message would
    be handed to a second consumer while the first runs it."""
    broker = MemoryBroker(options={"visibility_timeout": 30})
    await broker.publish([out("q", b"x")])
    [first] = await broker.fetch(["q"], 1, 0)
    stepped = time.time() + 3600.0
    monkeypatch.setattr(time, "time", lambda: stepped)

    assert await broker.fetch(["q"], 1, 0) == [], "a fresh lease ran out on a clock step"
    [depth] = await broker.queue_depths(["q"])
    assert (depth.ready, depth.unacked) == (0, 1)
    await broker.ack([first])


async def test_a_wall_clock_step_back_does_not_extend_a_memory_lease(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A step back of the wall clock must not keep a lease whose time is up: the message of a
    consumer gone would wait that much longer."""
    broker = MemoryBroker(options={"visibility_timeout": 0.05})
    await broker.publish([out("q", b"x")])
    await broker.fetch(["q"], 1, 0)
    stepped = time.time() - 3600.0
    monkeypatch.setattr(time, "time", lambda: stepped)

    again = await broker.fetch(["q"], 1, 2.0)  # the lease runs out within 0.05 s

    assert [d.body for d in again] == [b"x"]
    await broker.ack(again)


async def test_a_delayed_memory_message_still_follows_the_wall_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An eta is a point in epoch time chosen by the sender: delayed messages keep following
    the wall clock while leases follow the monotonic one."""
    broker = MemoryBroker()
    now = time.time()
    await broker.publish([out("q", b"later", eta=now + 3600.0)])
    assert await broker.fetch(["q"], 1, 0) == []
    monkeypatch.setattr(time, "time", lambda: now + 3601.0)

    got = await broker.fetch(["q"], 1, 0)

    assert [d.body for d in got] == [b"later"]
    await broker.ack(got)
