"""AMQP broker calls cancelled in the loop step in which RabbitMQ's reply completes their wait.

On Python 3.11, ``asyncio.wait_for(aw, timeout)`` returns ``aw``'s result when its caller is
cancelled in the step in which ``aw`` completes: the cancellation is lost, and the caller goes on
as if nothing had happened (CPython gh-86296, fixed in 3.12). Each test here cancels the caller
as one reply arrives (from the real server) and checks that the call ends cancelled, having
done nothing more: a worker stopping, or an ``asyncio.timeout`` around a call, must stop it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiormq
import pytest

from aqueue.transports import DeadLetter, Outgoing
from aqueue.transports.amqp.broker import AMQPBroker
from tests.conftest import RabbitNode

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def broker(rabbitmq_server: RabbitNode) -> AsyncIterator[AMQPBroker]:
    broker = AMQPBroker(rabbitmq_server.url, {})
    await broker.connect()
    yield broker
    await broker.close()


def out(queue: str, body: bytes = b"m") -> Outgoing:
    return Outgoing(queue, body, uuid.uuid4().hex, 0)


class CancelOnReply:
    """Cancels ``victim`` in the loop step in which the first reply to ``method`` (a method of
    :class:`aiormq.Channel`, whose calls ``wanted(kwargs)`` picks) completes. The server and
    the reply are real: only the moment of the cancel is chosen."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        method: str,
        wanted: Callable[[dict[str, Any]], bool] = lambda _: True,
    ) -> None:
        self.victim: asyncio.Task[Any] | None = None
        self.fired = False
        original = getattr(aiormq.Channel, method)

        async def replied(channel: aiormq.Channel, *args: Any, **kwargs: Any) -> Any:
            reply = await original(channel, *args, **kwargs)
            if self.victim is not None and not self.fired and wanted(kwargs):
                self.fired = True
                # Runs before whoever awaits this call is resumed with the reply.
                asyncio.get_running_loop().call_soon(self.victim.cancel)
            return reply

        monkeypatch.setattr(aiormq.Channel, method, replied)

    async def outcome(self, call: Awaitable[Any]) -> str:
        """Run ``call`` as the victim: ``"cancelled"``, or what it returned or raised."""
        self.victim = asyncio.ensure_future(call)
        done, _ = await asyncio.wait({self.victim}, timeout=10)
        assert done, "the call neither ended nor was cancelled within 10 s"
        assert self.fired, "no reply to cancel on: the test no longer reaches the wait"
        if self.victim.cancelled():
            return "cancelled"
        error = self.victim.exception()
        return f"raised {error!r}" if error else f"returned {self.victim.result()!r}"


async def test_publish_cancelled_as_its_queue_is_declared_is_cancelled_and_sends_nothing(
    broker: AMQPBroker, monkeypatch: pytest.MonkeyPatch, queue_name: str
) -> None:
    """The declarations before a publish (topology): cancelled as the queue's declare-ok came,
    the publish went on and sent the message its caller had given up on."""
    cancel = CancelOnReply(monkeypatch, "queue_declare", lambda kw: not kw.get("passive"))
    assert await cancel.outcome(broker.publish([out(queue_name)])) == "cancelled"
    [depth] = await broker.queue_depths([queue_name])
    assert depth.ready == 0


async def test_dead_letters_cancelled_as_a_get_returns_is_cancelled(
    broker: AMQPBroker, monkeypatch: pytest.MonkeyPatch, queue_name: str
) -> None:
    """A broker wait (``basic.get`` on a channel of its own): cancelled as the reply came, the
    read went on and returned the dead letters to the caller that had cancelled it."""
    await broker.publish([out(queue_name)])  # declares the queue and its dead-letter queue
    cancel = CancelOnReply(monkeypatch, "basic_get")
    assert await cancel.outcome(broker.dead_letters(queue_name)) == "cancelled"


async def test_queue_depths_cancelled_as_a_count_returns_is_cancelled(
    broker: AMQPBroker, monkeypatch: pytest.MonkeyPatch, queue_name: str
) -> None:
    """A passive declare (counting): cancelled as its declare-ok came, the count went on."""
    await broker.publish([out(queue_name)])
    cancel = CancelOnReply(monkeypatch, "queue_declare", lambda kw: bool(kw.get("passive")))
    assert await cancel.outcome(broker.queue_depths([queue_name])) == "cancelled"


