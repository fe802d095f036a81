"""A base Task class whose ``on_success`` / ``on_failure`` hooks run after each outcome.

Mirrors: "Celery 是什么" §2.1 根据任务状态执行不同操作 (``class MyTask(Task)`` with ``on_success``
and ``on_failure``, ``@app.task(base=MyTask)``; then ``add`` changed to ``raise KeyError``), and
the ``base`` option of "Celery 在 web 开发中的运用" 装饰器参数.

The hooks run in the worker, after the result is stored. They may be plain methods, as here, or
``async def``. Both tasks of the tutorial are defined side by side instead of editing ``add``.

Run: ``python -m examples.seeds.base_task``
"""

from __future__ import annotations

import asyncio
from typing import Any

from aqueue import Aqueue, Task, Worker

app = Aqueue("tasks", broker="memory://", backend="memory://")


class MyTask(Task[Any, Any]):
    def on_success(
        self, retval: Any, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        print(f"task done: {retval}")
        super().on_success(retval, task_id, args, kwargs)

    def on_failure(
        self,
        exc: BaseException,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: str,
    ) -> None:
        print(f"task fail, reason: {exc!r}")
        super().on_failure(exc, task_id, args, kwargs, einfo)


@app.task(base=MyTask)
async def add(x: int, y: int) -> int:
    return x + y


@app.task(base=MyTask)
async def add_broken(x: int, y: int) -> int:
    raise KeyError("x")


async def main() -> None:
    async with Worker(app):
        print("result:", await (await add.delay(4, 4)))
        failed = await add_broken.delay(4, 4)
        print("result:", repr(await failed.get(propagate=False)))
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())
