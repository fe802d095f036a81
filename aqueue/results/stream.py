"""Reading a streamed task's items as they come: ``async for item in r.stream()``.

A task whose function is an async generator yields items; the worker stores each one
(:mod:`aqueue.worker.stream`) as a ``STREAMING`` record under the task id - which wakes waiters
over the result backend's push path, as any state change does - and under the item's own key
(:func:`item_key`), numbered from 0. The task's result is the list of every item it yielded,
in order: what a caller of a token stream wants once it is over (``"".join(await r)``), and
``(await r)[-1]`` is the last one.

:func:`follow` subscribes first, then reads, then waits, as ``get()`` does, so nothing is
missed; each record names its item's number, so a record seen twice is skipped and a gap (a
reader that came late, a backend that coalesced notifications, a reconnect) is filled from the
items' keys in one read. The task's final record ends the stream: a success yields the items
not yet yielded from its result; a failure yields the stored items not yet yielded, then
raises the task's exception.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aqueue import states
from aqueue.exceptions import ConfigurationError, StreamError, TimeoutError
from aqueue.results.record import ResultRecord, outcome

if TYPE_CHECKING:
    from aqueue.results.result import AsyncResult
    from aqueue.transports import ResultBackend

__all__ = ["follow", "item_key"]

#: Item keys read per ``get_many`` round trip when catching up.
CHUNK = 500


def item_key(task_id: str, index: int) -> str:
    """Where item number ``index`` (from 0) of ``task_id``'s stream is stored."""
    return f"{task_id}:stream:{index}"


async def follow(result: AsyncResult[Any], timeout: float | None) -> AsyncIterator[Any]:
    """The items of ``result``'s task, in order, as they are stored (see the module docstring).

    Args:
        result: the task's handle.
        timeout: seconds to wait at most for each next item (``None``: no limit).

    Raises:
        aqueue.exceptions.TimeoutError: no item came within ``timeout`` seconds.
        The task's exception when it failed (after the items it yielded first);
        ``TaskRevokedError`` when it was revoked.
        StreamError: a stored item is missing (expired or forgotten).
    """
    backend = await result.app.result_backend()
    reader = _Reader(result, backend)
    async with result._updates() as more:
        while True:
            deadline = asyncio.timeout(timeout)
            try:
                async with deadline:
                    records = await more()
            except builtins.TimeoutError as exc:
                if not deadline.expired():
                    raise  # not this wait's deadline: raised as it is
                raise TimeoutError(
                    f"task {result.id} streamed no item within {timeout:g}s "
                    f"({reader.position} item(s) so far)"
                ) from exc
            for rec in records:
                if rec is None:
                    continue
                for item in await reader.take(rec):
                    yield item
                if reader.failed is not None:
                    raise reader.failed
                if reader.done:
                    return


class _Reader:
    """Turns a task's records into its items, each once and in order."""

    def __init__(self, result: AsyncResult[Any], backend: ResultBackend) -> None:
        self.result = result
        self.backend = backend
        self.position = 0  # items handed out so far
        self.written = 0.0  # when the last item handed out was stored (epoch seconds)
        self.done = False
        self.failed: BaseException | None = None

    async def take(self, rec: ResultRecord) -> list[Any]:
        """The items ``rec`` brings that were not handed out yet; sets :attr:`done` or
        :attr:`failed` when it ends the stream."""
        if rec.status == states.STREAMING and rec.streamed is not None:
            index = rec.streamed - 1
            if index < self.position:
                return []  # seen already
            self.result._record = rec
            items = await self._stored(index) if index > self.position else []
            items.append(rec.result)
            self.position += len(items)
            self.written = rec.date_done
            return items
        if not rec.ready:
            return []  # STARTED, RETRY, a custom state: no item
        self.result._record = rec
        self.done = True
        if rec.status == states.SUCCESS:
            if rec.streamed is None:  # not a streamed task: its one value
                return [rec.result] if self.position == 0 else []
            rest = list(rec.result[self.position :]) if isinstance(rec.result, list) else []
            self.position += len(rest)
            return rest
        items = await self._stored(None, rec)
        self.position += len(items)
        self.failed = outcome(rec)
        return items

    async def _stored(self, end: int | None, final: ResultRecord | None = None) -> list[Any]:
        """The stored items from :attr:`position` up to ``end`` (excluded; ``None``: up to the
        first missing one, or with ``final`` - the record the run ended with - up to the first
        one not stored by that run: see :func:`_stale`).

        Raises:
            StreamError: with an ``end``, an item before it is missing.
        """
        result, start = self.result, self.position
        accept, signing = result.app.accept_results, result.app.conf.signing
        items: list[Any] = []
        written = self.written
        while end is None or start < end:
            stop = start + CHUNK if end is None else min(end, start + CHUNK)
            keys = [item_key(result.id, i) for i in range(start, stop)]
            try:
                found = await self.backend.get_many(keys)
            except ConfigurationError:
                # rpc:// stores nothing; its reply queue brought every record in order.
                return items
            for number, raw in enumerate(found, start + 1):
                rec = None if raw is None else ResultRecord.decode(raw, accept, signing, result.id)
                if rec is None or rec.streamed != number or _stale(rec, final, written):
                    if end is None:
                        return items
                    raise StreamError(
                        f"item {number - 1} of task {result.id}'s stream is not stored (expired "
                        f"with result_expires, or forgotten)"
                    )
                items.append(rec.result)
                written = rec.date_done
            start = stop
        return items


def _stale(rec: ResultRecord, final: ResultRecord | None, written: float) -> bool:
    """True if item record ``rec`` was left by an earlier run than the one that ended with
    ``final`` (``None``: any run's item is taken), its previous item being stored at
    ``written`` (epoch seconds; 0: it is the first).

    A run stores its items from number 0, over those of a run before it (retried, or whose
    worker died), and only as far as it gets: the keys past its last item may still hold an
    earlier run's. Such an item has fewer ``retries`` (a retry), or was stored before the item
    before it (a run again after a dead worker: its lease had to run out first).
    """
    return final is not None and (rec.retries != final.retries or rec.date_done < written)
