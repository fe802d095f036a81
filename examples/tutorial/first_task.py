"""Getting started, page 1: a task, a worker, a call and its result.

Run: ``python -m examples.tutorial.first_task`` (memory broker, a worker in this process). As two
processes, the way production runs: ``aqueue worker -A examples.tutorial.first_task -l info`` in
one shell, ``python -m examples.tutorial.first_task --external`` in another.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys

# --8<-- [start:app]
from aqueue import Aqueue, Task

app = Aqueue("tutorial")  # broker and backend: $AQUEUE_BROKER_URL, else aqueue.db beside this file


@app.task
async def add(x: int, y: int) -> int:
    return x + y


# --8<-- [end:app]


# --8<-- [start:kinds]
@app.task
def digest(text: str) -> str:  # a plain function runs in a thread: it never blocks the loop
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@app.task(bind=True, name="tutorial.whoami")
async def whoami(self: Task[..., str]) -> str:  # bind=True: the task is the first argument
    return f"{self.name} ran as {self.request.id}"


# --8<-- [end:kinds]


# --8<-- [start:call]
async def call_them() -> None:
    print("in-process:", await add(2, 3))  # a plain call runs the function, here and now
    result = await add.delay(4, 4)  # publishes a message; an AsyncResult to wait on
    print("sent:", result.id)
    print("result:", await result.get(timeout=5))  # woken when the worker stores it
    print("digest:", await (await digest.delay("aqueue")).get(timeout=5))
    print("bound:", await (await whoami.delay()).get(timeout=5))


# --8<-- [end:call]


# --8<-- [start:main]
async def main(external: bool) -> None:
    from aqueue import Worker

    if external:  # a worker runs elsewhere: `aqueue worker -A examples.tutorial.first_task`
        await call_them()
    else:
        async with Worker(app):  # a worker inside this process, for the tutorial
            await call_them()
    await app.close()


if __name__ == "__main__":
    external = "--external" in sys.argv
    if not external:
        app.conf.update(broker_url="memory://", result_backend="memory://")
    asyncio.run(main(external))
# --8<-- [end:main]
