"""``delay(*args, **kwargs)`` is ``apply_async(args, kwargs)``, which is ``app.send_task(...)``,
as in Celery: a subclass that overrides either still sees every ``delay()``, although the plain
path skips both layers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aqueue import Aqueue, Task
from aqueue.message import decode

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def url() -> str:
    return f"memory://delay-{uuid.uuid4().hex[:8]}"


async def queued(app: Aqueue) -> list[tuple[str, tuple[Any, ...], dict[str, Any], Any]]:
    broker = await app.broker()
    deliveries = await broker.fetch([app.conf.task_default_queue], 100, 0.05)
    return [
        (m.task, m.args, m.kwargs, m.headers.get("via"))
        for m in map(decode, (d.body for d in deliveries))
    ]


@pytest.fixture
async def plain(url: str) -> AsyncIterator[Aqueue]:
    app = Aqueue("delay", broker=url, backend=url)
    yield app
    await app.close()


async def test_plain_delay_sends_what_apply_async_sends(plain: Aqueue) -> None:
    @plain.task(name="delay.add")
    async def add(x: int, y: int = 0) -> int:
        return x + y

    r = await add.delay(1, y=2)
    assert r.id and r.task_name == "delay.add"
    await add.apply_async((1,), {"y": 2})
    assert await queued(plain) == [("delay.add", (1,), {"y": 2}, None)] * 2


async def test_an_overridden_apply_async_sees_delay(plain: Aqueue) -> None:
    calls: list[tuple[Any, Any]] = []

    class Counted(Task[Any, Any]):
        async def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
            calls.append((args, kwargs))
            return await super().apply_async(args, kwargs, headers={"via": "task"}, **options)

    @plain.task(name="delay.counted", base=Counted)
    async def counted(x: int) -> int:
        return x

    await counted.delay(7)
    assert calls == [((7,), {})]
    assert await queued(plain) == [("delay.counted", (7,), {}, "task")]


async def test_an_overridden_send_task_sees_delay(url: str) -> None:
    class Routed(Aqueue):
        async def send_task(
            self, name: str, args: Any = None, kwargs: Any = None, **options: Any
        ) -> Any:
            return await super().send_task(name, args, kwargs, headers={"via": "app"}, **options)

    app = Routed("delay", broker=url, backend=url)
    try:

        @app.task(name="delay.routed")
        async def routed(x: int) -> int:
            return x

        await routed.delay(3)
        assert await queued(app) == [("delay.routed", (3,), {}, "app")]
    finally:
        await app.close()
