"""Result streaming: ``async for item in r.stream()`` over a real worker, on every result backend.

The streamed task yields an item, then waits for the test to say it received that item before
yielding the next one: so each assertion that an item arrived is one that it arrived while the
task was still running (no sleeps). A handle made elsewhere (another client: the backend's watch
instead of the sender's reply channel) and a reader that starts late still get every item.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aqueue import Aqueue, AsyncResult, Worker, states
from aqueue.exceptions import StreamError, TimeoutError
from tests.conftest import _url
from tests.transport_choice import chosen_transports

pytestmark = pytest.mark.timeout(60)

#: Per test run (a token in the task's arguments): the events each streamed item waits for.
GATES: dict[str, list[asyncio.Event]] = {}
#: Per token: set once the task's generator has ended (returned or raised).
ENDED: dict[str, asyncio.Event] = {}


def build(broker: str, backend: str, queue: str) -> Aqueue:
    app = Aqueue("stream", broker=broker, backend=backend, task_default_queue=queue)

    @app.task(name="stream.tokens")
    async def tokens(key: str, n: int, fail_after: int = -1) -> AsyncIterator[str]:
        try:
            for i in range(n):
                if i == fail_after:
                    raise ValueError(f"broke after {i} items")
                yield f"t{i}"
                await GATES[key][i].wait()  # the reader has item i: go on
        finally:
            ENDED[key].set()

    @app.task(name="stream.plain")
    async def plain(x: int) -> int:
        return x * 2

    @app.task(name="stream.many", stream_max_items=3)
    async def many(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    return app


@pytest.fixture(params=chosen_transports(["memory", "sqlite", "redis", "rpc"]))
async def app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Aqueue]:
    queue = f"q-{uuid.uuid4().hex[:12]}"
    if request.param == "rpc":
        url = str(request.getfixturevalue("rabbitmq_server").url)
        a = build(url, "rpc://", queue)
    elif request.param == "memory":
        a = build(f"memory://{uuid.uuid4().hex}", f"memory://{uuid.uuid4().hex}", queue)
    else:  # sqlite, redis; sentinel and cluster with $AQUEUE_TEST_TRANSPORTS
        url = _url(request.param, request, tmp_path, "stream")
        a = build(url, url, queue)
    yield a
    await a.close()


def gates(n: int) -> str:
    key = uuid.uuid4().hex
    GATES[key] = [asyncio.Event() for _ in range(n)]
    ENDED[key] = asyncio.Event()
    return key


async def read_in_step(r: AsyncResult[Any], key: str) -> list[str]:
    """Read ``r``'s stream, letting the task go on only after each item arrived."""
    got: list[str] = []
    async for item in r.stream(timeout=20):
        assert not ENDED[key].is_set()  # the task is still running: it waits for this item
        got.append(item)
        GATES[key][len(got) - 1].set()
    return got


async def test_every_item_arrives_in_order_while_the_task_runs(app: Aqueue) -> None:
    key = gates(5)
    async with Worker(app, concurrency=4, shutdown_timeout=5):
        r = await app.tasks["stream.tokens"].delay(key, 5)
        assert await read_in_step(r, key) == ["t0", "t1", "t2", "t3", "t4"]
        assert await r.get(timeout=10) == ["t0", "t1", "t2", "t3", "t4"]  # the result: the list
        assert [i async for i in r.stream()] == ["t0", "t1", "t2", "t3", "t4"]  # read again


async def test_an_error_mid_stream_raises_from_the_iterator_after_the_items(app: Aqueue) -> None:
    key = gates(5)
    async with Worker(app, concurrency=4, shutdown_timeout=5):
        r = await app.tasks["stream.tokens"].delay(key, 5, 2)
        got: list[str] = []
        with pytest.raises(ValueError, match="broke after 2 items"):
            async for item in r.stream(timeout=20):
                got.append(item)
                GATES[key][len(got) - 1].set()
        assert got == ["t0", "t1"]
        assert await r.state() == states.FAILURE


async def test_a_task_that_is_not_a_generator_streams_its_value(app: Aqueue) -> None:
    async with Worker(app, concurrency=4, shutdown_timeout=5):
        r = await app.tasks["stream.plain"].delay(21)
        assert [i async for i in r.stream(timeout=20)] == [42]


async def test_more_items_than_stream_max_items_fail_the_task(app: Aqueue) -> None:
    async with Worker(app, concurrency=4, shutdown_timeout=5):
        r = await app.tasks["stream.many"].delay(5)
        got: list[int] = []
        with pytest.raises(StreamError, match="stream_max_items=3"):
            async for item in r.stream(timeout=20):
                got.append(item)
        assert got == [0, 1, 2]


async def test_no_next_item_within_the_timeout_raises_timeout_error(app: Aqueue) -> None:
    key = gates(3)
    async with Worker(app, concurrency=4, shutdown_timeout=5):
        r = await app.tasks["stream.tokens"].delay(key, 3)
        reader = r.stream(timeout=0.3)
        assert await anext(reader) == "t0"  # the task now waits on gate 0: no item comes
        with pytest.raises(TimeoutError, match=r"streamed no item within 0.3s \(1 item\(s\)"):
            await anext(reader)
        assert not ENDED[key].is_set()
        for gate in GATES[key]:
            gate.set()
        assert await r.get(timeout=20) == ["t0", "t1", "t2"]


@pytest.fixture(params=chosen_transports(["sqlite", "redis"]))
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _url(request.param, request, tmp_path, "shared")


async def test_a_late_reader_in_another_client_gets_every_item(shared: str) -> None:
    """Another app (no reply channel: the backend's watch), starting after three items."""
    queue = f"q-{uuid.uuid4().hex[:12]}"
    sender, other = build(shared, shared, queue), build(shared, shared, queue)
    key = gates(6)
    try:
        async with Worker(sender, concurrency=4, shutdown_timeout=5):
            r = await sender.tasks["stream.tokens"].delay(key, 6)
            first = r.stream(timeout=20)
            for i in range(3):
                assert await anext(first) == f"t{i}"
                GATES[key][i].set()
            assert await anext(first) == "t3"  # stored: the task waits on gate 3
            late = other.AsyncResult(r.id)
            reader = late.stream(timeout=20)
            got = [await anext(reader) for _ in range(4)]
            assert got == ["t0", "t1", "t2", "t3"]  # what was stored before it came
            for i in range(3, 6):
                GATES[key][i].set()
                if i < 5:
                    assert await anext(reader) == f"t{i + 1}"
                    assert await anext(first) == f"t{i + 1}"
            assert [i async for i in reader] == []
            assert await late.get(timeout=10) == [f"t{i}" for i in range(6)]
            # After the end, a new reader gets every item from the result alone.
            assert [i async for i in other.AsyncResult(r.id).stream()] == [
                f"t{i}" for i in range(6)
            ]
    finally:
        await sender.close()
        await other.close()


async def test_eager_streams_the_items() -> None:
    app = build("memory://", "memory://", "q")
    app.conf.task_always_eager = True
    key = gates(3)
    for event in GATES[key]:
        event.set()
    r = await app.tasks["stream.tokens"].delay(key, 3)
    assert await r == ["t0", "t1", "t2"]
    assert [i async for i in r.stream()] == ["t0", "t1", "t2"]
