"""Coalescing concurrent calls into one: the batcher behind publishing and finishing tasks.

Coroutines that call :meth:`Batcher.submit` in the same turn of the event loop share one call of
the flush function (one broker round trip instead of one each); each caller returns once the
flush that carried its items is done, and gets its error if that flush failed. No timer is
involved, so a lone caller waits no longer than it would alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class _Batch(Generic[T]):
    __slots__ = ("done", "items")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.items: list[T] = []
        self.done: asyncio.Future[None] = loop.create_future()
        # Callers may all be cancelled before a failed flush ends: mark the error as seen.
        self.done.add_done_callback(_consume)


class Batcher(Generic[T]):
    """Batches items from concurrent callers into calls of ``flush(items)``.

    Args:
        flush: called with the items of one batch, in submission order.
        max_batch: a batch with this many items is flushed at once.

    A batch is flushed by a task started when it is opened, whose first step runs after every
    callback already queued in that turn of the loop, so callers woken together land in one
    flush, and a lone caller waits one loop turn at most.
    """

    def __init__(self, flush: Callable[[list[T]], Awaitable[None]], max_batch: int = 1000) -> None:
        self._flush_fn = flush
        self.max_batch = max_batch
        self._batch: _Batch[T] | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, items: Sequence[T]) -> None:
        """Add ``items`` to the open batch and wait until it has been flushed.

        Raises:
            Whatever ``flush`` raised for the batch that carried these items.
        """
        batch = self._batch
        if batch is None:
            batch = self._batch = _Batch(asyncio.get_running_loop())
            # The flush task's first step runs after the callbacks already queued in this turn
            # (the other callers woken with us): it closes the batch, then flushes it.
            task = asyncio.ensure_future(self._run(batch))
            self._running.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self._running.discard)
            task.add_done_callback(_consume)
        batch.items.extend(items)
        if len(batch.items) >= self.max_batch:
            self._batch = None  # full: later callers open the next batch
        await asyncio.shield(batch.done)

    async def _run(self, batch: _Batch[T]) -> None:
        if self._batch is batch:
            self._batch = None
        try:
            await self._flush_fn(batch.items)
        except BaseException as exc:
            batch.done.set_exception(exc)
            raise
        else:
            batch.done.set_result(None)


def _consume(fut: asyncio.Future[None]) -> None:
    # The error reached every caller through the batch's future; don't log it again.
    if not fut.cancelled():
        fut.exception()
