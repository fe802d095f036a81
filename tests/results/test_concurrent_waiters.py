"""Any number of waiters on one result handle, concurrently, on every transport.

A handle may be awaited, ``get()``-ed, ``then()``-ed and streamed with ``on_message`` from many
asyncio tasks at once; each sees the outcome (and every state) whether the records come back
on the client's reply channel or on the task's own channel.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aqueue import AsyncResult, Worker
from aqueue.exceptions import TimeoutError as ResultTimeout
from tests.apps.tasks import Tasks

pytestmark = pytest.mark.timeout(60)

WAIT = 15.0  # seconds any waiter may take


async def test_several_gets_on_one_handle(t: Tasks, worker: Worker) -> None:
    r = await t.add.delay(2, 3)
    got = await asyncio.wait_for(asyncio.gather(r.get(), r.get(timeout=WAIT), r, r.get()), WAIT)
    assert got == [5, 5, 5, 5]


async def test_several_gets_started_before_the_task_runs(t: Tasks, worker: Worker) -> None:
    r = await t.progress.delay(4)  # about 0.2 s
    waiters = [asyncio.ensure_future(r.get()) for _ in range(5)]
    assert await asyncio.wait_for(asyncio.gather(*waiters), WAIT) == ["done"] * 5


async def test_several_thens_on_one_handle(t: Tasks, worker: Worker) -> None:
    r = await t.add.delay(1, 1)
    seen: list[int] = []

    async def on_done(res: AsyncResult[int]) -> int:
        seen.append(res.result)
        return len(seen)

    p1, p2, p3 = r.then(on_done), r.then(lambda res: res.result * 10), r.then(on_done)
    outcomes = await asyncio.wait_for(asyncio.gather(p1, p2, p3), WAIT)
    assert sorted([outcomes[0], outcomes[2]]) == [1, 2]
    assert outcomes[1] == 20
    assert seen == [2, 2]


async def test_await_while_on_message_streams(t: Tasks, worker: Worker) -> None:
    r = await t.progress.delay(3)
    streamed: list[dict[str, Any]] = []
    both = asyncio.gather(r.get(on_message=streamed.append), r, r.get())
    assert await asyncio.wait_for(both, WAIT) == ["done", "done", "done"]
    states = [m["status"] for m in streamed]
    assert states[-1] == "SUCCESS"
    assert [m["result"]["current"] for m in streamed if m["status"] == "PROGRESS"] == [1, 2, 3]


async def test_two_on_message_streams_each_see_every_state(t: Tasks, worker: Worker) -> None:
    r = await t.progress.delay(2)
    first: list[str] = []
    second: list[str] = []
    await asyncio.wait_for(
        asyncio.gather(
            r.get(on_message=lambda m: first.append(m["status"])),
            r.get(on_message=lambda m: second.append(m["status"])),
        ),
        WAIT,
    )
    assert first.count("PROGRESS") == 2 and second.count("PROGRESS") == 2
    assert first[-1] == second[-1] == "SUCCESS"


async def test_a_get_after_another_finished(t: Tasks, worker: Worker) -> None:
    r = await t.add.delay(4, 4)
    assert await asyncio.wait_for(r.get(), WAIT) == 8
    assert await asyncio.wait_for(asyncio.gather(r.get(), r.then(lambda x: x.result)), WAIT) == [
        8,
        8,
    ]


async def test_a_timed_out_waiter_does_not_disturb_the_others(t: Tasks, worker: Worker) -> None:
    r = await t.progress.delay(10)  # about 0.5 s
    patient = asyncio.ensure_future(r.get(timeout=WAIT))
    with pytest.raises(ResultTimeout):
        await r.get(timeout=0.05)
    assert await asyncio.wait_for(patient, WAIT) == "done"


async def test_many_waiters_on_many_tasks(t: Tasks, worker: Worker) -> None:
    handles = [await t.add.delay(i, i) for i in range(50)]
    got = await asyncio.wait_for(
        asyncio.gather(*(h.get() for h in handles), *(h.get() for h in handles)), WAIT
    )
    assert got == [2 * i for i in range(50)] * 2
