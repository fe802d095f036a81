"""Middleware around publishing and running, with a real worker on every transport."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aqueue import Aqueue, Worker
from aqueue.message import Message
from aqueue.middleware import Middleware, PublishNext, RunNext
from aqueue.task import Request, Task
from tests.apps import tasks as e2e

pytestmark = pytest.mark.timeout(60)


class Tenant(Middleware):
    """Adds a header on send; on run, records it and the order it was called in."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls

    async def publish(self, messages: list[Message], call_next: PublishNext) -> None:
        self.calls.append(f"{self.name}:publish:{len(messages)}")
        for message in messages:
            message.headers.setdefault("tenant", []).append(self.name)
        await call_next(messages)

    async def run(self, task: Task[Any, Any], request: Request, call_next: RunNext) -> Any:
        self.calls.append(f"{self.name}:run:{request.headers['tenant']}")
        value = await call_next()
        self.calls.append(f"{self.name}:after:{value}")
        return value


@pytest.fixture
async def app(transport_url: str) -> AsyncIterator[Aqueue]:
    app = e2e.build(transport_url, queue=f"q-{uuid.uuid4().hex[:12]}").app
    yield app
    await app.close()


async def test_headers_added_on_send_are_read_on_run_in_order(app: Aqueue) -> None:
    calls: list[str] = []
    app.add_middleware(Tenant("outer", calls))
    app.add_middleware(Tenant("inner", calls))

    @app.task(name="mw.headers", bind=True)
    async def headers(self: Any) -> list[str]:
        return list(self.request.headers["tenant"])

    async with Worker(app, concurrency=2):
        result = await headers.delay()
        assert await result.get(timeout=10) == ["outer", "inner"]
    assert calls == [
        "outer:publish:1",
        "inner:publish:1",
        "outer:run:['outer', 'inner']",
        "inner:run:['outer', 'inner']",
        "inner:after:['outer', 'inner']",
        "outer:after:['outer', 'inner']",
    ]


async def test_a_middleware_can_replace_the_value_and_see_canvas_sends(app: Aqueue) -> None:
    sent: list[str] = []

    class Doubler(Middleware):
        async def publish(self, messages: list[Message], call_next: PublishNext) -> None:
            sent.extend(m.task for m in messages)
            await call_next(messages)

        async def run(self, task: Task[Any, Any], request: Request, call_next: RunNext) -> Any:
            return 2 * await call_next()

    app.add_middleware(Doubler())

    @app.task(name="mw.inc")
    async def inc(x: int) -> int:
        return x + 1

    async with Worker(app, concurrency=2):
        chained = await (inc.s(1) | inc.s()).delay()
        assert await chained.get(timeout=10) == 10  # (1 + 1) * 2 = 4, (4 + 1) * 2 = 10
        many = await inc.delay_many([(i,) for i in range(3)])
        assert [await r.get(timeout=10) for r in many] == [2, 4, 6]
    assert sent == ["mw.inc", "mw.inc", "mw.inc", "mw.inc", "mw.inc"]


async def test_a_middleware_that_raises_on_publish_sends_nothing(app: Aqueue) -> None:
    class Refuse(Middleware):
        async def publish(self, messages: list[Message], call_next: PublishNext) -> None:
            raise PermissionError("not today")

    app.add_middleware(Refuse())

    @app.task(name="mw.never")
    async def never() -> None: ...

    with pytest.raises(PermissionError, match="not today"):
        await never.delay()
    app.middleware.clear()
    async with Worker(app, concurrency=1) as worker:
        marker = await never.delay()
        await marker.get(timeout=10)
        await worker.wait_processed(1)
        # Only the marker (one runner, in queue order): the refused send never reached a queue.
        assert worker.processed == 1


def test_add_middleware_refuses_what_is_not_one() -> None:
    with pytest.raises(TypeError, match=r"aqueue\.middleware\.Middleware"):
        Aqueue("x", broker="memory://").add_middleware(object())  # type: ignore[arg-type]
