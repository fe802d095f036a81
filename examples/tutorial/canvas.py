"""Getting started, page 4: signatures, chains, groups and chords.

Run: ``python -m examples.tutorial.canvas`` (memory broker, a worker in this process).
"""

from __future__ import annotations

import asyncio

from aqueue import Aqueue, Worker, chain, chord, group

app = Aqueue("tutorial-canvas", broker="memory://", backend="memory://")


@app.task
async def add(x: int, y: int) -> int:
    return x + y


@app.task
async def mul(x: int, y: int) -> int:
    return x * y


@app.task
async def total(numbers: list[int]) -> int:
    return sum(numbers)


async def signatures() -> None:
    # --8<-- [start:signatures]
    partial = add.s(10)  # a signature: the task, some arguments, options; nothing sent yet
    print("signature:", partial)
    print("called later:", await (await partial.delay(5)).get(timeout=5))  # add(5, 10)
    fixed = add.si(1, 1)  # immutable: a parent's result is not prepended
    delayed = add.s(2, 2).set(countdown=0.1)  # with send options
    print("si + set:", await (await fixed.delay()).get(timeout=5), await (await delayed.delay()))
    # --8<-- [end:signatures]


async def workflows() -> None:
    # --8<-- [start:chain]
    result = await (add.s(1, 2) | mul.s(10) | add.s(5)).delay()  # ((1 + 2) * 10) + 5
    print("chain:", await result.get(timeout=5))
    print("chain():", await (await chain(add.s(2, 2), mul.s(3)).delay()).get(timeout=5))
    # --8<-- [end:chain]
    # --8<-- [start:group]
    squares = await group(mul.s(i, i) for i in range(5)).delay()  # a GroupResult
    print("group:", await squares.get(timeout=5))  # in the order of the signatures
    # --8<-- [end:group]
    # --8<-- [start:chord]
    summed = await chord((mul.s(i, i) for i in range(5)), total.s()).delay()
    print("chord:", await summed.get(timeout=5))  # total([0, 1, 4, 9, 16])
    # --8<-- [end:chord]
    # --8<-- [start:map]
    print("map:", await (await total.map([[1, 2], [3, 4]]).delay()).get(timeout=5))
    print("starmap:", await (await add.starmap([(1, 2), (3, 4)]).delay()).get(timeout=5))
    pairs = [(i, i) for i in range(6)]
    print("chunks:", await (await add.chunks(pairs, 3).delay()).get(timeout=5))
    # --8<-- [end:map]


async def main() -> None:
    async with Worker(app):
        await signatures()
        await workflows()
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())
