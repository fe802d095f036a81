"""The SQLite control transport: control tables in the broker's own database file.

Tables (created next to the broker's ``messages``):

- ``control_messages``: the channels. ``publish`` inserts rows; each subscriber remembers the
  highest id it has seen and a poller reads newer rows. The ids come from ``AUTOINCREMENT`` and
  writers are serialised by SQLite, so ids grow in commit order and are never reused: ``id > last``
  misses nothing. Rows older than a minute are deleted now and then.
- ``control_state`` / ``control_versions``: the tables of :class:`ControlTransport`, each entry
  with an optional ``expires_at`` (epoch seconds), and a version per table.
- ``rate_buckets``: token buckets; ``acquire`` is one ``BEGIN IMMEDIATE`` transaction, so every
  process of the host takes tokens from the same bucket (one clock: ``time.time()``).

Polling is cheap: one poller per instance, every 50 ms, runs ``PRAGMA data_version`` (which
changes only when another connection committed) and reads ``control_messages`` only then, or
after a publish through this instance (which ``data_version`` does not report). It runs only
while something is subscribed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aqueue.exceptions import BrokerConnectionError, BrokerError
from aqueue.transports.fanout import SubscriberQueue
from aqueue.transports.sqlite.connection import SQLiteConnection, to_bytes, transaction
from aqueue.transports.sqlite.role import SQLiteRole
from aqueue.transports.sqlite.schema import upsert
from aqueue.worker.ratelimit import refill

__all__ = ["SQLiteControl"]

log = logging.getLogger("aqueue.transports.sqlite.control")


_BUMP = (
    "INSERT INTO control_versions (tbl, version) VALUES (?, 1)"
    " ON CONFLICT (tbl) DO UPDATE SET version = version + 1"
)

_GET_BUCKET = "SELECT tokens, updated FROM rate_buckets WHERE name = ?"
_PUT_BUCKET = upsert("rate_buckets", "name", ("name", "tokens", "updated"))

#: Seconds between two polls for new channel messages while anything is subscribed.
POLL_INTERVAL = 0.05
#: Seconds a channel message is kept (a subscriber slower than this would miss it).
RETENTION = 60.0
#: Seconds between two clean-ups of old messages, expired entries and idle buckets.
_CLEAN_INTERVAL = 10.0
#: Seconds after which an untouched token bucket is deleted (it would be full again anyway).
_BUCKET_IDLE = 3600.0


@dataclass(slots=True, eq=False)
class _Subscriber:
    channel: str
    queue: SubscriberQueue = field(default_factory=SubscriberQueue)
    last: int = 0  # the highest message id seen
    ready: bool = False  # `last` is set: the poller may deliver


class SQLiteControl(SQLiteRole):
    """Control transport for ``sqlite://`` URLs, one file shared by the processes of a host.

    Args:
        url: ``sqlite:///relative.db`` or ``sqlite:////absolute/path.db`` (the broker's).

    Raises:
        ConfigurationError: not a usable SQLite file URL.
    """

    def __init__(self, url: str, db: SQLiteConnection | None = None) -> None:
        super().__init__(url, "control", db)
        self._subscribers: list[_Subscriber] = []
        self._poller: asyncio.Task[None] | None = None
        self._dirty = asyncio.Event()  # set by a publish through this instance
        self._cleaned_at = 0.0  # touched only in the database thread

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._db.path!r})"

    async def close(self) -> None:
        """Stop the poller, end subscriptions (see :meth:`subscribe`) and close the connection.
        Idempotent."""
        poller, self._poller = self._poller, None
        subscribers, self._subscribers = self._subscribers, []
        for sub in subscribers:
            sub.queue.end(f"{self!r} was closed: the subscription to {sub.channel} ended")
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        await self._close_db()

    # -- channels ----------------------------------------------------------------------------

    async def publish(self, channel: str, messages: Sequence[bytes]) -> None:
        """Insert ``messages`` in one transaction.

        Raises:
            BrokerConnectionError: the file cannot be opened or stays locked.
        """
        if not messages:
            return
        rows = [bytes(m) for m in messages]

        def insert(conn: sqlite3.Connection) -> None:
            now = time.time()
            with transaction(conn):
                conn.executemany(
                    "INSERT INTO control_messages (channel, data, time) VALUES (?, ?, ?)",
                    [(channel, data, now) for data in rows],
                )
                self._clean(conn, now)

        await self._db.call(insert)
        self._dirty.set()

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[asyncio.Queue[bytes]]:
        """Yield a queue receiving every message published on ``channel`` after entering.
        After :meth:`close`, its ``get()`` raises :class:`BrokerConnectionError` once the
        messages delivered before are taken (a consumer waiting on it is woken).

        Raises:
            BrokerConnectionError: the file cannot be opened, or :meth:`close` was called
                meanwhile.
        """
        sub = _Subscriber(channel)
        self._subscribers.append(sub)
        try:
            sub.last = await self._db.call(
                lambda conn: int(
                    conn.execute("SELECT coalesce(max(id), 0) FROM control_messages").fetchone()[0]
                )
            )
            if sub not in self._subscribers:
                # close() ended it meanwhile: no poller would feed the queue handed out now.
                raise BrokerConnectionError(f"{self!r} was closed while subscribing to {channel}")
            sub.ready = True
            # A poll asked for before this was ready did not look for its channel, yet may have
            # read data_version after another process's commit for it: without a poll that
            # ignores data_version, that message would wait for some unrelated commit.
            self._dirty.set()
            if self._poller is None or self._poller.done():
                self._poller = asyncio.create_task(self._poll_loop())
            yield sub.queue
        finally:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

    async def _poll_loop(self) -> None:
        data_version: int | None = None
        while self._subscribers:
            ready = [s for s in self._subscribers if s.ready]
            if ready:
                since = min(s.last for s in ready)
                channels = sorted({s.channel for s in ready})
                local = self._dirty.is_set()
                self._dirty.clear()
                known = None if local else data_version
                try:
                    polled = await self._db.call(
                        functools.partial(_poll, since=since, channels=channels, known=known)
                    )
                except BrokerError as exc:
                    log.warning("polling control messages in %r failed: %s", self._db.path, exc)
                    polled = None
                    data_version = None
                if polled is not None:
                    data_version, rows = polled
                    _deliver(ready, rows)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), POLL_INTERVAL)

    # -- tables ------------------------------------------------------------------------------

    async def put(self, table: str, key: str, value: bytes | None, ttl: float | None) -> None:
        """Upsert or delete an entry and bump the version, in one transaction.

        Raises:
            BrokerConnectionError: the file cannot be opened or stays locked.
        """

        def write(conn: sqlite3.Connection) -> None:
            now = time.time()
            with transaction(conn):
                if value is None:
                    conn.execute(
                        "DELETE FROM control_state WHERE tbl = ? AND key = ?", (table, key)
                    )
                else:
                    conn.execute(
                        "INSERT INTO control_state (tbl, key, value, expires_at)"
                        " VALUES (?, ?, ?, ?) ON CONFLICT (tbl, key) DO UPDATE SET"
                        " value = excluded.value, expires_at = excluded.expires_at",
                        (table, key, bytes(value), None if ttl is None else now + ttl),
                    )
                conn.execute(_BUMP, (table,))
                self._clean(conn, now)

        await self._db.call(write)

    async def read(self, table: str) -> tuple[int, dict[str, bytes]]:
        """The version and unexpired entries, in one read transaction (one snapshot).

        Raises:
            BrokerConnectionError: the file cannot be opened.
        """

        def select(conn: sqlite3.Connection) -> tuple[int, dict[str, bytes]]:
            with transaction(conn, "DEFERRED"):
                version = _version(conn, table)
                rows = conn.execute(
                    "SELECT key, value FROM control_state WHERE tbl = ?"
                    " AND (expires_at IS NULL OR expires_at > ?)",
                    (table, time.time()),
                ).fetchall()
            # A value written by another tool as text is read as UTF-8: one such entry must
            # not fail every read of the table (a worker's revocation checks).
            return version, {str(key): to_bytes(value) for key, value in rows}

        return await self._db.call(select)

    async def version(self, table: str) -> int:
        """The table's version.

        Raises:
            BrokerConnectionError: the file cannot be opened.
        """
        return await self._db.call(lambda conn: _version(conn, table))

    # -- token buckets -----------------------------------------------------------------------

    async def acquire(self, bucket: str, rate: float, capacity: float) -> float:
        """Take a token in one ``BEGIN IMMEDIATE`` transaction (see
        ``aqueue.worker.ratelimit.refill``).

        Raises:
            BrokerConnectionError: the file cannot be opened or stays locked.
        """

        def take(conn: sqlite3.Connection) -> float:
            with transaction(conn):
                now = time.time()
                row = conn.execute(_GET_BUCKET, (bucket,)).fetchone()
                tokens, updated = _bucket_state(bucket, row, capacity, now)
                tokens, wait = refill(tokens, updated, now, rate, capacity)
                conn.execute(_PUT_BUCKET, (bucket, tokens, now))
            return wait

        return await self._db.call(take)

    def _clean(self, conn: sqlite3.Connection, now: float) -> None:
        """Delete old channel messages, expired entries and idle buckets (in a transaction)."""
        if now - self._cleaned_at < _CLEAN_INTERVAL:
            return
        self._cleaned_at = now
        conn.execute("DELETE FROM control_messages WHERE time < ?", (now - RETENTION,))
        conn.execute("DELETE FROM control_state WHERE expires_at <= ?", (now,))
        conn.execute("DELETE FROM rate_buckets WHERE updated < ?", (now - _BUCKET_IDLE,))


def _deliver(ready: list[_Subscriber], rows: list[tuple[int, str, bytes]]) -> None:
    """Put each polled row ``(id, channel, data)`` (in id order) on the queues of the ``ready``
    subscribers of its channel that have not seen it, then move every one of them past the
    last id read."""
    for row_id, row_channel, data in rows:
        for sub in ready:
            if sub.channel == row_channel and row_id > sub.last:
                sub.queue.put_nowait(data)
    if rows:
        # The poll read every row of their channels up to it: a subscriber whose channel is
        # quiet must not make every later poll read a busy channel's rows again.
        top = rows[-1][0]
        for sub in ready:
            sub.last = max(sub.last, top)


def _bucket_state(bucket: str, row: Any, capacity: float, now: float) -> tuple[float, float]:
    """The ``(tokens, updated)`` of a bucket's row (``None``: no row); a new bucket, or a row
    that holds no numbers (written by another tool), starts full at ``now`` (the caller then
    rewrites the row)."""
    if row is not None:
        try:
            return float(row[0]), float(row[1])
        except (TypeError, ValueError):
            log.warning("token bucket %r holds no numbers (%.60r): it starts full", bucket, row)
    return capacity, now


def _version(conn: sqlite3.Connection, table: str) -> int:
    row = conn.execute("SELECT version FROM control_versions WHERE tbl = ?", (table,)).fetchone()
    return 0 if row is None else int(row[0])


def _poll(
    conn: sqlite3.Connection, since: int, channels: list[str], known: int | None
) -> tuple[int, list[tuple[int, str, bytes]]] | None:
    """Messages newer than ``since`` on ``channels``, unless nothing was committed since
    ``known`` (runs in the database thread)."""
    # Read before the rows: a commit after this changes the next value, so none is missed.
    data_version = int(conn.execute("PRAGMA data_version").fetchone()[0])
    if data_version == known:
        return None
    marks = ", ".join("?" * len(channels))
    rows = conn.execute(
        f"SELECT id, channel, data FROM control_messages WHERE id > ? AND channel IN ({marks})"
        " ORDER BY id",
        (since, *channels),
    ).fetchall()
    # Data written by another tool as text is handed over as UTF-8: a TypeError here would
    # end the poller, and every subscriber of the instance would hear nothing again.
    return data_version, [(int(i), str(c), to_bytes(d)) for i, c, d in rows]
