"""Beat passes with an injected clock (no waiting), entry checks, and the store contract."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from aqueue import Aqueue, crontab
from aqueue.beat import Beat
from aqueue.beat.entry import parse_entry, tick_task_id
from aqueue.beat.schedules import Interval
from aqueue.exceptions import ConfigurationError
from aqueue.message import Message, decode
from aqueue.transports.base import BeatStore, Claim
from aqueue.transports.memory.beat import MemoryStore

# A Saturday, 2024-03-09 00:00:03 UTC: three seconds past a 10-second tick.
T0 = datetime(2024, 3, 9, 0, 0, 3, tzinfo=UTC).timestamp()


class Clock:
    """A clock that moves only when told to."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Rig:
    """A memory-transport app, a fake clock, and a store that runs on the same clock."""

    def __init__(self, **settings: Any) -> None:
        self.app = Aqueue(f"beat-{uuid.uuid4().hex[:8]}", broker="memory://", **settings)
        self.queue = f"q-{uuid.uuid4().hex[:8]}"
        self.clock = Clock(T0)
        self.store = MemoryStore(clock=self.clock)

        @self.app.task(name="rig.ping")
        async def ping(n: int = 0) -> int:
            return n

    def every(self, seconds: float, name: str = "e", **spec: Any) -> None:
        options = {"queue": self.queue, **spec.pop("options", {})}
        self.app.conf.beat_schedule[name] = {
            "task": "rig.ping",
            "schedule": seconds,
            "options": options,
            **spec,
        }

    def beat(self, **kwargs: Any) -> Beat:
        return Beat(self.app, clock=self.clock, store=self.store, **kwargs)

    async def sent(self) -> list[Message]:
        """Every message published so far, taken off the queue."""
        broker = await self.app.broker()
        deliveries = await broker.fetch([self.queue], 1000, 0)
        await broker.ack(deliveries)
        return [decode(d.body) for d in deliveries]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    yield r
    await r.app.close()


def tick_of(message: Message, name: str, candidates: list[float]) -> float:
    """Which candidate tick ``message`` was sent for (task ids are derived from the tick)."""
    found = [t for t in candidates if tick_task_id(name, t) == message.id]
    assert len(found) == 1, f"{message.id} is not the id of any tick in {candidates}"
    return found[0]


