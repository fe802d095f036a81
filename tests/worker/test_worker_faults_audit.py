"""The worker under result-backend and broker faults: a result the backend refuses fails only
its own task (never the other tasks finished in the same batch), a result too large for Redis
is failed and dead-lettered once instead of run again each visibility timeout, and a backend
that is away (for a moment, or for good) loses nothing."""

from __future__ import annotations

import asyncio
import logging
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from aqueue import Aqueue, Worker
from aqueue.exceptions import BrokerConnectionError, BrokerError, SerializationError
from aqueue.results.record import ResultRecord
from aqueue.transports import Delivery, Outgoing, ResultBackend
from aqueue.transports.memory.broker import MemoryBroker
from aqueue.transports.memory.results import MemoryBackend
from aqueue.worker import completer as completer_module
from aqueue.worker.completer import REFUSALS, Completer, NotStored
from tests.conftest import _start_redis, _stop
from tests.net import free_port

pytestmark = pytest.mark.timeout(60)

BAD = "BAD"  # a task returning this gets a result the wrapped backend refuses


def _refusing(backend: ResultBackend, error: type[Exception]) -> list[int]:
    """Make ``backend.store`` raise ``error`` for any call holding a record that contains
    :data:`BAD`; return the list of the sizes of its calls (how many records each)."""
    calls: list[int] = []
    store = backend.store

    async def refusing(items: Any, expires: float | None, reply_to: Any = None) -> None:
        calls.append(len(items))
        if any(BAD.encode() in record for _, record in items):
            raise error("the backend refuses that record")
        await store(items, expires, reply_to)

    backend.store = refusing  # type: ignore[method-assign]
    return calls


def _status(app: Aqueue, task_id: str, raw: bytes | None) -> str | None:
    if raw is None:
        return None
    return ResultRecord.decode(raw, app.accept_results, app.conf.signing, task_id).status


# -- the completer: one refused record in a batch ----------------------------------------------


async def _leased(broker: MemoryBroker, n: int) -> list[Delivery]:
    await broker.publish([Outgoing("q", b"m%d" % i, str(i)) for i in range(n)])
    return await broker.fetch(["q"], n, 1)


@pytest.mark.parametrize("error", [SerializationError, BrokerError, BrokerConnectionError])
async def test_a_record_the_backend_refuses_fails_only_its_own_caller(
    error: type[Exception],
) -> None:
    backend = MemoryBackend()
    broker = MemoryBroker()
    _refusing(backend, error)
    deliveries = await _leased(broker, 4)
    completer = Completer(broker, backend, 60)
    values = [b"a", b"b", BAD.encode(), b"c"]
    outcomes = await asyncio.gather(
        *(
            completer.finish([(str(i), value)], [d])
            for i, (value, d) in enumerate(zip(values, deliveries, strict=True))
        ),
        return_exceptions=True,
    )
    assert [o is True for o in outcomes] == [True, True, False, True]
    refused = outcomes[2]
    assert isinstance(refused, NotStored)
    assert isinstance(refused.reason, error)
    # A backend out of reach is a connection error still, as callers catch it.
    assert isinstance(refused, BrokerConnectionError) is (error is BrokerConnectionError)
    assert await backend.get_many(["0", "1", "2", "3"]) == [b"a", b"b", None, b"c"]
    # Only the refused record's message is still leased: delivered again, nothing lost.
    await broker.release(deliveries)
    [again] = await broker.fetch(["q"], 10, 0.05)
    assert again.body == b"m2"


async def test_a_backend_that_is_down_costs_one_more_call_not_one_per_caller() -> None:
    backend = MemoryBackend()
    broker = MemoryBroker()
    calls = _refusing(backend, BrokerConnectionError)
    deliveries = await _leased(broker, 5)
    completer = Completer(broker, backend, 60)
    outcomes = await asyncio.gather(
        *(completer.finish([(str(i), BAD.encode())], [d]) for i, d in enumerate(deliveries)),
        return_exceptions=True,
    )
    assert all(isinstance(o, BrokerConnectionError) for o in outcomes)
    # Each try: the batch, then the smallest alone (down, not one record); the callers try
    # again together, until the backend, answering reads, is taken to refuse these records.
    assert calls == [5, 1] * REFUSALS
    await broker.release(deliveries)
    assert len(await broker.fetch(["q"], 10, 0.05)) == 5  # none acked


# -- the worker: one refused result among tasks finishing together -----------------------------


