"""task_always_eager: delay() runs the task inline, with no broker."""

from __future__ import annotations

import pytest

from aqueue import Aqueue, Task


def make_app() -> Aqueue:
    return Aqueue("eager", broker="redis://127.0.0.1:1/0", task_always_eager=True)


async def test_eager_runs_inline_without_touching_the_broker() -> None:
    app = make_app()  # the broker URL points nowhere: eager mode must not connect

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    r = await add.delay(2, 3)
    assert await r == 5
    assert await r.state() == "SUCCESS"


async def test_eager_retries_and_propagates() -> None:
    app = make_app()
    attempts: list[int] = []

    @app.task(bind=True, max_retries=2)
    async def flaky(self: Task[[], int]) -> int:
        attempts.append(self.request.retries)
        if self.request.retries < 2:
            raise self.retry(exc=OSError("again"), countdown=5)
        return self.request.retries

    assert await (await flaky.delay()) == 2
    assert attempts == [0, 1, 2]

    @app.task
    def boom() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        await boom.delay()
    app.conf.task_eager_propagates = False
    r = await boom.delay()
    assert await r.failed()
    with pytest.raises(ValueError):
        await r.get()
