"""The completer under a failing result backend: a backend that stops answering without closing
the connection holds no result for ever (the store is bounded, then tried again on a fresh
connection), and a backend that is away for a while - a few tries, or many - turns no good
result into a FAILURE and a dead letter: the result is stored once it answers, the message
acked, and the task runs once."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from aqueue import Aqueue, Worker
from aqueue.exceptions import BrokerConnectionError
from aqueue.results.record import ResultRecord
from aqueue.transports import Delivery, Outgoing
from aqueue.transports.memory.broker import MemoryBroker
from aqueue.transports.redis.results import RedisBackend
from aqueue.worker import completer as completer_module
from aqueue.worker.completer import REFUSALS, Completer
from tests.transports.test_redis import BUSY_SCRIPT

pytestmark = pytest.mark.timeout(60)


class FreezingProxy:
    """A TCP proxy to a Redis server. :meth:`freeze` makes every connection open at that moment
    stop forwarding, both ways, without closing: the server stops answering them, as behind a
    network partition that leaves the connection half-open. Connections opened later forward.
    """

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.url = ""
        self.connections = 0
        self._frozen: list[asyncio.Event] = []  # one per connection: set when frozen
        self._closed = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []
        self._pipes: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"redis://127.0.0.1:{port}"

    def freeze(self) -> None:
        """Stop forwarding on every connection open now."""
        for frozen in self._frozen:
            frozen.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers += [writer, up_writer]
        frozen = asyncio.Event()
        self._frozen.append(frozen)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pipe = asyncio.create_task(self._pipe(source, sink, frozen))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, frozen: asyncio.Event
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                if frozen.is_set():
                    await self._closed.wait()  # what it read is never forwarded
                    return
                sink.write(data)
                await sink.drain()
        sink.close()

    async def close(self) -> None:
        self._closed.set()
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)


@pytest.fixture
async def proxy(redis_server: str) -> AsyncIterator[FreezingProxy]:
    proxy = FreezingProxy(redis_server)
    await proxy.start()
    yield proxy
    await proxy.close()


async def _leased(broker: MemoryBroker, n: int) -> list[Delivery]:
    await broker.publish([Outgoing("q", b"m%d" % i, str(i)) for i in range(n)])
    return await broker.fetch(["q"], n, 1)


def _status(app: Aqueue, task_id: str, raw: bytes | None) -> str | None:
    if raw is None:
        return None
    return ResultRecord.decode(raw, app.accept_results, app.conf.signing, task_id).status


# -- a backend that stops answering without closing the connection ------------------------------


async def test_a_store_the_backend_does_not_answer_is_tried_again_on_a_fresh_connection(
    redis_server: str, proxy: FreezingProxy
) -> None:
    """The pooled connection stops answering mid-store: the store gives up after the
    completer's timeout and is stored again on a new connection; the message is then acked."""
    backend = RedisBackend(proxy.url)
    direct = RedisBackend(redis_server)
    broker = MemoryBroker()
    try:
        await backend.connect()
        await direct.connect()
        prefix = uuid.uuid4().hex
        [first, second] = await _leased(broker, 2)
        completer = Completer(broker, backend, 60)
        completer.timeout = 0.5
        await completer.finish([(f"{prefix}-1", b"r1")], [first])  # a pooled connection now
        opened = proxy.connections
        proxy.freeze()
        await asyncio.wait_for(completer.finish([(f"{prefix}-2", b"r2")], [second]), 10)
        assert proxy.connections > opened  # tried again on a fresh connection
        assert await direct.get_many([f"{prefix}-1", f"{prefix}-2"]) == [b"r1", b"r2"]
        await broker.release([first, second])
        assert await broker.fetch(["q"], 10, 0.05) == []  # both acked
    finally:
        await backend.close()
        await direct.close()


