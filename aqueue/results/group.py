"""GroupResult: one handle on the results of a group's members, awaited without polling.

``await g`` (or ``await g.get(timeout=5)``) returns the members' values as a list, in the order
the group was built. Waiting reads every member in one round trip (``get_many``); for those not
finished yet it subscribes first, reads them again, then waits for their notifications - the
same no-gap, no-poll protocol as :class:`~aqueue.results.result.AsyncResult`, for the whole group.

The member ids of every group sent are saved in the result backend under ``group:<group id>``
(see :func:`meta_key`), so ``await GroupResult.restore(app, group_id)`` or
``app.GroupResult(group_id)`` gets the handle back in another process, as in Celery.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from aqueue import states
from aqueue.exceptions import (
    AqueueError,
    ConfigurationError,
    DecodeError,
    SecurityError,
    TimeoutError,
)
from aqueue.results.record import ResultRecord, outcome
from aqueue.results.result import AsyncResult

if TYPE_CHECKING:
    from aqueue.app import Aqueue
    from aqueue.signing import Signing
    from aqueue.transports import ResultBackend

__all__ = ["GroupResult", "decode_meta", "encode_meta", "meta_key"]


def meta_key(group_id: str) -> str:
    """The result-backend id under which a group's member ids are stored."""
    return f"group:{group_id}"


def encode_meta(group_id: str, task_ids: Sequence[str], signing: Signing | None = None) -> bytes:
    """The stored form of a group: ``{"id": group_id, "results": [task ids in order]}``, signed
    as a result record with ``signing`` (``app.conf.signing``) when given."""
    raw = orjson.dumps({"id": group_id, "results": list(task_ids)})
    return raw if signing is None else signing.results.sign(raw)


