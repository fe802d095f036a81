"""Remote control, inspection, status and the dead-letter queue, in one process, on every
transport: the library calls behind ``aqueue inspect|control|status|purge|dlq|events``."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import pytest

from aqueue import Aqueue, Worker
from aqueue.control.events import event_senders
from aqueue.control.protocol import CONTROL_CHANNEL, Command, Table
from aqueue.control.queues import cluster_status, live_workers, purge, replay_dead_letters
from aqueue.message import decode_envelope
from aqueue.transports.base import QueueDepth, queue_admin
from tests.apps.ops_tasks import EventLog, OpsTasks

pytestmark = pytest.mark.timeout(60)


async def test_every_live_worker_answers_and_the_call_returns_once_all_have(t: OpsTasks) -> None:
    # Named uniquely: on a shared Redis server, workers of other tests (or a SIGKILLed one's
    # heartbeat, for up to 6 s) answer broadcasts too - as in Celery, every worker of a broker.
    a, b = f"a-{uuid.uuid4().hex[:6]}@rc", f"b-{uuid.uuid4().hex[:6]}@rc"
    async with (
        Worker(t.app, hostname=a, shutdown_timeout=5),
        Worker(t.app, hostname=b, shutdown_timeout=5),
    ):
        started = time.monotonic()
        inspect = t.app.control.inspect(timeout=10, destination=[a, b])
        assert await inspect.ping() == {a: "pong", b: "pong"}
        assert time.monotonic() - started < 5  # both heartbeats known: no need to wait 10 s
        only_b = await t.app.control.ping(destination=[b], timeout=10)
        assert [r.hostname for r in only_b] == [b]
        stats = await t.app.control.inspect().stats()
        assert stats[a]["concurrency"] == 100
        assert stats[a]["queues"] == [t.app.conf.task_default_queue]


async def test_an_unknown_task_in_rate_limit_is_an_error_reply(t: OpsTasks) -> None:
    async with Worker(t.app, hostname="a@rc", shutdown_timeout=5):
        [reply] = await t.app.control.rate_limit("no.such.task", "1/s", destination=["a@rc"])
        assert reply.error is not None and "unknown task" in reply.error


async def test_add_and_cancel_consumer(t: OpsTasks) -> None:
    other = f"q-{uuid.uuid4().hex[:12]}"
    async with Worker(t.app, hostname="a@rc", shutdown_timeout=5) as w:
        [reply] = await t.app.control.add_consumer(other)
        assert reply.value["queues"] == [t.app.conf.task_default_queue, other]
        assert await (await t.add.apply_async((1, 2), queue=other)).get(timeout=10) == 3
        await t.app.control.cancel_consumer(t.app.conf.task_default_queue)
        assert w.queues == [other]
        await t.app.control.cancel_consumer(other)
        assert w.queues == []  # consumes nothing, without spinning; wakes for a new queue
        await t.app.control.add_consumer(other)
        assert await (await t.add.apply_async((2, 2), queue=other)).get(timeout=10) == 4


async def test_shutdown_stops_the_worker_gracefully(t: OpsTasks) -> None:
    w = Worker(t.app, hostname="a@rc", shutdown_timeout=5)
    await w.start()
    [reply] = await t.app.control.shutdown()
    assert reply.value == {"ok": "shutting down"}
    await asyncio.wait_for(w.wait_stopped(), 10)
    assert await t.app.control.inspect(timeout=0.2, destination=["a@rc"]).ping() == {}
    workers = (await cluster_status(t.app)).workers
    assert w.node not in {s.node for s in workers}  # its heartbeat is removed


async def test_status_shows_the_depths_of_what_was_sent_and_the_live_workers(
    t: OpsTasks,
) -> None:
    queue = t.app.conf.task_default_queue
    for i in range(3):
        await t.add.delay(i, i)
    for i in range(2):
        await t.add.apply_async((i, i), countdown=600)
    status = await cluster_status(t.app)
    assert QueueDepth(queue, ready=3, delayed=2) in status.queues
    assert await purge(t.app, [queue]) == 5
    assert (await cluster_status(t.app, [queue])).queues == [QueueDepth(queue)]

    bad = await t.app.send_task("ops.not_registered")
    async with Worker(t.app, concurrency=3, hostname="a@rc", shutdown_timeout=5) as w:
        with pytest.raises(Exception, match="not registered"):
            await bad.get(timeout=10)
        assert await (await t.add.delay(1, 1)).get(timeout=10) == 2
        # A result is stored before its message is acked: a get() may return in between.
        await asyncio.wait_for(w.wait_processed(2), 10)
        status = await cluster_status(t.app, [queue])
        assert status.queues == [QueueDepth(queue, dead=1)]
        [worker] = [w for w in status.workers if queue in w.queues]
        assert (worker.hostname, worker.concurrency, worker.active) == ("a@rc", 3, 0)
    # Replayed, the dead letter is back in its queue (and would be dead-lettered again).
    assert await replay_dead_letters(t.app, queue) == 1
    assert (await cluster_status(t.app, [queue])).queues == [QueueDepth(queue, ready=1)]
    assert await t.app.AsyncResult(bad.id).state() == "PENDING"  # FAILURE forgotten


async def test_replays_at_once_neither_lose_nor_duplicate_a_dead_letter(t: OpsTasks) -> None:
    # Two operators (or a double click on the dashboard) replaying one letter each at once:
    # each must send back its own letter, not both the oldest one and drop the second.
    queue = t.app.conf.task_default_queue
    broker = await t.app.broker()
    sent = [await t.add.delay(i, i) for i in range(2)]
    for delivery in await broker.fetch([queue], 2, 5.0):
        await broker.dead_letter(delivery, "set aside by the test")
    assert len(await broker.dead_letters(queue)) == 2
    done = await asyncio.gather(*(replay_dead_letters(t.app, queue, 1) for _ in range(2)))
    assert done == [1, 1]
    assert await broker.dead_letters(queue) == []
    again = await broker.fetch([queue], 10, 5.0)
    assert sorted(decode_envelope(d.body)["id"] for d in again) == sorted(r.id for r in sent)


async def test_malformed_heartbeats_are_skipped_not_fatal(t: OpsTasks) -> None:
    transport = await t.app.control_transport()
    node = f"n-{uuid.uuid4().hex[:8]}"
    beats = {
        f"{node}-list": b"[1, 2]",  # JSON, not an object
        f"{node}-text": b"not json",
        f"{node}-nopid": b'{"hostname": "x@rc"}',
        f"{node}-ok": b'{"hostname": "ok@rc", "pid": 7, "held": 3, "events": true}',
        f"{node}-one": b'{"hostname": "one@rc", "pid": 8, "queues": "default"}',
        f"{node}-qmap": b'{"hostname": "qmap@rc", "pid": 9, "queues": {"a": 1}}',
    }
    for key, raw in beats.items():
        await transport.put(Table.WORKERS, key, raw, 60)
    try:
        mine = [w for w in await live_workers(t.app) if w.node.startswith(node)]
        assert [(w.node, w.hostname, w.pid, w.held, w.events) for w in mine] == [
            (f"{node}-ok", "ok@rc", 7, 3, True),
            (f"{node}-one", "one@rc", 8, 0, False),
        ]
        # Another writer's single queue name is one queue, not one per character.
        assert [w.queues for w in mine] == [[], ["default"]]
        live, sending = await event_senders(t.app)  # the object beats count, the others not
        assert live >= 2 and sending >= 1
        # inspect aims at the live nodes named: the bad entries neither stop nor join it.
        assert await t.app.control.inspect(timeout=0.2, destination=["x@rc"]).ping() == {}
    finally:
        for key in beats:  # the table is shared by the rest of the session
            await transport.put(Table.WORKERS, key, None, None)


async def test_a_malformed_command_is_skipped_and_the_worker_still_answers(t: OpsTasks) -> None:
    name = f"a-{uuid.uuid4().hex[:6]}@rc"
    bad = [
        b'{"id": "1", "command": "ping", "arguments": [1, 2]}',  # not an object
        b'{"id": "2", "command": "ping", "arguments": "ab"}',
        b'{"id": "3", "command": "ping", "destination": 5}',  # not a list of names
        b'{"id": "4", "command": "ping", "destination": [1]}',
        b'{"id": "5", "command": "ping", "reply_to": ["x"]}',  # not a channel name
    ]
    async with Worker(t.app, hostname=name, shutdown_timeout=5):
        transport = await t.app.control_transport()
        await transport.publish(CONTROL_CHANNEL, bad)
        # In order after the bad ones: the listener reads them first, and must live on.
        inspect = t.app.control.inspect(timeout=10, destination=[name])
        assert await inspect.ping() == {name: "pong"}
    # One hostname as a string names that worker, not its characters.
    one = Command.decode(b'{"id": "6", "command": "ping", "destination": "a@rc"}')
    assert one.for_worker("a@rc") and not one.for_worker("a")


async def test_a_revoke_with_a_bad_expiry_revokes_and_dead_letters_nothing(t: OpsTasks) -> None:
    """A revoke command whose ``expires`` is not epoch seconds (a foreign client's) was taken as
    it was: the worker then failed on every message's revocation check, dead-lettering the
    revoked task as a worker failure. Its ids are revoked for the default time instead, and
    a ``task_ids`` given as one id is that id, not its characters."""
    name = f"a-{uuid.uuid4().hex[:6]}@rc"
    revoked, kept = str(uuid.uuid4()), str(uuid.uuid4())
    commands = [
        b'{"id": "1", "command": "revoke", "arguments": {"task_ids": ["%s"], "expires": "x"}}'
        % revoked.encode(),
        b'{"id": "2", "command": "revoke", "arguments": {"task_ids": "%s"}}' % kept.encode(),
    ]
    async with (
        EventLog(t.app) as log,
        Worker(t.app, hostname=name, send_events=True, shutdown_timeout=5) as worker,
    ):
        transport = await t.app.control_transport()
        await transport.publish(CONTROL_CHANNEL, commands)
        inspect = t.app.control.inspect(timeout=10, destination=[name])
        assert await inspect.ping() == {name: "pong"}  # read after the revokes
        # The whole id, not its characters (the server's revoked table is shared by the
        # session's tests: other ids may be there).
        assert kept in worker.revocations and kept[0] not in worker.revocations
        r = await t.record.apply_async(("never",), task_id=revoked)
        event = await log.wait(type="task-revoked", uuid=r.id)
        assert event["reason"] == "revoked"
        assert await t.add.delay(1, 2) is not None
        await log.wait(type="task-succeeded", name="ops.add")
    assert revoked not in dict(t.starts)
    assert await r.state() == "REVOKED"
    admin = queue_admin(await t.app.broker())
    assert await admin.dead_letters(t.app.conf.task_default_queue) == []


async def test_events_describe_a_task_from_receipt_to_success(t: OpsTasks) -> None:
    async with (
        EventLog(t.app) as log,
        Worker(t.app, hostname="a@rc", send_events=True, shutdown_timeout=5),
    ):
        await log.wait(type="worker-online", hostname="a@rc")
        r = await t.add.delay(20, 22)
        done = await log.wait(type="task-succeeded", uuid=r.id)
    assert done["result"] == "42" and done["name"] == "ops.add" and done["runtime"] >= 0
    kinds = [e["type"] for e in log.events if e.get("uuid") == r.id]
    assert kinds == ["task-received", "task-started", "task-succeeded"]
    received = next(e for e in log.events if e["type"] == "task-received")
    assert received["queue"] == t.app.conf.task_default_queue
    assert received["args"] == "(20, 22)"


async def test_without_events_no_event_is_built(t: OpsTasks) -> None:
    async with Worker(t.app, hostname="a@rc", shutdown_timeout=5) as w:
        assert w.events is None
        assert w.executor is not None and w.executor.on_event is None
        assert w.stats()["events"] is False


# -- a worker's control subscription ending under it ---------------------------------------------


async def test_a_worker_answers_remote_control_again_after_its_subscription_ended(
    backend_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The control transport closes under a running worker (its subscription to the control
    channel ends): the worker logs it and subscribes again, so it answers ``ping`` again.
    Before, its listener ended quietly and the worker never answered remote control again."""
    app = Aqueue("closing", broker=backend_url, backend=backend_url)
    host = f"w-{uuid.uuid4().hex[:8]}@closing"
    try:
        async with Worker(app, hostname=host, shutdown_timeout=5):
            [reply] = await app.control.ping(destination=[host], timeout=5.0)
            assert reply.value == "pong"
            await (await app.control_transport()).close()
            answered: list[Any] = []
            deadline = time.monotonic() + 5.0
            while not answered and time.monotonic() < deadline:
                answered = await app.control.ping(destination=[host], timeout=0.5)
            assert [r.value for r in answered] == ["pong"], "no answer after the subscription ended"
        assert any(
            "control" in r.getMessage() and r.levelno >= logging.WARNING for r in caplog.records
        ), "the ended subscription was not logged"
    finally:
        await app.close()
