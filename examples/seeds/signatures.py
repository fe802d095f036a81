"""Signatures: a task call packed as data, sent later or passed as a callback.

Mirrors: "Celery 在 web 开发中的运用" 工作流 (``signature('...add', args=(2, 2), countdown=5)``,
its repr ``add(2, 2)``, ``.apply_async()``; ``add.subtask((2, 2), countdown=5)`` and its short
form ``add.s()``), and the ``s()`` / ``si()`` explanation of "Celery 是什么" §2.5 (a parent's
result is prepended to a partial signature; ``si()`` is immutable and ignores it).

Celery's ``subtask`` is called ``signature`` here (``add.signature((2, 2), countdown=1)``).
A signature built by name needs the app (``app=`` or ``app.signature(...)``) to be sent.
Composing signatures into chains, groups and chords is in ``canvas.py``.

Run: ``python -m examples.seeds.signatures``
"""

from __future__ import annotations

import asyncio

from aqueue import Aqueue, Worker, signature

app = Aqueue("web", broker="memory://", backend="memory://")
seen: asyncio.Queue[str] = asyncio.Queue()


@app.task(name="web.add")
async def add(x: int, y: int) -> int:
    return x + y


@app.task(name="web.report")
async def report(*args: int) -> None:
    await seen.put(f"report{args}")


async def main() -> None:
    async with Worker(app):
        task = signature("web.add", args=(2, 2), countdown=1, app=app)
        print("signature:", task)
        print("apply_async ->", await (await task.apply_async()))

        sub = add.signature((2, 2), countdown=0.1)  # Celery's add.subtask((2, 2), countdown=5)
        print("add.signature(...).delay() ->", await (await sub.delay()))
        print("add.s(2).delay(3) ->", await (await add.s(2).delay(3)))  # 3 is prepended: add(3, 2)

        await add.apply_async((1, 1), link=report.s("partial"))  # gets the parent's result: 2
        await add.apply_async((1, 1), link=report.si("immutable"))  # does not
        got = sorted([await asyncio.wait_for(seen.get(), 2) for _ in range(2)])
        print("links:", got)
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())