async def test_a_worker_whose_backend_stops_answering_stores_and_acks_its_results(
    redis_server: str, proxy: FreezingProxy
) -> None:
    """A worker's result backend stops answering (a half-open connection): the tasks that
    finish meanwhile are stored once a fresh connection answers, acked, not dead-lettered, and
    run once - the worker does not stall for ever."""
    queue = f"q-{uuid.uuid4().hex}"
    conf: dict[str, Any] = {"task_default_queue": queue, "worker_shutdown_timeout": 2.0}
    client = Aqueue("faults", broker=redis_server, backend=redis_server, **conf)
    # The worker's backend goes through the proxy; a store may wait 1s for its answer.
    app = Aqueue(
        "faults", broker=redis_server, backend=proxy.url, broker_connection_timeout=1.0, **conf
    )
    runs: list[int] = []

    @app.task(name="faults.add")
    async def add(x: int, y: int) -> int:
        runs.append(x)
        return x + y

    send = client.signature("faults.add")  # sent from a client whose connections all answer
    try:
        async with Worker(app, concurrency=4) as worker:
            before = await send.delay(0, 1)
            await asyncio.wait_for(worker.wait_processed(1), 10)
            proxy.freeze()  # the worker's pooled backend connections stop answering
            handles = [await send.delay(i, 1) for i in range(1, 4)]
            await asyncio.wait_for(worker.wait_processed(4), 20)
        backend = await client.result_backend()
        ids = [h.id for h in (before, *handles)]
        raws = await backend.get_many(ids)
        assert [_status(client, i, raw) for i, raw in zip(ids, raws, strict=True)] == [
            "SUCCESS"
        ] * 4
        assert [await h.get(timeout=5) for h in handles] == [2, 3, 4]
        broker = await client.broker()
        assert await broker.dead_letters(queue, 10) == []
        assert await broker.fetch([queue], 10, 0.05) == []  # all acked
        assert sorted(runs) == [0, 1, 2, 3]  # each ran once
    finally:
        await app.close()
        await client.close()


# -- a backend away for a while: stored once it answers, never a FAILURE -----------------------


def _flaky(
    backend: Any, failures: int, reads_fail: bool, retried: asyncio.Event | None = None
) -> list[str]:
    """Make the first ``failures`` stores of ``backend`` (plain and with waiters) raise a
    connection error, as a dropped connection does; with ``reads_fail`` its reads fail too
    meanwhile (the backend is away, not refusing). Return the log of store tries ("failed" or
    "stored"); ``retried`` is set at the second try."""
    tries: list[str] = []

    def wrap(name: str) -> None:
        method = getattr(backend, name)

        async def flaky(*args: Any, **kwargs: Any) -> Any:
            if retried is not None and len(tries) == 1:
                retried.set()
            if tries.count("failed") < failures:
                tries.append("failed")
                raise BrokerConnectionError("connection reset by peer")
            tries.append("stored")
            return await method(*args, **kwargs)

        setattr(backend, name, flaky)

    wrap("store")
    wrap("store_waited")
    if reads_fail:
        get_many = backend.get_many

        async def reads(task_ids: Any) -> Any:
            if tries.count("failed") < failures:
                raise BrokerConnectionError("connection refused")
            return await get_many(task_ids)

        backend.get_many = reads
    return tries


