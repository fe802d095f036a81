"""One SQLite connection driven from asyncio through its own thread (shared by broker and backend).

sqlite3 blocks, so every statement runs in a single dedicated worker thread per
:class:`SQLiteConnection`; the event loop only awaits futures. One thread also means one
connection and strictly ordered jobs, so no locking is needed inside a process: SQLite's own
file locks (WAL mode, ``busy_timeout``, ``BEGIN IMMEDIATE`` for every write) order the processes.

Needs SQLite 3.24 or newer (``INSERT ... ON CONFLICT DO UPDATE``); ``RETURNING`` is not used, so
older system libraries linked into Python 3.11 still work.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Generic, TypeVar, cast

from aqueue.exceptions import BrokerConnectionError, BrokerError, ConfigurationError

__all__ = [
    "SQLiteConnection",
    "as_bytes",
    "chunks",
    "placeholders",
    "sqlite_path",
    "to_bytes",
    "transaction",
]

T = TypeVar("T")

log = logging.getLogger("aqueue.sqlite")

#: How long (seconds) a statement waits for another process's write lock before failing.
BUSY_TIMEOUT = 5.0

#: Ids per ``IN (...)`` list: well under SQLITE_MAX_VARIABLE_NUMBER (999 before 3.32).
CHUNK = 500

_MIN_VERSION = (3, 24, 0)


def sqlite_path(url: str) -> str:
    """The absolute file path named by a ``sqlite:///relative.db`` or ``sqlite:////abs.db`` URL.

    A relative path is resolved against the current directory now, so a later ``chdir`` does not
    move the database.

    Raises:
        ConfigurationError: not a ``sqlite://`` URL, no path, a NUL character in it, or
            ``:memory:`` (which other processes cannot share: use ``memory://`` for a single
            process).
    """
    scheme, sep, rest = url.partition("://")
    if scheme.lower() != "sqlite" or not sep:
        raise ConfigurationError(f"{url!r} is not a sqlite:// URL: use sqlite:///path/to/file.db")
    if "\x00" in rest:  # no file has one; sqlite3 would raise ValueError on every operation
        raise ConfigurationError(f"{url!r}: a file path cannot contain a NUL character")
    if ":memory:" in rest or "mode=memory" in rest:
        raise ConfigurationError(
            f"{url!r}: an in-memory SQLite database cannot be shared by a worker and its "
            f"producers; use memory:// for one process or sqlite:///path/to/file.db"
        )
    # sqlite:///x.db -> rest "/x.db" (relative x.db); sqlite:////abs/x.db -> rest "//abs/x.db".
    if not rest.startswith("/") or not rest[1:]:
        raise ConfigurationError(
            f"{url!r} names no file: use sqlite:///relative.db or sqlite:////absolute/path.db"
        )
    return os.path.abspath(rest[1:])


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    """Split ``items`` into slices of at most ``size`` (for ``IN (?, ?, ...)`` lists)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def placeholders(n: int) -> str:
    """``"?, ?, ?"`` with ``n`` parameters."""
    return ", ".join("?" * n)


def as_bytes(value: object) -> bytes | None:
    """A column meant to hold bytes, as bytes: text (which the sqlite3 shell stores for a
    quoted string) as UTF-8; ``None`` for anything else (a number, NULL)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return None


def to_bytes(value: object) -> bytes:
    """Like :func:`as_bytes`, but anything else as its text form (``b"12"``): for rows that
    are handed over as they are (dead letters, control data), where a wrong type written by
    another tool must not make the whole read fail."""
    data = as_bytes(value)
    return str(value).encode("utf-8", "surrogateescape") if data is None else data


@contextmanager
def transaction(conn: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[None]:
    """Run the block in one transaction: committed on success, rolled back on any error.

    Writes use ``IMMEDIATE`` so the write lock is taken (waiting up to ``busy_timeout``) before
    anything is read: a deferred transaction that upgrades to a writer can fail at once with
    SQLITE_BUSY in WAL mode instead of waiting.
    """
    conn.execute(f"BEGIN {mode}")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # Some errors (SQLITE_FULL, IOERR) have already rolled back; a failed COMMIT has not.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _to_wal(conn: sqlite3.Connection) -> str:
    """Put the database in WAL mode (it stays so, in the file); the journal mode it is in after.

    The change needs an exclusive lock. While another connection holds a write lock (another
    process opening the same new database, writing its schema), SQLite answers ``SQLITE_BUSY``
    at once, without waiting through ``busy_timeout``: its busy handler does not run where
    waiting could deadlock. So the change is tried again, every 10 ms, for up to
    :data:`BUSY_TIMEOUT` seconds.

    Raises:
        sqlite3.OperationalError: still locked after that, or any other failure.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            busy = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() >= deadline:
                raise
        time.sleep(0.01)  # in the connection's own thread, not the event loop's


