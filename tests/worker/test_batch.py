"""Batch tasks on a real worker: many queued calls in one invocation, each with its own result
and ack - on every transport (AMQP: RabbitMQ as broker, Redis for results)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from aqueue import Aqueue, Request, Worker
from aqueue.exceptions import ConfigurationError, TaskRevokedError
from aqueue.middleware import Middleware
from aqueue.transports.base import queue_admin
from tests.conftest import until

pytestmark = pytest.mark.timeout(120)


@dataclass
class Batched:
    app: Aqueue
    double: Any
    broken: Any
    short: Any
    slow_to_fill: Any
    sizes: list[int] = field(default_factory=list)  # the calls of each invocation of double
    ran: list[str | None] = field(default_factory=list)  # ids of the calls slow_to_fill ran


def build(url: str, queue: str, **settings: Any) -> Batched:
    backend = None if url.startswith("amqp") else url  # AMQP: $AQUEUE_RESULT_BACKEND (Redis)
    app = Aqueue("batch", broker=url, backend=backend, task_default_queue=queue, **settings)
    sizes: list[int] = []
    ran: list[str | None] = []

    @app.task(name="batch.double", batch_size=100, batch_timeout=1.0)
    async def double(calls: list[Request]) -> list[Any]:
        sizes.append(len(calls))
        return [
            c.args[0] * 2 if c.args[0] >= 0 else ValueError(f"negative: {c.args[0]}") for c in calls
        ]

    @app.task(name="batch.broken", batch_size=10, batch_timeout=0.2)
    def broken(calls: list[Request]) -> list[Any]:  # a plain function: run in a thread
        raise RuntimeError(f"the bulk insert of {len(calls)} rows failed")

    @app.task(name="batch.short", batch_size=10, batch_timeout=0.2)
    async def short(calls: list[Request]) -> list[Any]:
        return [1]

    @app.task(name="batch.slow_to_fill", batch_size=100, batch_timeout=3.0)
    async def slow_to_fill(calls: list[Request]) -> list[Any]:
        ran.extend(c.id for c in calls)
        return [c.args[0] for c in calls]

    return Batched(app, double, broken, short, slow_to_fill, sizes, ran)


@pytest.fixture
async def b(transport_url: str) -> AsyncIterator[Batched]:
    batched = build(transport_url, f"q-{uuid.uuid4().hex[:12]}")
    yield batched
    await batched.app.close()


async def test_ten_thousand_calls_run_in_at_most_101_invocations(b: Batched) -> None:
    async with Worker(b.app, concurrency=10, shutdown_timeout=5) as worker:
        assert worker.prefetch >= 2 * 100 + 10  # room for two full batches
        handles = await b.double.delay_many([(i,) for i in range(10_000)])
        values = await asyncio.gather(*(r.get(timeout=90) for r in handles))
        assert values == [2 * i for i in range(10_000)]  # each handle: its own call's result
        assert sum(b.sizes) == 10_000
        assert len(b.sizes) <= 101, b.sizes
        assert max(b.sizes) == 100
        await worker.wait_processed(10_000)
        assert worker.executor is not None and worker.executor.batches.invocations == len(b.sizes)
    [depth] = await queue_admin(await b.app.broker()).queue_depths([b.app.conf.task_default_queue])
    assert depth.waiting == 0 and not depth.unacked  # every call acked


async def test_an_exception_in_place_fails_that_call_alone(b: Batched) -> None:
    async with Worker(b.app, concurrency=10, shutdown_timeout=5):
        good, bad, other = await b.double.delay_many([(1,), (-1,), (3,)])
        assert await good.get(timeout=20) == 2
        with pytest.raises(ValueError, match="negative: -1"):
            await bad.get(timeout=20)
        assert await other.get(timeout=20) == 6
        assert b.sizes == [3]  # one invocation, after batch_timeout (not full)


async def test_a_raising_batch_fails_every_call_and_a_wrong_length_says_so(b: Batched) -> None:
    async with Worker(b.app, concurrency=10, shutdown_timeout=5):
        handles = await b.broken.delay_many([(i,) for i in range(4)])
        for r in handles:
            with pytest.raises(RuntimeError, match="bulk insert of 4 rows failed"):
                await r.get(timeout=20)
        short = await b.short.delay_many([(i,) for i in range(3)])
        for r in short:
            with pytest.raises(TypeError, match=r"one result per call \(3\).*a list of 1"):
                await r.get(timeout=20)


async def waiting(worker: Worker, count: int) -> None:
    """Until ``count`` calls wait in the worker's batches."""

    async def gathered() -> bool:
        return worker.executor is not None and worker.executor.batches.waiting() == count

    await until(gathered, 20, f"{count} calls waiting for their batch")


