"""Publishing on RabbitMQ: many messages per write, confirms awaited together, and an error for
exactly the messages RabbitMQ did not confirm (a nack, a returned message, a connection dropped
mid-batch), from the frames on the wire up to ``delay()``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiormq
import aiormq.abc
import pytest
from pamqp import commands
from pamqp.body import ContentBody
from pamqp.frame import marshal
from pamqp.header import ContentHeader

from aqueue import Aqueue
from aqueue.exceptions import BrokerConnectionError, BrokerError, PublishIncomplete
from aqueue.transports import Outgoing
from aqueue.transports.amqp import publisher, renewal
from aqueue.transports.amqp.broker import AMQPBroker
from aqueue.transports.amqp.publisher import Publication, ack_frames, encode
from tests.conftest import RabbitNode, until

pytestmark = pytest.mark.timeout(90)


def out(queue: str, body: bytes = b"x", **fields: Any) -> Outgoing:
    return Outgoing(queue, body, uuid.uuid4().hex, **fields)


@pytest.fixture
async def broker(rabbitmq_server: RabbitNode) -> AsyncIterator[AMQPBroker]:
    b = AMQPBroker(rabbitmq_server.url, {})
    await b.connect()
    yield b
    await b.close()


async def queued_ids(url: str, queue: str, timeout: float = 30) -> list[str]:
    """The correlation ids (task ids) of every message in ``queue``, which it empties."""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        declared = await channel.queue_declare(queue, passive=True)
        expected = declared.message_count or 0
        ids: list[str] = []
        done = asyncio.Event()
        if expected == 0:
            return ids

        async def take(message: aiormq.abc.DeliveredMessage) -> None:
            ids.append(str(message.header.properties.correlation_id))
            if len(ids) >= expected:
                done.set()

        await channel.basic_qos(prefetch_count=2000)
        await channel.basic_consume(queue, take, no_ack=True)
        await asyncio.wait_for(done.wait(), timeout)
        return ids
    finally:
        await connection.close()


@contextlib.contextmanager
def rejecting_after_three(node: RabbitNode) -> Iterator[str]:
    """A queue name whose queue takes three messages and nacks the rest: a policy of
    ``max-length: 3`` with ``overflow: reject-publish`` (RabbitMQ's own refusal, by policy so
    that the queue's arguments stay aqueue's); the policy is cleared at the end."""
    queue = f"nack-{uuid.uuid4().hex}"
    policy = f"aqueue-test-{queue}"
    limits = '{"max-length": 3, "overflow": "reject-publish"}'
    node.ctl("set_policy", policy, f"^{queue}$", limits, "--apply-to", "queues")
    try:
        yield queue
    finally:
        node.ctl("clear_policy", policy)


# -- the frames ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "p",
    [
        Publication(b"body", "", "q"),
        Publication(b"", "media", "media.video.mp4", "c0ffee", 9, None, True, False),
        Publication(b"x" * 100, "aqueue.delay.3", "0.1", "id", 0, {"aqueue-target": "q"}),
        Publication(
            bytes(range(256)) * 20,
            "",
            "q\u00e9",
            None,
            5,
            {"aqueue-deliveries": 3, "aqueue-eta": 1_700_000_000_000, "aqueue-reason": "bad"},
            False,
        ),
    ],
)
def test_frames_are_those_of_basic_publish(p: Publication) -> None:
    max_body = 1000  # a body of 5,120 bytes takes 6 frames
    properties = commands.Basic.Properties(
        delivery_mode=2 if p.persistent else 1,
        priority=p.priority,
        correlation_id=p.correlation_id,
        message_id="m-1",
        headers=dict(p.headers) if p.headers else None,
    )
    expected = marshal(
        commands.Basic.Publish(
            exchange=p.exchange, routing_key=p.routing_key, mandatory=p.mandatory
        ),
        7,
    ) + marshal(ContentHeader(0, len(p.body), properties), 7)
    for start in range(0, len(p.body), max_body):
        expected += marshal(ContentBody(p.body[start : start + max_body]), 7)
    assert encode(p, "m-1", 7, max_body) == expected


def test_acks_are_those_of_basic_ack() -> None:
    expected = b"".join(marshal(commands.Basic.Ack(delivery_tag=t), 3) for t in (1, 7, 2**40))
    assert ack_frames(3, [1, 7, 2**40]) == expected
    multiple = marshal(commands.Basic.Ack(delivery_tag=5, multiple=True), 3)
    assert ack_frames(3, [1, 7, 2**40], upto=5) == multiple + expected


def test_names_longer_than_amqp_allows_are_refused_before_anything_is_sent() -> None:
    with pytest.raises(ValueError, match="longer than 255 bytes"):
        encode(Publication(b"", "", "q" * 256), "m", 1, 1000)


# -- confirms --------------------------------------------------------------------------------


async def test_a_batch_is_confirmed_whole(
    broker: AMQPBroker, rabbitmq_server: RabbitNode, queue_name: str
) -> None:
    messages = [out(queue_name, b"%d" % i, priority=i % 10) for i in range(3000)]
    await broker.publish(messages)
    ids = await queued_ids(rabbitmq_server.url, queue_name)
    assert sorted(ids) == sorted(m.message_id for m in messages)


async def test_a_nack_fails_exactly_the_nacked_messages(
    broker: AMQPBroker, rabbitmq_server: RabbitNode
) -> None:
    """A queue over its max-length with overflow=reject-publish nacks what it cannot take
    (RabbitMQ's own refusal, set by a policy so that the queue's arguments stay aqueue's)."""
    with rejecting_after_three(rabbitmq_server) as queue:
        messages = [out(queue, b"%d" % i) for i in range(10)]
        with pytest.raises(PublishIncomplete) as info:
            await broker.publish(messages)
        assert sorted(info.value.failed) == list(range(3, 10))
        assert all(
            isinstance(e, BrokerConnectionError) and "basic.nack" in str(e)
            for e in info.value.failed.values()
        )
        assert "7 of 10 messages not confirmed" in str(info.value)
        ids = await queued_ids(rabbitmq_server.url, queue)
        assert ids == [m.message_id for m in messages[:3]]

        # A publish whose every message is nacked is a plain error: nothing is stored.
        await broker.publish(messages[:3])
        with pytest.raises(BrokerConnectionError, match=r"basic\.nack") as whole:
            await broker.publish(messages[3:])
        assert not isinstance(whole.value, PublishIncomplete)


async def test_concurrent_delays_that_were_nacked_raise_and_only_they(
    rabbitmq_server: RabbitNode,
) -> None:
    """Ten delay() calls share one publish (one write, one wait for the confirms); the queue
    takes three: those three return, the seven others raise, each retried by its own policy
    (the sends batched with it are not sent again)."""
    with rejecting_after_three(rabbitmq_server) as queue:
        app = Aqueue("nack", broker=rabbitmq_server.url, backend=None, task_default_queue=queue)

        @app.task(name="nack.add", ignore_result=True)
        async def add(x: int, y: int) -> int:
            return x + y

        try:
            outcomes = await asyncio.gather(
                *(add.delay(i, i) for i in range(10)), return_exceptions=True
            )
        finally:
            await app.close()
        sent = [r.id for r in outcomes if not isinstance(r, BaseException)]
        raised = [e for e in outcomes if isinstance(e, BaseException)]
        assert len(sent) == 3 and len(raised) == 7
        for error in raised:
            assert isinstance(error, BrokerConnectionError) and "basic.nack" in str(error), error
        assert sorted(await queued_ids(rabbitmq_server.url, queue)) == sorted(sent)


async def test_a_returned_message_fails_alone(broker: AMQPBroker, queue_name: str) -> None:
    """mandatory: a message no queue is bound to receive comes back (basic.return) and fails;
    the messages around it are stored."""
    lost = out(queue_name, exchange="amq.direct", routing_key=f"nobody-{uuid.uuid4().hex}")
    messages = [out(queue_name, b"1"), lost, out(queue_name, b"2")]
    with pytest.raises(PublishIncomplete) as info:
        await broker.publish(messages)
    [(index, error)] = info.value.failed.items()
    assert index == 1
    assert type(error) is BrokerError
    assert (
        f"NO_ROUTE: no queue is bound to exchange amq.direct for routing key {lost.routing_key!r}"
        in str(error)
    )
    with pytest.raises(BrokerError, match="NO_ROUTE"):
        await broker.publish([lost])


async def test_no_confirm_in_time_is_an_error(rabbitmq_server: RabbitNode, queue_name: str) -> None:
    """A memory alarm blocks every publisher (RabbitMQ stops reading their sockets): no
    confirm comes, and a publish raises after operation_timeout instead of waiting for ever."""
    broker = AMQPBroker(rabbitmq_server.url, {"operation_timeout": 1})
    before, blocked = out(queue_name, b"before"), out(queue_name, b"blocked")
    after: list[Outgoing] = []
    try:
        await broker.publish([before])  # declared, connected
        rabbitmq_server.ctl("set_vm_memory_high_watermark", "0.0000001")
        try:
            with pytest.raises(BrokerConnectionError, match=r"no confirm from RabbitMQ within 1s"):
                await broker.publish([blocked])
        finally:
            rabbitmq_server.ctl("set_vm_memory_high_watermark", "0.4")

        async def unblocked() -> bool:
            after.append(out(queue_name, b"after"))
            try:
                await broker.publish([after[-1]])
            except BrokerConnectionError:
                return False
            return True

        await until(unblocked, 30, "the memory alarm cleared")
    finally:
        await broker.close()
    # The blocked message went through once RabbitMQ read the socket again (a send that raised
    # may be stored: at-least-once); its late confirm, for nobody, disturbed nothing.
    ids = await queued_ids(rabbitmq_server.url, queue_name)
    assert ids[:2] == [before.message_id, blocked.message_id]
    assert after[-1].message_id in ids


async def test_sends_and_acks_during_a_memory_alarm_are_bounded(
    rabbitmq_server: RabbitNode, queue_name: str
) -> None:
    """Under a memory alarm RabbitMQ stops reading the connection's socket. Far more sends
    than aiormq's write queue holds (10 frames), each its own publish, all fail with
    BrokerConnectionError after operation_timeout, and an ack (on the same connection, through
    the same write queue) returns at once: nothing waits for room in the write queue, since
    the connection's writer hands every frame to the socket's buffer without waiting for it
    to drain."""
    broker = AMQPBroker(rabbitmq_server.url, {"operation_timeout": 1})
    try:
        await broker.publish([out(queue_name, b"held")])
        [held] = await broker.fetch([queue_name], 1, 5)
        rabbitmq_server.ctl("set_vm_memory_high_watermark", "0.0000001")
        try:
            async with asyncio.timeout(10):
                outcomes = await asyncio.gather(
                    *(broker.publish([out(queue_name, b"%d" % i)]) for i in range(50)),
                    return_exceptions=True,
                )
                await broker.ack([held])
        finally:
            rabbitmq_server.ctl("set_vm_memory_high_watermark", "0.4")
        assert all(isinstance(o, BrokerConnectionError) for o in outcomes), outcomes
    finally:
        await broker.close()


async def test_a_batch_whose_wait_ended_early_leaves_the_others_confirms_alone(
    rabbitmq_server: RabbitNode, queue_name: str
) -> None:
    """Two batches on one channel; the second's wait is cancelled (a send's deadline, a task
    cancelled at shutdown) before any confirm came. RabbitMQ then confirms many tags per frame
    (multiple=true), the last of them the second batch's: the first batch is confirmed all the
    same. Before, the ended wait took its tags out of the channel's table, aiormq dropped the
    frames naming them, and the first batch, stored, failed after its timeout (then sent again
    by the retry policy)."""
    connection = await aiormq.connect(rabbitmq_server.url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.queue_declare(queue_name, durable=True)
        n = 200
        first = await publisher.publish(channel, [Publication(b"a", "", queue_name)] * n)
        second = await publisher.publish(channel, [Publication(b"b", "", queue_name)] * n)
        waiting = asyncio.ensure_future(second.outcomes(30))
        await asyncio.sleep(0)  # the second wait starts, and is cancelled before any confirm
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        outcomes = await first.outcomes(10)
        assert outcomes == [None] * n
        declared = await channel.queue_declare(queue_name, passive=True)
        assert declared.message_count == 2 * n
    finally:
        await connection.close()


# -- a connection dropped mid-batch -----------------------------------------------------------


class Dropper:
    """``rabbitmqctl close_all_connections`` in a thread (it takes a second or two to start);
    :attr:`done` is set when it has returned."""

    def __init__(self, node: RabbitNode) -> None:
        self.done = asyncio.Event()
        loop = asyncio.get_running_loop()

        def run() -> None:
            try:
                node.ctl("close_all_connections", "aqueue test: dropped mid-batch")
            finally:
                loop.call_soon_threadsafe(self.done.set)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()


async def test_dropped_mid_batch_every_unconfirmed_message_is_named(
    broker: AMQPBroker, rabbitmq_server: RabbitNode, queue_name: str
) -> None:
    batches: list[tuple[list[Outgoing], BaseException | None]] = []
    dropper = Dropper(rabbitmq_server)
    # Batches back to back until the drop has happened and one batch went through after it.
    while not (dropper.done.is_set() and batches and batches[-1][1] is None):
        messages = [out(queue_name, b"%d" % i) for i in range(2000)]
        try:
            await broker.publish(messages)
            batches.append((messages, None))
        except BrokerConnectionError as exc:
            batches.append((messages, exc))
            await asyncio.sleep(0.05)  # robust reconnection under way: a pause, not a spin
    dropper.thread.join()
    delivered = set(await queued_ids(rabbitmq_server.url, queue_name, timeout=60))
    confirmed = stored_unconfirmed = 0
    for messages, error in batches:
        failed = error.failed if isinstance(error, PublishIncomplete) else None
        for i, m in enumerate(messages):
            if error is None or (failed is not None and i not in failed):
                assert m.message_id in delivered, "a confirmed message was lost"
                confirmed += 1
            elif m.message_id in delivered:
                stored_unconfirmed += 1  # stored, its confirm lost with the connection
    failures = [e for _, e in batches if e is not None]
    print(
        f"\n{len(batches)} batches of 2,000: {confirmed:,} messages confirmed, all delivered; "
        f"failed batches: {len(failures)} "
        f"({sum(isinstance(e, PublishIncomplete) for e in failures)} in part: "
        f"{[len(e.failed) for e in failures if isinstance(e, PublishIncomplete)]} not "
        f"confirmed); {stored_unconfirmed} unconfirmed messages were stored all the same"
    )
    assert failures, "the drop should have failed at least the batch in flight"


async def test_delays_that_return_are_delivered_when_the_connection_drops(
    rabbitmq_server: RabbitNode, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Sends 1,000 at a time while every connection is closed: half delay() (sharing publishes,
    retried by the default policy), half apply_async(retry=False) (which fail at once if their
    message was on the wire; one still waiting for the publishing channel goes out on the new
    connection). Each send that returned is in the queue; each that raised says the broker
    failed it."""
    caplog.set_level(logging.WARNING, logger="aqueue.transports.amqp.broker")
    app = Aqueue("drop", broker=rabbitmq_server.url, backend=None, task_default_queue=queue_name)

    @app.task(name="drop.add", ignore_result=True)
    async def add(x: int, y: int) -> int:
        return x + y

    returned: list[str] = []
    raised: dict[bool, list[BaseException]] = {True: [], False: []}  # by retry
    rounds_after = 0
    try:
        await add.delay(0, 0)  # connected before the drop starts
        dropper = Dropper(rabbitmq_server)
        while rounds_after < 2:
            if dropper.done.is_set():
                rounds_after += 1
            sends = [add.delay(i, i) if i % 2 else add.apply_async((i, i), retry=False)
                     for i in range(1000)]  # fmt: skip
            outcomes = await asyncio.gather(*sends, return_exceptions=True)
            for i, r in enumerate(outcomes):
                if isinstance(r, BaseException):
                    raised[bool(i % 2)].append(r)
                else:
                    returned.append(r.id)
            if any(isinstance(r, BaseException) for r in outcomes):
                await asyncio.sleep(0.05)  # reconnecting: a pause, not a spin
        dropper.thread.join()
    finally:
        await app.close()
    ours = [r for r in caplog.records if r.name == "aqueue.transports.amqp.broker"]
    assert any("reconnected" in r.getMessage() for r in ours), "no drop happened"
    delivered = set(await queued_ids(rabbitmq_server.url, queue_name, timeout=60))
    lost = [i for i in returned if i not in delivered]
    assert not lost, f"{len(lost)} sends returned and their message is not queued"
    for error in raised[True] + raised[False]:
        assert isinstance(error, BrokerConnectionError), repr(error)
        assert "RabbitMQ at amqp://guest:**@127.0.0.1" in str(error)
    print(
        f"\nsends x1,000 per gather across close_all_connections: {len(returned):,} returned, "
        f"all delivered; raised BrokerConnectionError: {len(raised[False])} with retry=False, "
        f"{len(raised[True])} with the default retry policy"
    )


async def test_waiting_cancelled_after_a_nack_leaves_no_unretrieved_error(
    rabbitmq_server: RabbitNode, caplog: pytest.LogCaptureFixture
) -> None:
    """A send whose deadline cancels the wait for its confirms, after RabbitMQ nacked some of
    them and while an earlier one is still pending, logs no "Future exception was never
    retrieved" for the nacked ones."""
    connection = await aiormq.connect(rabbitmq_server.url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        with rejecting_after_three(rabbitmq_server) as queue:
            await channel.queue_declare(queue, durable=True)
            sent = await publisher.publish(
                channel, [Publication(b"%d" % i, "", queue) for i in range(5)]
            )
            async with asyncio.timeout(30):
                while not all(f.done() for f in sent.futures):  # noqa: ASYNC110 - no event
                    await asyncio.sleep(0.01)
            # The two over the limit nacked (read from repr: exception() would retrieve them).
            nacked = [f for f in sent.futures if "DeliveryError" in repr(f)]
            assert nacked == sent.futures[3:]
            # A confirm still to come ahead of them: the wait blocks on it, then is cancelled.
            pending = asyncio.get_running_loop().create_future()
            confirms = publisher.Confirms(channel, 1_000_000, ["a", "b", "c"], [pending, *nacked])
            waiting = asyncio.ensure_future(confirms.outcomes(30))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await channel.queue_delete(queue)
    finally:
        await connection.close()
    del sent, nacked, confirms, waiting, pending
    with caplog.at_level(logging.ERROR, "asyncio"):
        gc.collect()
    assert "never retrieved" not in caplog.text


async def test_after_a_nack_publishing_moves_to_a_new_channel_and_the_old_one_closes_later(
    rabbitmq_server: RabbitNode, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RabbitMQ may nack every publish of a channel to a quorum queue whose leader died before
    the channel first published to it (aqueue.transports.amqp.renewal, and the cluster test
    tests/cluster/test_rabbitmq_cluster.py). So after a nack the broker publishes on a new
    channel, and closes the old one once every wait for its confirms has ended
    (``operation_timeout``); at most once per ``MIN_INTERVAL`` seconds. It reads the broker's
    private ``_publisher``: which channel publishes is nowhere else to be seen."""
    monkeypatch.setattr(renewal, "MIN_INTERVAL", 3600.0)
    b = AMQPBroker(rabbitmq_server.url, {"operation_timeout": 1.0})
    await b.connect()
    try:
        with rejecting_after_three(rabbitmq_server) as queue:
            first = b._publisher
            assert first is not None
            closed = asyncio.Event()
            first.close_callbacks.add(lambda *_: closed.set())
            await b.publish([out(queue) for _ in range(3)])
            assert b._publisher is first  # confirmed: the channel stays

            with pytest.raises(BrokerConnectionError, match=r"basic\.nack"):
                await b.publish([out(queue)])
            second = b._publisher
            assert second is not None and second is not first
            assert not first.is_closed  # its confirms may still be awaited
            with pytest.raises(BrokerConnectionError, match=r"basic\.nack"):
                await b.publish([out(queue)])
            assert b._publisher is second  # within MIN_INTERVAL of the renewal: kept

            await asyncio.wait_for(closed.wait(), 10)  # after operation_timeout
            assert not second.is_closed
            message = out(queue_name)
            await b.publish([message])
            assert await queued_ids(rabbitmq_server.url, queue_name) == [message.message_id]
    finally:
        await b.close()
    assert second.is_closed
