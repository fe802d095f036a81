"""The SQLite transport under what several processes sharing one file (and other tools writing
to it) can do: rows of the wrong type, subscriptions racing other processes' commits, leases
taken over, fetches cancelled as the connection closes, event loops closed under a waiting
fetch, paths that name no usable file. Every broker here is a real SQLite file; "another
process" is a connection of its own, as in ``test_sqlite_specific.py``. Where the order of
jobs in the database thread matters, a gate (a job waiting on a ``threading.Event``) holds it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from aqueue.exceptions import ConfigurationError
from aqueue.transports.base import DeadLetter, Outgoing
from aqueue.transports.sqlite import control as control_module
from aqueue.transports.sqlite.broker import SQLiteBroker
from aqueue.transports.sqlite.connection import SQLiteConnection
from aqueue.transports.sqlite.control import SQLiteControl
from aqueue.transports.sqlite.schema import SCHEMA

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'aqueue.db'}"


def _write(url: str, sql: str, params: tuple[object, ...] = ()) -> None:
    """Run ``sql`` on the database file behind ``url`` with a connection of its own (another
    process, or the sqlite3 shell)."""
    with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
        conn.execute(sql, params)
        conn.commit()


# -- dead letters written by another tool ------------------------------------------------------


async def test_a_dead_letter_body_of_text_is_read_and_taken_as_utf8(url: str) -> None:
    """A dead letter whose body is text (the sqlite3 shell stores a quoted string as text)
    raised TypeError from ``dead_letters`` and ``take_dead_letters``, so no dead letter of the
    queue could be listed or requeued any more; it is now read as its UTF-8 bytes."""
    broker = SQLiteBroker(url)
    await broker.connect()
    try:
        _write(
            url,
            "INSERT INTO dead_letters (queue, body, reason, time, message_id)"
            " VALUES ('q', 'text body', 'why', 1.0, 'm1')",
        )
        assert await broker.dead_letters("q") == [DeadLetter("q", b"text body", "why", 1.0)]
        sent: list[DeadLetter] = []

        async def send(letters: list[DeadLetter]) -> None:
            sent.extend(letters)

        assert await broker.take_dead_letters("q", 10, send) == 1
        assert [letter.body for letter in sent] == [b"text body"]
        assert await broker.dead_letters("q") == []
    finally:
        await broker.close()


# -- control rows written by another tool ------------------------------------------------------


async def test_a_control_message_of_text_does_not_end_the_poller(url: str) -> None:
    """A ``control_messages`` row whose data is text made the poller raise TypeError and end:
    no subscriber of the instance received anything again (and ``close`` raised it). The row
    now arrives as its UTF-8 bytes and the messages after it still arrive."""
    listening, publishing = SQLiteControl(url), SQLiteControl(url)  # two processes' connections
    await listening.connect()
    await publishing.connect()
    try:
        async with listening.subscribe("ch") as messages:
            _write(
                url,
                "INSERT INTO control_messages (channel, data, time) VALUES ('ch', 'text', ?)",
                (time.time(),),  # recent: a publish's clean-up deletes old messages
            )
            await publishing.publish("ch", [b"good"])
            assert await asyncio.wait_for(messages.get(), 10) == b"text"
            assert await asyncio.wait_for(messages.get(), 10) == b"good"
    finally:
        await listening.close()
        await publishing.close()


async def test_a_control_entry_of_text_fails_no_read(url: str) -> None:
    """A ``control_state`` value stored as text made ``read`` of its whole table raise
    TypeError (every revocation check of a worker failed with it); it is read as UTF-8."""
    control = SQLiteControl(url)
    await control.connect()
    try:
        await control.put("revoked", "good", b"entry", None)
        _write(
            url,
            "INSERT INTO control_state (tbl, key, value, expires_at)"
            " VALUES ('revoked', 'text', 'by hand', NULL)",
        )
        _, entries = await control.read("revoked")
        assert entries == {"good": b"entry", "text": b"by hand"}
    finally:
        await control.close()


# -- a subscription racing another process's commit --------------------------------------------


class _PollsSeen(SQLiteConnection):
    """The real connection, noting (an event) each time a control poll is asked of it, and
    counting the channel messages its polls read."""

    def __init__(self, url: str) -> None:
        super().__init__(url, "database", SCHEMA)
        self.poll_asked = asyncio.Event()
        self.rows_read = 0

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if getattr(fn, "func", None) is not control_module._poll:
            return await super().call(fn)
        self.poll_asked.set()  # set before the job is queued, in the same step
        polled: Any = await super().call(fn)
        if polled is not None:
            self.rows_read += len(polled[1])
        return cast(T, polled)


async def test_a_message_committed_while_subscribing_is_delivered(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poll asked for before a new subscription was ready (its channel not yet polled for)
    that read ``PRAGMA data_version`` after another process's message for that subscription
    took that commit as seen: the next polls found no change and the message never arrived,
    although it was published after entering ``subscribe``.

    Two gates hold the database thread so that its jobs run in the racing order: the new
    subscription's starting point (max id), the other process's commit, then the poll asked
    for before the subscription was ready. The poll timer is made long so that only the
    instance's wake-ups make it poll."""
    monkeypatch.setattr(control_module, "POLL_INTERVAL", 3600.0)
    db = _PollsSeen(url)
    control = SQLiteControl(url, db)
    first_gate, second_gate = threading.Event(), threading.Event()

    def commit_elsewhere(conn: sqlite3.Connection) -> None:
        _write(
            url,
            "INSERT INTO control_messages (channel, data, time) VALUES ('second', x'6e6577', ?)",
            (time.time(),),
        )

    try:
        async with control.subscribe("first"):
            db.submit_nowait(lambda conn: first_gate.wait(30))
            await db.poll_asked.wait()  # the poller's first poll, queued behind the first gate
            db.poll_asked.clear()
            db.submit_nowait(lambda conn: second_gate.wait(30))
            entering = asyncio.ensure_future(_subscribe_and_get(control, "second"))
            await asyncio.sleep(0)  # its first step queues its starting point: behind the gate
            db.submit_nowait(commit_elsewhere)
            first_gate.set()  # the first poll runs; the thread waits at the second gate
            control._dirty.set()  # a wake-up of the poller (as a publish through it makes)
            await db.poll_asked.wait()  # its next poll, asked for "first" only: behind the commit
            second_gate.set()
            assert await asyncio.wait_for(entering, 10) == b"new"
    finally:
        first_gate.set()
        second_gate.set()
        await control.close()
        await db.close()