def _gated_app(expected: int = 0) -> tuple[Aqueue, asyncio.Event, asyncio.Event]:
    """An app on a memory broker and backend whose ``audit.echo`` waits for the gate (the
    first event), then returns its argument: tasks let go together finish in one batch of
    the completer. The second event is set once ``expected`` of them are running."""
    url = f"memory://{uuid.uuid4().hex}"
    app = Aqueue("audit", broker=url, backend=url, task_default_queue=f"q-{uuid.uuid4().hex}")
    gate, arrived = asyncio.Event(), asyncio.Event()
    running: list[str] = []

    @app.task(name="audit.echo")
    async def echo(value: str) -> str:
        running.append(value)
        if len(running) == expected:
            arrived.set()
        await gate.wait()
        return value

    return app, gate, arrived


@pytest.mark.parametrize("error", [SerializationError, BrokerError])
async def test_a_result_the_backend_refuses_fails_only_its_task(error: type[Exception]) -> None:
    app, gate, arrived = _gated_app(expected=4)
    try:
        backend = await app.result_backend()
        calls = _refusing(backend, error)
        echo = app.tasks["audit.echo"]
        handles = [await echo.delay(v) for v in ["a", "b", BAD, "c"]]
        async with Worker(app, concurrency=8) as worker:
            await asyncio.wait_for(arrived.wait(), 10)
            gate.set()
            await asyncio.wait_for(worker.wait_processed(4), 10)
        assert calls[0] == 4  # they did finish in one batch
        raws = await backend.get_many([h.id for h in handles])
        states = [_status(app, h.id, raw) for h, raw in zip(handles, raws, strict=True)]
        # The others' results are stored and their messages acked, not dead-lettered; the
        # refused one is a FAILURE saying why, and dead-lettered once.
        assert states == ["SUCCESS", "SUCCESS", "FAILURE", "SUCCESS"]
        broker = await app.broker()
        [dead] = await broker.dead_letters(app.conf.task_default_queue, 100)
        assert "could not be stored" in dead.reason
        assert "refuses that record" in dead.reason
        assert await broker.fetch([app.conf.task_default_queue], 10, 0.05) == []
    finally:
        await app.close()


async def test_a_backend_away_for_a_moment_loses_nothing_and_fails_nothing() -> None:
    """The store fails once (a dropped connection): stored on the second try, acked, no
    FAILURE, no dead letter - and no wait for the visibility timeout."""
    app, gate, _ = _gated_app()
    gate.set()
    try:
        backend = await app.result_backend()
        store = backend.store
        failures = [BrokerConnectionError("connection reset")]

        async def flaky(items: Any, expires: float | None, reply_to: Any = None) -> None:
            if failures:
                raise failures.pop()
            await store(items, expires, reply_to)

        backend.store = flaky  # type: ignore[method-assign]
        handle = await app.tasks["audit.echo"].delay("x")
        async with Worker(app, concurrency=2) as worker:
            await asyncio.wait_for(worker.wait_processed(1), 10)
        assert await handle.get(timeout=5) == "x"
        broker = await app.broker()
        assert await broker.dead_letters(app.conf.task_default_queue, 10) == []
        assert await broker.fetch([app.conf.task_default_queue], 10, 0.05) == []
    finally:
        await app.close()


async def test_a_backend_that_is_down_holds_the_result_until_it_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing can be stored, nor read: no FAILURE, no dead letter; the result waits, its
    message leased (the lease renewed past the visibility timeout), and is stored and acked
    once the backend answers - the task runs once."""
    url = f"memory://{uuid.uuid4().hex}"
    app = Aqueue(
        "audit", broker=url, backend=url, task_default_queue=f"q-{uuid.uuid4().hex}",
        broker_transport_options={"visibility_timeout": 1.0},
    )  # fmt: skip
    runs: list[str] = []
    monkeypatch.setattr(completer_module, "STORE_BACKOFF", (0.05, 0.5))  # seconds

    @app.task(name="audit.once")
    async def once(value: str) -> str:
        runs.append(value)
        return value

    try:
        backend = await app.result_backend()
        store, get_many = backend.store, backend.get_many
        down = True
        tries: list[int] = []
        tried = asyncio.Event()  # set after enough tries to outlast a visibility timeout

        async def unreachable(items: Any, expires: float | None, reply_to: Any = None) -> None:
            if down:
                tries.append(len(items))
                if len(tries) == 2 * REFUSALS + 2:
                    tried.set()
                raise BrokerConnectionError("backend down")
            await store(items, expires, reply_to)

        async def unreadable(task_ids: Any) -> Any:
            if down:
                raise BrokerConnectionError("backend down")
            return await get_many(task_ids)

        backend.store = unreachable  # type: ignore[method-assign]
        backend.get_many = unreadable  # type: ignore[method-assign]
        handle = await once.delay("v")
        async with Worker(app, concurrency=2) as worker:
            await asyncio.wait_for(tried.wait(), 20)
            down = False
            assert worker.processed == 0  # still storing its result
            broker = await app.broker()
            assert await broker.dead_letters(app.conf.task_default_queue, 10) == []
            await asyncio.wait_for(worker.wait_processed(1), 10)
        assert runs == ["v"]  # not run again: its lease was kept
        assert await handle.get(timeout=5) == "v"
        assert await broker.fetch([app.conf.task_default_queue], 10, 0.05) == []  # acked
    finally:
        await app.close()


# -- a real Redis that refuses a result too large for it ----------------------------------------


@pytest.fixture(scope="module")
def small_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server that takes no argument larger than 1 MiB (``proto-max-bulk-len``): a
    larger result is refused (Redis closes the connection)."""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not on PATH"
    workdir: Path = tmp_path_factory.mktemp("small-redis")
    for _ in range(3):
        port = free_port()
        listen = ["--port", str(port), "--proto-max-bulk-len", "1mb"]
        proc = _start_redis(binary, port, workdir, workdir / "redis.log", listen=listen)
        if proc is not None:
            break
    else:
        pytest.fail("redis-server did not start")
    try:
        yield f"redis://127.0.0.1:{port}"
    finally:
        _stop(proc)


