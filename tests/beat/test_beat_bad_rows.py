"""Rows in the beat store that beat did not write: each is skipped and logged once, and every
other entry keeps firing."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from aqueue import Aqueue
from aqueue.beat import Beat
from aqueue.beat.entry import parse_entry, tick_task_id
from aqueue.message import decode
from aqueue.transports.base import BeatStore
from aqueue.transports.memory.beat import MemoryStore
from aqueue.transports.redis.beat import RedisStore
from aqueue.transports.sqlite.beat import SQLiteStore
from tests.beat.test_beat_scheduler import T0, Clock

pytestmark = pytest.mark.timeout(60)


class Rig:
    """An app on the memory broker keeping beat's state on a real SQLite or Redis backend."""

    def __init__(self, backend: str) -> None:
        self.app = Aqueue(f"rows-{uuid.uuid4().hex[:8]}", broker="memory://", backend=backend)
        self.queue = f"q-{uuid.uuid4().hex[:8]}"
        self.clock = Clock(T0)

    def every(self, name: str, seconds: float, **spec: Any) -> None:
        self.app.conf.beat_schedule[name] = {
            "task": "rows.ping",
            "schedule": seconds,
            "options": {"queue": self.queue},
            **spec,
        }

    async def store(self) -> BeatStore:
        return await self.app.beat_store()

    def beat(self, store: BeatStore) -> Beat:
        return Beat(self.app, clock=self.clock, store=store)

    async def sent(self) -> list[str]:
        """The task ids published so far, taken off the queue."""
        broker = await self.app.broker()
        deliveries = await broker.fetch([self.queue], 1000, 0)
        await broker.ack(deliveries)
        return [decode(d.body).id for d in deliveries]


@pytest.fixture(params=["sqlite", "redis"])
async def rig(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Rig]:
    if request.param == "sqlite":
        backend = f"sqlite:///{tmp_path}/results.db"
    else:
        backend = f"{request.getfixturevalue('redis_server')}/0"
    r = Rig(backend)
    yield r
    await r.app.close()


async def write_raw(store: BeatStore, table: str, name: object, value: object) -> None:
    """Write a row as another program might: ``table`` is ``entries`` or ``last``."""
    if isinstance(store, SQLiteStore):
        column = "data" if table == "entries" else "tick"
        sql = f"INSERT OR REPLACE INTO beat_{table} (app, name, {column}) VALUES (?, ?, ?)"
        await store._db.call(lambda conn: conn.execute(sql, (store._ns, name, value)))
    else:
        assert isinstance(store, RedisStore)
        client = await store._connection()
        keys = store._keys
        key = keys.beat_entries(store._ns) if table == "entries" else keys.beat_last(store._ns)
        await client.hset(key, name, value)  # type: ignore[arg-type]


def unreadable_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "skipping unreadable" in r.message]


