"""Cancellations that arrive in the same loop step as the awaited thing completes.

On Python 3.11, ``asyncio.wait_for(aw, timeout)`` returns ``aw``'s result when the caller is
cancelled in the step in which ``aw`` completes: the cancellation is lost and the caller goes on
(CPython gh-86296, fixed in 3.12). Each test here completes the inner wait and cancels the
caller back to back, then checks that the caller does stop - and that nothing is leased or
handed on by a call its caller gave up on.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from aqueue import Aqueue
from aqueue.control.protocol import CONTROL_CHANNEL, Command, Reply
from aqueue.transports.amqp.broker import AMQPBroker
from aqueue.transports.base import Broker, Delivery, Outgoing
from aqueue.transports.memory.broker import MemoryBroker
from aqueue.transports.sqlite.broker import SQLiteBroker
from aqueue.worker.ratelimit import LocalBucket, RateGate
from tests.conftest import RabbitNode

pytestmark = pytest.mark.timeout(60)


async def _until(condition: Callable[[], object]) -> None:
    """Let the loop run, one step at a time, until ``condition()`` is true."""
    while not condition():  # noqa: ASYNC110 - one loop step at a time: no event to wait on
        await asyncio.sleep(0)


async def _outcome(task: asyncio.Task[object]) -> str:
    """``"cancelled"``, or what the task returned (it is given 5 s to end at all)."""
    done, _ = await asyncio.wait({task}, timeout=5)
    if not done:
        task.cancel()
        return "still running"
    return "cancelled" if task.cancelled() else f"returned {task.result()!r}"


# -- fetch -------------------------------------------------------------------------------------


async def test_memory_fetch_cancelled_as_a_message_arrives_is_cancelled_and_leases_nothing() -> (
    None
):
    """A fetch cancelled in the step a publish woke it took the message and returned it to a
    caller that had given up: the message stayed leased to nobody for a visibility timeout."""
    broker = MemoryBroker("memory://", {"visibility_timeout": 300})
    await _fetch_cancelled_as_woken(broker, lambda: bool(broker._waiters))


async def _fetch_cancelled_as_woken(broker: Broker, waiting: Callable[[], bool]) -> None:
    """Cancel a fetch of ``broker`` in the step a publish wakes it (``waiting()``: it waits);
    it must end cancelled, the message not leased: the next fetch gets it, never delivered."""
    fetch = asyncio.ensure_future(broker.fetch(["q"], 10, 30))
    await _until(waiting)
    await broker.publish([Outgoing("q", b"m", "1", 0)])  # its wake-up is queued ...
    asyncio.get_running_loop().call_soon(fetch.cancel)  # ... and run in the cancel's step
    assert await _outcome(fetch) == "cancelled"
    [again] = await broker.fetch(["q"], 10, 0)
    assert (again.body, again.delivery_count) == (b"m", 1)


async def test_sqlite_fetch_cancelled_as_a_message_arrives_is_cancelled_and_leases_nothing(
    tmp_path: Path,
) -> None:
    """As for memory: the cancelled fetch claimed the message that woke it, and returned it."""
    broker = SQLiteBroker(f"sqlite:///{tmp_path / 'aqueue.db'}", {"visibility_timeout": 300})
    await broker.connect()
    try:
        await _fetch_cancelled_as_woken(broker, lambda: bool(broker._waiters))
    finally:
        await broker.close()


# -- rate gate ---------------------------------------------------------------------------------


async def test_rate_gate_close_as_a_rate_changes_stops_the_drain_and_returns_what_is_parked() -> (
    None
):
    """close() cancels the drains; one cancelled in the step a rate change woke it went on
    waiting for its next token, so close() hung (here: ~1000 s) and then handed the message
    on to the runners after the worker had begun to release what was parked."""
    delivered: list[Delivery] = []

    async def defer(delivery: Delivery, eta: float) -> bool:
        return False

    gate = RateGate(LocalBucket(), delivered.append, defer)
    gate.set_rate("t", 0.001)  # one token (the bucket's capacity), then one per 1000 s
    first, second = (Delivery("q", b"", 1, n, 0) for n in range(2))
    assert gate.submit("1", "t", first) and gate.submit("2", "t", second)
    await _until(lambda: delivered)  # the first took the token; the drain waits for the next
    gate.set_rate("t", 0.001)  # wakes the drain ...
    closing = asyncio.ensure_future(gate.close())  # ... whose cancel runs in the same step
    assert await _outcome(closing) == f"returned {[second]!r}"
    assert delivered == [first]


# -- control client ----------------------------------------------------------------------------


async def test_broadcast_cancelled_as_a_reply_arrives_is_cancelled() -> None:
    """A broadcast cancelled in the step a reply reached it went on collecting replies for its
    whole timeout, then returned them to the caller that had cancelled it."""
    app = Aqueue("cancel-audit", broker=f"memory://{uuid.uuid4().hex}")
    try:
        transport = await app.control_transport()
        async with transport.subscribe(CONTROL_CHANNEL) as commands:
            ping = asyncio.ensure_future(app.control.ping(timeout=3))
            command = Command.decode(await commands.get())
            assert command.reply_to is not None
            reply = Reply("w@h", 1, "w@h:1").encode(command.id)
            await transport.publish(command.reply_to, [reply])  # into its queue at once ...
            ping.cancel()  # ... and the cancel in the same step
            assert await _outcome(ping) == "cancelled"
    finally:
        await app.close()


# -- AMQP --------------------------------------------------------------------------------------


@pytest.fixture
def amqp_url(rabbitmq_server: RabbitNode) -> str:
    return rabbitmq_server.url


async def test_amqp_fetch_cancelled_as_it_is_woken_is_cancelled(amqp_url: str) -> None:
    """A fetch cancelled in the step its wait for arrivals ended went on waiting (here: for
    its 30 s timeout), then handed what came meanwhile to the caller that had cancelled it."""
    broker = AMQPBroker(amqp_url, {})
    queue = f"cancel-audit-{uuid.uuid4().hex}"
    try:
        fetch = asyncio.ensure_future(broker.fetch([queue], 10, 30))
        # Waiting for arrivals (the buffer is made anew when the connection opens):
        await _until(lambda: broker._buffer.arrived._waiters)  # type: ignore[attr-defined]
        arrived = broker._buffer.arrived
        # Woken (as by an arrival, a reconnection) and cancelled in one step.
        asyncio.get_running_loop().call_soon(lambda: (arrived.set(), fetch.cancel()))
        assert await _outcome(fetch) == "cancelled"
    finally:
        await broker.close()


# -- dashboard ---------------------------------------------------------------------------------


async def test_dashboard_stream_cancelled_as_a_note_comes_ends() -> None:
    """The server cancels a page's event stream (shutting down, or the client went away); one
    cancelled in the step a change note reached it sent the note and went on streaming to a
    connection the server had given up on, and the server's shutdown waited for it.

    Driven as an ASGI server of spec 2.4 does (no disconnect listener: the server's cancel is
    the only way the response ends)."""
    from aqueue.dashboard import Dashboard

    url = f"memory://{uuid.uuid4().hex}"
    app = Aqueue("cancel-audit", broker=url, backend=url)
    web = Dashboard(app, persist=False)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/stream",
        "raw_path": b"/stream",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"dash")],
        "client": ("127.0.0.1", 40000),
        "server": ("dash", 80),
    }
    never = asyncio.Event()
    bodies: list[bytes] = []

    async def receive() -> dict[str, object]:
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.body":
            bodies.append(bytes(message.get("body", b"")))  # type: ignore[arg-type]

    try:
        stream = asyncio.ensure_future(web(scope, receive, send))
        await _until(lambda: bodies)  # subscribed, the first note sent
        [queue] = web.monitor._listeners
        await _until(lambda: queue._getters)  # type: ignore[attr-defined]
        note = b'{"kinds": ["tasks"], "tasks": []}'
        # A note and the server's cancel in one step.
        asyncio.get_running_loop().call_soon(lambda: (queue.put_nowait(note), stream.cancel()))
        assert await _outcome(stream) == "cancelled"
        assert not web.monitor._listeners  # unsubscribed
    finally:
        await web.aclose()
        await app.close()
