"""Edges of the Redis broker: its surplus buffer against its own reclaim pass, malformed
delayed members (due or not) and a poll right after a blocking read."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from aqueue.transports.base import Outgoing
from aqueue.transports.redis import keys
from aqueue.transports.redis.broker import RedisBroker

pytestmark = pytest.mark.timeout(60)


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
