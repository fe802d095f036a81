"""The ControlTransport contract (channels, tables, token buckets) on every transport.

A new control transport is done when it passes this file unchanged. Sleeps appear only where the
contract is about time passing (an entry's ttl, a bucket refilling).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aqueue.exceptions import BrokerConnectionError
from aqueue.transports import transport_for
from aqueue.transports.base import ControlTransport
from tests.apps.ops_tasks import OPS_TRANSPORTS, url_for

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(params=OPS_TRANSPORTS)
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return url_for(request.param, request, tmp_path)


@pytest.fixture
async def transports(url: str) -> AsyncIterator[tuple[ControlTransport, ControlTransport]]:
    """Two clients of one server (memory: one shared instance, as the app shares it)."""
    first = transport_for(url, shared=False).control()
    second = first if url.startswith("memory:") else transport_for(url, shared=False).control()
    await first.connect()
    await second.connect()
    yield first, second
    await first.close()
    await second.close()


def name() -> str:
    return f"t-{uuid.uuid4().hex}"


async def test_subscribers_get_what_is_published_after_subscribing_in_order(
    transports: tuple[ControlTransport, ControlTransport],
) -> None:
    publisher, listener = transports
    channel = name()
    await publisher.publish(channel, [b"before"])  # nobody listens yet: dropped
    async with listener.subscribe(channel) as first, publisher.subscribe(channel) as second:
        await publisher.publish(channel, [b"one", b"two"])
        await publisher.publish(channel, [b"three"])
        for queue in (first, second):
            got = [await asyncio.wait_for(queue.get(), 5) for _ in range(3)]
            assert got == [b"one", b"two", b"three"]
        assert first.empty() and second.empty()


async def test_a_channel_gets_only_its_own_messages(
    transports: tuple[ControlTransport, ControlTransport],
) -> None:
    publisher, listener = transports
    mine, other = name(), name()
    async with listener.subscribe(mine) as queue:
        await publisher.publish(other, [b"not for me"])
        await publisher.publish(mine, [b"for me"])
        assert await asyncio.wait_for(queue.get(), 5) == b"for me"
        assert queue.empty()


async def test_tables_put_read_delete_and_version(
    transports: tuple[ControlTransport, ControlTransport],
) -> None:
    writer, reader = transports
    table = name()
    assert await reader.read(table) == (0, {})
    assert await reader.version(table) == 0
    await writer.put(table, "a", b"1", None)
    await writer.put(table, "b", b"2", 60)
    version, entries = await reader.read(table)
    assert entries == {"a": b"1", "b": b"2"}
    assert version == await reader.version(table) > 0
    await writer.put(table, "a", None, None)
    assert await reader.version(table) > version
    assert (await reader.read(table))[1] == {"b": b"2"}


async def test_a_table_entry_expires_after_its_ttl(
    transports: tuple[ControlTransport, ControlTransport],
) -> None:
    writer, reader = transports
    table = name()
    await writer.put(table, "short", b"x", 0.3)
    await writer.put(table, "kept", b"y", None)
    assert set((await reader.read(table))[1]) == {"short", "kept"}
    await asyncio.sleep(0.45)
    assert (await reader.read(table))[1] == {"kept": b"y"}


async def test_a_bucket_starts_full_then_refills_at_the_rate_for_every_client(
    transports: tuple[ControlTransport, ControlTransport],
) -> None:
    first, second = transports
    bucket = name()
    assert await first.acquire(bucket, 5.0, 1.0) == 0  # full: one token at once
    wait = await second.acquire(bucket, 5.0, 1.0)  # shared: the other client finds it empty
    assert 0 < wait <= 0.2  # the next token: 1/5 s after the first was taken
    assert await first.acquire(bucket, 5.0, 1.0) > 0  # asking again takes nothing
    await asyncio.sleep(wait + 0.01)  # waiting for the refill itself
    assert await second.acquire(bucket, 5.0, 1.0) == 0
    assert await first.acquire(bucket, 5.0, 1.0) > 0


async def test_concurrent_clients_never_take_more_tokens_than_the_bucket_gives(
    transports: tuple[ControlTransport, ControlTransport],
) -> None:
    first, second = transports
    bucket = name()
    # 40 attempts at once from both clients against a bucket of 1 token that gains the next
    # in 100 s (so however slowly they run, no second token comes): exactly 1 wins.
    waits = await asyncio.gather(*(c.acquire(bucket, 0.01, 1.0) for c in [first, second] * 20))
    assert sum(1 for w in waits if w == 0) == 1
    assert all(50 < w <= 100 for w in waits if w != 0)  # each told when the next one comes


async def test_close_ends_every_open_subscription(
    transports: tuple[ControlTransport, ControlTransport],
) -> None:
    """A consumer waiting on its queue when the transport closes is told (it would otherwise
    wait for ever): what arrived before is still read, then every get raises."""
    publisher, listener = transports
    channel = name()
    async with listener.subscribe(channel) as queue:
        await publisher.publish(channel, [b"one"])
        assert await asyncio.wait_for(queue.get(), 5) == b"one"
        waiting = asyncio.create_task(queue.get())
        await asyncio.sleep(0)  # one loop step: the get is now parked on the empty queue
        assert not waiting.done()
        await listener.close()
        with pytest.raises(BrokerConnectionError, match="closed"):
            await asyncio.wait_for(waiting, 10)
        with pytest.raises(BrokerConnectionError, match="closed"):
            await asyncio.wait_for(queue.get(), 10)  # a later get too, not only the waiter