def ten_second_ticks(start: float, end: float) -> list[float]:
    first = (int(start) // 10 + 1) * 10
    return [float(t) for t in range(first, int(end) + 1, 10)]


# -- passes ---------------------------------------------------------------------------------


async def test_first_pass_sends_nothing_then_one_message_per_tick(rig: Rig) -> None:
    rig.every(10)
    beat = rig.beat()
    delay = await beat.tick()
    assert await rig.sent() == []  # an entry seen for the first time starts from now
    assert delay == pytest.approx(1.0)  # capped by max_interval
    rig.clock.advance(7)  # 00:00:10, a tick
    await beat.tick()
    await beat.tick()  # the same instant again: nothing more
    [message] = await rig.sent()
    assert message.id == tick_task_id("e", T0 + 7)
    assert message.task == "rig.ping"
    assert message.queue == rig.queue
    rig.clock.advance(9.9)
    assert await beat.tick() == pytest.approx(0.1)  # wakes exactly at the next tick
    assert await rig.sent() == []
    rig.clock.advance(0.1)
    await beat.tick()
    assert [m.id for m in await rig.sent()] == [tick_task_id("e", T0 + 17)]
    assert beat.sent["e"] == 2


async def test_log_line_names_entry_tick_time_and_task_id(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.app.conf.timezone = "Asia/Shanghai"
    rig.every(10)
    beat = rig.beat()
    await beat.tick()
    rig.clock.advance(7)
    with caplog.at_level(logging.INFO, logger="aqueue.beat"):
        await beat.tick()
    [line] = [r.getMessage() for r in caplog.records if "sent" in r.getMessage()]
    task_id = tick_task_id("e", T0 + 7)
    assert (
        line == f"beat: sent 'e' (rig.ping) for tick 2024-03-09T08:00:10+08:00, task id {task_id}"
    )


async def test_two_beats_on_one_store_send_each_tick_once(rig: Rig) -> None:
    rig.every(10)
    beats = [rig.beat(), rig.beat()]
    for _ in range(30):  # 60 seconds, both beats looking every two seconds
        await asyncio.gather(*(b.tick() for b in beats))
        rig.clock.advance(2)
    messages = await rig.sent()
    expected = ten_second_ticks(T0, rig.clock.now - 2)
    assert sorted(tick_of(m, "e", expected) for m in messages) == expected
    assert beats[0].sent["e"] + beats[1].sent["e"] == len(expected) == 6


async def test_a_restarted_beat_catches_up_once_after_downtime(rig: Rig) -> None:
    rig.every(10)
    first = rig.beat()
    await first.tick()
    rig.clock.advance(7)
    await first.tick()  # sends 00:00:10
    assert len(await rig.sent()) == 1
    rig.clock.advance(95)  # down from 00:00:10 to 00:01:45: nine ticks missed
    second = rig.beat()  # a new process: only the store remembers
    await second.tick()
    [message] = await rig.sent()
    assert message.id == tick_task_id("e", T0 + 97)  # the latest missed tick, 00:01:40
    rig.clock.advance(5)
    await second.tick()
    assert [m.id for m in await rig.sent()] == [tick_task_id("e", T0 + 107)]  # back on time


async def test_catch_up_all_sends_every_missed_tick_oldest_first(rig: Rig) -> None:
    rig.every(10, catch_up="all")
    first = rig.beat()
    await first.tick()
    rig.clock.advance(7)
    await first.tick()
    await rig.sent()
    rig.clock.advance(45)  # 00:00:55: 20, 30, 40, 50 missed
    second = rig.beat()
    delays = [await second.tick() for _ in range(5)]
    assert delays[:3] == [0.0, 0.0, 0.0]  # more to send: the next pass at once
    messages = await rig.sent()
    expected = [T0 + 17, T0 + 27, T0 + 37, T0 + 47]
    assert [tick_of(m, "e", expected) for m in messages] == expected


async def test_catch_up_none_drops_missed_ticks(rig: Rig) -> None:
    rig.every(10, catch_up="none")
    first = rig.beat()
    await first.tick()
    rig.clock.advance(7)
    await first.tick()
    await rig.sent()
    rig.clock.advance(38)  # 00:00:48: the 00:00:40 tick is 8 s late, past ON_TIME
    second = rig.beat()
    await second.tick()
    assert await rig.sent() == []
    rig.clock.advance(2)
    await second.tick()  # 00:00:50, on time
    assert [m.id for m in await rig.sent()] == [tick_task_id("e", T0 + 47)]


async def test_expired_tick_is_skipped_and_expiry_counts_from_the_tick(rig: Rig) -> None:
    rig.every(10, options={"expires": 5})
    first = rig.beat()
    await first.tick()
    rig.clock.advance(7.5)  # half a second late
    await first.tick()
    [message] = await rig.sent()
    assert message.expires == T0 + 7 + 5  # the tick's time + 5 s, not the send time + 5 s
    rig.clock.advance(26)  # 00:00:36.5: the 00:00:30 tick is 6.5 s old, past its expiry
    second = rig.beat()
    await second.tick()
    assert await rig.sent() == []
    rig.clock.advance(3.5)
    await second.tick()
    assert len(await rig.sent()) == 1  # 00:00:40 is sent


async def test_a_tick_claimed_by_a_dead_beat_is_sent_after_its_lease(rig: Rig) -> None:
    rig.every(10)
    beat = rig.beat(lease=15.0)
    await beat.tick()
    rig.clock.advance(7)  # 00:00:10
    # Another beat claimed this tick, then died before publishing it.
    tick = rig.clock.now
    assert await rig.store.claim("e", round(tick * 1000), "dead-beat", 15.0) is Claim.OWN
    await beat.tick()
    assert await rig.sent() == []  # pending elsewhere: not sent yet
    rig.clock.advance(10)  # 00:00:20: the next tick goes out; 00:00:10 is still pending
    await beat.tick()
    assert [m.id for m in await rig.sent()] == [tick_task_id("e", tick + 10)]
    rig.clock.advance(5.1)  # 00:00:25.1: the dead claim's lease has run out
    await beat.tick()
    assert [m.id for m in await rig.sent()] == [tick_task_id("e", tick)]  # late, but once
    rig.clock.advance(1)
    await beat.tick()
    assert await rig.sent() == []


async def test_a_tick_whose_send_fails_is_sent_by_another_beat_after_the_lease(rig: Rig) -> None:
    rig.every(10)
    # The same app in a process whose broker cannot be reached (its directory is gone).
    down = Aqueue(rig.app.main, broker="sqlite:////nonexistent/aqueue.db", backend="memory://")
    down.conf.beat_schedule = rig.app.conf.beat_schedule
    broken = Beat(down, clock=rig.clock, store=rig.store, lease=10.0)
    good = rig.beat(lease=10.0)
    try:
        await broken.tick()
        await good.tick()
        rig.clock.advance(7)
        await broken.tick()  # claims 00:00:10 and fails to publish it
        await good.tick()  # sees the claim pending
        assert await rig.sent() == []
        assert broken.sent["e"] == 0
        rig.clock.advance(10.5)  # the broken beat's claim has run out
        await good.tick()
        messages = await rig.sent()
        expected = [T0 + 7, T0 + 17]
        assert sorted(tick_of(m, "e", expected) for m in messages) == expected
    finally:
        await down.close()


async def test_crontab_entry_in_shanghai(rig: Rig) -> None:
    rig.app.conf.timezone = "Asia/Shanghai"
    rig.app.conf.beat_schedule["monday"] = {
        "task": "rig.ping",
        "schedule": crontab(hour=7, minute=30, day_of_week=1),
        "args": (16,),
        "options": {"queue": rig.queue},
    }
    rig.clock.now = datetime(2024, 3, 10, 23, 29, 59, tzinfo=UTC).timestamp()  # Mon 07:29:59
    beat = rig.beat()
    await beat.tick()
    rig.clock.advance(1)
    await beat.tick()
    [message] = await rig.sent()
    assert message.id == tick_task_id("monday", rig.clock.now)
    assert message.args == (16,)
    rig.clock.advance(6 * 86400)
    assert await beat.tick() == pytest.approx(1.0)
    assert await rig.sent() == []


async def test_beat_schedule_entry_replaced_by_a_stored_one_with_the_same_name(rig: Rig) -> None:
    rig.every(10)
    beat = rig.beat()
    await beat.tick()
    rig.clock.advance(7)
    await beat.tick()
    assert len(await rig.sent()) == 1
    spec = {"task": "rig.ping", "schedule": 5, "args": [7], "options": {"queue": rig.queue}}
    entry = replace(parse_entry(rig.app, "e", spec), dynamic=True, since=rig.clock.now)
    await rig.store.put("e", entry.encode())
    rig.clock.advance(5)
    await beat.tick()
    [message] = await rig.sent()
    assert message.args == (7,)
    assert await rig.store.remove("e")
    rig.clock.advance(5)
    await beat.tick()  # beat_schedule's entry again
    [message] = await rig.sent()
    assert message.args == ()


# -- entries --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"schedule": 10}, "'task' must be"),
        ({"task": "rig.ping"}, "'schedule' is required"),
        ({"task": "rig.ping", "schedule": "*/5 * * * *"}, r"crontab\.from_string"),
        ({"task": "rig.ping", "schedule": 10, "shedule": 1}, "did you mean 'schedule'"),
        ({"task": "rig.ping", "schedule": 10, "args": "ab"}, "'args' must be"),
        ({"task": "rig.ping", "schedule": 10, "options": {"task_id": "x"}}, "set by beat"),
        ({"task": "rig.ping", "schedule": 10, "options": {"queeu": "x"}}, "did you mean 'queue'"),
        ({"task": "rig.ping", "schedule": 10, "options": {"priority": 12}}, "priority"),
        ({"task": "rig.ping", "schedule": 10, "catch_up": "some"}, "'catch_up' must be"),
        ({"task": "rig.ping", "schedule": 0}, "at least 0.001"),
    ],
)
def test_bad_entries_are_refused_with_the_reason(spec: dict[str, Any], error: str) -> None:
    app = Aqueue("bad", broker="memory://")
    app.conf.beat_schedule = {"nightly": spec}
    with pytest.raises(ConfigurationError, match=error) as info:
        Beat(app)
    assert "'nightly'" in str(info.value)


