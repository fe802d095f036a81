"""Rate limits per task from ``task_annotations``, changed at run time with ``aqueue control``.

Mirrors: "Celery 初次使用" 配置 (``task_annotations = {'tasks.add': {'rate_limit': '10/m'}}`` and
``celery -A tasks control rate_limit tasks.add 10/m``).

The aqueue command is the same, and so is its answer (with a Redis or SQLite broker that
other processes share; this example's ``memory://`` broker lives in its one process)::

    $ aqueue control -A examples.seeds.rate_limits rate_limit tasks.add 10/m
     worker        ┃ reply
     aqueue@host   │ new rate limit set successfully

Unlike Celery's, the limit holds across all workers together (``rate_limit_scope="global"``),
and a rate set at run time is remembered for workers started later. This example runs one
worker in-process: at 10/m the second ``add`` waits for its token - parked in the worker,
holding no concurrency slot - until the rate is raised from here, as the command would.
See docs/operations.md.

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
    async with Worker(app, hostname="aqueue@example"):
        first, second = await add.delay(2, 2), await add.delay(3, 3)
        print("add(2, 2) =", await first)  # the bucket starts with one token
        waiting = await app.control.inspect().scheduled()
        print(
            "waiting for a token:",
            [s["request"]["id"] == second.id for s in waiting["aqueue@example"]],
        )
        for reply in await app.control.rate_limit("tasks.add", "100/s"):
            print(f"{reply.hostname}: {reply.value['ok']}")
        print("add(3, 3) =", await second.get(timeout=5))  # at once now, not in 6 seconds
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())