@pytest.mark.parametrize(
    ("failures", "reads_fail"),
    [(2, False), (2 * REFUSALS - 1, False), (3 * REFUSALS + 1, True)],
    ids=["twice", "flapping", "away"],
)
async def test_a_backend_away_for_a_while_turns_no_good_result_into_a_failure(
    redis_server: str, failures: int, reads_fail: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stores of a task's result fail with connection errors a few times, then work: the
    result is stored as a SUCCESS, the message acked, nothing dead-lettered, the task run
    once. It used to be tried twice, then stored as a FAILURE (a small record the backend
    took) and dead-lettered."""
    queue = f"q-{uuid.uuid4().hex}"
    app = Aqueue("faults", broker=redis_server, backend=redis_server, task_default_queue=queue)
    runs: list[str] = []

    @app.task(name="faults.echo")
    async def echo(value: str) -> str:
        runs.append(value)
        return value

    monkeypatch.setattr(completer_module, "STORE_BACKOFF", (0.01, 0.05))  # seconds, not minutes
    try:
        backend = await app.result_backend()
        handle = await echo.delay("good")
        tries = _flaky(backend, failures, reads_fail)
        async with Worker(app, concurrency=2) as worker:
            await asyncio.wait_for(worker.wait_processed(1), 30)
        assert tries == ["failed"] * failures + ["stored"]
        [raw] = await backend.get_many([handle.id])
        assert _status(app, handle.id, raw) == "SUCCESS"
        assert await handle.get(timeout=5) == "good"
        broker = await app.broker()
        assert await broker.dead_letters(queue, 10) == []
        assert await broker.fetch([queue], 10, 0.05) == []  # acked
        assert runs == ["good"]
    finally:
        await app.close()


async def test_a_worker_stopping_while_its_results_wait_for_the_backend_hands_them_back() -> None:
    """The backend stays away: a stop does not wait for it for ever - the runner waiting to
    store is cancelled after the shutdown timeout and its message handed back, not acked."""
    url = f"memory://{uuid.uuid4().hex}"
    queue = f"q-{uuid.uuid4().hex}"
    app = Aqueue(
        "faults", broker=url, backend=url, task_default_queue=queue, worker_shutdown_timeout=0.5
    )

    @app.task(name="faults.echo")
    async def echo(value: str) -> str:
        return value

    try:
        backend = await app.result_backend()
        retried = asyncio.Event()
        _flaky(backend, 10**6, reads_fail=True, retried=retried)  # away for good
        await echo.delay("kept")
        worker = Worker(app, concurrency=2)
        running = asyncio.ensure_future(worker.run())
        await asyncio.wait_for(worker._ready.wait(), 10)
        await asyncio.wait_for(retried.wait(), 10)  # failed, tried again: waiting for it
        await asyncio.wait_for(worker.stop(), 10)
        await asyncio.wait_for(running, 10)
        broker = await app.broker()
        [again] = await broker.fetch([queue], 10, 0.5)  # handed back: delivered again
        assert b"kept" in again.body
        assert await broker.dead_letters(queue, 10) == []
    finally:
        await app.close()


# -- a backend busy for a while: BUSY is not a refusal ---------------------------------------------


async def test_a_backend_busy_running_a_script_holds_the_result_until_it_answers(
    redis_server: str,
) -> None:
    """Redis answers ``BUSY`` to every command while a script runs past its
    ``busy-reply-threshold``: the server is there but cannot serve now, as during a failover's
    ``MASTERDOWN`` or a cluster's ``TRYAGAIN``. The result is stored once the script ends; it is
    no refusal of the result, which would turn a good result into a FAILURE and a dead letter."""
    import redis.asyncio as aioredis

    backend = RedisBackend(redis_server)
    admin = aioredis.Redis.from_url(redis_server)
    holder = aioredis.Redis.from_url(redis_server)
    broker = MemoryBroker()
    threshold = (await admin.config_get("busy-reply-threshold"))["busy-reply-threshold"]
    busy: asyncio.Future[Any] | None = None
    try:
        await backend.connect()
        prefix = uuid.uuid4().hex
        [delivery] = await _leased(broker, 1)
        completer = Completer(broker, backend, 60)
        completer.timeout = 5
        await admin.config_set("busy-reply-threshold", 20)
        busy = asyncio.ensure_future(holder.eval(BUSY_SCRIPT, 0))
        for _ in range(200):  # until the server answers BUSY
            try:
                await admin.ping()
            except aioredis.ResponseError as exc:
                assert "BUSY" in str(exc)
                break
            await asyncio.sleep(0.005)
        else:
            raise AssertionError("setup: the script never made the server busy")
        await asyncio.wait_for(completer.finish([(f"{prefix}-1", b"r1")], [delivery]), 10)
        await busy
        assert await backend.get_many([f"{prefix}-1"]) == [b"r1"]
        await broker.release([delivery])
        assert await broker.fetch(["q"], 10, 0.05) == []  # acked
    finally:
        if busy is not None:
            await asyncio.gather(busy, return_exceptions=True)  # the server answers again
        await admin.config_set("busy-reply-threshold", threshold)
        await backend.close()
        await admin.aclose()
        await holder.aclose()