def test_add_periodic_task_writes_a_beat_schedule_entry() -> None:
    app = Aqueue("periodic", broker="memory://")

    @app.task(name="periodic.add")
    async def add(x: int, y: int) -> int:
        return x + y

    assert app.add_periodic_task(60.0, add.s(1, 1), name="each-minute") == "each-minute"
    name = app.add_periodic_task(timedelta(seconds=5), add.s(2).set(queue="io"), args=(9,))
    assert name == repr(add.s(2))  # Celery's default name
    assert app.conf.beat_schedule["each-minute"]["args"] == (1, 1)
    assert app.conf.beat_schedule[name]["args"] == (9, 2)  # prepended, as Signature.clone does
    assert app.conf.beat_schedule[name]["options"] == {"queue": "io"}
    beat = Beat(app)
    assert beat.static["each-minute"].schedule == Interval(60)
    assert beat.static[name].schedule == Interval(5)
    with pytest.raises(ConfigurationError, match="signature"):
        app.add_periodic_task(1, "periodic.add")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="unknown option"):
        app.add_periodic_task(1, add.s(1, 2), name="x", queu="io")


def test_beat_needs_a_result_backend() -> None:
    app = Aqueue("amqp-only", broker="amqp://guest@127.0.0.1//")
    with pytest.raises(ConfigurationError, match="result_backend"):
        Beat(app)


