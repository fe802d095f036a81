"""What only the SQLite broker and backend promise: several OS processes sharing one file.

The contract suites check the Protocols within one process; these tests start real child
processes (``python -c``) so that SQLite's file locking, not our in-process state, is what keeps
them correct.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

import aqueue
from aqueue.exceptions import BrokerConnectionError, ConfigurationError
from aqueue.transports.base import Outgoing
from aqueue.transports.sqlite.broker import SQLiteBroker
from aqueue.transports.sqlite.results import SQLiteBackend

pytestmark = pytest.mark.timeout(60)

_REPO = str(Path(aqueue.__file__).resolve().parents[1])

# Leases every message it can get (acking each batch) until none is ready, then prints the ids.
# It connects, says "ready" and waits for "go" so that both consumers start together.
_CONSUMER = """
import asyncio, json, sys
from aqueue.transports.sqlite.broker import SQLiteBroker

async def main(url, queue):
    broker = SQLiteBroker(url, {"visibility_timeout": 300})
    await broker.connect()
    print("ready", flush=True)
    sys.stdin.readline()
    ids = []
    while True:
        got = await broker.fetch([queue], 7, 0)
        if not got:
            break
        ids.extend(d.body.decode() for d in got)
        await broker.ack(got)
    await broker.close()
    print(json.dumps(ids), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""

# Leases one message, marks it running, and exits without acking it, as a crashed worker would.
_ABANDON = """
import asyncio, sys
from aqueue.transports.sqlite.broker import SQLiteBroker

async def main(url, queue):
    broker = SQLiteBroker(url, {"visibility_timeout": 0.5})
    got = await broker.fetch([queue], 1, 10)
    assert len(got) == 1 and got[0].delivery_count == 1, got
    assert await broker.start([(got[0], False)]) == [True]  # it was running when it "died"
    await broker.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""

_STORE = """
import asyncio, sys
from aqueue.transports.sqlite.results import SQLiteBackend

async def main(url, task_id, record):
    backend = SQLiteBackend(url)
    await backend.store([(task_id, record.encode())], None)
    await backend.close()

asyncio.run(main(*sys.argv[1:]))
"""

_ADD_MEMBERS = """
import asyncio, json, os, sys
from aqueue.transports.sqlite.results import SQLiteBackend

async def main(url, key, times):
    backend = SQLiteBackend(url)
    await backend.connect()
    print("ready", flush=True)
    sys.stdin.readline()
    values = [await backend.add_member(key, f"{os.getpid()}-{i}", 60) for i in range(int(times))]
    await backend.close()
    print(json.dumps(values), flush=True)

asyncio.run(main(*sys.argv[1:]))
"""


async def _spawn(script: str, *args: str) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [_REPO, os.environ.get("PYTHONPATH")])),
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def _finish(proc: asyncio.subprocess.Process) -> str:
    """Wait for ``proc``; return its stdout, failing the test with its stderr if it failed."""
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def _start_together(script: str, count: int, *args: str) -> list[asyncio.subprocess.Process]:
    """Start ``count`` children, wait until each prints "ready", then tell them all "go"."""
    procs = [await _spawn(script, *args) for _ in range(count)]
    for proc in procs:
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        if line != b"ready\n":
            for other in procs:  # the others wait for "go" forever
                if other.returncode is None:
                    other.kill()
            _, err = await proc.communicate()
            await asyncio.gather(*(other.communicate() for other in procs if other is not proc))
            pytest.fail(f"a child did not start: {line!r}\n{err.decode()}")
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    return procs


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'aqueue.db'}"


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_two_processes_lease_each_message_exactly_once(url: str) -> None:
    broker = SQLiteBroker(url, {})
    n = 2000
    await broker.publish([Outgoing("q", str(i).encode(), str(i)) for i in range(n)])

    procs = await _start_together(_CONSUMER, 2, url, "q")
    leased = [json.loads(await _finish(proc)) for proc in procs]

    everything = leased[0] + leased[1]
    assert len(everything) == len(set(everything)), "a message was leased twice"
    assert sorted(everything, key=int) == [str(i) for i in range(n)]
    assert all(leased), f"one consumer got nothing: {[len(ids) for ids in leased]}"
    assert await broker.fetch(["q"], 10, 0) == []
    await broker.close()
    with closing(sqlite3.connect(broker.path)) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 0


@pytest.mark.slow
async def test_lease_abandoned_by_dead_process_is_redelivered(url: str) -> None:
    broker = SQLiteBroker(url, {"visibility_timeout": 0.5})
    await broker.publish([Outgoing("q", b"work", "m1")])
    await _finish(await _spawn(_ABANDON, url, "q"))

    # The fetch waits for the lease to run out (its visible_at), no sleeping here.
    got = await broker.fetch(["q"], 1, 10)
    assert [(d.body, d.delivery_count) for d in got] == [(b"work", 2)]
    await broker.ack(got)
    await broker.close()


@pytest.mark.slow
async def test_watch_sees_a_store_from_another_process(url: str) -> None:
    backend = SQLiteBackend(url)
    await backend.store([("t1", b"PENDING")], None)
    async with backend.watch("t1") as updates:
        proc = await _spawn(_STORE, url, "t1", "SUCCESS")
        assert await asyncio.wait_for(updates.get(), 10) == b"SUCCESS"
        await _finish(proc)
    assert await backend.get_many(["t1"]) == [b"SUCCESS"]
    await backend.close()


@pytest.mark.slow
async def test_add_member_is_atomic_across_processes(url: str) -> None:
    # Two processes add 300 distinct members each (a chord's header completions): every
    # addition sees a distinct size, so exactly one of them sees the whole header.
    procs = await _start_together(_ADD_MEMBERS, 2, url, "chord", "300")
    values = [v for proc in procs for v in json.loads(await _finish(proc))]
    assert sorted(values) == list(range(1, 601))


@pytest.mark.parametrize(
    "make", [lambda url: SQLiteBroker(url, {}), SQLiteBackend], ids=["broker", "backend"]
)
async def test_opening_waits_while_another_connection_writes_a_new_database(
    tmp_path: Path, make: Callable[[str], SQLiteBroker | SQLiteBackend]
) -> None:
    """Putting a database in WAL mode needs an exclusive lock, and while another connection
    holds a write lock SQLite refuses at once rather than wait out busy_timeout: two processes
    opening one new database together failed this way. Opening now waits for the lock."""
    path = tmp_path / "aqueue.db"
    holding = 0.3
    with closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("CREATE TABLE other (x)")
        other.execute("BEGIN IMMEDIATE")  # the write lock, as another opener's schema holds it
        other.execute("INSERT INTO other VALUES (1)")
        loop = asyncio.get_running_loop()
        loop.call_later(holding, other.execute, "COMMIT")
        started = loop.time()
        store = make(f"sqlite:///{path}")
        try:
            await store.connect()
            assert loop.time() - started >= holding  # it waited for the lock, then opened
        finally:
            await store.close()
    with closing(sqlite3.connect(path)) as check:
        assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _broker(url: str) -> SQLiteBroker:
    return SQLiteBroker(url, {})


@pytest.mark.parametrize("make", [_broker, SQLiteBackend])
async def test_missing_directory_is_a_connection_error_naming_the_path(
    tmp_path: Path, make: Callable[[str], SQLiteBroker | SQLiteBackend]
) -> None:
    path = tmp_path / "no" / "such" / "dir" / "aqueue.db"
    store = make(f"sqlite:///{path}")
    with pytest.raises(BrokerConnectionError, match=str(path)):
        await store.connect()
    await store.close()


@pytest.mark.parametrize(
    "url", ["sqlite://:memory:", "sqlite:///:memory:", "sqlite://", "sqlite:///"]
)
def test_unshareable_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError):
        SQLiteBroker(url, {})
    with pytest.raises(ConfigurationError):
        SQLiteBackend(url)


async def test_relative_path_is_resolved_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    broker = SQLiteBroker("sqlite:///rel.db", {})
    monkeypatch.chdir("/")  # a later chdir must not move the database
    await broker.connect()
    await broker.close()
    assert broker.path == str(tmp_path / "rel.db")
    assert (tmp_path / "rel.db").exists()


async def test_absolute_url_and_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "abs.db"
    broker = SQLiteBroker(f"sqlite:///{path}", {})  # sqlite:/// + "/tmp/..." = four slashes
    await broker.connect()
    await broker.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# -- rows written by another tool (the sqlite3 shell) ----------------------------------------


def _write(url: str, sql: str, params: tuple[object, ...] = ()) -> None:
    """Run ``sql`` on the database file behind ``url`` with a connection of its own."""
    with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
        conn.execute(sql, params)
        conn.commit()


async def test_a_priority_that_is_no_number_runs_at_0_and_holds_nothing_up(url: str) -> None:
    """A message row whose priority is text (SQLite stores it in an integer column) is
    claimed as priority 0, and the messages beside it are delivered: before, the claim
    raised TypeError, on every fetch of the queue."""
    broker = SQLiteBroker(url)
    await broker.connect()
    try:
        await broker.publish([Outgoing("q", b"good", "id-good", 5, None)])
        _write(
            url,
            "INSERT INTO messages (queue, priority, body, visible_at, message_id)"
            " VALUES ('q', 'high', x'00', 0, 'id-text')",
        )
        got = await broker.fetch(["q"], 10, 0)
        assert [d.body for d in got] == [b"good", b"\x00"]  # 5 before 0
    finally:
        await broker.close()


async def test_a_visible_at_that_is_no_number_fails_no_fetch(url: str) -> None:
    """A message row whose visible_at is text is never due (SQLite sorts text after every
    number): a fetch of its queue returns what else is ready, and nothing when it is alone,
    instead of raising TypeError."""
    broker = SQLiteBroker(url)
    await broker.connect()
    try:
        _write(
            url,
            "INSERT INTO messages (queue, priority, body, visible_at, message_id)"
            " VALUES ('q', 0, x'00', 'soon', 'id-text')",
        )
        assert await broker.fetch(["q"], 10, 0) == []
        await broker.publish([Outgoing("q", b"good", "id-good", 0, None)])
        assert [d.body for d in await broker.fetch(["q"], 10, 0)] == [b"good"]
    finally:
        await broker.close()


async def test_a_result_row_of_text_stops_no_other_waiter(url: str) -> None:
    """A watched id whose results row holds text, not bytes, must not end the poller that
    brings every other process's stores to this backend's waiters: the good record still
    arrives, and the text one is handed over as its UTF-8 bytes."""
    waiting, storing = SQLiteBackend(url), SQLiteBackend(url)  # two processes' connections
    await waiting.connect()
    await storing.connect()
    try:
        async with waiting.watch("good") as good, waiting.watch("text") as text:
            _write(url, "INSERT INTO results (task_id, data) VALUES ('text', 'not bytes')")
            await storing.store([("good", b"record")], None)
            assert await asyncio.wait_for(good.get(), 10) == b"record"
            assert await asyncio.wait_for(text.get(), 10) == b"not bytes"
    finally:
        await waiting.close()
        await storing.close()
