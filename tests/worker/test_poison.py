"""Poison accounting that blames the guilty (issue 13).

A message counts a delivery against itself only when it was *running* when its worker died;
what the worker had merely prefetched comes back without penalty. Messages that were running
come back as suspects; a worker runs one suspect at a time (most strikes first), and only a
death during that isolated run is a strike. ``task_max_deliveries`` caps strikes + 1.

The headline test runs real worker processes: one task that kills its worker among 300
innocent ones at ``-c 100``. Before the fix every one of the 300 was dead-lettered as poison.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis

from aqueue import Aqueue, Worker
from aqueue.transports import Delivery, Outgoing, RunTracking, broker_from_url
from aqueue.transports.memory.broker import MemoryBroker
from aqueue.worker.completer import Completer
from tests.apps import poison_tasks
from tests.workerproc import WorkerProcess

INNOCENT = 300
NAP = 0.2  # seconds each innocent task takes
VISIBILITY = 2.0  # seconds: how soon a dead worker's leases run out


@pytest.fixture(params=["redis", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "redis":
        return f"{request.getfixturevalue('redis_server')}/0"
    return f"sqlite:///{tmp_path}/poison.db"


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_one_crashing_task_among_300_innocent_ones(url: str) -> None:
    queue = f"q-{uuid.uuid4().hex[:12]}"
    producer = poison_tasks.build(url, queue, VISIBILITY)
    env = {
        "AQUEUE_BROKER_URL": url,
        "AQUEUE_POISON_QUEUE": queue,
        "AQUEUE_POISON_VISIBILITY": str(VISIBILITY),
    }
    nap, crash = producer.tasks["poison.nap"], producer.tasks["poison.crash"]
    innocents = [await nap.delay(i, NAP) for i in range(INNOCENT // 2)]
    poison = await crash.delay()  # in the middle: it starts while innocent ones run
    innocents += [await nap.delay(i, NAP) for i in range(INNOCENT // 2, INNOCENT)]

    async def everything() -> list[Any]:
        values = await asyncio.gather(*(r.get(timeout=200) for r in innocents))
        with pytest.raises(Exception, match="poison") as info:
            await poison.get(timeout=200)
        return [values, info.value]

    outcome = asyncio.ensure_future(everything())
    deaths = 0
    try:
        while not outcome.done():
            async with WorkerProcess("tests.apps.poison_tasks:app", ["-c", "100"], env) as worker:
                assert worker.proc is not None
                died = asyncio.ensure_future(worker.proc.wait())
                await asyncio.wait({outcome, died}, return_when=asyncio.FIRST_COMPLETED)
                deaths += died.done()
                died.cancel()
        values, error = outcome.result()
        assert values == list(range(INNOCENT))  # every innocent task succeeded
        assert "task_max_deliveries=5" in str(error)
        # It killed a worker once as a fresh message, then once per strike: 1 + 5.
        assert deaths == 6
        broker = await producer.broker()
        dead = await broker.dead_letters(queue, 1000)
        assert [d.body for d in dead if poison.id.encode() in d.body] == [d.body for d in dead]
        assert len(dead) == 1 and "poison" in dead[0].reason
    finally:
        outcome.cancel()
        await producer.close()


# -- in one process: the worker's side of the rule -------------------------------------------

RUNNING: list[str] = []  # suspects (names not starting with "fresh") running now
ORDER: list[str] = []  # the order tasks started in
PEAK = {"running": 0}  # the most suspects that ever ran at once


def suspects_app(queue: str) -> Aqueue:
    app = Aqueue(
        "suspects",
        broker="memory://",
        backend="memory://",
        task_default_queue=queue,
        broker_transport_options={"visibility_timeout": 0.3},
    )

    @app.task(name="suspects.record")
    async def record(name: str) -> str:
        ORDER.append(name)
        suspect = not name.startswith("fresh")
        if suspect:
            RUNNING.append(name)
            PEAK["running"] = max(PEAK["running"], len(RUNNING))
        await asyncio.sleep(0.05)
        if suspect:
            RUNNING.remove(name)
        return name

    return app


@pytest.fixture
async def suspects() -> AsyncIterator[Aqueue]:
    RUNNING.clear()
    ORDER.clear()
    PEAK["running"] = 0
    app = suspects_app(f"q-{uuid.uuid4().hex[:12]}")
    yield app
    await app.close()


async def test_suspects_run_one_at_a_time_most_struck_first(suspects: Aqueue) -> None:
    record = suspects.tasks["suspects.record"]
    results = [await record.delay(name) for name in ("a", "b", "c", "d")]
    fresh = [await record.delay(f"fresh{i}") for i in range(4)]
    broker = await suspects.broker()
    assert isinstance(broker, RunTracking)
    # A "worker" that dies running a, b, c, d (d alone, as its isolated suspect) and holds
    # the fresh ones unstarted.
    held = await broker.fetch([suspects.conf.task_default_queue], 8, 1)
    runs = [(d, d.body.count(b'"d"') > 0) for d in held if b"fresh" not in d.body]
    assert len(runs) == 4
    await broker.start(runs)
    await asyncio.sleep(0.35)  # the leases run out

    async with Worker(suspects, concurrency=8):
        assert await asyncio.gather(*(r.get(timeout=10) for r in results)) == ["a", "b", "c", "d"]
        await asyncio.gather(*(r.get(timeout=10) for r in fresh))

    suspect_order = [name for name in ORDER if not name.startswith("fresh")]
    assert suspect_order[0] == "d"  # the one with a strike first
    assert sorted(suspect_order) == ["a", "b", "c", "d"]
    assert PEAK["running"] == 1  # never two suspects at once (fresh ones ran beside them)


async def test_a_task_lost_to_another_worker_is_not_started(suspects: Aqueue) -> None:
    """A lease that ran out before its run began: the worker does not run it as well."""
    record = suspects.tasks["suspects.record"]
    r = await record.delay("once")
    broker = await suspects.broker()
    assert isinstance(broker, RunTracking)
    [stale] = await broker.fetch([suspects.conf.task_default_queue], 1, 1)
    await asyncio.sleep(0.35)
    async with Worker(suspects, concurrency=2):
        assert await r.get(timeout=10) == "once"
        assert await broker.start([(stale, False)]) == [False]
    assert ORDER == ["once"]


class CountingBroker(MemoryBroker):
    """The memory broker, counting its calls: ``(runs, acks)`` per start, deliveries per ack."""

    def __init__(self) -> None:
        super().__init__()
        self.starts: list[tuple[int, int]] = []
        self.acks: list[int] = []

    async def start(
        self, runs: Sequence[tuple[Delivery, bool]], acks: Sequence[Delivery] = ()
    ) -> list[bool]:
        self.starts.append((len(runs), len(acks)))
        return await super().start(runs, acks)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        self.acks.append(len(deliveries))
        await super().ack(deliveries)


async def test_marks_ride_with_the_acks() -> None:
    """Runners finishing together hand in their next runs with their acks: one broker call."""
    broker = CountingBroker()
    await broker.publish([Outgoing("q", b"%d" % i, str(i)) for i in range(200)])
    held = await broker.fetch(["q"], 200, 1)
    done, following = held[:100], held[100:]
    completer = Completer(broker, None, None)

    kept = await asyncio.gather(
        *(completer.finish((), [d], None, (n, False)) for d, n in zip(done, following, strict=True))
    )

    assert kept == [True] * 100
    assert broker.starts == [(100, 100)]
    assert broker.acks == [100]  # inside that start call, not a call of its own
    assert await broker.fetch(["q"], 200, 0) == []  # the other 100 still leased (running)


# -- Redis: an idle worker's runs are marked as the fetcher hands them out ----------------------


async def test_an_idle_workers_runs_are_marked_by_one_unawaited_write(redis_server: str) -> None:
    """What an idle worker fetches for idle runners is marked with one write, not waited on:
    no round trip of its own before the task starts (WrittenStarts)."""
    app = poison_tasks.build(f"{redis_server}/0", f"q-{uuid.uuid4().hex[:12]}", 30)
    nap = app.tasks["poison.nap"]
    broker = await app.broker()
    calls: list[tuple[str, int]] = []
    written, start = broker.start_written, broker.start  # type: ignore[attr-defined]

    async def counted_written(runs: Sequence[tuple[Delivery, bool]], acks: Any = ()) -> Any:
        calls.append(("written", len(runs)))
        return await written(runs, acks)

    async def counted_start(runs: Sequence[tuple[Delivery, bool]], acks: Any = ()) -> Any:
        calls.append(("start", len(runs)))
        return await start(runs, acks)

    broker.start_written, broker.start = counted_written, counted_start  # type: ignore[attr-defined]
    try:
        async with Worker(app, concurrency=4) as worker:
            for i in range(3):  # one at a time, each to an idle worker
                assert await (await nap.delay(i, 0)).get(timeout=10) == i
            await asyncio.wait_for(worker.wait_processed(3), 10)
        assert calls == [("written", 1)] * 3
    finally:
        await app.close()


async def _worker_env(url: str, queue: str) -> dict[str, str]:
    """A poison_tasks worker process's environment: a visibility timeout of 1 s. Redis's
    scripts are flushed first, as on a server the worker's scripts never ran on (or that
    restarted): a write it relies on must not need them loaded."""
    client = aioredis.Redis.from_url(url)
    try:
        await client.script_flush()
    finally:
        await client.aclose()
    return {
        "AQUEUE_BROKER_URL": url,
        "AQUEUE_POISON_QUEUE": queue,
        "AQUEUE_POISON_VISIBILITY": "1.0",
    }


async def test_a_worker_killed_by_a_run_marked_unawaited_blames_it(redis_server: str) -> None:
    """The write is made before the task starts, so a worker that dies at the task's first
    line still counts against the message (it comes back as a suspect)."""
    url, queue = f"{redis_server}/0", f"q-{uuid.uuid4().hex[:12]}"
    producer = poison_tasks.build(url, queue, 1.0)
    env = await _worker_env(url, queue)
    try:
        async with WorkerProcess("tests.apps.poison_tasks:app", ["-c", "4"], env) as worker:
            assert worker.proc is not None
            await producer.tasks["poison.crash"].delay()
            assert await asyncio.wait_for(worker.proc.wait(), 20) == 1
        broker = await producer.broker()
        [back] = await broker.fetch([queue], 1, 10)  # once the dead worker's lease ran out
        assert back.delivery_count == 2  # it was running: a suspect now
        await broker.ack([back])
    finally:
        await producer.close()


async def test_a_busy_runners_ack_and_next_mark_are_written_not_awaited(
    redis_server: str,
) -> None:
    """A runner that finishes a task with the next one waiting hands in its ack and the next
    run's mark, which go to Redis in one write once the result is stored: the runner waits
    for the store's round trip only, never for an answered start."""
    app = poison_tasks.build(f"{redis_server}/0", f"q-{uuid.uuid4().hex[:12]}", 30)
    nap = app.tasks["poison.nap"]
    broker = await app.broker()
    written_acks: list[int] = []
    answered: list[int] = []
    written, start = broker.start_written, broker.start  # type: ignore[attr-defined]

    async def counted_written(runs: Sequence[tuple[Delivery, bool]], acks: Any = ()) -> Any:
        written_acks.append(len(acks))
        return await written(runs, acks)

    async def counted_start(runs: Sequence[tuple[Delivery, bool]], acks: Any = ()) -> Any:
        answered.append(len(runs))
        return await start(runs, acks)

    broker.start_written, broker.start = counted_written, counted_start  # type: ignore[attr-defined]
    try:
        results = [await nap.delay(i, 0) for i in range(40)]  # waiting before the worker starts
        async with Worker(app, concurrency=2):
            assert [await r.get(timeout=10) for r in results] == list(range(40))
        assert answered == []
        assert sum(written_acks) > 0  # acks rode with the next runs' marks
        assert await broker.fetch([app.conf.task_default_queue], 10, 0.2) == []  # all acked
    finally:
        await app.close()


