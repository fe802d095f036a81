"""First steps: trigger ``add`` and wait for its result.

Mirrors: "Celery 是什么" §1 (trigger.py: ``add.delay(4, 4)``, loop on ``result.ready()``, then
``result.get()``), "Celery 初次使用" (调用任务 / 保存结果: ``result.ready()``,
``result.get(timeout=1)``) and the Redis tutorial's client (客户端调用任务).

Every call that touches the broker or the result backend is awaited. The tutorial's loop on
``ready()`` is not needed: ``await r.get(timeout=1)`` is woken by the result backend when the
result is stored, and raises ``aqueue.exceptions.TimeoutError`` after one second.

Run::

    python -m examples.seeds.trigger              # one process: memory:// and a worker inside
    python -m examples.seeds.trigger --external   # a worker started with
                                                  # `aqueue worker -A examples.seeds.tasks`
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from aqueue import Worker
from examples.seeds.tasks import add, app


async def trigger() -> None:
    result = await add.delay(4, 4)  # not add(4, 4): that runs the function here and now
    print("ready:", await result.ready())  # most likely False: it was just sent
    # The tutorial loops on ready() with time.sleep(1); get() waits for the stored result itself.
    print(f"task done: {await result.get(timeout=1)}")


async def main(external: bool) -> None:
    async with contextlib.AsyncExitStack() as stack:
        if not external:
            await stack.enter_async_context(Worker(app))
        await trigger()
    await app.close()


if __name__ == "__main__":
    external = "--external" in sys.argv[1:]
    if not external:
        app.conf.update(broker_url="memory://", result_backend="memory://")
    asyncio.run(main(external))