async def test_store_leaves_unreadable_rows_out_and_logs_each_once(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    store = await rig.store()
    await store.put("good", b"data")
    await store.confirm("good", 5000, "A", 60)
    if isinstance(store, SQLiteStore):
        bad = [
            ("entries", "text-data", '{"task": "x"}'),  # TEXT, not the BLOB beat writes
            ("entries", b"\xff\xfe", b"{}"),  # a BLOB name that is not UTF-8
            ("last", "text-tick", "yesterday"),
            ("last", "real-tick", 1.5),
            ("last", "blob-tick", b"\xff"),
        ]
    else:
        bad = [
            ("entries", b"\xff\xfename", b"{}"),  # a field name that is not UTF-8
            ("last", "text-tick", b"yesterday"),
            ("last", "real-tick", b"1.5"),
            ("last", b"\xff", b"1000"),
        ]
    for table, name, value in bad:
        await write_raw(store, table, name, value)
    caplog.set_level(logging.ERROR, "aqueue.beat")
    for _ in range(3):
        snapshot = await store.load()
        assert snapshot.entries == {"good": b"data"}
        assert snapshot.last == {"good": 5000}
    lines = unreadable_lines(caplog)
    assert len(lines) == len(bad)  # once each, not once per load
    assert any("'text-tick'" in line and "'yesterday'" in line for line in lines)
    assert all(f"app {rig.app.main!r}" in line for line in lines)


async def test_confirm_overwrites_an_unreadable_last_tick(rig: Rig) -> None:
    store = await rig.store()
    for value in ("soon", b"\x00\x01", 9e99) if isinstance(store, SQLiteStore) else (b"soon",):
        await write_raw(store, "last", "e", value)
        await store.confirm("e", 7000, "A", 60)
        assert (await store.load()).last == {"e": 7000}


async def test_a_bad_row_does_not_stop_the_other_entries(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.every("good", 10)
    rig.every("lost", 10)  # its last tick becomes unreadable
    store = await rig.store()
    await write_raw(store, "last", "lost", b"\xff\xfe" if isinstance(store, RedisStore) else "x")
    await write_raw(store, "entries", "junk", b"\x00 not json")
    beat = rig.beat(store)
    caplog.set_level(logging.INFO, "aqueue.beat")
    await beat.tick()
    assert await rig.sent() == []  # both start from now
    rig.clock.now += 7  # 00:00:10
    await beat.tick()
    await beat.tick()
    tick = rig.clock.now
    assert sorted(await rig.sent()) == sorted(
        [tick_task_id("good", tick), tick_task_id("lost", tick)]
    )
    assert (await store.load()).last["lost"] == round(tick * 1000)  # the bad row is overwritten
    assert not [r for r in caplog.records if r.exc_info]  # no pass failed
    assert len(unreadable_lines(caplog)) == 1
    assert len([r for r in caplog.records if "'junk'" in r.message]) == 1


async def test_a_stored_entry_with_an_unreadable_last_tick_starts_from_now(rig: Rig) -> None:
    """Not from when it was added: that would send again every tick since then (catch_up
    "all"), whose claims are long gone."""
    store = await rig.store()
    spec = {"task": "rows.ping", "schedule": 10, "options": {"queue": rig.queue}}
    entry = parse_entry(rig.app, "s", {**spec, "catch_up": "all"}, dynamic=True)
    await store.put("s", replace(entry, since=T0 - 3600).encode())
    await write_raw(store, "last", "s", b"garbage" if isinstance(store, RedisStore) else "garbage")
    beat = rig.beat(store)
    await beat.tick()
    assert await rig.sent() == []
    rig.clock.now += 7
    await beat.tick()
    assert await rig.sent() == [tick_task_id("s", rig.clock.now)]


# -- stored entries whose JSON is not what app.beat.add writes ------------------------------


@pytest.fixture
async def memory_rig() -> AsyncIterator[tuple[Aqueue, str, Clock, MemoryStore]]:
    app = Aqueue(f"rows-{uuid.uuid4().hex[:8]}", broker="memory://")
    clock = Clock(T0)
    yield app, f"q-{uuid.uuid4().hex[:8]}", clock, MemoryStore(clock=clock)
    await app.close()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"since": "yesterday"}, "since"),
        ({"options": {"expires": "soon"}}, "expires"),
        ({"options": {"queu": "x"}}, "queu"),
        ({"kwarg": {"n": 1}}, "kwarg"),
        ({"args": "abc"}, "args"),
        ({"catch_up": "twice"}, "catch_up"),
        ({"schedule": {"every": "often"}}, "often"),
        ({"options": {"headers": 5}}, "headers must be a dict"),
        ({"options": {"countdown": "soon"}}, "soon"),
    ],
)
async def test_a_stored_entry_of_the_wrong_shape_is_skipped_and_logged_once(
    memory_rig: tuple[Aqueue, str, Clock, MemoryStore],
    caplog: pytest.LogCaptureFixture,
    change: dict[str, Any],
    reason: str,
) -> None:
    app, queue, clock, store = memory_rig
    spec = {"task": "rows.ping", "schedule": 10, "options": {"queue": queue}}
    app.conf.beat_schedule["good"] = spec
    good = replace(parse_entry(app, "bad", spec, dynamic=True), since=T0)
    data = orjson.loads(good.encode())
    await store.put("bad", orjson.dumps({**data, "options": {"queue": queue}, **change}))
    beat = Beat(app, clock=clock, store=store)
    caplog.set_level(logging.INFO, "aqueue.beat")
    for _ in range(3):
        await beat.tick()
        clock.now += 7
    broker = await app.broker()
    deliveries = await broker.fetch([queue], 1000, 0)
    assert [decode(d.body).id for d in deliveries] == [tick_task_id("good", T0 + 7)]
    about = [r for r in caplog.records if "'bad'" in r.getMessage()]
    assert len(about) == 1, [r.getMessage() for r in about]
    assert about[0].levelno == logging.ERROR
    assert reason in about[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info]


async def test_an_option_that_fails_only_when_publishing_drops_that_tick_not_the_entry(
    memory_rig: tuple[Aqueue, str, Clock, MemoryStore], caplog: pytest.LogCaptureFixture
) -> None:
    app, queue, clock, store = memory_rig
    app.conf.beat_schedule["bad"] = {
        "task": "rows.ping",
        "schedule": 10,
        "options": {"queue": queue, "retry_policy": 5},  # passes the entry checks
    }
    beat = Beat(app, clock=clock, store=store)
    caplog.set_level(logging.INFO, "aqueue.beat")
    for _ in range(4):  # 00:00:03, then the ticks 00:00:10, 00:00:20 and 00:00:30
        await beat.tick()
        clock.now += 10
    about = [r.getMessage() for r in caplog.records if "'bad'" in r.getMessage()]
    assert len(about) == 3, about  # one line per tick, not one per pass
    for line, second in zip(about, ("10", "20", "30"), strict=True):
        assert f"00:00:{second}+00:00 cannot be sent" in line
        assert "TypeError" in line