@pytest.fixture
async def redis_app(small_redis: str) -> AsyncIterator[Aqueue]:
    app = Aqueue(
        "audit", broker=small_redis, backend=small_redis,
        task_default_queue=f"q-{uuid.uuid4().hex}",
        broker_transport_options={"visibility_timeout": 2.0},
    )  # fmt: skip
    yield app
    await app.close()


async def test_a_result_too_large_for_redis_fails_once_instead_of_running_for_ever(
    redis_app: Aqueue,
) -> None:
    runs: list[int] = []

    @redis_app.task(name="audit.sized")
    async def sized(n: int) -> str:
        runs.append(n)
        return "x" * n

    big = 2 * 1024 * 1024
    handles = [await sized.delay(n) for n in (10, big, 20)]
    async with Worker(redis_app, concurrency=4) as worker:
        await asyncio.wait_for(worker.wait_processed(3), 20)
        backend = await redis_app.result_backend()
        raws = await backend.get_many([h.id for h in handles])
        states = [_status(redis_app, h.id, raw) for h, raw in zip(handles, raws, strict=True)]
        assert states == ["SUCCESS", "FAILURE", "SUCCESS"]
        with pytest.raises(BrokerError, match="could not be stored"):
            await handles[1].get(timeout=5)
        broker = await redis_app.broker()
        [dead] = await broker.dead_letters(redis_app.conf.task_default_queue, 10)
        assert f"{big}" in dead.reason or "bytes encoded" in dead.reason
    assert sorted(runs) == [10, 20, big]  # ran once: not again each visibility timeout


# -- the lifespan's shutdown letting out a BaseException ----------------------------------------


class LibraryAbort(BaseException):
    """A library's own exception deriving from BaseException, not Exception."""


async def _stray_cancel() -> None:
    # Cancel a helper task and await it without suppressing its CancelledError, which then
    # comes out of the caller's code while no cancellation of the caller was requested.
    helper = asyncio.ensure_future(asyncio.Event().wait())
    await asyncio.sleep(0)
    helper.cancel()
    await helper


async def _abort() -> None:
    raise LibraryAbort("closing the pool aborted")


