"""Rate limits per task from ``task_annotations``, changed at run time with ``aqueue control``.

Mirrors: "Celery 初次使用" 配置 (``task_annotations = {'tasks.add': {'rate_limit': '10/m'}}`` and
``celery -A tasks control rate_limit tasks.add 10/m``).

The aqueue command is the same::

    aqueue control -A examples.seeds.rate_limits rate_limit tasks.add 10/m

Works today: the setting is accepted, and ``task_annotations`` override the task's own options
(as ``app.task_options`` shows). Needs: the worker does not enforce ``rate_limit`` yet, and
``aqueue control`` is not built yet, so this example runs the task but does not throttle it.

Run: ``python -m examples.seeds.rate_limits``
"""

from __future__ import annotations

import asyncio

from aqueue import Aqueue, Worker

app = Aqueue("tasks", broker="memory://", backend="memory://")
app.conf.task_annotations = {"tasks.add": {"rate_limit": "10/m"}}


@app.task(name="tasks.add")
async def add(x: int, y: int) -> int:
    return x + y


async def main() -> None:
    print("annotations for tasks.add:", app.task_options("tasks.add"))
    async with Worker(app):
        print("add(2, 2) =", await (await add.delay(2, 2)))
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())