async def test_calls_waiting_for_their_batch_are_released_at_shutdown(b: Batched) -> None:
    queue = b.app.conf.task_default_queue
    handles = await b.slow_to_fill.delay_many([(i,) for i in range(5)])
    async with Worker(b.app, concurrency=10, shutdown_timeout=5) as worker:
        await waiting(worker, 5)
    assert b.ran == []  # stopped before the batch was due
    if not str(b.app.conf.broker_url).startswith("amqp"):  # RabbitMQ: its consumer holds them
        [depth] = await queue_admin(await b.app.broker()).queue_depths([queue])
        assert depth.waiting == 5  # handed back at once, not left to the visibility timeout
    async with Worker(b.app, concurrency=10, shutdown_timeout=5):
        assert [await r.get(timeout=20) for r in handles] == [0, 1, 2, 3, 4]


async def test_a_call_revoked_while_it_waits_is_not_run(b: Batched) -> None:
    if str(b.app.conf.broker_url).startswith("amqp"):
        pytest.skip("revocations need a control transport (Redis or SQLite, not RabbitMQ)")
    async with Worker(b.app, concurrency=10, shutdown_timeout=5) as worker:
        kept, revoked, other = await b.slow_to_fill.delay_many([(1,), (2,), (3,)])
        await waiting(worker, 3)
        await revoked.revoke()

        async def known() -> bool:
            return revoked.id in worker.revocations

        await until(known, 10, "the revocation reaching the worker")
        assert await kept.get(timeout=20) == 1 and await other.get(timeout=20) == 3
        with pytest.raises(TaskRevokedError):
            await revoked.get(timeout=20)
    assert sorted(b.ran) == sorted([kept.id, other.id])


class Seen(Middleware):
    """Records the calls of each run it wraps."""

    def __init__(self) -> None:
        self.runs: list[int] = []

    async def run(self, task: Any, request: Request, call_next: Any) -> Any:
        self.runs.append(len(request.args[0]))
        return await call_next()


async def test_the_middleware_wraps_the_one_invocation_and_unique_calls_unlock(
    b: Batched,
) -> None:
    seen = Seen()
    b.app.add_middleware(seen)
    async with Worker(b.app, concurrency=10, shutdown_timeout=5) as worker:
        first = await b.double.apply_async((5,), unique_key="row:5")
        again = await b.double.apply_async((5,), unique_key="row:5")  # while queued: its handle
        assert again.id == first.id
        assert await first.get(timeout=20) == 10
        await worker.wait_processed(1)  # finished: its lock freed
        later = await b.double.apply_async((5,), unique_key="row:5")  # unlocked once it ran
        assert later.id != first.id and await later.get(timeout=20) == 10
    assert seen.runs == [1, 1]  # one invocation per batch, the batch's request


async def test_eager_runs_a_call_as_a_batch_of_one() -> None:
    batched = build("memory://", "q", task_always_eager=True)
    assert await (await batched.double.delay(21)) == 42
    with pytest.raises(ValueError, match="negative"):
        await batched.double.delay(-1)
    assert batched.sizes == [1, 1]


def test_bad_batch_options_are_refused() -> None:
    app = Aqueue("bad", broker="memory://")
    with pytest.raises(ConfigurationError, match="batch_size must be a positive int"):
        app.task(name="b0", batch_size=0)(lambda calls: calls)
    with pytest.raises(ConfigurationError, match="batch_timeout must be seconds"):
        app.task(name="b1", batch_size=5, batch_timeout=0)(lambda calls: calls)

    async def gen(calls: list[Request]) -> AsyncIterator[int]:
        yield 1

    with pytest.raises(ConfigurationError, match="cannot be an async generator"):
        app.task(name="b2", batch_size=5)(gen)
