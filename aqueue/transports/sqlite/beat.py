"""The beat store of ``sqlite://`` result backends: three tables in the results file."""

from __future__ import annotations

import sqlite3
import time

from aqueue.transports.base import Claim, Snapshot
from aqueue.transports.beat_rows import UnreadableRows
from aqueue.transports.sqlite.connection import SQLiteConnection, transaction
from aqueue.transports.sqlite.role import SQLiteRole

__all__ = ["SQLiteStore"]


_CLAIM_UPSERT = (
    "INSERT INTO beat_claims (app, name, tick, done, token, expires_at) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (app, name, tick) DO UPDATE SET"
    " done = excluded.done, token = excluded.token, expires_at = excluded.expires_at"
)

# The last tick only rises; one that is not an integer (a row beat did not write, which load
# leaves out) is overwritten: SQLite's max() would keep a TEXT or BLOB value, or NULL, forever.
_LAST_RAISE = (
    "INSERT INTO beat_last (app, name, tick) VALUES (?, ?, ?)"
    " ON CONFLICT (app, name) DO UPDATE SET tick = CASE WHEN typeof(tick) = 'integer'"
    " THEN max(tick, excluded.tick) ELSE excluded.tick END"
)


class SQLiteStore(SQLiteRole):
    """The store of ``sqlite://`` backends: three tables in the results file, over the
    transport's connection (and thread). Every claim is one ``BEGIN IMMEDIATE`` transaction,
    so processes sharing the file claim one at a time."""

    _PURGE_EVERY = 60.0  # seconds between deletions of expired claims

    def __init__(self, url: str, namespace: str, db: SQLiteConnection | None = None) -> None:
        """Check the URL; nothing is opened yet.

        Raises:
            ConfigurationError: not a usable SQLite file URL.
        """
        super().__init__(url, "beat store", db)
        self._ns = namespace
        self._purged = 0.0  # touched only in the database thread
        self._rows = UnreadableRows(f"sqlite beat store of app {namespace!r}")

    async def close(self) -> None:
        """Close the connection."""
        await self._close_db()

    async def load(self) -> Snapshot:
        """Read the entries and last ticks in one snapshot; a row beat did not write (a TEXT
        entry, a last tick that is not an integer) is left out and logged once."""

        def read(conn: sqlite3.Connection) -> tuple[list[tuple[object, object]], ...]:
            with transaction(conn, "DEFERRED"):
                entries = conn.execute(
                    "SELECT name, data FROM beat_entries WHERE app = ?", (self._ns,)
                ).fetchall()
                last = conn.execute(
                    "SELECT name, tick FROM beat_last WHERE app = ?", (self._ns,)
                ).fetchall()
            return entries, last

        entries, last = await self._db.call(read)
        rows = self._rows
        return rows.snapshot(
            dict(row for n, d in entries if (row := rows.entry(n, d)) is not None),
            dict(tick for n, t in last if (tick := rows.last(n, t)) is not None),
        )

    async def put(self, name: str, data: bytes) -> None:
        """Upsert the entry."""

        def write(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute(
                    "INSERT INTO beat_entries (app, name, data) VALUES (?, ?, ?)"
                    " ON CONFLICT (app, name) DO UPDATE SET data = excluded.data",
                    (self._ns, name, data),
                )

        await self._db.call(write)

    async def remove(self, name: str) -> bool:
        """Delete the entry and its last tick in one transaction."""

        def delete(conn: sqlite3.Connection) -> bool:
            with transaction(conn):
                gone = conn.execute(
                    "DELETE FROM beat_entries WHERE app = ? AND name = ?", (self._ns, name)
                ).rowcount
                conn.execute("DELETE FROM beat_last WHERE app = ? AND name = ?", (self._ns, name))
            return gone > 0

        return await self._db.call(delete)

    async def claim(self, name: str, tick: int, token: str, lease: float) -> Claim:
        """Read and, if free, take the claim in one write transaction."""

        def take(conn: sqlite3.Connection) -> Claim:
            with transaction(conn):
                now = time.time()
                if now - self._purged >= self._PURGE_EVERY:
                    self._purged = now
                    conn.execute("DELETE FROM beat_claims WHERE expires_at <= ?", (now,))
                row = conn.execute(
                    "SELECT done, token, expires_at FROM beat_claims"
                    " WHERE app = ? AND name = ? AND tick = ?",
                    (self._ns, name, tick),
                ).fetchone()
                if row is None or row[2] <= now:
                    conn.execute(_CLAIM_UPSERT, (self._ns, name, tick, 0, token, now + lease))
                    return Claim.OWN
            if row[1] == token:
                return Claim.OWN
            return Claim.DONE if row[0] else Claim.PENDING

        return await self._db.call(take)

    async def confirm(self, name: str, tick: int, token: str, keep: float) -> None:
        """Mark done and raise the last tick in one transaction."""

        def mark(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute(_CLAIM_UPSERT, (self._ns, name, tick, 1, token, time.time() + keep))
                conn.execute(_LAST_RAISE, (self._ns, name, tick))

        await self._db.call(mark)
