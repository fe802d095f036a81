"""Getting started, page 2: results, states, failures and progress.

Run: ``python -m examples.tutorial.results`` (memory broker, a worker in this process).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aqueue import Aqueue, Task, Worker

app = Aqueue("tutorial-results", broker="memory://", backend="memory://")


@app.task
async def divide(x: float, y: float) -> float:
    return x / y


# --8<-- [start:progress-task]
@app.task(bind=True)
async def resize(self: Task[..., str], images: int) -> str:
    for done in range(1, images + 1):
        await asyncio.sleep(0.01)  # the work
        await self.update_state(state="PROGRESS", meta={"done": done, "of": images})
    return f"{images} images resized"


# --8<-- [end:progress-task]


async def states() -> None:
    # --8<-- [start:states]
    result = await divide.delay(1, 4)
    print("ready at once:", await result.ready())  # most likely False: it was just sent
    print("value:", await result.get(timeout=5))  # 0.25
    print("state:", await result.state())  # SUCCESS
    print("successful:", await result.successful())  # True
    info = await result.info()  # one read of everything stored
    print("info:", info.state, info.result, info.date_done is not None)
    print("awaited:", await result)  # the same as await result.get()
    # --8<-- [end:states]


async def failures() -> None:
    # --8<-- [start:failure]
    result = await divide.delay(1, 0)
    try:
        await result.get(timeout=5)
    except ZeroDivisionError as exc:  # the task's own exception, raised here
        print("raised:", repr(exc))
    error = await result.get(timeout=5, propagate=False)  # returned, not raised
    print("returned:", type(error).__name__, "| failed:", await result.failed())
    print("traceback ends with:", (result.traceback or "").strip().splitlines()[-1])
    # --8<-- [end:failure]


async def progress() -> None:
    # --8<-- [start:progress-wait]
    def show(message: dict[str, Any]) -> None:  # Celery's message: task_id, status, result
        if message["status"] == "PROGRESS":
            print(f"progress: {message['result']['done']}/{message['result']['of']}")

    result = await resize.delay(3)
    print(await result.get(timeout=5, on_message=show))
    # --8<-- [end:progress-wait]


async def callbacks() -> None:
    # --8<-- [start:then]
    done = (await divide.delay(9, 3)).then(lambda r: f"then: {r.result}")
    print(await done)  # then: 3.0
    # --8<-- [end:then]
    # --8<-- [start:forget]
    result = await divide.delay(2, 1)
    await result.get(timeout=5)
    await result.forget()  # the stored result is deleted; its state reads PENDING again
    print("after forget:", await result.state())
    # --8<-- [end:forget]


async def main() -> None:
    async with Worker(app):
        await states()
        await failures()
        await progress()
        await callbacks()
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())
