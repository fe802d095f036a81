"""A custom state ``PROGRESS``, stored with ``update_state`` and followed with ``on_message``.

Mirrors: "Celery 是什么" §2.3 任务状态回调 (``test_mes`` calls
``self.update_state(state="PROGRESS", meta={'p': i*10})`` ten times; trigger.py prints
``任务进度: N%`` from ``r.get(on_message=pm, propagate=False)``). The built-in states are those of
that section's table: PENDING, STARTED, SUCCESS, FAILURE, RETRY, REVOKED (plus RECEIVED).

``on_message`` is called with Celery's dict (``{"task_id", "status", "result", ...}``) for every
state the waiter sees; ``get`` is pushed each change by the result backend, it does not poll. The
task is ``async def`` because ``update_state`` is awaited; it sleeps with ``asyncio.sleep``.

Run: ``python -m examples.seeds.progress``
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from aqueue import Aqueue, Worker

app = Aqueue("tasks", broker="memory://", backend="memory://")


@app.task(bind=True)
async def test_mes(self: Any) -> str:
    for i in range(1, 11):
        await asyncio.sleep(0.1)
        await self.update_state(state="PROGRESS", meta={"p": i * 10})
    return "finish"


def pm(body: dict[str, Any]) -> None:
    res = body["result"]
    if body.get("status") == "PROGRESS":
        sys.stdout.write(f"\rprogress: {res['p']}%")
        sys.stdout.flush()
    else:
        print("\r")
        print(res)


async def main() -> None:
    async with Worker(app):
        r = await test_mes.delay()
        print(await r.get(on_message=pm, propagate=False))
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())
