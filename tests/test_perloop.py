"""PerLoop: one value per event loop, dropped with its loop, right from any thread."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest

from aqueue.perloop import PerLoop

pytestmark = pytest.mark.timeout(10)


def test_one_value_per_loop_and_dropped_with_the_loop() -> None:
    values: PerLoop[list[int]] = PerLoop(list)

    async def value() -> list[int]:
        return values.get()

    async def twice() -> tuple[list[int], list[int]]:
        return values.get(), values.get()

    first = asyncio.run(twice())
    assert first[0] is first[1]  # the same loop: the same value
    second = asyncio.run(value())
    assert second is not first[0]  # another loop: its own value
    gc.collect()
    assert len(values) == 0  # both loops gone: nothing is kept


def test_pop_forgets_the_value() -> None:
    values: PerLoop[list[int]] = PerLoop(list)

    async def main() -> None:
        kept = values.get()
        assert values.pop(asyncio.get_running_loop()) is kept
        assert values.get() is not kept

    asyncio.run(main())


def test_threads_each_get_their_loops_value() -> None:
    values: PerLoop[list[int]] = PerLoop(list)
    wrong: list[str] = []

    def run() -> None:
        async def main() -> None:
            mine = values.get()
            for _ in range(2000):
                if values.get() is not mine:
                    wrong.append(threading.current_thread().name)
                await asyncio.sleep(0)

        asyncio.run(main())

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
