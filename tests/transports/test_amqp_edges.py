"""RabbitMQ broker edges: headers it cannot publish again, properties that are not UTF-8,
copies RabbitMQ refuses, and close() during a waiting fetch.

pamqp decodes some valid AMQP header values into Python values it cannot encode back (a long
string that is not UTF-8 comes back as ``bytes``; kombu and py-amqp publish ``bytes`` header
values that way). The broker re-publishes received headers when it re-counts, re-delays or
releases a delivery: such a message must not wedge the consumer nor strand other messages, and
neither must a copy that RabbitMQ itself does not take (nacked by a queue at its max-length).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import aiormq
import pytest

from aqueue.exceptions import BrokerConnectionError
from aqueue.transports import Outgoing
from aqueue.transports.amqp import publisher
from aqueue.transports.amqp.broker import AMQPBroker
from aqueue.transports.amqp.publisher import Publication
from aqueue.transports.base import Delivery
from tests.conftest import RabbitNode

pytestmark = pytest.mark.timeout(90)

# A header table {"blob": <long string of the bytes 0xff 0xfe>}: valid AMQP, not UTF-8.
_ITEM = b"\x04blob" + b"S" + struct.pack(">I", 2) + b"\xff\xfe"
_RAW_TABLE = struct.pack(">I", len(_ITEM)) + _ITEM
# A header table whose one key is the bytes 0xff 0xfe (a field name is a short string: octets),
# holding {"x": 1} in a nested table: valid AMQP, not UTF-8.
_NESTED = b"\x01x" + b"b" + b"\x01"
_KEY_ITEM = b"\x02\xff\xfe" + b"F" + struct.pack(">I", len(_NESTED)) + _NESTED
_RAW_KEY_TABLE = struct.pack(">I", len(_KEY_ITEM)) + _KEY_ITEM


@pytest.fixture
def url(rabbitmq_server: RabbitNode) -> str:
    return rabbitmq_server.url


@pytest.fixture
async def queue(url: str) -> AsyncIterator[str]:
    """A fresh declared, empty queue."""
    name = f"edges-{uuid.uuid4().hex}"
    declaring = AMQPBroker(url, {})
    await declaring.publish([Outgoing(name, b"declare", uuid.uuid4().hex)])
    [d] = await declaring.fetch([name], 1, 5)
    await declaring.ack([d])
    await declaring.close()
    yield name


async def publish_raw(
    url: str,
    queue: str,
    bodies: Sequence[tuple[bytes, bool]],
    monkeypatch: pytest.MonkeyPatch,
    table: bytes = _RAW_TABLE,
) -> None:
    """Publish each ``(body, binary)`` to ``queue`` in order, confirmed, on a connection of its
    own; ``binary``: with the header table ``table`` as it is (pamqp cannot write it)."""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        for body, binary in bodies:
            with monkeypatch.context() as patch:
                if binary:
                    patch.setattr(publisher, "field_table", lambda _: table)
                confirms = await publisher.publish(
                    channel, [Publication(body, "", queue, uuid.uuid4().hex, 0, {"x": 1})]
                )
            assert await confirms.outcomes(10) == [None]
    finally:
        await connection.close()


async def fetch_all(broker: AMQPBroker, queue: str, count: int, seconds: float) -> list[Delivery]:
    """Fetch (and ack) until ``count`` deliveries came, or ``seconds`` passed."""
    got: list[Delivery] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while len(got) < count and (left := deadline - loop.time()) > 0:
        for d in await broker.fetch([queue], 10, min(left, 1.0)):
            got.append(d)
            await broker.ack([d])
    return got


async def buffered(broker: AMQPBroker, count: int) -> None:
    """Wait until ``broker``'s buffer holds ``count`` deliveries (woken by each arrival)."""
    buffer = broker._buffer
    while sum(len(heap) for heap in buffer._heaps.values()) < count:
        buffer.arrived.clear()
        await asyncio.wait_for(buffer.arrived.wait(), 10)


@contextlib.contextmanager
def max_length_one(node: RabbitNode, queue: str) -> Iterator[None]:
    """A policy making ``queue`` take one ready message and nack the rest (RabbitMQ's own
    refusal: max-length 1, overflow=reject-publish; unacked messages do not count); cleared
    at the end."""
    policy = f"aqueue-test-{queue}"
    limits = '{"max-length": 1, "overflow": "reject-publish"}'
    node.ctl("set_policy", policy, f"^{queue}$", limits, "--apply-to", "queues")
    try:
        yield
    finally:
        node.ctl("clear_policy", policy)