async def test_a_worker_killed_by_a_next_run_marked_with_an_unawaited_ack_blames_it(
    redis_server: str,
) -> None:
    """A runner's next run is marked by the write that acks its last one, before it starts:
    a worker that dies at that task's first line counts against it, and the acked one is
    not delivered again."""
    url, queue = f"{redis_server}/0", f"q-{uuid.uuid4().hex[:12]}"
    producer = poison_tasks.build(url, queue, 1.0)
    env = await _worker_env(url, queue)
    try:
        innocent = await producer.tasks["poison.nap"].delay(7, 0)
        await producer.tasks["poison.crash"].delay()  # both fetched at once by one runner
        async with WorkerProcess("tests.apps.poison_tasks:app", ["-c", "1"], env) as worker:
            assert worker.proc is not None
            assert await asyncio.wait_for(worker.proc.wait(), 20) == 1
        assert await innocent.get(timeout=5) == 7
        broker = await producer.broker()
        [back] = await broker.fetch([queue], 10, 10)  # once the dead worker's lease ran out
        assert back.delivery_count == 2  # it was running: a suspect now
        await broker.ack([back])
        assert await broker.fetch([queue], 10, 1.5) == []  # the innocent one stayed acked
    finally:
        await producer.close()


# -- RabbitMQ: what it allows ------------------------------------------------------------------


async def test_amqp_counts_every_return(rabbitmq_server: Any) -> None:
    """RabbitMQ cannot mark a held delivery as started: the AMQP broker is not RunTracking, and
    its strikes are its redeliveries (README, "Poison messages", says so)."""
    queue = f"q-{uuid.uuid4().hex[:12]}"
    holder = broker_from_url(rabbitmq_server.url, {})
    other = broker_from_url(rabbitmq_server.url, {})
    try:
        assert not isinstance(holder, RunTracking)
        await holder.publish([Outgoing(queue, b"held", "m1")])
        assert [d.strikes for d in await holder.fetch([queue], 1, 5)] == [0]
        await holder.close()  # "dies" holding it, started or not
        again = await other.fetch([queue], 1, 10)
        assert [(d.delivery_count, d.strikes) for d in again] == [(2, 1)]
        await other.ack(again)
    finally:
        await holder.close()
        await other.close()
