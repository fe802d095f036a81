"""The SQLite result backend: results in the same kind of file as the SQLite broker.

URL: ``sqlite:///aqueue.db`` (relative to the current directory) or ``sqlite:////abs/path.db``;
``sqlite://:memory:`` is refused (no other process could read it). Tables: ``results`` (one
record per task id) and ``member_sets`` / ``members`` (:meth:`SQLiteBackend.add_member`, chord
completions), each with an optional ``expires_at`` (epoch seconds); expired rows read as missing
and are deleted now and then by :meth:`store`.

Watching: a store made through *this instance* is put on its watchers' queues at once, every
record in order. Stores made by other processes (or other instances) cannot notify, so one
poller task per instance checks every watched id in one query every 20 ms - and only when
``PRAGMA data_version`` says another connection committed something. A poll sees only the latest
record of an id, so intermediate records written by another process within one interval may be
coalesced; the last one is always delivered.

Subscribe-then-read: entering :meth:`SQLiteBackend.watch` reads the id's current record and
counts it as seen. Every record stored after ``__aenter__`` returns is delivered (if it differs
from the last one delivered, for other processes' stores); a record stored while entering may or
may not be - the caller's own read after entering sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from aqueue.exceptions import BrokerError
from aqueue.transports.base import Records, ReplyTo, waiters_key
from aqueue.transports.fanout import LoopQueue, Subscriptions
from aqueue.transports.sqlite.connection import (
    CHUNK,
    SQLiteConnection,
    chunks,
    placeholders,
    transaction,
)
from aqueue.transports.sqlite.role import SQLiteRole
from aqueue.transports.sqlite.schema import upsert

__all__ = ["SQLiteBackend"]

log = logging.getLogger("aqueue.transports.sqlite.results")


_UPSERT = upsert("results", "task_id", ("task_id", "data", "expires_at"))
_GET_MEMBER_SET = "SELECT size, expires_at FROM member_sets WHERE key = ?"
_PUT_MEMBER_SET = upsert("member_sets", "key", ("key", "size", "expires_at"))

_PUT_LOCK = upsert("locks", "key", ("key", "owner", "expires_at"))

_UNEXPIRED = "(expires_at IS NULL OR expires_at > ?)"

#: Seconds between two polls for other processes' stores while anything is watched.
_POLL_INTERVAL = 0.02
#: Seconds the poller waits after an unexpected error before it polls again (one log line
#: a second at most, not fifty).
_POLL_ERROR_PAUSE = 1.0

#: Seconds between two deletions of expired rows (run inside a store).
_PURGE_INTERVAL = 60.0


@dataclass(eq=False)
class _Watcher(LoopQueue):
    last: bytes | None = None  # the last record delivered or seen at subscribe time
    seq: int = 0  # the database job (see SQLiteBackend._seq) that `last` comes from
    ready: bool = False  # the subscribe-time read is done; until then the poller skips it


@dataclass(frozen=True, slots=True)
class _Poll:
    data_version: int
    seq: int
    found: dict[str, bytes]


class SQLiteBackend(SQLiteRole):
    """Result backend for ``sqlite://`` URLs: one file shared by the processes of one host.

    All sqlite3 calls run in one thread per instance, with one connection.
    """

    def __init__(self, url: str, db: SQLiteConnection | None = None) -> None:
        """Check the URL; nothing is opened until :meth:`connect` or first use.

        Raises:
            ConfigurationError: the URL is not a SQLite file URL (or is ``:memory:``).
        """
        super().__init__(url, "result backend", db)
        self._lock = threading.Lock()  # guards the watcher state below
        self._watchers: Subscriptions[_Watcher] = Subscriptions(self._lock)
        self._subscribed = 0  # bumped when a watcher becomes ready: the poller must query
        self._poller: asyncio.Task[None] | None = None
        # Touched only in the database thread: a number for each store, subscribe read and poll,
        # in the order they ran. Results reach the loop in no guaranteed order, so a watcher
        # keeps the number of what it saw last and ignores anything older.
        self._seq = 0
        self._purged_at = 0.0

    async def close(self) -> None:
        """End every watch, stop the poller and close the connection. Idempotent.

        A watch's ``get()`` then raises :class:`~aqueue.exceptions.BrokerConnectionError` once
        the records put before are read: every watch, whatever its loop, since its poller and
        connection are this instance's. A later operation opens the file again.
        """
        with self._lock:
            watchers = [w for _, ws in self._watchers.items() for w in ws]
            self._watchers.clear()
            poller, self._poller = self._poller, None
        for watcher in watchers:
            watcher.end(f"the result backend {self.path!r} was closed: the watch ended")
        if poller is not None:
            poller.cancel()
            if poller.get_loop() is asyncio.get_running_loop():
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
        await self._close_db()

    async def store(
        self, items: Records, expires: float | None, reply_to: ReplyTo | None = None
    ) -> None:
        """Upsert each ``(task_id, record)`` in one transaction, then notify this instance's
        watchers.

        Args:
            items: task ids and their encoded records.
            expires: seconds until the records may be deleted, or ``None`` to keep them.
            reply_to: ignored (watchers are notified per task id).

        Raises:
            BrokerConnectionError: the file cannot be opened or stays locked past busy_timeout.
        """
        if items:
            await self._store(items, expires, waited=False)

    async def store_waited(
        self, items: Records, expires: float | None, reply_to: ReplyTo | None = None
    ) -> list[str]:
        """:meth:`store`, and in the same transaction read which of the ids have waiters
        (:meth:`aqueue.transports.base.Waiters.store_waited`).

        Raises:
            BrokerConnectionError: the file cannot be opened or stays locked past busy_timeout.
        """
        return await self._store(items, expires, waited=True) if items else []

    async def _store(self, items: Records, expires: float | None, waited: bool) -> list[str]:
        rows = [(task_id, bytes(data)) for task_id, data in items]
        found: list[str] = []

        def upsert(conn: sqlite3.Connection) -> int:
            now = time.time()
            until = now + expires if expires is not None else None
            with transaction(conn):
                conn.executemany(_UPSERT, [(task_id, data, until) for task_id, data in rows])
                if now - self._purged_at >= _PURGE_INTERVAL:
                    self._purged_at = now
                    conn.execute(
                        "DELETE FROM members WHERE key IN"
                        " (SELECT key FROM member_sets WHERE expires_at <= ?)",
                        (now,),
                    )
                    for table in ("results", "member_sets", "locks"):
                        conn.execute(f"DELETE FROM {table} WHERE expires_at <= ?", (now,))
                if waited:  # a retried transaction starts over
                    found[:] = _waited(conn, [task_id for task_id, _ in rows], now)
            self._seq += 1
            return self._seq

        seq = await self._db.call(upsert)
        self._notify(rows, seq)
        return found

    async def add_waiter(self, task_id: str, waiter: str, expires: float | None) -> None:
        """:meth:`add_member` to ``task_id``'s waiter set
        (:meth:`aqueue.transports.base.Waiters.add_waiter`).

        Raises:
            BrokerConnectionError: the file cannot be opened or stays locked past busy_timeout.
        """
        await self.add_member(waiters_key(task_id), waiter, expires)

    async def members(self, key: str) -> list[str]:
        """See :meth:`aqueue.transports.base.Waiters.members` (one snapshot).

        Raises:
            BrokerConnectionError: the file cannot be opened.
        """

        def read(conn: sqlite3.Connection) -> list[str]:
            with transaction(conn, "DEFERRED"):
                row = conn.execute(_GET_MEMBER_SET, (key,)).fetchone()
                if row is None or (row[1] is not None and row[1] <= time.time()):
                    return []
                rows = conn.execute("SELECT member FROM members WHERE key = ?", (key,))
                return [str(member) for (member,) in rows]

        return await self._db.call(read)

    async def lock(self, key: str, owner: str, ttl: float) -> str:
        """See :meth:`aqueue.transports.base.Locks.lock`: one ``BEGIN IMMEDIATE`` transaction,
        so concurrent calls from every process are serialised by SQLite.

        Raises:
            BrokerConnectionError: the file cannot be opened or stays locked past busy_timeout.
        """

        def take(conn: sqlite3.Connection) -> str:
            with transaction(conn):
                now = time.time()
                row = conn.execute(
                    "SELECT owner, expires_at FROM locks WHERE key = ?", (key,)
                ).fetchone()
                if row is not None and row[0] != owner and row[1] > now:
                    return str(row[0])
                conn.execute(_PUT_LOCK, (key, owner, now + ttl))
                return owner

        return await self._db.call(take)

    async def unlock(self, key: str, owner: str) -> bool:
        """See :meth:`aqueue.transports.base.Locks.unlock` (one statement, atomic).

        Raises:
            BrokerConnectionError: the file cannot be opened or stays locked past busy_timeout.
        """

        def free(conn: sqlite3.Connection) -> bool:
            with transaction(conn):
                gone = conn.execute(
                    "DELETE FROM locks WHERE key = ? AND owner = ? AND expires_at > ?",
                    (key, owner, time.time()),
                )
            return gone.rowcount > 0

        return await self._db.call(free)

    def _notify(self, rows: Sequence[tuple[str, bytes]], seq: int) -> None:
        puts: list[tuple[_Watcher, bytes]] = []
        with self._lock:
            for task_id, data in rows:
                for watcher in self._watchers.of(task_id):
                    # Every record of a local store is delivered (>=: one id twice in a batch).
                    if seq >= watcher.seq:
                        watcher.last, watcher.seq = data, seq
                        puts.append((watcher, data))
        for watcher, data in puts:
            watcher.put(data)

    async def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        """Read the records of ``task_ids`` (one snapshot); ``None`` where missing or expired.

        Raises:
            BrokerConnectionError: the file cannot be opened.
        """
        if not task_ids:
            return []
        ids = list(dict.fromkeys(task_ids))
        found = await self._db.call(lambda conn: _read(conn, ids))
        return [found.get(task_id) for task_id in task_ids]

    async def delete(self, task_ids: Sequence[str]) -> None:
        """Delete the records of ``task_ids`` in one transaction; missing ids are ignored.

        Raises:
            BrokerConnectionError: the file cannot be opened or stays locked past busy_timeout.
        """
        if not task_ids:
            return
        ids = list(dict.fromkeys(task_ids))

        def remove(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                for part in chunks(ids):
                    conn.execute(
                        f"DELETE FROM results WHERE task_id IN ({placeholders(len(part))})", part
                    )

        await self._db.call(remove)

    async def add_member(self, key: str, member: str, expires: float | None) -> int:
        """Add ``member`` to set ``key`` and return the set's size, in one ``BEGIN IMMEDIATE``
        transaction: concurrent calls from any number of processes are serialised by SQLite.

        An expired set restarts empty. The size is kept in ``member_sets`` and bumped only when
        ``INSERT OR IGNORE`` added a row, so a call costs the same for the 10,000th member.

        Args:
            key: the set's name.
            member: the element to add.
            expires: seconds until the set may be deleted, or ``None`` to keep its deadline.

        Raises:
            BrokerConnectionError: the file cannot be opened or stays locked past busy_timeout.
        """

        def add(conn: sqlite3.Connection) -> int:
            with transaction(conn):
                now = time.time()
                row = conn.execute(_GET_MEMBER_SET, (key,)).fetchone()
                if row is not None and row[1] is not None and row[1] <= now:
                    conn.execute("DELETE FROM members WHERE key = ?", (key,))
                    row = None
                size, until = (0, None) if row is None else (int(row[0]), row[1])
                inserted = conn.execute(
                    "INSERT OR IGNORE INTO members (key, member) VALUES (?, ?)", (key, member)
                )
                size += inserted.rowcount
                if expires is not None:
                    until = now + expires
                conn.execute(_PUT_MEMBER_SET, (key, size, until))
            return size

        return await self._db.call(add)

    @contextlib.asynccontextmanager
    async def watch(self, task_id: str) -> AsyncIterator[asyncio.Queue[bytes]]:
        """Subscribe to records stored for ``task_id``; yields the queue they are put on, until
        :meth:`close` ends it (see :class:`.fanout.SubscriberQueue`).

        See the module docstring for what is delivered across processes.

        Raises:
            BrokerConnectionError: the file cannot be opened.
        """
        with self._watchers.holding(task_id, _Watcher(asyncio.get_running_loop())) as watcher:
            seq, current = await self._db.call(lambda conn: self._read_one(conn, task_id))
            with self._lock:
                if seq > watcher.seq:  # no newer local store was delivered meanwhile
                    watcher.last, watcher.seq = current, seq
                watcher.ready = True
                self._subscribed += 1
                if self._poller is None or self._poller.done():
                    self._poller = asyncio.create_task(self._poll_loop())
            yield watcher.queue

    def _read_one(self, conn: sqlite3.Connection, task_id: str) -> tuple[int, bytes | None]:
        self._seq += 1
        return self._seq, _read(conn, [task_id]).get(task_id)

    async def _poll_loop(self) -> None:
        """Deliver other processes' stores to this instance's watchers until none remain."""
        data_version: int | None = None
        subscribed = -1
        while True:
            with self._lock:
                ids = [tid for tid, ws in self._watchers.items() if any(w.ready for w in ws)]
                if not self._watchers:
                    if self._poller is asyncio.current_task():
                        self._poller = None
                    return
                # A new subscriber's record may have changed in the same commit we last saw.
                known = data_version if self._subscribed == subscribed else None
                now_subscribed = self._subscribed
            if ids:
                try:
                    poll = await self._db.call(functools.partial(self._poll, ids=ids, known=known))
                except BrokerError as exc:
                    log.warning("polling SQLite results in %r failed: %s", self.path, exc)
                    data_version = None
                except Exception:
                    # A bug, or a row no check foresaw: this one poller serves every watched
                    # id of this backend, so it logs and polls again rather than end.
                    log.exception("polling SQLite results in %r failed", self.path)
                    data_version = None
                    await asyncio.sleep(_POLL_ERROR_PAUSE)
                else:
                    if poll is not None:
                        data_version, subscribed = poll.data_version, now_subscribed
                        self._deliver(poll)
            await asyncio.sleep(_POLL_INTERVAL)

    def _poll(self, conn: sqlite3.Connection, ids: list[str], known: int | None) -> _Poll | None:
        """Read the watched records, unless no other connection committed since ``known``."""
        # Read before the records: a commit after this bumps the next value, so none is missed.
        data_version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        if data_version == known:
            return None
        self._seq += 1
        return _Poll(data_version, self._seq, _read(conn, ids))

    def _deliver(self, poll: _Poll) -> None:
        puts: list[tuple[_Watcher, bytes]] = []
        with self._lock:
            for task_id, data in poll.found.items():
                for watcher in self._watchers.of(task_id):
                    if watcher.ready and poll.seq > watcher.seq and data != watcher.last:
                        watcher.last, watcher.seq = data, poll.seq
                        puts.append((watcher, data))
        for watcher, data in puts:
            watcher.put(data)


def _read(conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, bytes]:
    """The unexpired records of ``ids``, read in one snapshot (runs in the database thread)."""
    now = time.time()
    found: dict[str, bytes] = {}
    # More than one statement needs a transaction to see one consistent snapshot.
    with transaction(conn, "DEFERRED") if len(ids) > CHUNK else contextlib.nullcontext():
        for part in chunks(ids):
            rows = conn.execute(
                f"SELECT task_id, data FROM results WHERE task_id IN ({placeholders(len(part))})"
                f" AND {_UNEXPIRED}",
                (*part, now),
            )
            found.update((task_id, _record(data)) for task_id, data in rows)
    return found


def _record(data: object) -> bytes:
    """A ``results.data`` column as bytes: text as UTF-8 (a row written by hand, as
    sqlite3's shell stores it); anything else as its ``repr``, which decodes as no record, so
    that only its own waiter meets the error (a ``DecodeError``), not every other one."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8", "surrogateescape")
    return repr(data).encode()


def _waited(conn: sqlite3.Connection, ids: Sequence[str], now: float) -> list[str]:
    """Those of ``ids`` whose waiter set has members (runs in the database thread)."""
    names = {waiters_key(task_id): task_id for task_id in ids}
    found: list[str] = []
    for part in chunks(list(names)):
        rows = conn.execute(
            f"SELECT key FROM member_sets WHERE key IN ({placeholders(len(part))})"
            f" AND size > 0 AND {_UNEXPIRED}",
            (*part, now),
        )
        found.extend(names[key] for (key,) in rows)
    return found