async def test_a_quiet_subscription_does_not_make_polls_reread_a_busy_channel(url: str) -> None:
    """Polls read the messages after the lowest id every subscriber of the instance had seen:
    one subscription on a quiet channel (a worker's control commands) made every poll read
    again every message of a busy one (events) since, up to a minute's worth, so that the
    work grew with the square of the traffic. A poll now moves every subscriber past what it
    read: each message is read once."""
    db = _PollsSeen(url)
    control = SQLiteControl(url, db)
    publishing = SQLiteControl(url)  # another process's connection
    count = 40
    try:
        async with control.subscribe("quiet"), control.subscribe("busy") as busy:
            for i in range(count):
                await publishing.publish("busy", [b"%d" % i])
                assert await asyncio.wait_for(busy.get(), 10) == b"%d" % i
        assert db.rows_read == count  # read again by each later poll, it was count*(count+1)/2
    finally:
        await control.close()
        await db.close()
        await publishing.close()


async def _subscribe_and_get(control: SQLiteControl, channel: str) -> bytes:
    async with control.subscribe(channel) as messages:
        return await messages.get()


# -- paths ----------------------------------------------------------------------------------


def test_a_nul_in_the_path_is_a_configuration_error(tmp_path: Path) -> None:
    """A path with a NUL character raised ValueError from inside the database thread on every
    operation (the failed opening was never forgotten); it is refused when the URL is read."""
    with pytest.raises(ConfigurationError, match="NUL"):
        SQLiteBroker(f"sqlite:///{tmp_path}/a\x00b.db")


async def test_publish_then_fetch_in_priority_then_queue_then_age_order(url: str) -> None:
    """Across queues: higher priority first, then the earlier queue named, then the oldest."""
    broker = SQLiteBroker(url)
    try:
        await broker.publish(
            [
                Outgoing("b", b"b0", "1", 0),
                Outgoing("a", b"a0", "2", 0),
                Outgoing("b", b"b9", "3", 9),
                Outgoing("a", b"a5", "4", 5),
                Outgoing("a", b"a0-later", "5", 0),
            ]
        )
        got = await broker.fetch(["a", "b"], 10, 0)
        assert [d.body for d in got] == [b"b9", b"a5", b"a0", b"a0-later", b"b0"]
    finally:
        await broker.close()


# -- one broker instance serving several event loops ----------------------------------------


class _WaitSeen(SQLiteBroker):
    """The real broker, noting (an event of the fetch's own loop) when a fetch starts to wait."""

    waiting: asyncio.Event | None = None

    async def _wait(self, version: int, timeout: float) -> bool:
        if self.waiting is not None:
            self.waiting.set()  # its waiter is registered before this event's waiter runs
        return await super()._wait(version, timeout)


def _leave_a_fetch_waiting_on_a_closed_loop(broker: _WaitSeen) -> None:
    """Start a fetch on a loop of its own, and close that loop while the fetch waits (as a
    thread whose loop is closed without finishing its tasks leaves it)."""
    loop = asyncio.new_event_loop()

    async def start_fetch() -> None:
        broker.waiting = asyncio.Event()
        fetching = asyncio.ensure_future(broker.fetch(["q"], 1, 30))
        await broker.waiting.wait()
        assert not fetching.done()  # it never finishes: its loop closes under it

    try:
        loop.run_until_complete(start_fetch())
    finally:
        loop.close()


