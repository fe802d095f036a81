"""The SQLite broker: aqueue's embedded default, for a worker and its producers on one host.

URL: ``sqlite:///aqueue.db`` (relative to the current directory) or ``sqlite:////abs/path.db``.
Several processes share the file with no server; ``sqlite://:memory:`` is refused, since no
other process could see it (use ``memory://``).

Storage: one ``messages`` table. A message is *ready* when ``visible_at`` (epoch seconds) has
passed: ``publish`` sets it to the eta (or now); ``fetch`` leases a message by pushing it
``visibility_timeout`` seconds ahead and writing a fresh random ``lease``. A lease that runs out
needs no sweeper: the row is simply ready again. Dead letters go to a ``dead_letters`` table.

Blame (:class:`~aqueue.transports.base.RunTracking`): :meth:`SQLiteBroker.start` sets ``running``
to 2 (or 3 for an isolated suspect) just before the worker runs the message. A claim that
finds a row whose lease ran out while it was running adds one to ``delivery_count`` (deaths
while running; the count handed out is one more) and, for 3, to ``strikes``; a row that was
only prefetched comes back unchanged. Rows are checked as they are read: a ``body`` that is not
bytes (text is taken as UTF-8) or a count that is not a whole number becomes the delivery's
``defect``, which the worker dead-letters.

Locking: every write is one ``BEGIN IMMEDIATE`` transaction, so two processes never lease the
same row - the second waits (up to ``busy_timeout``) for the first to commit and then no longer
sees the rows as ready. Idle polling takes no write lock: a read of the earliest ``visible_at``
decides whether a claim is worth trying.

Leases: a :class:`Delivery` token is ``(rowid, lease)``. ``ack``, ``release``, ``renew`` and
``dead_letter`` only touch a row whose lease still matches, so a worker whose lease ran out and
whose message was leased again elsewhere cannot delete, hand back or extend the new holder's
message (its late ack is a no-op; at-least-once holds either way).

Wake-ups: SQLite cannot notify other processes. A waiting ``fetch`` wakes at once for ``publish``
and ``release`` on the same instance; otherwise it polls, from 5 ms backing off to 100 ms, and
never sleeps past the next known ``visible_at`` (a delayed message or a lease running out).

Order: higher priority first, then the earlier queue in ``queues``, then the oldest (lowest
rowid). A released or expired message keeps its rowid, so it goes back to the front of its
priority.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aqueue.transports import visibility_timeout as _visibility_timeout
from aqueue.transports.base import DeadLetter, Delivery, Outgoing, QueueDepth, SendLetters
from aqueue.transports.sqlite.connection import (
    SQLiteConnection,
    as_bytes,
    chunks,
    placeholders,
    to_bytes,
    transaction,
)
from aqueue.transports.sqlite.role import SQLiteRole

__all__ = ["SQLiteBroker"]


_SELECT_READY = (
    "SELECT id, priority FROM messages INDEXED BY messages_order"
    " WHERE queue = ? AND visible_at <= ? ORDER BY priority DESC, id LIMIT ?"
)
_SELECT_DUE = "SELECT min(visible_at) FROM messages WHERE queue = ?"

#: Poll intervals (seconds) of a waiting fetch when no same-process publish wakes it.
_MIN_POLL = 0.005
_MAX_POLL = 0.1


@dataclass(frozen=True, slots=True)
class _Claim:
    deliveries: list[Delivery]
    next_due: float | None  # earliest visible_at among the queues when nothing was ready


class SQLiteBroker(SQLiteRole):
    """Broker for ``sqlite://`` URLs: one file shared by the processes of one host.

    All sqlite3 calls run in one thread per instance, with one connection; the event loop never
    waits on the disk.
    """

    def __init__(
        self,
        url: str,
        options: Mapping[str, Any] | None = None,
        db: SQLiteConnection | None = None,
    ) -> None:
        """Check the URL and options; nothing is opened until :meth:`connect` or first use.

        Args:
            url: ``sqlite:///relative.db`` or ``sqlite:////absolute/path.db``.
            options: broker transport options; ``visibility_timeout`` (seconds, default 30).

        Raises:
            ConfigurationError: the URL is not a SQLite file URL, or an option is invalid.
        """
        self.visibility_timeout = _visibility_timeout(options or {})
        super().__init__(url, "broker", db)
        # Same-process wake-ups; a thread lock because the instance may serve several loops.
        self._lock = threading.Lock()
        self._version = 0  # bumped by publish/release/close: "look again"
        self._closes = 0
        self._waiters: set[asyncio.Future[None]] = set()
        self._has_blame_columns = False  # running and strikes exist (a file from before: added)

    async def close(self) -> None:
        """Close the connection and wake waiting fetches (they return ``[]``). Idempotent.

        A later operation opens the file again.
        """
        with self._lock:
            self._closes += 1
        self._wake()
        await self._close_db()

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Insert ``messages`` in one transaction; an ``eta`` becomes their ``visible_at``.

        Raises:
            BrokerConnectionError: the file cannot be opened or stays locked past busy_timeout.
        """
        if not messages:
            return
        now = time.time()
        rows = [
            (m.queue, m.priority, bytes(m.body), m.eta if m.eta is not None else now, m.message_id)
            for m in messages
        ]

        def insert(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.executemany(
                    "INSERT INTO messages (queue, priority, body, visible_at, message_id)"
                    " VALUES (?, ?, ?, ?, ?)",
                    rows,
                )

        await self._db.call(insert)
        self._wake()

    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        """Lease up to ``limit`` ready messages from ``queues``, waiting up to ``timeout`` seconds.

        If the caller is cancelled while a claim is running, the leases it took are handed back
        (delivery count restored) rather than left to run out.

        Raises:
            BrokerConnectionError: the file cannot be opened or stays locked past busy_timeout.
        """
        names = list(dict.fromkeys(queues))  # a repeated name must not yield a row twice
        if limit <= 0 or not names:
            return []
        await self._blame_columns()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        interval = _MIN_POLL
        closes = self._closes
        while True:
            version = self._version
            claim = await self._db.call_undoable(
                lambda conn: _claim(conn, names, limit, self.visibility_timeout), _unclaim
            )
            if claim.deliveries:
                return claim.deliveries
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            wait = min(interval, remaining)
            if claim.next_due is not None:
                # A clock step could make this negative; 1 ms keeps it from spinning.
                wait = min(wait, max(claim.next_due - time.time(), 0.001))
            if await self._wait(version, wait):
                interval = _MIN_POLL
            else:
                interval = min(interval * 2, _MAX_POLL)
            if self._closes != closes:
                return []

    async def _wait(self, version: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a same-process wake-up; True if one came."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._version != version:  # woken between our claim and now
                return True
            self._waiters.add(waiter)
        try:
            # Not wait_for: on 3.11 it loses a cancel that comes as the waiter is woken, and
            # fetch() would then claim messages for a caller that gave up.
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            return False
        finally:
            with self._lock:
                self._waiters.discard(waiter)
        return True

    def _wake(self) -> None:
        with self._lock:
            self._version += 1
            waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            # RuntimeError: its loop was closed with the fetch still waiting, so nobody is left
            # to wake; a publish that committed must not raise (a retry would send it twice).
            with contextlib.suppress(RuntimeError):
                waiter.get_loop().call_soon_threadsafe(_set_result, waiter)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Delete the messages in one transaction; a lease that is no longer ours is skipped.

        Raises:
            BrokerConnectionError: the file cannot be opened or stays locked past busy_timeout.
        """
        if deliveries:
            tokens = [_token(d) for d in deliveries]
            await self._db.call(lambda conn: _execute_many(conn, _DELETE_LEASED, tokens))

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Make leased messages ready at once, their counts unchanged.

        A release is not a death (a worker shutting down gives back what it did not run or
        could not finish), so it does not count towards the poison-message limit.

        Raises:
            BrokerConnectionError: the file cannot be opened or stays locked past busy_timeout.
        """
        if not deliveries:
            return
        await self._blame_columns()
        tokens = [_token(d) for d in deliveries]
        await self._db.call(lambda conn: _release(conn, tokens))
        self._wake()

    async def start(
        self, runs: Sequence[tuple[Delivery, bool]], acks: Sequence[Delivery] = ()
    ) -> list[bool]:
        """Delete the acked rows, then mark leased rows as running (3 for an isolated suspect,
        else 2) and push their leases ``visibility_timeout`` seconds past now, in one
        transaction (see :class:`~aqueue.transports.base.RunTracking`).

        Returns:
            Per run, False when the lease is no longer ours.

        Raises:
            BrokerConnectionError: the file cannot be opened or stays locked past busy_timeout.
        """
        if not runs:
            await self.ack(acks)
            return []
        await self._blame_columns()
        rows = [(3 if isolated else 2, *_token(d)) for d, isolated in runs]
        acked = [_token(d) for d in acks]

        def mark(conn: sqlite3.Connection) -> list[bool]:
            with transaction(conn):
                conn.executemany(_DELETE_LEASED, acked)
                until = time.time() + self.visibility_timeout
                sql = "UPDATE messages SET running = ?, visible_at = ? WHERE id = ? AND lease = ?"
                return [
                    conn.execute(sql, (running, until, rowid, lease)).rowcount == 1
                    for running, rowid, lease in rows
                ]

        return await self._db.call(mark)

    async def _blame_columns(self) -> None:
        """Add columns ``running`` and ``strikes`` to a database file made before them."""
        if not self._has_blame_columns:
            await self._db.call(_add_blame_columns)
            self._has_blame_columns = True

    async def renew(self, deliveries: Sequence[Delivery]) -> None:
        """Push each lease still ours ``visibility_timeout`` seconds past now.

        Raises:
            BrokerConnectionError: the file cannot be opened or stays locked past busy_timeout.
        """
        if deliveries:
            tokens = [_token(d) for d in deliveries]

            def extend(conn: sqlite3.Connection) -> None:
                until = time.time() + self.visibility_timeout
                _execute_many(conn, _EXTEND_LEASED, [(until, *token) for token in tokens])

            await self._db.call(extend)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the message to the dead letters of its queue with ``reason``, in one transaction.

        Nothing happens if the lease is no longer ours (the message was leased again elsewhere).

        Raises:
            BrokerConnectionError: the file cannot be opened or stays locked past busy_timeout.
        """
        rowid, lease = _token(delivery)

        def move(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                row = conn.execute(
                    "SELECT queue, body, message_id FROM messages WHERE id = ? AND lease = ?",
                    (rowid, lease),
                ).fetchone()
                if row is None:
                    return
                conn.execute("DELETE FROM messages WHERE id = ?", (rowid,))
                conn.execute(
                    "INSERT INTO dead_letters (queue, body, reason, time, message_id)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (row[0], as_bytes(row[1]) or b"", reason, time.time(), str(row[2])),
                )

        await self._db.call(move)

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Read the oldest ``limit`` dead letters of ``queue`` (the queue they came from).

        Raises:
            BrokerConnectionError: the file cannot be opened.
        """

        def read(conn: sqlite3.Connection) -> list[DeadLetter]:
            rows = conn.execute(
                "SELECT queue, body, reason, time FROM dead_letters WHERE queue = ?"
                " ORDER BY id LIMIT ?",
                (queue, max(limit, 0)),
            )
            return [_letter(row) for row in rows]

        return await self._db.call(read)

    async def take_dead_letters(self, queue: str, limit: int, send: SendLetters) -> int:
        """Read the oldest ``limit`` dead letters of ``queue``, await ``send(letters)``, then
        delete those rows by id, in one transaction (see
        :class:`~aqueue.transports.base.DeadLetterTakes`: two takes from two processes at
        the same moment may both send a letter, never lose one).

        Raises:
            BrokerConnectionError: the file cannot be opened or stays locked past busy_timeout.
        """

        def read(conn: sqlite3.Connection) -> list[tuple[int, DeadLetter]]:
            rows = conn.execute(
                "SELECT id, queue, body, reason, time FROM dead_letters WHERE queue = ?"
                " ORDER BY id LIMIT ?",
                (queue, max(limit, 0)),
            )
            return [(row[0], _letter(row[1:])) for row in rows]

        taken = await self._db.call(read)
        if not taken:
            return 0
        await send([letter for _, letter in taken])
        ids = [i for i, _ in taken]

        def delete(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                for part in chunks(ids):
                    conn.execute(
                        f"DELETE FROM dead_letters WHERE id IN ({placeholders(len(part))})", part
                    )

        await self._db.call(delete)
        return len(taken)

    # -- administration (aqueue.transports.base.QueueAdmin) -----------------------------------

    async def queue_depths(self, queues: Sequence[str] | None = None) -> list[QueueDepth]:
        """Count messages by condition in one read transaction: ready (``visible_at`` passed),
        delayed (in the future, no lease) and unacked (in the future, leased).

        Raises:
            BrokerConnectionError: the file cannot be opened.
        """
        names = list(dict.fromkeys(queues)) if queues is not None else None
        return await self._db.call(lambda conn: _depths(conn, names, time.time()))

    async def purge(self, queues: Sequence[str]) -> int:
        """Delete the ready and delayed messages of ``queues`` in one transaction.

        Raises:
            BrokerConnectionError: the file cannot be opened or stays locked past busy_timeout.
        """
        names = list(dict.fromkeys(queues))
        if not names:
            return 0

        def delete(conn: sqlite3.Connection) -> int:
            with transaction(conn):
                cursor = conn.execute(
                    f"DELETE FROM messages WHERE queue IN ({placeholders(len(names))})"
                    " AND NOT (lease IS NOT NULL AND visible_at > ?)",
                    (*names, time.time()),
                )
            return int(cursor.rowcount)

        return await self._db.call(delete)

    async def purge_dead_letters(self, queue: str, limit: int | None = None) -> int:
        """Delete the oldest ``limit`` (default all) dead letters of ``queue``.

        Raises:
            BrokerConnectionError: the file cannot be opened or stays locked past busy_timeout.
        """
        count = -1 if limit is None else max(limit, 0)  # LIMIT -1: no limit

        def delete(conn: sqlite3.Connection) -> int:
            with transaction(conn):
                cursor = conn.execute(
                    "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters"
                    " WHERE queue = ? ORDER BY id LIMIT ?)",
                    (queue, count),
                )
            return int(cursor.rowcount)

        return await self._db.call(delete)


def _depths(conn: sqlite3.Connection, names: list[str] | None, now: float) -> list[QueueDepth]:
    """Queue depths in one snapshot (runs in the database thread)."""
    where = ""
    params: tuple[str, ...] = ()
    if names is not None:
        if not names:
            return []
        where, params = f" WHERE queue IN ({placeholders(len(names))})", tuple(names)
    with transaction(conn, "DEFERRED"):
        counts = {
            queue: (int(ready), int(delayed), int(unacked))
            for queue, ready, delayed, unacked in conn.execute(
                "SELECT queue, total(visible_at <= ?), total(visible_at > ? AND lease IS NULL),"
                f" total(visible_at > ? AND lease IS NOT NULL) FROM messages{where}"
                " GROUP BY queue",
                (now, now, now, *params),
            )
        }
        dead = dict(
            conn.execute(f"SELECT queue, count(*) FROM dead_letters{where} GROUP BY queue", params)
        )
    order = names if names is not None else sorted(set(counts) | set(dead))
    return [QueueDepth(q, *counts.get(q, (0, 0, 0)), dead=int(dead.get(q, 0))) for q in order]


_DELETE_LEASED = "DELETE FROM messages WHERE id = ? AND lease = ?"
_EXTEND_LEASED = "UPDATE messages SET visible_at = ? WHERE id = ? AND lease = ?"


def _execute_many(conn: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """``sql`` once per row, in one transaction."""
    with transaction(conn):
        conn.executemany(sql, rows)


def _token(delivery: Delivery) -> tuple[int, int]:
    rowid, lease = delivery.token
    return int(rowid), int(lease)


def _claim(conn: sqlite3.Connection, queues: list[str], limit: int, vt: float) -> _Claim:
    """Lease up to ``limit`` ready rows of ``queues`` (runs in the database thread)."""
    now = time.time()
    dues = [conn.execute(_SELECT_DUE, (q,)).fetchone()[0] for q in queues]
    # A row written by hand may hold text: SQLite sorts it after every number, so it is the
    # minimum only of a queue with no other row; such a row is never due (nor claimed).
    next_due = min((d for d in dues if isinstance(d, int | float)), default=None)
    if next_due is None or next_due > now:
        return _Claim([], next_due)  # nothing ready: no write lock taken
    with transaction(conn):
        now = time.time()  # after waiting for the write lock
        # The best `limit` overall are among the best `limit` of each queue.
        candidates: list[tuple[int, int, int]] = []
        for position, queue in enumerate(queues):
            for rowid, priority in conn.execute(_SELECT_READY, (queue, now, limit)):
                # A priority that is no number (a row written by hand) counts as 0: the
                # message runs, and the others are not held up by it.
                level = priority if type(priority) is int else 0
                candidates.append((-level, position, rowid))
        candidates.sort()
        chosen = [rowid for _, _, rowid in candidates[:limit]]
        if not chosen:
            return _Claim([], None)  # another consumer took them first
        lease = secrets.randbits(62)
        found: dict[int, Delivery] = {}
        for part in chunks(chosen):
            marks = placeholders(len(part))
            # A lease that ran out while its run was marked is blamed (see the module doc).
            # Counts change only then: arithmetic would turn a malformed one into a number.
            conn.execute(
                "UPDATE messages SET visible_at = ?, lease = ?,"
                " delivery_count = CASE WHEN running > 0 THEN delivery_count + 1"
                " ELSE delivery_count END,"
                " strikes = CASE WHEN running = 3 THEN strikes + 1 ELSE strikes END,"
                f" running = 0 WHERE id IN ({marks})",
                (now + vt, lease, *part),
            )
            rows = conn.execute(
                "SELECT id, queue, body, delivery_count, strikes FROM messages"
                f" WHERE id IN ({marks})",
                part,
            )
            found.update((row[0], _delivery(row, lease)) for row in rows)
    return _Claim([found[rowid] for rowid in chosen], None)


def _delivery(row: tuple[Any, ...], lease: int) -> Delivery:
    """The delivery of a claimed row ``(id, queue, body, delivery_count, strikes)``, each
    column checked: a wrong one becomes the delivery's defect, naming the column."""
    rowid, queue, raw, deaths, strikes = row
    body = as_bytes(raw)
    defect = None
    if body is None:
        defect = f"messages.body must be bytes, not {type(raw).__name__}"
    elif type(deaths) is not int or deaths < 0:
        defect = f"messages.delivery_count must be a whole number >= 0, not {deaths!r:.40}"
    elif type(strikes) is not int or strikes < 0:
        defect = f"messages.strikes must be a whole number >= 0, not {strikes!r:.40}"
    if body is None or defect is not None:
        return Delivery(str(queue), body or b"", 1, (rowid, lease), 0, defect)
    return Delivery(str(queue), body, deaths + 1, (rowid, lease), strikes)


def _letter(row: tuple[Any, ...]) -> DeadLetter:
    """The dead letter of a row ``(queue, body, reason, time)``; a body written by another
    tool as text (or a number) is handed over as its UTF-8 bytes, not refused: one such row
    must not fail every read (and take) of the queue's dead letters."""
    queue, body, reason, when = row
    return DeadLetter(str(queue), to_bytes(body), str(reason), when)


def _add_blame_columns(conn: sqlite3.Connection) -> None:
    """Add ``running`` and ``strikes`` to ``messages`` if missing (a file made by an older
    aqueue); under the write lock, so that two processes upgrading at once add them once."""
    with transaction(conn):
        have = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
        for column in ("running", "strikes"):
            if column not in have:
                conn.execute(f"ALTER TABLE messages ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")


def _unclaim(conn: sqlite3.Connection, claim: _Claim) -> None:
    """Give back the leases of a claim nobody received (its fetch was cancelled)."""
    _release(conn, [_token(d) for d in claim.deliveries])


def _release(conn: sqlite3.Connection, tokens: list[tuple[int, int]]) -> None:
    """Make leased rows ready now, counts unchanged (a hand-back is not a death)."""
    if not tokens:
        return
    with transaction(conn):
        now = time.time()
        conn.executemany(
            "UPDATE messages SET visible_at = ?, lease = NULL, running = 0"
            " WHERE id = ? AND lease = ?",
            [(now, *token) for token in tokens],
        )


def _set_result(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