# -- the store contract, on every backend ---------------------------------------------------


@pytest.fixture
async def store(backend_url: str) -> AsyncIterator[BeatStore]:
    app = Aqueue(f"store-{uuid.uuid4().hex[:8]}", broker="memory://", backend=backend_url)
    s = await app.beat_store()
    yield s
    await app.close()


async def test_store_keeps_entries(store: BeatStore) -> None:
    assert (await store.load()).entries == {}
    await store.put("a", b"one")
    await store.put("b", b"two")
    await store.put("a", b"three")
    assert (await store.load()).entries == {"a": b"three", "b": b"two"}
    assert await store.remove("a")
    assert not await store.remove("a")
    assert (await store.load()).entries == {"b": b"two"}


async def test_store_claims_once_and_idempotently(store: BeatStore) -> None:
    assert await store.claim("e", 1000, "A", 30) is Claim.OWN
    assert await store.claim("e", 1000, "A", 30) is Claim.OWN  # a retried call still wins
    assert await store.claim("e", 1000, "B", 30) is Claim.PENDING
    await store.confirm("e", 1000, "A", 60)
    assert await store.claim("e", 1000, "B", 30) is Claim.DONE
    assert await store.claim("e", 1000, "A", 30) is Claim.OWN
    assert await store.claim("e", 2000, "B", 30) is Claim.OWN  # another tick
    assert await store.claim("f", 1000, "B", 30) is Claim.OWN  # another entry
    assert (await store.load()).last == {"e": 1000}


async def test_store_last_tick_only_rises_and_goes_with_the_entry(store: BeatStore) -> None:
    await store.put("e", b"x")
    await store.confirm("e", 3000, "A", 60)
    await store.confirm("e", 2000, "B", 60)
    assert (await store.load()).last == {"e": 3000}
    assert await store.remove("e")
    assert (await store.load()).last == {}


async def test_store_claim_concurrent_callers_one_wins(store: BeatStore) -> None:
    answers = await asyncio.gather(*(store.claim("e", 5000, f"T{i}", 30) for i in range(20)))
    assert answers.count(Claim.OWN) == 1
    assert answers.count(Claim.PENDING) == 19


async def test_store_pending_claim_runs_out_after_its_lease(store: BeatStore) -> None:
    assert await store.claim("e", 1000, "dead", 0.05) is Claim.OWN
    assert await store.claim("e", 1000, "B", 30) is Claim.PENDING
    await asyncio.sleep(0.1)  # the lease is real time on the store's clock: let it pass
    assert await store.claim("e", 1000, "B", 30) is Claim.OWN


async def test_store_is_per_app(backend_url: str) -> None:
    apps = [Aqueue(f"ns-{uuid.uuid4().hex[:8]}", broker="memory://", backend=backend_url)]
    apps.append(Aqueue(f"ns-{uuid.uuid4().hex[:8]}", broker="memory://", backend=backend_url))
    stores = [await a.beat_store() for a in apps]
    try:
        await stores[0].put("e", b"x")
        assert await stores[0].claim("e", 1, "A", 30) is Claim.OWN
        assert await stores[1].claim("e", 1, "B", 30) is Claim.OWN
        assert (await stores[1].load()).entries == {}
    finally:
        for a in apps:
            await a.close()


async def test_stored_entries_must_be_json_and_expire_in_seconds() -> None:
    app = Aqueue(f"stored-{uuid.uuid4().hex[:8]}", broker="memory://")
    with pytest.raises(ConfigurationError, match="JSON-serialisable"):
        await app.beat.add("x", task="t", schedule=10, args=(object(),))
    with pytest.raises(ConfigurationError, match="number of seconds"):
        await app.beat.add("x", task="t", schedule=10, options={"expires": datetime.now(UTC)})
    with pytest.raises(ConfigurationError, match="'catch_up' must be"):
        await app.beat.add("x", task="t", schedule=10, catch_up="twice")
    assert await app.beat.list() == []
    entry = await app.beat.add("x", task="t", schedule=crontab(minute=5), kwargs={"a": 1})
    [listed] = await app.beat.list()
    assert listed == entry
