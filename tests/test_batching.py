"""The batcher behind publishing: concurrent callers share one flush, and each gets its outcome.

Each caller waits on a future of its own, so a cancelled caller leaves the flush and the other
callers alone; a flush's error reaches every caller of its batch, an error returned by item index
only the caller of that item.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable

import pytest

from aqueue.batching import Batcher, ItemErrors

pytestmark = pytest.mark.timeout(10)


def gated_flush() -> tuple[
    list[list[int]], asyncio.Event, asyncio.Event, Callable[[list[int]], Awaitable[ItemErrors]]
]:
    """A flush function recording its batches, whose flush of ``[0]`` sets ``started`` and then
    waits for ``release``; with the list, the two events and the function."""
    flushes: list[list[int]] = []
    started, release = asyncio.Event(), asyncio.Event()

    async def flush(items: list[int]) -> ItemErrors:
        flushes.append(list(items))
        if items == [0]:
            started.set()
            await release.wait()
        return None

    return flushes, started, release, flush


async def test_concurrent_callers_share_one_flush() -> None:
    flushes: list[list[int]] = []

    async def flush(items: list[int]) -> ItemErrors:
        flushes.append(list(items))
        return None

    batcher = Batcher(flush)
    await asyncio.gather(*(batcher.submit([i]) for i in range(5)))
    assert flushes == [[0, 1, 2, 3, 4]]


async def test_item_errors_fail_only_their_callers() -> None:
    async def flush(items: list[int]) -> ItemErrors:
        return {1: ValueError("item 1")}

    batcher = Batcher(flush)
    outcomes = await asyncio.gather(
        *(batcher.submit([i]) for i in range(3)), return_exceptions=True
    )
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], ValueError) and str(outcomes[1]) == "item 1"


async def test_flush_error_reaches_every_caller(caplog: pytest.LogCaptureFixture) -> None:
    async def flush(items: list[int]) -> ItemErrors:
        raise ConnectionError("down")

    batcher = Batcher(flush)
    outcomes = await asyncio.gather(
        *(batcher.submit([i]) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(o, ConnectionError) for o in outcomes)
    gc.collect()
    with caplog.at_level(logging.ERROR, "asyncio"):
        gc.collect()
    assert "never retrieved" not in caplog.text


async def test_a_cancelled_caller_leaves_the_flush_and_the_others_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()
    flushed: list[list[int]] = []

    async def flush(items: list[int]) -> ItemErrors:
        await release.wait()
        flushed.append(list(items))
        raise ConnectionError("down")

    batcher = Batcher(flush)
    first = asyncio.ensure_future(batcher.submit([1]))
    second = asyncio.ensure_future(batcher.submit([2]))
    await asyncio.sleep(0)  # both submitted, the flush started and waiting
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    release.set()
    with pytest.raises(ConnectionError):
        await second
    assert flushed == [[1, 2]]  # the cancelled caller's item was still flushed
    with caplog.at_level(logging.ERROR, "asyncio"):
        gc.collect()
    assert "never retrieved" not in caplog.text


@pytest.mark.parametrize(
    ("bound", "expected"),
    [(1, [[0], [1, 2, 3, 4], [5]]), (None, [[0], [1], [2], [3], [4], [5]])],
)
async def test_callers_trickling_in_while_a_flush_is_in_flight_share_the_next_one(
    bound: int | None, expected: list[list[int]]
) -> None:
    """With ``in_flight=1``, callers arriving one loop turn apart while a flush is in flight
    all wait in one open batch, flushed as a whole once the first ends; a caller that comes
    when nothing is in flight is flushed at once. Without the bound, each is a flush."""
    flushes: list[list[int]] = []
    started, release = asyncio.Event(), asyncio.Event()

    async def flush(items: list[int]) -> ItemErrors:
        flushes.append(list(items))
        if items[0] == 0:
            started.set()
            await release.wait()  # the first flush is in flight until released
        return None

    batcher = Batcher(flush, in_flight=bound)
    first = asyncio.ensure_future(batcher.submit([0]))
    await started.wait()
    trickle = []
    for i in range(1, 5):  # one loop turn apart, as deliveries finish one by one
        trickle.append(asyncio.ensure_future(batcher.submit([i])))
        await asyncio.sleep(0)
    release.set()
    await asyncio.gather(first, *trickle)
    await batcher.submit([5])  # nothing in flight: flushed at once, alone
    assert flushes == expected


async def test_a_bounded_batcher_fails_the_callers_of_a_failed_flush_and_goes_on() -> None:
    """A failed flush reaches its callers only; the batch waiting for it is flushed after it."""
    flushes: list[list[int]] = []
    started = asyncio.Event()

    async def flush(items: list[int]) -> ItemErrors:
        flushes.append(list(items))
        if items == [0]:
            started.set()
            await asyncio.sleep(0)
            raise ValueError("first flush failed")
        return None

    batcher = Batcher(flush, in_flight=1)
    first = asyncio.ensure_future(batcher.submit([0]))
    await started.wait()
    second = asyncio.ensure_future(batcher.submit([1]))
    with pytest.raises(ValueError, match="first flush failed"):
        await first
    await second
    assert flushes == [[0], [1]]


@pytest.mark.parametrize("waiting_for_its_turn", [True, False])
async def test_a_batch_cancelled_before_its_flush_cancels_its_callers(
    waiting_for_its_turn: bool,
) -> None:
    """Cancelling a batch's task (a loop shutting down) while it waits for a flush to end, or
    before its first step, cancels that batch's callers, flushes nothing of it, and leaves the
    next caller a fresh batch."""
    flushes, started, release, flush = gated_flush()
    batcher = Batcher(flush, in_flight=1)
    first = asyncio.ensure_future(batcher.submit([0]))
    await started.wait()
    flushing = set(batcher._running)
    waiting = [asyncio.ensure_future(batcher.submit([i])) for i in (1, 2)]
    await asyncio.sleep(0)  # the second batch opened; its task has not run yet
    if waiting_for_its_turn:
        await asyncio.sleep(0)
    assert len(batcher._turns) == waiting_for_its_turn
    (turn,) = batcher._running - flushing
    turn.cancel()
    for caller in waiting:
        with pytest.raises(asyncio.CancelledError):
            await caller
    release.set()
    await first
    await batcher.submit([3])
    assert flushes == [[0], [3]]


async def test_a_batch_cancelled_after_it_was_given_its_turn_passes_the_turn_on() -> None:
    """Two batches wait for the one flush allowed at a time. The first is given its turn as the
    flush in flight ends, and is cancelled before it runs (a loop shutting down): the turn must
    go on to the next batch, which otherwise waited for a flush that never came."""
    flushes, started, release, flush = gated_flush()
    batcher = Batcher(flush, max_batch=1, in_flight=1)
    first = asyncio.ensure_future(batcher.submit([0]))
    await started.wait()
    flushing = set(batcher._running)
    given = asyncio.ensure_future(batcher.submit([1]))
    await asyncio.sleep(0)  # its batch's task starts, and waits for its turn
    (given_task,) = batcher._running - flushing
    last = asyncio.ensure_future(batcher.submit([2]))
    await asyncio.sleep(0)  # the caller opens its batch...
    await asyncio.sleep(0)  # ...whose task starts
    assert len(batcher._turns) == 2  # both batches wait for their turn
    real_next_turn = batcher._next_turn

    def next_turn_then_cancel() -> None:
        real_next_turn()  # the first flush ended: the second batch is given its turn...
        given_task.cancel()  # ...and cancelled before it runs

    batcher._next_turn = next_turn_then_cancel  # type: ignore[method-assign]
    release.set()
    await first
    with pytest.raises(asyncio.CancelledError):
        await given
    batcher._next_turn = real_next_turn  # type: ignore[method-assign]
    await asyncio.wait_for(last, 5)
    assert flushes == [[0], [2]]
