"""Call ``proj.tasks.add`` as the tutorial's client does: ``python -m examples.seeds.proj``.

Mirrors the Redis tutorial's 客户端调用任务 (``r = add.delay(2, 2)``, ``r = add.delay(3, 3)``,
``r.ready()``, ``r.result``, ``r.get()``), on the ``proj`` layout. The config names Redis
servers; this demo swaps in ``memory://`` and a worker in this process, so it needs none. With
``--external`` it uses the config's URLs and a worker started with
``aqueue worker -A examples.seeds.proj.tasks``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from aqueue import Worker
from examples.seeds.proj.app import app
from examples.seeds.proj.tasks import add


async def main(external: bool) -> None:
    async with contextlib.AsyncExitStack() as stack:
        if not external:
            await stack.enter_async_context(Worker(app))
        r = await add.delay(2, 2)
        r = await add.delay(3, 3)
        print("ready:", await r.ready())
        print("result:", r.result)  # None until this handle has seen the task finish
        print("get:", await r.get(timeout=5))
        print("result:", r.result)
    await app.close()


if __name__ == "__main__":
    external = "--external" in sys.argv[1:]
    if not external:
        app.conf.update(broker_url="memory://", result_backend="memory://")
    asyncio.run(main(external))