class _Session:
    """One opening of the database: its thread, its connection (used only in that thread)."""

    __slots__ = ("conn", "executor", "opening")

    def __init__(self, connect: Callable[[_Session], None]) -> None:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="aqueue-sqlite")
        self.conn: sqlite3.Connection | None = None
        # Jobs run in submission order, so every later call queues up behind the connect.
        self.opening: Future[None] = self.executor.submit(connect, self)


class _Handover(Generic[T]):
    """Whether the result of an undoable call reached its caller or was abandoned (the caller
    was cancelled first): decided once, under a lock, between the database thread and the
    event loop, so that the result is undone exactly when nobody received it."""

    __slots__ = ("_lock", "abandoned", "delivered", "result")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.abandoned = False
        self.delivered = False
        self.result: T | None = None

    def deliver(self, result: T) -> bool:
        """In the database thread: keep ``result``; False if the caller already gave up."""
        with self._lock:
            if self.abandoned:
                return False
            self.delivered, self.result = True, result
            return True

    def abandon(self) -> tuple[bool, T | None]:
        """In the event loop, when the caller is cancelled: whether a result was delivered
        (then it is the caller's to undo) and that result."""
        with self._lock:
            self.abandoned = True
            return self.delivered, self.result


class SQLiteConnection:
    """A SQLite connection owned by one worker thread; :meth:`call` runs a function there.

    Any operation opens the connection first if it is not open (before :meth:`open`, or after
    :meth:`close`). The thread is the only place the connection is touched, so an instance may
    be used from several event loops.
    """

    def __init__(self, url: str, role: str, schema: Sequence[str]) -> None:
        """Remember what to open; nothing touches the disk yet.

        Args:
            url: the ``sqlite://`` URL.
            role: ``"broker"`` or ``"result backend"``, for error messages.
            schema: ``CREATE ... IF NOT EXISTS`` statements run (in one transaction) on open.

        Raises:
            ConfigurationError: the URL is not a usable SQLite file URL.
        """
        self.url = url
        self.path = sqlite_path(url)
        self.role = role
        self._schema = tuple(schema)
        self._lock = threading.Lock()  # guards _session, not the database
        self._session: _Session | None = None

    async def open(self) -> None:
        """Open the database file (creating it and the schema if needed). Idempotent.

        Raises:
            ConfigurationError: the linked SQLite library is older than 3.24.
            BrokerConnectionError: the file cannot be opened or initialised (missing directory,
                no permission, not a database, locked for longer than ``busy_timeout``).
        """
        await self._open()

    async def _open(self) -> _Session:
        session = self._start()
        if session.opening.done() and session.opening.exception() is None:
            return session
        try:
            await asyncio.wrap_future(session.opening)
        except sqlite3.Error as exc:
            self._forget(session)
            raise BrokerConnectionError(
                f"cannot open the SQLite {self.role} database {self.path!r} "
                f"(from {self.url!r}): {exc}"
            ) from exc
        return session

    def _start(self) -> _Session:
        if sqlite3.sqlite_version_info < _MIN_VERSION:
            raise ConfigurationError(
                f"aqueue's SQLite {self.role} needs SQLite 3.24 or newer; Python is linked "
                f"with {sqlite3.sqlite_version}"
            )
        with self._lock:
            if self._session is None:
                self._session = _Session(self._connect)
            return self._session

    def _forget(self, session: _Session) -> None:
        """Drop a failed opening so that the next operation tries again."""
        with self._lock:
            if self._session is session:
                self._session = None
        session.executor.shutdown(wait=False)

    def _connect(self, session: _Session) -> None:
        folder = os.path.dirname(self.path)
        if not os.path.isdir(folder):  # SQLite would only say "unable to open database file"
            raise sqlite3.OperationalError(f"the directory {folder!r} does not exist")
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            mode = _to_wal(conn)
            if str(mode).lower() != "wal":
                # Network file systems refuse WAL; SQLite then stays correct, only slower.
                log.warning("SQLite %s %r is not in WAL mode (%s)", self.role, self.path, mode)
            conn.execute("PRAGMA synchronous = NORMAL")
            with transaction(conn):
                for statement in self._schema:
                    conn.execute(statement)
        except BaseException:
            conn.close()
            raise
        session.conn = conn

    @staticmethod
    def _disconnect(session: _Session) -> None:
        if session.conn is not None:
            session.conn.close()
            session.conn = None

    async def close(self) -> None:
        """Close the connection after the jobs already submitted have run. Idempotent."""
        with self._lock:
            session, self._session = self._session, None
        if session is None:
            return
        try:
            await asyncio.wrap_future(session.executor.submit(self._disconnect, session))
        finally:
            session.executor.shutdown(wait=False)

    aclose = close  # the name every transport's shared client closes by

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` in the database thread and return its result.

        Raises:
            BrokerConnectionError: the database cannot be opened, or is locked for too long.
            BrokerError: SQLite rejected a statement for another reason.
        """
        return await self._await(await self._submit(fn))

    async def call_undoable(
        self, fn: Callable[[sqlite3.Connection], T], undo: Callable[[sqlite3.Connection, T], None]
    ) -> T:
        """Like :meth:`call`, but if the caller is cancelled while ``fn`` runs, undo its effect.

        The thread cannot be interrupted, so ``fn`` completes anyway; ``undo(connection, result)``
        then runs in the database thread so that nothing ``fn`` took is lost (``fetch``: a
        worker cancelled mid-fetch gives its new leases straight back). A cancellation seen
        before ``fn`` ends is undone by the same job, so a :meth:`close` that follows the
        cancellation (queued behind it) cannot drop the undo; one seen after is undone at once.
        """
        handover: _Handover[T] = _Handover()

        def run(conn: sqlite3.Connection) -> T:
            result = fn(conn)
            if not handover.deliver(result):
                self._run_undo(conn, undo, result)  # its caller is gone: undo before any later job
            return result

        future = await self._submit(run)
        try:
            return await self._await(asyncio.shield(future))
        except asyncio.CancelledError:
            delivered, result = handover.abandon()
            if delivered:  # fn ended first: its result has not reached us yet, but is known
                self.submit_nowait(lambda conn: self._run_undo(conn, undo, cast(T, result)))
            raise

    def _run_undo(
        self, conn: sqlite3.Connection, undo: Callable[[sqlite3.Connection, T], None], result: T
    ) -> None:
        try:
            undo(conn, result)
        except Exception:
            log.warning("undoing a cancelled SQLite call failed on %r", self.path, exc_info=True)

    def submit_nowait(self, fn: Callable[[sqlite3.Connection], object]) -> None:
        """Queue ``fn(connection)`` in the database thread without waiting; failures are logged.

        Does nothing if the connection is closed.
        """
        with self._lock:
            session = self._session
            if session is not None:
                session.executor.submit(self._background, session, fn)

    def _background(self, session: _Session, fn: Callable[[sqlite3.Connection], object]) -> None:
        if session.conn is None:
            return
        try:
            fn(session.conn)
        except Exception:
            log.warning("background SQLite job failed on %r", self.path, exc_info=True)

    async def _submit(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        session = await self._open()
        try:
            return asyncio.get_running_loop().run_in_executor(
                session.executor, self._run, session, fn
            )
        except RuntimeError as exc:  # close() shut the executor down while we were opening
            raise BrokerConnectionError(f"the SQLite {self.role} {self.path!r} was closed") from exc

    @staticmethod
    def _run(session: _Session, fn: Callable[[sqlite3.Connection], T]) -> T:
        if session.conn is None:
            raise sqlite3.OperationalError("the connection was closed")
        return fn(session.conn)

    async def _await(self, awaitable: Awaitable[T]) -> T:
        # Callers catch by meaning: a locked or vanished file is a connection problem.
        try:
            return await awaitable
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError) as exc:
            raise BrokerError(f"SQLite {self.role} {self.path!r}: {exc}") from exc
        except sqlite3.Error as exc:
            raise BrokerConnectionError(f"SQLite {self.role} {self.path!r}: {exc}") from exc