async def test_purge_cancelled_as_the_purge_returns_is_cancelled(
    broker: AMQPBroker, monkeypatch: pytest.MonkeyPatch, queue_name: str
) -> None:
    """``queue.purge``: cancelled as its purge-ok came, the purge went on to the next queue and
    deleted its messages for a caller that had given up."""
    other = f"{queue_name}-2"
    await broker.publish([out(queue_name), out(other)])
    cancel = CancelOnReply(monkeypatch, "queue_purge")
    assert await cancel.outcome(broker.purge([queue_name, other])) == "cancelled"
    [depth] = await broker.queue_depths([other])
    assert depth.ready == 1  # not purged: its caller had cancelled before


class CancelOnCall:
    """Cancels ``victim`` as it calls ``method`` of :class:`aiormq.Channel` (once), before
    the call has sent anything: a cancellation that comes while the call is in flight. The
    call itself runs on the real server."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
        self.victim: asyncio.Task[Any] | None = None
        self.fired = False
        original = getattr(aiormq.Channel, method)

        async def called(channel: aiormq.Channel, *args: Any, **kwargs: Any) -> Any:
            if self.victim is not None and not self.fired:
                self.fired = True
                asyncio.get_running_loop().call_soon(self.victim.cancel)
            return await original(channel, *args, **kwargs)

        monkeypatch.setattr(aiormq.Channel, method, called)

    async def outcome(self, call: Awaitable[Any]) -> str:
        """Run ``call`` as the victim: ``"cancelled"``, or what it returned or raised."""
        self.victim = asyncio.ensure_future(call)
        done, _ = await asyncio.wait({self.victim}, timeout=10)
        assert done, "the call neither ended nor was cancelled within 10 s"
        assert self.fired, "the call never reached the method: the test no longer tests it"
        if self.victim.cancelled():
            return "cancelled"
        error = self.victim.exception()
        return f"raised {error!r}" if error else f"returned {self.victim.result()!r}"


async def dead_lettered(broker: AMQPBroker, queue: str, n: int) -> list[bytes]:
    """Publish ``n`` messages to ``queue`` and dead-letter them; their bodies."""
    bodies = [b"%d" % i for i in range(n)]
    await broker.publish([out(queue, body) for body in bodies])
    deliveries = await broker.fetch([queue], n, 5)
    assert sorted(d.body for d in deliveries) == bodies
    for d in deliveries:
        await broker.dead_letter(d, "bad")
    return bodies


async def test_dead_letters_cancelled_while_closing_its_channel_leaves_the_letters(
    broker: AMQPBroker, monkeypatch: pytest.MonkeyPatch, queue_name: str
) -> None:
    """The read holds the letters it got (unacked) until its channel closes: cancelled as the
    close began, the channel stayed open and the letters hidden from every other reader until
    the connection closed."""
    bodies = await dead_lettered(broker, queue_name, 3)
    cancel = CancelOnCall(monkeypatch, "close")
    assert await cancel.outcome(broker.dead_letters(queue_name)) == "cancelled"
    assert [d.body for d in await broker.dead_letters(queue_name)] == bodies


async def test_take_dead_letters_cancelled_while_closing_its_channel_gives_them_back(
    broker: AMQPBroker, monkeypatch: pytest.MonkeyPatch, queue_name: str
) -> None:
    """A take whose ``send`` failed puts its letters back by closing its channel: cancelled as
    the close began, the channel stayed open and held them, so no other take could replay
    them until the connection closed."""
    bodies = await dead_lettered(broker, queue_name, 2)
    sent: list[list[bytes]] = []

    async def send(letters: list[DeadLetter]) -> None:
        sent.append([d.body for d in letters])
        raise RuntimeError("replay failed")

    cancel = CancelOnCall(monkeypatch, "close")
    assert await cancel.outcome(broker.take_dead_letters(queue_name, 10, send)) == "cancelled"
    assert sent == [bodies]
    assert [d.body for d in await broker.dead_letters(queue_name)] == bodies