async def test_unencodable_headers_are_a_defect_and_dead_lettered(
    url: str, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery whose headers cannot be encoded again is handed out with a ``defect``
    naming why (the worker dead-letters it), and dead-lettering it works: the dead letter
    gets fresh headers."""
    await publish_raw(url, queue, [(b"bad", True)], monkeypatch)
    broker = AMQPBroker(url, {})
    try:
        [d] = await broker.fetch([queue], 1, 5)
        assert d.body == b"bad"
        assert d.defect is not None and "cannot be re-published" in d.defect
        assert d.delivery_count == 1
        await broker.dead_letter(d, d.defect)
        [letter] = await broker.dead_letters(queue)
        assert letter.body == b"bad" and "cannot be re-published" in letter.reason
    finally:
        await broker.close()


async def test_redelivered_unencodable_message_does_not_stall_the_consumer(
    url: str, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Classic queue, prefetch 1: a redelivered message is re-published with a higher count.
    Re-encoding its headers used to raise TypeError in the consumer callback: the delivery was
    neither buffered nor acked and held the only prefetch slot, so nothing else on the queue
    was delivered while the connection lived. Now it comes out (as a defect), and so does the
    message behind it."""
    await publish_raw(url, queue, [(b"bad", True), (b"good", False)], monkeypatch)
    first = AMQPBroker(url, {"prefetch_count": 1})
    [held] = await first.fetch([queue], 1, 5)
    assert held.body == b"bad"
    await first.close()  # the worker died: "bad" goes back, redelivered
    second = AMQPBroker(url, {"prefetch_count": 1})
    try:
        got = await fetch_all(second, queue, 2, 10)
        assert [d.body for d in got] == [b"bad", b"good"]
        assert got[0].defect is not None and got[1].defect is None
    finally:
        await second.close()


@pytest.mark.parametrize("how", ["stop_fetching", "close"])
async def test_releasing_a_buffer_with_an_unencodable_message_strands_nothing(
    url: str, queue: str, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """stop_fetching (like the idle release) and close() re-publish what the buffer holds as
    one batch; one message whose headers cannot be encoded used to fail the whole batch with
    a TypeError after the buffer was drained: the good messages stayed leased to nobody (and
    close() raised). Now the release succeeds, the bad message is put back in its queue and
    the good one re-published: another consumer gets both."""
    await publish_raw(
        url, queue, [(b"first", False), (b"bad", True), (b"good", False)], monkeypatch
    )
    holder = AMQPBroker(url, {"prefetch_count": 10})
    other = AMQPBroker(url, {})
    try:
        [d] = await holder.fetch([queue], 1, 5)
        assert d.body == b"first"
        await holder.ack([d])
        await buffered(holder, 2)
        if how == "close":
            await holder.close()
        else:
            await holder.stop_fetching()  # holder stays connected (an app living on)
        got = await fetch_all(other, queue, 2, 10)
        assert sorted(d.body for d in got) == [b"bad", b"good"]
        assert [d.body for d in got if d.defect is not None] == [b"bad"]
    finally:
        await holder.close()
        await other.close()


async def test_unexpected_error_re_publishing_hands_the_delivery_out(
    url: str, queue: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An error re-publishing a redelivered message that is not the connection's (a bug, a
    message the arrival check missed) used to kill the consumer callback and orphan the
    delivery (prefetch 1: the queue stalled). Now it is logged and the delivery handed out as
    it is, counted as its copy would have been; the next message follows."""
    broker = AMQPBroker(url, {"prefetch_count": 1})
    await broker.publish(
        [Outgoing(queue, b"again", uuid.uuid4().hex), Outgoing(queue, b"next", uuid.uuid4().hex)]
    )
    [held] = await broker.fetch([queue], 1, 5)
    assert held.body == b"again"
    await broker.close()  # "again" goes back, redelivered

    second = AMQPBroker(url, {"prefetch_count": 1})

    def broken(*_: Any) -> Publication:
        raise ValueError("cannot copy")

    monkeypatch.setattr(second, "_copy", broken)
    try:
        with caplog.at_level(logging.ERROR, logger="aqueue.transports.amqp.broker"):
            got = await fetch_all(second, queue, 2, 10)
        assert [(d.body, d.delivery_count) for d in got] == [(b"again", 2), (b"next", 1)]
        assert any("handing it out as it is" in r.getMessage() for r in caplog.records)
    finally:
        await second.close()


async def test_close_makes_a_waiting_fetch_return_empty(url: str, monkeypatch: Any) -> None:
    """A fetch waiting for deliveries when close() runs returns ``[]``, as its docstring says,
    instead of starting consumers on the closing connection and raising
    BrokerConnectionError."""
    queue = f"edges-{uuid.uuid4().hex}"
    broker = AMQPBroker(url, {})
    try:
        await broker.publish([Outgoing(queue, b"x", uuid.uuid4().hex)])
        [d] = await broker.fetch([queue], 1, 5)
        await broker.ack([d])
        arrived = broker._buffer.arrived
        real_wait = arrived.wait
        waiting = asyncio.Event()

        async def wait() -> bool:
            waiting.set()
            return await real_wait()

        monkeypatch.setattr(arrived, "wait", wait)
        fetching = asyncio.ensure_future(broker.fetch([queue], 1, 30))
        await asyncio.wait_for(waiting.wait(), 10)  # the fetch waits for an arrival
        await broker.close()
        assert await asyncio.wait_for(fetching, 10) == []
    finally:
        await broker.close()


async def test_redelivered_message_whose_copy_is_nacked_is_handed_out(
    url: str, queue: str, rabbitmq_server: RabbitNode, caplog: pytest.LogCaptureFixture
) -> None:
    """Classic queue, prefetch 1: a redelivered message is re-published with its count, and
    RabbitMQ refuses the copy (a nack: the queue is at its max-length with
    overflow=reject-publish). The delivery used to be left neither acked nor buffered: it held
    the only prefetch slot, so nothing more of the queue was delivered while the connection
    lived. Now it is handed out as it is, counted as its copy would have been, and the message
    behind it follows."""
    first = AMQPBroker(url, {"prefetch_count": 1})
    second = AMQPBroker(url, {"prefetch_count": 1})
    try:
        with max_length_one(rabbitmq_server, queue):
            await first.publish([Outgoing(queue, b"again", uuid.uuid4().hex)])
            [held] = await first.fetch([queue], 1, 5)
            assert held.body == b"again"
            # Accepted: only ready messages count towards max-length, and "again" is unacked.
            await first.publish([Outgoing(queue, b"next", uuid.uuid4().hex)])
            await first.close()  # the worker died: "again" goes back, redelivered, first
            # "next" is ready: the re-counted copy of "again" is over the limit, and nacked.
            with caplog.at_level(logging.WARNING, logger="aqueue.transports.amqp.broker"):
                got = await fetch_all(second, queue, 2, 10)
        assert [(d.body, d.delivery_count) for d in got] == [(b"again", 2), (b"next", 1)]
        assert any("handing it out as it is" in r.getMessage() for r in caplog.records)
    finally:
        await first.close()
        await second.close()


async def test_release_whose_copy_is_nacked_gives_the_delivery_back(
    url: str, queue: str, rabbitmq_server: RabbitNode
) -> None:
    """release() publishes a copy and acks the original. When RabbitMQ nacks the copy, the
    original used to stay leased to the live connection, handed out to nobody (the worker
    has let go of it), holding the prefetch slot: nothing more of the queue was delivered.
    Now it is put back in its queue (counted once more) and delivered again."""
    broker = AMQPBroker(url, {"prefetch_count": 1})
    try:
        with max_length_one(rabbitmq_server, queue):
            await broker.publish([Outgoing(queue, b"held", uuid.uuid4().hex)])
            [held] = await broker.fetch([queue], 1, 5)
            await broker.publish([Outgoing(queue, b"next", uuid.uuid4().hex)])
            with pytest.raises(BrokerConnectionError, match=r"basic\.nack"):
                await broker.release([held])  # "next" is ready: the copy is over the limit
            got = await fetch_all(broker, queue, 2, 10)
        assert [d.body for d in got] == [b"held", b"next"]
        assert got[0].delivery_count == 2  # given back rather than re-published: counted
    finally:
        await broker.close()


async def test_stop_fetching_whose_copies_are_nacked_strands_nothing(
    url: str, queue: str, rabbitmq_server: RabbitNode
) -> None:
    """stop_fetching (like the idle release) re-publishes what the buffer holds and acks the
    originals. A copy RabbitMQ nacked used to leave its original leased to the live connection,
    its consumer cancelled and the buffer emptied: delivered to no one, silently (the others
    were confirmed, so nothing was raised). Now it is put back in its queue."""
    holder = AMQPBroker(url, {"prefetch_count": 10})
    other = AMQPBroker(url, {})
    try:
        with max_length_one(rabbitmq_server, queue):
            for body in (b"first", b"a", b"b"):
                # One at a time: each is delivered (unacked) before the next is published.
                await holder.publish([Outgoing(queue, body, uuid.uuid4().hex)])
                if body == b"first":
                    [d] = await holder.fetch([queue], 1, 5)
                    await holder.ack([d])
                else:
                    await buffered(holder, 1 if body == b"a" else 2)
            await holder.stop_fetching()  # the second copy is over the limit: nacked
            got = await fetch_all(other, queue, 2, 10)
        assert sorted(d.body for d in got) == [b"a", b"b"]
    finally:
        await holder.close()
        await other.close()


async def test_a_property_that_is_not_utf8_is_read_and_published_again_as_it_is(
    url: str, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AMQP short strings (correlation_id here) are octets, which RabbitMQ passes on as they
    are; one that is not UTF-8 used to fail the decoding of the frame in the connection's
    reader: the connection dropped, the message was delivered again on the new one and dropped
    it again, for ever, and nothing else was consumed. Now it is read as bytes, and
    re-counting and dead-lettering publish it again unchanged; the next message follows."""
    connection = await aiormq.connect(url)
    first = AMQPBroker(url, {"prefetch_count": 1})
    second = AMQPBroker(url, {"prefetch_count": 1})
    try:
        channel = await connection.channel(publisher_confirms=True)
        real = publisher._short

        def not_utf8(text: str, what: str) -> bytes:
            return b"\x02\xff\xfe" if what == "correlation id" else real(text, what)

        with monkeypatch.context() as patch:
            patch.setattr(publisher, "_short", not_utf8)
            sent = await publisher.publish(channel, [Publication(b"odd", "", queue, "id")])
        assert await sent.outcomes(10) == [None]
        await first.publish([Outgoing(queue, b"next", uuid.uuid4().hex)])
        [odd] = await first.fetch([queue], 1, 5)
        assert (odd.body, odd.delivery_count, odd.defect) == (b"odd", 1, None)
        await first.close()  # the worker died: the next consumer re-counts it, re-publishing
        # it to the end of the queue, behind "next".
        [following] = await second.fetch([queue], 1, 5)
        assert following.body == b"next"
        await second.ack([following])
        [odd] = await second.fetch([queue], 1, 5)
        assert (odd.body, odd.delivery_count, odd.defect) == (b"odd", 2, None)
        assert odd.token.properties.correlation_id == b"\xff\xfe"
        await second.dead_letter(odd, "poison")
        [letter] = await second.dead_letters(queue)
        assert (letter.body, letter.reason) == (b"odd", "poison")
    finally:
        await first.close()
        await second.close()
        await connection.close()


async def test_a_header_key_that_is_not_utf8_is_a_defect_not_a_dropped_connection(
    url: str, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A header table's field names are short strings, octets RabbitMQ passes on unchecked;
    pamqp's table decoder raised on one that is not UTF-8, failing the frame in the
    connection's reader: the connection dropped, and every consumer that got the message again
    dropped in turn. It is read now, a defect the worker dead-letters, and the next message
    follows."""
    await publish_raw(url, queue, [(b"odd", True), (b"next", False)], monkeypatch, _RAW_KEY_TABLE)
    broker = AMQPBroker(url, {"prefetch_count": 1})
    try:
        got = await fetch_all(broker, queue, 2, 10)
        assert [d.body for d in got] == [b"odd", b"next"]
        odd = got[0]
        assert odd.defect is not None and "headers" in odd.defect
        assert odd.token.properties.headers == {b"\xff\xfe": {"x": 1}}
    finally:
        await broker.close()
