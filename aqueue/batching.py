"""Coalescing concurrent calls into one: the batcher behind publishing and finishing tasks.

Coroutines that call :meth:`Batcher.submit` in the same turn of the event loop share one call of
the flush function (one broker round trip instead of one each); each caller returns once the
flush that carried its items is done, and gets its error if that flush failed. A flush may
instead fail only some items (it returns their errors by index, e.g. a publish whose batch was
cut mid-way): then only the callers of those items get an error. No timer is involved, so a
lone caller waits no longer than it would alone.
"""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

#: What a flush may return: ``None`` (every item done), or the error of each failed item by
#: its index in the batch (the others are done).
ItemErrors = Mapping[int, BaseException] | None


class _Batch(Generic[T]):
    # One future per caller (not one shared future each caller shields: that costs an extra
    # future and two callbacks per caller); a cancelled caller's future is skipped.
    __slots__ = ("items", "waiters")

    def __init__(self) -> None:
        self.items: list[T] = []
        self.waiters: list[asyncio.Future[ItemErrors]] = []

    def settle(self, errors: ItemErrors, exc: BaseException | None = None) -> None:
        """Wake every caller still waiting: with ``errors``, or raising ``exc``."""
        for waiter in self.waiters:
            if waiter.done():  # its caller was cancelled
                continue
            if exc is None:
                waiter.set_result(errors)
            elif isinstance(exc, asyncio.CancelledError):  # the flush was cancelled (shutdown)
                waiter.cancel()
            else:
                waiter.set_exception(exc)


class Batcher(Generic[T]):
    """Batches items from concurrent callers into calls of ``flush(items)``.

    Args:
        flush: called with the items of one batch, in submission order. Raising fails every
            caller of the batch; returning errors by item index fails only the callers of
            those items (see :data:`ItemErrors`).
        max_batch: a batch with this many items is flushed at once.
        in_flight: at most this many flushes at once (``None``: no bound). A batch opened
            while that many are in flight stays open, taking every caller that comes, until
            one of them ends: under load a batch then covers a flush's round trip, however the
            callers trickle in, and a lone caller still waits for no flush but its own.

    A batch is flushed by a task started when it is opened, whose first step runs after every
    callback already queued in that turn of the loop, so callers woken together land in one
    flush, and a lone caller waits one loop turn at most.
    """

    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[ItemErrors]],
        max_batch: int = 1000,
        in_flight: int | None = None,
    ) -> None:
        self._flush_fn = flush
        self.max_batch = max_batch
        self._in_flight = in_flight
        self._flushing = 0  # flushes in progress
        self._turns: collections.deque[asyncio.Future[None]] = collections.deque()
        self._batch: _Batch[T] | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, items: Sequence[T]) -> None:
        """Add ``items`` to the open batch and wait until it has been flushed.

        Raises:
            Whatever ``flush`` raised for the batch that carried these items, or the error it
            returned for the first of these items that failed.
        """
        batch = self._batch
        if batch is None:
            batch = self._batch = _Batch()
            # The flush task's first step runs after the callbacks already queued in this turn
            # (the other callers woken with us): it closes the batch, then flushes it.
            task = asyncio.ensure_future(self._run(batch))
            self._running.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(functools.partial(self._ended, batch))
        first = len(batch.items)
        batch.items.extend(items)
        if len(batch.items) >= self.max_batch:
            self._batch = None  # full: later callers open the next batch
        waiter: asyncio.Future[ItemErrors] = asyncio.get_running_loop().create_future()
        batch.waiters.append(waiter)
        errors = await waiter
        if errors:
            for index in range(first, first + len(items)):
                error = errors.get(index)
                if error is not None:
                    raise error

    async def _run(self, batch: _Batch[T]) -> None:
        if self._in_flight is not None and self._flushing >= self._in_flight:
            turn = asyncio.get_running_loop().create_future()
            self._turns.append(turn)
            try:
                await turn  # the batch stays open meanwhile, unless it fills up
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._next_turn()  # given its turn, then cancelled: the next batch's now
                raise
        if self._batch is batch:
            self._batch = None
        self._flushing += 1
        try:
            errors = await self._flush_fn(batch.items)
        except BaseException as exc:
            batch.settle(None, exc)
            raise
        else:
            batch.settle(errors)
        finally:
            self._flushing -= 1
            self._next_turn()

    def _next_turn(self) -> None:
        """Let the oldest batch waiting for a flush to end go (one that is still waiting)."""
        while self._turns:
            turn = self._turns.popleft()
            if not turn.done():
                turn.set_result(None)
                return

    def _ended(self, batch: _Batch[T], task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if task.cancelled():
            # Cancelled (a shutdown) while waiting for its turn, or even before its first step,
            # when none of ``_run`` ran: close the batch and cancel the callers still waiting.
            if self._batch is batch:
                self._batch = None
            batch.settle(None, asyncio.CancelledError())
        else:
            task.exception()  # it reached every caller of the batch; don't log it again