@pytest.mark.parametrize("closing", [_stray_cancel, _abort], ids=["cancelled", "base-exception"])
async def test_a_lifespan_shutdown_raising_a_base_exception_still_stops_the_worker(
    closing: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aqueue.worker")
    url = f"memory://{uuid.uuid4().hex}"
    app = Aqueue("audit", broker=url, backend=url, task_default_queue=f"q-{uuid.uuid4().hex}")

    @app.worker_lifespan
    async def lifespan(worker: Worker) -> AsyncIterator[int]:
        yield 1
        await closing()

    try:
        worker = Worker(app, concurrency=2)
        running = asyncio.ensure_future(worker.run())
        await asyncio.wait_for(worker._ready.wait(), 10)
        await asyncio.wait_for(worker.stop(), 10)  # returns: the shutdown went to its end
        await asyncio.wait_for(running, 10)  # and run() with it
        assert all(helper.done() for helper in worker._helpers)  # no lease renewer left
        assert "error while running the worker lifespan's shutdown" in caplog.text
        assert "stopped (0 tasks processed)" in caplog.text
    finally:
        await app.close()


# -- the fetcher: the broker failing unexpectedly while a fetched batch is handed over --------


async def test_a_broker_error_while_handing_a_batch_over_does_not_strand_it(
    redis_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Marking the runs of a batch handed to idle runners raises something unexpected (not
    an aqueue error: a bug of the broker's): the batch still runs. It used to stay held for
    ever (leases renewed, never run, its prefetch slots taken), the fetcher restarted."""
    app = Aqueue(
        "audit", broker=redis_server, backend=redis_server,
        task_default_queue=f"q-{uuid.uuid4().hex}",
    )  # fmt: skip

    @app.task(name="audit.add")
    async def add(x: int, y: int) -> int:
        return x + y

    try:
        broker = await app.broker()
        start_written = broker.start_written  # type: ignore[attr-defined]
        raised: list[bool] = []

        async def once_broken(runs: Any, acks: Any = ()) -> Any:
            if not raised:
                raised.append(True)
                raise RuntimeError("the broker's own bug")
            return await start_written(runs, acks)

        async with Worker(app, concurrency=4) as worker:
            # A first task: once it is done, every runner waits for work (a runner goes back
            # to waiting in the same step as it finishes), so the fetcher marks what it hands
            # them itself.
            await add.delay(0, 0)
            await asyncio.wait_for(worker.wait_processed(1), 10)
            assert worker._idle == 4
            broker.start_written = once_broken  # type: ignore[attr-defined]
            handles = [await add.delay(i, 1) for i in range(3)]
            await asyncio.wait_for(worker.wait_processed(4), 10)
            assert [await h.get(timeout=5) for h in handles] == [1, 2, 3]
            assert raised == [True]
            assert worker.held() == []
        assert "marking the runs of" in caplog.text
    finally:
        await app.close()


# -- deferring a rate-limited message: the broker refusing the copy ----------------------------


def _rated_app(url: str) -> Aqueue:
    """An app whose ``audit.rated`` is rate-limited: a worker of concurrency 1 (prefetch 4,
    so at most 2 parked) defers the 3rd and 4th messages of one fetch."""
    app = Aqueue("audit", broker=url, backend=url, task_default_queue=f"q-{uuid.uuid4().hex}")

    @app.task(name="audit.rated", rate_limit="20/s")
    async def rated(n: int) -> int:
        return n

    return app


async def test_a_priority_the_broker_cannot_store_does_not_strand_a_deferred_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A message naming priority 2**64-1 (valid JSON, out of any range) is the one deferred:
    SQLite cannot store that number. It used to stay held for ever (never run, never
    dead-lettered, its lease renewed); it is now deferred at priority 0 and dead-lettered
    when it runs, as any message with a bad field."""
    app = _rated_app(f"sqlite:///{tmp_path / 'broker.db'}")
    queue = app.conf.task_default_queue
    try:
        rated = app.tasks["audit.rated"]
        handles = [await rated.delay(n) for n in range(3)]
        bad = f"bad-{uuid.uuid4().hex}"
        body = orjson.dumps({"id": bad, "task": "audit.rated", "args": [9], "priority": 2**64 - 1})
        broker = await app.broker()
        await broker.publish([Outgoing(queue, body, bad)])
        async with Worker(app, concurrency=1, prefetch_multiplier=4) as worker:
            await asyncio.wait_for(worker.wait_processed(4), 10)
            assert [await h.get(timeout=5) for h in handles] == [0, 1, 2]
            [dead] = await broker.dead_letters(queue, 10)
            assert "priority" in dead.reason
            assert worker.held() == []
        assert "could not defer" not in caplog.text  # bad input, no error of the broker's
    finally:
        await app.close()


async def test_a_broker_bug_while_deferring_keeps_the_message_here() -> None:
    """Publishing the deferred copy raises something unexpected: the message is kept and run
    here (logged), not stranded held for ever."""
    app = _rated_app(f"memory://{uuid.uuid4().hex}")
    try:
        rated = app.tasks["audit.rated"]
        handles = [await rated.delay(n) for n in range(4)]
        broker = await app.broker()

        async def broken(outgoing: Any) -> None:
            raise RuntimeError("the broker's own bug")

        broker.publish = broken  # type: ignore[method-assign]
        async with Worker(app, concurrency=1, prefetch_multiplier=4) as worker:
            await asyncio.wait_for(worker.wait_processed(4), 10)
            assert [await h.get(timeout=5) for h in handles] == [0, 1, 2, 3]
            assert worker.held() == []
    finally:
        await app.close()
