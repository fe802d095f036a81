"""Edges of batch tasks, streamed results and soft deadlines on a real worker (SQLite and Redis):
a task run again under the same id (a retry) is a new run for the deadline watch and for the
stream's readers; calls of a batch each get their own outcome."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from aqueue import Aqueue, Request, Worker, signals
from aqueue import message as wire
from aqueue.transports import RunTracking
from aqueue.worker.deadline import DeadlineWatch
from aqueue.worker.stream import StreamWriter
from tests.conftest import _url, until
from tests.transport_choice import chosen_transports

pytestmark = pytest.mark.timeout(60)


@dataclass
class Edges:
    app: Aqueue
    gates: dict[int, asyncio.Event] = field(default_factory=dict)  # per run (retries): go on
    batches: list[list[int]] = field(default_factory=list)  # the args of each slow_batch run


#: Seconds a lease lasts in these tests: how soon the calls of a "dead" worker come back.
VISIBILITY = 1.0


def build(url: str, queue: str) -> Edges:
    app = Aqueue(
        "edges",
        broker=url,
        backend=url,
        task_default_queue=queue,
        broker_transport_options={"visibility_timeout": VISIBILITY},
    )
    edges = Edges(app)

    @app.task(name="edges.twice", bind=True)
    async def twice(self: Any) -> str:
        """Run 1 waits for its gate, then retries at once; run 2 waits for its own."""
        retries = self.request.retries
        await edges.gates.setdefault(retries, asyncio.Event()).wait()
        if retries == 0:
            raise self.retry(countdown=0)
        return "second run"

    @app.task(name="edges.restream", bind=True)
    async def restream(self: Any) -> AsyncIterator[str]:
        """Run 1 streams four items and retries; run 2 streams one item and fails."""
        if self.request.retries == 0:
            for item in ("a", "b", "c", "d"):
                yield item
            raise self.retry(countdown=0)
        yield "x"
        raise ValueError("the second run broke")

    @app.task(name="edges.breaks")
    async def breaks() -> AsyncIterator[str]:
        """Streams one item and fails."""
        yield "x"
        raise ValueError("the run broke")

    @app.task(name="edges.slow_batch", batch_size=50, batch_timeout=30.0)
    async def slow_batch(calls: list[Request]) -> list[int]:
        edges.batches.append([c.args[0] for c in calls])
        return [c.args[0] * 10 for c in calls]

    return edges


@pytest.fixture(params=chosen_transports(["sqlite", "redis"]))
async def edges(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Edges]:
    url = _url(request.param, request, tmp_path, "edges")
    built = build(url, f"q-{uuid.uuid4().hex[:12]}")
    yield built
    await built.app.close()


async def test_a_retried_run_past_its_soft_deadline_is_reported_again(edges: Edges) -> None:
    # The watch is driven by hand (no task has a deadline: the worker runs none of its own),
    # so that nothing looks between the two runs of the same id. One runner: the retry starts
    # once the first run is over.
    for retries in (0, 1):
        edges.gates[retries] = asyncio.Event()
    async with Worker(edges.app, concurrency=1, shutdown_timeout=5) as worker:
        executor = worker.executor
        assert executor is not None
        watch = DeadlineWatch(executor, default=0.01)
        r = await edges.app.tasks["edges.twice"].delay()

        async def running(retries: int) -> bool:
            request = executor.active.get(r.id)
            return (
                request is not None
                and request.retries == retries
                and r.id in executor.terminable.started
            )

        await until(lambda: running(0), 20, "the first run")
        [(first, _, _)] = watch.overdue(time.time() + 1)
        assert first.retries == 0
        edges.gates[0].set()
        await until(lambda: running(1), 20, "the second run (the retry)")
        found = watch.overdue(time.time() + 1)
        assert [(request.id, request.retries) for request, _, _ in found] == [(r.id, 1)]
        assert watch.overdue(time.time() + 2) == []  # once per run
        edges.gates[1].set()
        assert await r.get(timeout=20) == "second run"


async def test_a_late_reader_of_a_retried_stream_gets_only_the_last_runs_items(
    edges: Edges,
) -> None:
    async with Worker(edges.app, concurrency=2, shutdown_timeout=5):
        r = await edges.app.tasks["edges.restream"].delay()
        with pytest.raises(ValueError, match="the second run broke"):
            await r.get(timeout=20)
    got: list[str] = []
    with pytest.raises(ValueError, match="the second run broke"):
        async for item in edges.app.AsyncResult(r.id).stream(timeout=10):
            got.append(item)
    assert got == ["x"]  # not run 1's "b", "c", "d", still stored under their keys


async def test_calls_of_a_batch_that_died_with_its_worker_run_again_at_once(edges: Edges) -> None:
    # A "worker" that dies while running a batch of four calls: they were marked as running,
    # so each comes back as a suspect, which runs alone (one suspect at a time). A suspect
    # call must not wait batch_timeout (30 s) for calls that cannot join it.
    app = edges.app
    handles = await app.tasks["edges.slow_batch"].delay_many([(i,) for i in range(4)])
    broker = await app.broker()
    assert isinstance(broker, RunTracking)
    held = await broker.fetch([app.conf.task_default_queue], 4, 5)
    assert len(held) == 4
    assert await broker.start([(d, False) for d in held]) == [True] * 4
    await asyncio.sleep(VISIBILITY + 0.2)  # its leases run out
    async with Worker(app, concurrency=4, shutdown_timeout=5):
        values = await asyncio.wait_for(asyncio.gather(*(r.get() for r in handles)), 10)
    assert values == [0, 10, 20, 30]
    assert sorted(edges.batches) == [[0], [1], [2], [3]]  # each call once, each suspect alone


async def test_a_late_reader_of_a_stream_rerun_after_its_worker_died_gets_only_its_items(
    edges: Edges,
) -> None:
    # A "worker" that dies after streaming four items (stored as its worker stores them); the
    # run after it streams one item and fails.
    app = edges.app
    r = await app.tasks["edges.breaks"].delay()
    broker, backend = await app.broker(), await app.result_backend()
    assert isinstance(broker, RunTracking)
    [held] = await broker.fetch([app.conf.task_default_queue], 1, 5)
    assert await broker.start([(held, False)]) == [True]
    msg = wire.decode(held.body, frozenset(app.conf.accept_content))
    writer = StreamWriter(backend, msg, app.conf.result_serializer, None, None)
    for item in ("a", "b", "c", "d"):
        await writer(item)
    await asyncio.sleep(VISIBILITY + 0.2)  # its lease runs out
    async with Worker(app, concurrency=2, shutdown_timeout=5):
        with pytest.raises(ValueError, match="the run broke"):
            await r.get(timeout=20)
    got: list[str] = []
    with pytest.raises(ValueError, match="the run broke"):
        async for item in app.AsyncResult(r.id).stream(timeout=10):
            got.append(item)
    assert got == ["x"]  # not "b", "c", "d": the dead run's, still stored under their keys


async def test_a_retry_running_while_its_first_run_ends_stays_active(
    edges: Edges, clean_signals: None
) -> None:
    """A run publishes its retry, which another runner may start before the first run has
    left ``executor.active``: the first run leaving must not take the retry's entry with it
    (``inspect active`` and the deadline watch read it)."""
    for retries in (0, 1):
        edges.gates[retries] = asyncio.Event()
    async with Worker(edges.app, concurrency=2, shutdown_timeout=5) as worker:
        executor = worker.executor
        assert executor is not None
        r = await edges.app.tasks["edges.twice"].delay()

        async def running(retries: int) -> bool:
            request = executor.active.get(r.id)
            return request is not None and request.retries == retries

        @signals.task_retry.connect
        async def hold(**_: Any) -> None:
            # Sent by the first run after its retry is published, before it leaves.
            await until(lambda: running(1), 20, "the retry started")

        await until(lambda: running(0), 20, "the first run")
        edges.gates[0].set()
        await until(lambda: _done(executor), 20, "the first run left (after the retry started)")
        assert await running(1), "the retry's entry went with the first run"
        edges.gates[1].set()
        assert await r.get(timeout=20) == "second run"


async def _done(executor: Any) -> bool:
    return bool(executor.done >= 1)