async def test_a_publish_is_not_failed_by_a_waiter_of_a_closed_loop(url: str) -> None:
    """``publish`` (and ``release``) wake the instance's waiting fetches on their own loops;
    a fetch left waiting on a loop that was then closed made that wake-up raise RuntimeError
    ("Event loop is closed") from ``publish`` after the message was committed, so that a
    caller retrying the failed publish sent the task twice. It is published once, quietly."""
    broker = _WaitSeen(url)
    try:
        thread = threading.Thread(target=_leave_a_fetch_waiting_on_a_closed_loop, args=(broker,))
        thread.start()
        await asyncio.to_thread(thread.join)
        broker.waiting = None
        await broker.publish([Outgoing("q", b"once", "m1")])
        assert [d.body for d in await broker.fetch(["q"], 10, 0)] == [b"once"]
    finally:
        await broker.close()


# -- leases taken over -------------------------------------------------------------------------


async def test_a_lease_taken_over_cannot_be_acked_released_renewed_or_dead_lettered(
    url: str,
) -> None:
    """After its lease ran out and another consumer (its own connection, as another process)
    leased the message, nothing the first consumer does with its old delivery touches the
    new holder's message."""
    slow, other = SQLiteBroker(url, {"visibility_timeout": 0.3}), SQLiteBroker(url)
    try:
        await slow.publish([Outgoing("q", b"contested", "m1")])
        stale = await slow.fetch(["q"], 1, 5)
        taken = await other.fetch(["q"], 1, 5)  # waits for the short lease to run out
        assert [d.body for d in taken] == [b"contested"]

        await slow.renew(stale)
        await slow.release(stale)
        await slow.dead_letter(stale[0], "late")
        await slow.ack(stale)

        assert await slow.fetch(["q"], 1, 0) == []  # still leased by the other, not released
        assert await other.dead_letters("q") == []
        depth = (await other.queue_depths(["q"]))[0]
        assert (depth.ready, depth.unacked) == (0, 1)
        assert await other.start([(taken[0], False)]) == [True]
        await other.ack(taken)
        assert (await other.queue_depths(["q"]))[0].unacked == 0
    finally:
        await slow.close()
        await other.close()


# -- token buckets written by another tool -----------------------------------------------------


async def test_a_bucket_row_of_text_starts_again_full(url: str) -> None:
    """A ``rate_buckets`` row whose tokens are text made every ``acquire`` of that bucket raise
    ValueError, and the row was never replaced nor cleaned up (text sorts after every number,
    so it never looked idle): the rate-limited task could not run again. The row now counts
    as a full bucket and is rewritten."""
    control = SQLiteControl(url)
    await control.connect()
    try:
        _write(
            url,
            "INSERT INTO rate_buckets (name, tokens, updated) VALUES ('task', 'lots', 'now')",
        )
        assert await control.acquire("task", 0.01, 1.0) == 0  # full: one token at once
        assert await control.acquire("task", 0.01, 1.0) > 0  # then the bucket works as any
    finally:
        await control.close()


# -- a fetch cancelled, then the broker closed --------------------------------------------------


async def test_a_claim_cancelled_then_closed_gives_its_leases_back(url: str) -> None:
    """A fetch cancelled while its claim ran hands the leases back when the claim ends; but the
    hand-back was queued only then, on the connection, and closing the connection right after
    the cancellation (a worker shutting down closes its transport) had already dropped it: the
    message stayed leased for the whole visibility timeout. The gate holds the database thread
    so that the claim is still to run when the fetch is cancelled and the connection closed."""
    db = SQLiteConnection(url, "database", SCHEMA)  # the transport's, shared by its roles
    broker = SQLiteBroker(url, {"visibility_timeout": 300}, db)
    gate = threading.Event()
    try:
        assert await broker.fetch(["q"], 1, 0) == []  # the connection is open and ready
        await broker.publish([Outgoing("q", b"work", "m1")])
        db.submit_nowait(lambda conn: gate.wait(30))
        fetching = asyncio.ensure_future(broker.fetch(["q"], 1, 30))
        await asyncio.sleep(0)  # its claim is queued behind the gate
        fetching.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fetching
        await broker.close()
        closing_db = asyncio.ensure_future(db.close())
        await asyncio.sleep(0)  # the close has begun: its disconnect is queued after the claim
        gate.set()
        await closing_db
    finally:
        gate.set()
        await db.close()
    other = SQLiteBroker(url)  # another process
    try:
        got = await other.fetch(["q"], 1, 0)
        assert [(d.body, d.delivery_count) for d in got] == [(b"work", 1)]
    finally:
        await other.close()
