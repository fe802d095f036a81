"""The AsyncResult API: ready, get, result, state, successful, traceback, propagate, forget.

Mirrors: "Celery 初次使用" 保存结果 (``result.ready()``, ``result.get(timeout=1)``,
``result.get(propagate=False)``, ``result.traceback``, and the warning to ``get()`` or ``forget()``
every result), the result table of "Celery 在 web 开发中的运用" (``r.ready()``,
``r.get(timeout=1)``, ``r.result``, ``r.state``, ``r.status``, ``r.successful``,
``r.traceback``), the Redis tutorial's client (``r.ready()``, ``r.result``, ``r.get()``) and
"celery使用指南" §4.2-4.3 (``add(1, 2)`` called directly is a plain call; the stored result, read
through the API instead of as raw Redis keys).

Differences from Celery: ``state``/``status`` are coroutines (``await r.state()``), as are
``ready``, ``successful``, ``failed``, ``info`` and ``forget``; ``r.result`` and ``r.traceback``
are attributes that do no I/O and show what this handle last saw.

Run: ``python -m examples.seeds.results``
"""

from __future__ import annotations

import asyncio

from aqueue import Aqueue, Worker

app = Aqueue("results", broker="memory://", backend="memory://")


@app.task
async def add(x: int, y: int) -> int:
    await asyncio.sleep(0.2)
    return x + y


@app.task
async def fail() -> int:
    raise KeyError("missing")


async def main() -> None:
    print("add(1, 2) called directly:", await add(1, 2))  # no worker, no broker
    async with Worker(app):
        r = await add.delay(4, 4)
        print("ready:", await r.ready())  # False: still running
        print("state:", await r.state())
        print("get(timeout=1):", await r.get(timeout=1))
        print("ready:", await r.ready(), "| result:", r.result, "| status:", await r.status())
        print("successful:", await r.successful())
        info = await r.info()  # what the backend stores for the task (cf. §4.3's Redis keys)
        print(f"info: state={info.state} result={info.result} date_done={info.date_done:%H:%M:%S}")

        bad = await fail.delay()
        try:
            await bad.get(timeout=1)
        except KeyError as exc:  # the task's own exception type, re-raised here
            print("get() re-raised:", repr(exc))
        print("get(propagate=False):", repr(await bad.get(propagate=False)))
        print("failed:", await bad.failed())
        print("traceback (last line):", (bad.traceback or "").strip().splitlines()[-1])
        await bad.forget()  # free the stored result; it reads PENDING afterwards
        print("after forget:", await bad.state())
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())