def decode_meta(
    raw: bytes, signing: Signing | None = None, group_id: str | None = None
) -> list[str]:
    """The member ids of a stored group record; with ``signing``, its signature is checked,
    and (given ``group_id``, the id it was read for) that it was written for that group.

    Raises:
        DecodeError: ``raw`` is not a group record.
        SecurityError: with ``signing``, the record is unsigned, its signature is bad, or it is
            another group's record copied under ``group_id``.
    """
    if signing is not None:
        signing.results.verify(raw)
    try:
        data = orjson.loads(raw)
        ids = data["results"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise DecodeError(f"malformed group record: {exc}") from exc
    if signing is not None and group_id is not None and data.get("id") != group_id:
        raise SecurityError(
            f"the group record read for group {group_id} was written for another group: "
            f"copied there, not to be trusted"
        )
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise DecodeError("malformed group record: 'results' is not a list of task ids")
    return ids


async def load_ids(
    backend: ResultBackend, group_id: str, signing: Signing | None = None
) -> list[str] | None:
    """The member ids stored for ``group_id``, or ``None`` if none are (expired, or never sent).

    Raises:
        DecodeError: the stored record is not a group record.
        SecurityError: with ``signing`` (``app.conf.signing``), its signature is missing or bad.
    """
    [raw] = await backend.get_many([meta_key(group_id)])
    return None if raw is None else decode_meta(raw, signing, group_id)


class GroupResult:
    """The results of a group's members, in order; returned by ``group(...).delay()``.

    Args:
        id: the group id.
        results: the members' result handles, in order; ``None`` to load them from the result
            backend on first use (``app.GroupResult(group_id)``).
        app: the app; taken from the first result when not given.
        parent: the result of what ran before the group in a chain, if anything.

    Raises:
        ConfigurationError: neither ``app`` nor a result is given.

    Celery's methods are here, awaitable: ``get``, ``ready``, ``successful``, ``failed``,
    ``completed_count``, ``waiting``, ``save``, ``forget``, ``restore``; ``len(g)``, ``g[i]``
    and iteration go over the member results.
    """

    def __init__(
        self,
        id: str,
        results: Sequence[AsyncResult[Any]] | None = None,
        app: Aqueue | None = None,
        parent: AsyncResult[Any] | GroupResult | None = None,
    ) -> None:
        if app is None:
            if not results:
                raise ConfigurationError("GroupResult needs app= when it is given no results")
            app = results[0].app
        self.id = id
        self.app = app
        self.parent = parent
        self._results: list[AsyncResult[Any]] | None = None if results is None else list(results)

    def __repr__(self) -> str:
        n = "?" if self._results is None else len(self._results)
        return f"<GroupResult {self.id} [{n} results]>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GroupResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __await__(self) -> Generator[Any, None, list[Any]]:
        return self.get().__await__()

    # -- members -----------------------------------------------------------------------------

    @property
    def results(self) -> list[AsyncResult[Any]]:
        """The members' result handles, in order.

        Raises:
            AqueueError: the handle was made from an id alone and not loaded yet: await any of
                its methods first, or use ``await GroupResult.restore(app, id)``.
        """
        if self._results is None:
            raise AqueueError(
                f"group {self.id} is not loaded: await one of its methods first, "
                f"or use `await GroupResult.restore(app, {self.id!r})`"
            )
        return self._results

    children = results

    def __iter__(self) -> Iterator[AsyncResult[Any]]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> AsyncResult[Any]:
        return self.results[index]

    async def _members(self) -> list[AsyncResult[Any]]:
        if self._results is None:
            ids = await load_ids(await self.app.result_backend(), self.id, self.app.conf.signing)
            if ids is None:
                raise AqueueError(
                    f"no group {self.id} is stored in the result backend "
                    f"(never sent, expired after result_expires, or forgotten)"
                )
            self._results = [AsyncResult(task_id, self.app) for task_id in ids]
        return self._results

    @classmethod
    async def restore(cls, app: Aqueue, group_id: str) -> GroupResult | None:
        """The group ``group_id`` as saved when it was sent, or ``None`` if none is stored."""
        ids = await load_ids(await app.result_backend(), group_id, app.conf.signing)
        if ids is None:
            return None
        return cls(group_id, [AsyncResult(task_id, app) for task_id in ids], app)

    async def save(self) -> None:
        """Store the member ids under the group id (done for you when a group is sent)."""
        members = await self._members()
        backend = await self.app.result_backend()
        await backend.store(
            [
                (
                    meta_key(self.id),
                    encode_meta(self.id, [r.id for r in members], self.app.conf.signing),
                )
            ],
            self.app.conf.result_expires,
        )

    async def forget(self) -> None:
        """Delete the stored group and every member's result."""
        members = await self._members()
        backend = await self.app.result_backend()
        await backend.delete([meta_key(self.id), *(r.id for r in members)])
        for r in members:
            r._forgot()

    # -- state -------------------------------------------------------------------------------

    async def _refresh(self, members: Sequence[AsyncResult[Any]]) -> None:
        """Read every member not known to be finished, in one round trip."""
        stale = [r for r in members if r._record is None or not r._record.ready]
        if not stale:
            return
        backend = await self.app.result_backend()
        raws = await backend.get_many([r.id for r in stale])
        for r, raw in zip(stale, raws, strict=True):
            if raw is not None:
                r._record = ResultRecord.decode(
                    raw, self.app.accept_results, self.app.conf.signing, r.id
                )

    async def _statuses(self) -> list[str]:
        members = await self._members()
        await self._refresh(members)
        return [r._record.status if r._record else states.PENDING for r in members]

    async def ready(self) -> bool:
        """True once every member has succeeded, failed or been revoked."""
        return all(s in states.READY_STATES for s in await self._statuses())

    async def waiting(self) -> bool:
        """True while any member has not finished."""
        return not await self.ready()

    async def successful(self) -> bool:
        """True if every member succeeded."""
        return all(s == states.SUCCESS for s in await self._statuses())

    async def failed(self) -> bool:
        """True if any member failed."""
        return any(s == states.FAILURE for s in await self._statuses())

    async def completed_count(self) -> int:
        """How many members have succeeded (Celery counts only successes as completed)."""
        return sum(s == states.SUCCESS for s in await self._statuses())

    async def revoke(self, terminate: bool = False) -> None:
        """Revoke every member, as :meth:`AsyncResult.revoke` does one (in one call).

        Members still waiting become ``REVOKED`` at once; ``terminate=True`` also cancels those
        running. A revoked chord member fails its chord when a worker meets its message.

        Raises:
            BrokerConnectionError: the control transport cannot be reached.
        """
        members = await self._members()
        await self.app.control.revoke([r.id for r in members], terminate)
        for r in members:
            r._record = None

    # -- waiting -----------------------------------------------------------------------------

    async def get(self, timeout: float | None = None, propagate: bool = True) -> list[Any]:
        """Wait for every member and return their values, in order.

        Args:
            timeout: seconds to wait at most; ``None`` waits for ever.
            propagate: raise a failed member's exception as soon as one is seen (the first in
                order among those finished); ``False`` puts the exception in the list instead.

        Raises:
            aqueue.exceptions.TimeoutError: ``timeout`` seconds passed first.
            A member's exception (see :meth:`AsyncResult.get`) when ``propagate``.
            ConfigurationError: no result backend is configured.
        """
        members = await self._members()
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                await self._wait(members, propagate)
        except builtins.TimeoutError as exc:
            if not deadline.expired():
                # A member's own exception (an asyncio.wait_for in the task ran out): raised
                # as it is, as documented, not as a group timeout.
                raise
            done = sum(1 for r in members if r._record is not None and r._record.ready)
            raise TimeoutError(
                f"group {self.id}: {done} of {len(members)} tasks finished within {timeout:g}s"
            ) from exc
        values = []
        for r in members:
            assert r._record is not None
            values.append(outcome(r._record))
        return values

    async def _wait(self, members: list[AsyncResult[Any]], propagate: bool) -> None:
        await self._refresh(members)
        if propagate:
            _raise_first_failure(members)
        pending = [r for r in members if r._record is None or not r._record.ready]
        if not pending:
            return
        backend = await self.app.result_backend()
        async with contextlib.AsyncExitStack() as stack:
            # Subscribe first, then read again: a result stored in between is not missed.
            queues = [await stack.enter_async_context(backend.watch(r.id)) for r in pending]
            await self._refresh(pending)
            waiters: dict[asyncio.Task[None], AsyncResult[Any]] = {}
            for r, queue in zip(pending, queues, strict=True):
                if r._record is None or not r._record.ready:
                    waiters[asyncio.create_task(self._until_ready(r, queue))] = r
            if propagate:
                _raise_first_failure(members)
            try:
                while waiters:
                    done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        waiters.pop(task)
                        task.result()
                    if propagate:
                        _raise_first_failure(members)
            finally:
                for task in waiters:
                    task.cancel()
                await asyncio.gather(*waiters, return_exceptions=True)

    async def _until_ready(self, result: AsyncResult[Any], queue: asyncio.Queue[bytes]) -> None:
        while result._record is None or not result._record.ready:
            raw = await queue.get()
            result._record = ResultRecord.decode(
                raw, self.app.accept_results, self.app.conf.signing, result.id
            )


def _raise_first_failure(members: Sequence[AsyncResult[Any]]) -> None:
    for r in members:
        rec = r._record
        if rec is not None and rec.ready and rec.status != states.SUCCESS:
            raise outcome(rec)
