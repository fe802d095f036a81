"""Workflows: chain, group, chord, map, starmap and chunks.

Mirrors: "Celery 在 web 开发中的运用" 工作流 (1. chain: ``add.s(1, 2) | add.s(3) | add.s(5)`` and
``chain(part)()``, ``get()`` gives the last result; 2. group: ``group([add.s(i, i) for i in
range(1, 10)])()``, ``get()`` gives the list; 3. chord: a group with a callback that receives the
list; 4. map/starmap; 5. chunks), and the chain of "Celery 是什么" §2.5 (see also
``page_info_chain.py``).

``await`` replaces Celery's ``()`` / ``.get()``: ``.delay()`` sends, and awaiting the result
waits (see docs/canvas.md).

Run: ``python -m examples.seeds.canvas``
"""

from __future__ import annotations

import asyncio

from aqueue import Aqueue, Worker, chain, chord, group

app = Aqueue("tasks", broker="memory://", backend="memory://")


@app.task
async def add(x: int, y: int) -> int:
    return x + y


@app.task
async def tsum(numbers: list[int]) -> int:
    return sum(numbers)


async def main() -> None:
    async with Worker(app):
        part = add.s(1, 2) | add.s(3) | add.s(5)
        print("chain:", await (await part.delay()))  # 11
        print("chain():", await (await chain(add.s(1, 2), add.s(3), add.s(5)).delay()))  # 11

        print("group:", await (await group([add.s(i, i) for i in range(1, 10)]).delay()))
        header = [add.s(i, i) for i in range(10)]
        print("chord:", await (await chord(header, tsum.s()).delay()))  # 90

        print("map:", await (await tsum.map([[1, 2], [3, 4]]).delay()))  # [3, 7]
        print("starmap:", await (await add.starmap([(1, 2), (3, 4)]).delay()))  # [3, 7]
        pairs = [(i, i) for i in range(6)]
        print("chunks:", await (await add.chunks(pairs, 2).delay()))  # [[0, 2], [4, 6], [8, 10]]
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())
