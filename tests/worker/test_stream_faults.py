"""Streamed items under a failing result backend: a backend that stops answering without closing
the connection holds no streaming task (each item's store is bounded, then tried again on a fresh
connection), and a connection error while an item is stored neither fails the task nor loses the
item - every item is stored, in order, and a reader gets each once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aqueue import Aqueue, Worker, states
from aqueue.exceptions import BrokerConnectionError
from aqueue.message import Message
from aqueue.results.record import ResultRecord
from aqueue.results.stream import item_key
from aqueue.transports.redis.results import RedisBackend
from aqueue.worker import completer as completer_module
from aqueue.worker.completer import REFUSALS
from aqueue.worker.stream import StreamWriter
from tests.worker import test_completer_faults
from tests.worker.test_completer_faults import FreezingProxy

pytestmark = pytest.mark.timeout(60)


# The completer suite's proxy: it stops forwarding on the connections open when frozen.
frozen_proxy = test_completer_faults.proxy


def _decoded(app: Aqueue, task_id: str, raws: list[bytes | None]) -> list[ResultRecord | None]:
    accept, signing = app.accept_results, app.conf.signing
    return [None if r is None else ResultRecord.decode(r, accept, signing, task_id) for r in raws]


def _failing_item_stores(backend: Any, failures: int, reads_fail: bool) -> list[str]:
    """Make the first ``failures`` stores of streamed items on ``backend`` raise a connection
    error, as a dropped connection does (other stores go through); with ``reads_fail`` its
    reads fail too meanwhile (the backend is away, not refusing). Return the log of item store
    tries ("failed" or "stored")."""
    tries: list[str] = []
    store, get_many = backend.store, backend.get_many

    async def flaky(records: Any, *args: Any, **kwargs: Any) -> Any:
        if any(":stream:" in key for key, _ in records):
            if tries.count("failed") < failures:
                tries.append("failed")
                raise BrokerConnectionError("connection reset by peer")
            tries.append("stored")
        return await store(records, *args, **kwargs)

    async def reads(task_ids: Any) -> Any:
        if reads_fail and tries.count("failed") < failures:
            raise BrokerConnectionError("connection refused")
        return await get_many(task_ids)

    backend.store = flaky
    backend.get_many = reads
    return tries


# -- a backend that stops answering without closing the connection ------------------------------


async def test_an_item_store_the_backend_does_not_answer_is_tried_again_on_a_fresh_connection(
    redis_server: str, frozen_proxy: FreezingProxy
) -> None:
    """The pooled connection stops answering while an item is stored: the store gives up after
    the writer's timeout and stores the item again on a new connection; nothing is held for
    ever, and both items are stored under their keys."""
    backend = RedisBackend(frozen_proxy.url)
    direct = RedisBackend(redis_server)
    app = Aqueue("stream-faults")
    try:
        await backend.connect()
        await direct.connect()
        msg = Message(id=uuid.uuid4().hex, task="faults.stream")
        writer = StreamWriter(backend, msg, "json", None, 60, timeout=0.5)
        await writer("a")  # a pooled connection now
        opened = frozen_proxy.connections
        frozen_proxy.freeze()
        await asyncio.wait_for(writer("b"), 10)
        assert frozen_proxy.connections > opened  # tried again on a fresh connection
        assert writer.count == 2
        keys = [item_key(msg.id, 0), item_key(msg.id, 1), msg.id]
        recs = _decoded(app, msg.id, await direct.get_many(keys))
        assert [(r.result, r.streamed) if r else None for r in recs] == [
            ("a", 1),
            ("b", 2),
            ("b", 2),
        ]
    finally:
        await backend.close()
        await direct.close()
        await app.close()


async def test_a_streaming_task_whose_backend_stops_answering_stores_every_item(
    redis_server: str, frozen_proxy: FreezingProxy
) -> None:
    """A worker's result backend stops answering (a half-open connection) in the middle of a
    stream: the task is not held until its time limit - its items are stored once a fresh
    connection answers, it succeeds with all of them, and a reader gets each once, in order."""
    queue = f"q-{uuid.uuid4().hex}"
    conf: dict[str, Any] = {"task_default_queue": queue, "worker_shutdown_timeout": 2.0}
    client = Aqueue("faults", broker=redis_server, backend=redis_server, **conf)
    app = Aqueue(
        "faults", broker=redis_server, backend=frozen_proxy.url, broker_connection_timeout=1.0,
        **conf,
    )  # fmt: skip
    first_stored, go = asyncio.Event(), asyncio.Event()

    @app.task(name="faults.tokens")
    async def tokens() -> AsyncIterator[str]:
        yield "a"
        first_stored.set()  # resumed: "a" is stored
        await go.wait()
        for item in ("b", "c", "d"):
            yield item

    try:
        async with Worker(app, concurrency=2) as worker:
            handle = await client.signature("faults.tokens").delay()
            await asyncio.wait_for(first_stored.wait(), 10)
            reader = client.AsyncResult(handle.id).stream(timeout=20)
            got = [await asyncio.wait_for(anext(reader), 10)]
            frozen_proxy.freeze()  # the worker's pooled backend connections stop answering
            go.set()
            got += [item async for item in reader]
            await asyncio.wait_for(worker.wait_processed(1), 20)
        assert got == ["a", "b", "c", "d"]
        assert await handle.get(timeout=5) == ["a", "b", "c", "d"]
        backend = await client.result_backend()
        keys = [item_key(handle.id, i) for i in range(4)]
        recs = _decoded(client, handle.id, await backend.get_many(keys))
        assert [(r.result, r.streamed) if r else None for r in recs] == [
            ("a", 1),
            ("b", 2),
            ("c", 3),
            ("d", 4),
        ]
    finally:
        await app.close()
        await client.close()


# -- a backend away for a while: the items are stored once it answers, the task succeeds ---------


@pytest.mark.parametrize(
    ("failures", "reads_fail"),
    [(2, False), (3 * REFUSALS + 1, True)],
    ids=["twice", "away"],
)
async def test_a_connection_error_storing_an_item_neither_fails_the_task_nor_loses_the_item(
    redis_server: str, failures: int, reads_fail: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stores of a streamed item fail with connection errors a few times, then work: the
    item is stored (once a store works), the items after it follow in order, and the task
    succeeds with all of them; a reader gets each once. It used to fail the task with the
    connection error."""
    queue = f"q-{uuid.uuid4().hex}"
    app = Aqueue("faults", broker=redis_server, backend=redis_server, task_default_queue=queue)

    @app.task(name="faults.tokens")
    async def tokens() -> AsyncIterator[str]:
        for item in ("a", "b", "c"):
            yield item

    monkeypatch.setattr(completer_module, "STORE_BACKOFF", (0.01, 0.05))  # seconds, not minutes
    try:
        backend = await app.result_backend()
        handle = await tokens.delay()
        tries = _failing_item_stores(backend, failures, reads_fail)
        async with Worker(app, concurrency=2) as worker:
            await asyncio.wait_for(worker.wait_processed(1), 30)
        assert tries == ["failed"] * failures + ["stored"] * 3
        assert await handle.get(timeout=5) == ["a", "b", "c"]
        got = [item async for item in app.AsyncResult(handle.id).stream(timeout=5)]
        assert got == ["a", "b", "c"]
        keys = [item_key(handle.id, i) for i in range(3)]
        recs = _decoded(app, handle.id, await backend.get_many(keys))
        assert [r.result if r else None for r in recs] == ["a", "b", "c"]
        broker = await app.broker()
        assert await broker.dead_letters(queue, 10) == []
    finally:
        await app.close()


async def test_an_item_the_backend_refuses_fails_the_task_instead_of_holding_it(
    redis_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every store of an item fails with a connection error while the backend answers reads
    (Redis closes the connection on a value past ``proto-max-bulk-len``): the item is taken as
    refused after a few tries, and the task fails with the error - it is not held for ever."""
    queue = f"q-{uuid.uuid4().hex}"
    app = Aqueue("faults", broker=redis_server, backend=redis_server, task_default_queue=queue)

    @app.task(name="faults.tokens")
    async def tokens() -> AsyncIterator[str]:
        yield "a"

    monkeypatch.setattr(completer_module, "STORE_BACKOFF", (0.01, 0.05))
    try:
        backend = await app.result_backend()
        handle = await tokens.delay()
        tries = _failing_item_stores(backend, 10**6, reads_fail=False)
        async with Worker(app, concurrency=2) as worker:
            await asyncio.wait_for(worker.wait_processed(1), 30)
        assert 1 <= len(tries) <= REFUSALS
        [raw] = await backend.get_many([handle.id])
        [rec] = _decoded(app, handle.id, [raw])
        assert rec is not None and rec.status == states.FAILURE
        with pytest.raises(BrokerConnectionError):
            await handle.get(timeout=5)
    finally:
        await app.close()
