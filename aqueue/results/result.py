"""Result handles: await a task's outcome without polling.

``await r`` (or ``await r.get(timeout=5)``) subscribes to the task's record in the result backend,
then reads it, then waits for the next change - so a result stored between the read and the wait
is never missed, and no client polls a Redis server. Every state change (``RECEIVED``,
``STARTED``, ``RETRY``, custom ``PROGRESS``...) reaches ``on_message`` as Celery's dict.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from aqueue import states
from aqueue.exceptions import TimeoutError
from aqueue.results.mailbox import Mailbox
from aqueue.results.record import ResultRecord, outcome
from aqueue.results.stream import follow, item_key

if TYPE_CHECKING:
    from aqueue.app import Aqueue
    from aqueue.results.group import GroupResult

R = TypeVar("R")
T = TypeVar("T")
#: Celery's ``on_message``: called (sync or async) with ``{"task_id", "status", "result"}``.
OnMessage = Callable[[dict[str, Any]], Any]
OnMessageArg = OnMessage | None
#: Returns a task's next records (``None``: nothing stored yet); see ``AsyncResult._updates``.
NextRecords = Callable[[], Awaitable[list[ResultRecord | None]]]


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """What :meth:`AsyncResult.info` returns.

    Attributes:
        state: the task's state name.
        result: the return value (SUCCESS), the rebuilt exception (FAILURE/RETRY/REVOKED), the
            custom state's meta, or ``None`` while PENDING.
        traceback: the worker's formatted traceback of a failure, or ``None``.
        meta: a custom state's meta dict (``None`` for built-in states).
        date_done: when the record was written (UTC), or ``None`` while PENDING.
        retries: retries used so far.
    """

    state: str
    result: Any
    traceback: str | None
    meta: Any
    date_done: datetime | None
    retries: int


class AsyncResult(Generic[R]):
    """A handle on a task's outcome, returned by ``delay``/``apply_async``; cheap to create.

    Attributes:
        id: the task id.
        result: the last outcome seen by this handle (value or exception), without I/O;
            ``None`` until the task is seen finished.
        traceback: the worker's traceback of a failure seen by this handle, else ``None``.
    """

    def __init__(
        self,
        task_id: str,
        app: Aqueue,
        task_name: str | None = None,
        mailbox: Mailbox | None = None,
    ) -> None:
        """Args:
        task_id: the task's id.
        app: the app whose result backend holds the task's records.
        task_name: the task's name, where known.
        mailbox: where the task's records arrive on this client's reply channel
            (:class:`~aqueue.transports.ReplyChannels`), given by the send that made the
            handle; without one, awaiting watches the task's own record.
        """
        self.id = task_id
        self.app = app
        self.task_name = task_name
        self.parent: AsyncResult[Any] | GroupResult | None = None  # what ran before, in a chain
        self._record: ResultRecord | None = None
        self._mailbox = mailbox
        self._forgotten = 0  # records of the mailbox that arrived before forget(): skipped

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __await__(self) -> Generator[Any, None, R]:
        return self.get().__await__()

    @property
    def result(self) -> Any:
        rec = self._record
        if rec is None or not rec.ready:
            return None
        return outcome(rec)

    @property
    def traceback(self) -> str | None:
        return self._record.traceback if self._record is not None else None

    # -- result_extended (Celery's): read from the last record seen, no I/O -----------------

    @property
    def name(self) -> str | None:
        """The task's name: from the last record seen, else the one the handle was made with."""
        rec = self._record
        return rec.name if rec is not None and rec.name else self.task_name

    @property
    def args(self) -> tuple[Any, ...] | None:
        """The task's positional arguments, with ``result_extended`` on, from the last record
        seen (after ``await r``, ``await r.state()`` or ``await r.info()``); else ``None``."""
        return self._record.args if self._record is not None else None

    @property
    def kwargs(self) -> dict[str, Any] | None:
        """The task's keyword arguments (``result_extended``; see :attr:`args`)."""
        return self._record.kwargs if self._record is not None else None

    @property
    def worker(self) -> str | None:
        """The hostname of the worker that ran it (``result_extended``; see :attr:`args`)."""
        return self._record.worker if self._record is not None else None

    @property
    def queue(self) -> str | None:
        """The queue its message was taken from (``result_extended``; see :attr:`args`)."""
        return self._record.queue if self._record is not None else None

    async def _read(self) -> ResultRecord | None:
        backend = await self.app.result_backend()
        [raw] = await backend.get_many([self.id])
        # Nothing stored means PENDING now, even if this handle saw an outcome before (forgotten).
        self._record = (
            None
            if raw is None
            else ResultRecord.decode(raw, self.app.accept_results, self.app.conf.signing, self.id)
        )
        return self._record

    async def get(
        self, timeout: float | None = None, propagate: bool = True, on_message: OnMessageArg = None
    ) -> R:
        """Wait for the task to finish and return its value.

        Args:
            timeout: seconds to wait at most; ``None`` waits for ever.
            propagate: re-raise a failed task's exception (``False``: return it instead).
            on_message: called (sync or async) with ``{"task_id", "status", "result"}`` for every
                state seen, including custom ones (their ``result`` is the meta).

        Raises:
            aqueue.exceptions.TimeoutError: ``timeout`` seconds passed first.
            Exception: the task's own exception (or ``TaskError`` where its type cannot be
                imported) when it failed.
            TaskRevokedError: the task was revoked or expired.
            ConfigurationError: no result backend is configured.
            BrokerConnectionError: the result backend cannot be reached, or was closed
                (``app.close()``) while this waited.
        """
        rec = self._record
        if rec is None or not rec.ready:
            rec = await self._wait(timeout, on_message)
        value = outcome(rec)
        if rec.status != states.SUCCESS and propagate:
            raise value
        return value  # type: ignore[no-any-return]

    async def _wait(self, timeout: float | None, on_message: OnMessage | None) -> ResultRecord:
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline, self._updates() as more:
                return await self._follow(more, on_message)
        except builtins.TimeoutError as exc:
            if not deadline.expired():
                # Not the deadline: raised inside (by on_message, say), so raised as it is.
                raise
            state = self._record.status if self._record else states.PENDING
            raise TimeoutError(
                f"task {self.id} did not finish within {timeout:g}s (state {state})"
            ) from exc

    @contextlib.asynccontextmanager
    async def _updates(self) -> AsyncIterator[NextRecords]:
        """A function returning the task's next records: first what is stored, then each change
        (used by :meth:`get` and :meth:`stream`).

        With a mailbox on ``backend`` (the sender's reply channel, live before the message was
        sent) every record of the task is in it, no read needed first; each caller reads it
        from the start, at its own position. Without one the task's records are watched,
        subscribed before the first read so nothing is missed.
        """
        backend = await self.app.result_backend()
        accept, signing = self.app.accept_results, self.app.conf.signing

        def decoded(raws: list[bytes]) -> list[ResultRecord | None]:
            return [ResultRecord.decode(raw, accept, signing, self.id) for raw in raws]

        mailbox = self._mailbox
        if mailbox is not None and mailbox.owner is backend:
            position = self._forgotten

            async def from_mailbox() -> list[ResultRecord | None]:
                nonlocal position
                raws = await mailbox.read_from(position)
                position += len(raws)
                return decoded(raws)

            yield from_mailbox
            return
        async with backend.watch(self.id) as changes:
            first = True

            async def from_watch() -> list[ResultRecord | None]:
                nonlocal first
                if first:
                    first = False
                    return [await self._read()]
                return decoded([await changes.get()])

            yield from_watch

    async def _follow(self, more: NextRecords, on_message: OnMessage | None) -> ResultRecord:
        """Go through what ``more()`` returns until a record is ready.

        A record equal in state and date to the one before (read back after a reconnect) is
        skipped; ``on_message`` sees every other one.
        """
        seen: tuple[str, float] | None = None
        while True:
            for rec in await more():
                if rec is None or (rec.status, rec.date_done) == seen:
                    continue
                seen = (rec.status, rec.date_done)
                self._record = rec
                if on_message is not None:
                    await _call(on_message, _message(rec))
                if rec.ready:
                    return rec

    def stream(self, timeout: float | None = None) -> AsyncIterator[Any]:
        """The items the task yields, as they come: ``async for token in r.stream(): ...``.

        For a task whose function is an async generator: every item it yields, in order, each
        as soon as the worker has stored it (pushed over the result backend, no polling); a
        reader that starts late still gets every item from the first. The stream ends when the
        task succeeds (its result, ``await r``, is the list of the items). Any other task
        streams one item: its return value. See :mod:`aqueue.results.stream`.

        Args:
            timeout: seconds to wait at most for each next item; ``None`` waits for ever.

        Raises:
            aqueue.exceptions.TimeoutError: no item came within ``timeout`` seconds.
            Exception: the task's own exception when it failed (raised after the items it
                yielded before failing).
            TaskRevokedError: the task was revoked or expired.
            StreamError: a stored item is missing (expired with ``result_expires``).
            ConfigurationError: no result backend is configured.
        """
        return follow(self, timeout)

    async def state(self) -> str:
        """The task's current state name (``PENDING`` when nothing is stored yet)."""
        rec = await self._read()
        return rec.status if rec else states.PENDING

    status = state

    async def ready(self) -> bool:
        """True once the task succeeded, failed or was revoked."""
        rec = await self._read()
        return rec is not None and rec.ready

    async def successful(self) -> bool:
        """True if the task succeeded."""
        return await self.state() == states.SUCCESS

    async def failed(self) -> bool:
        """True if the task failed."""
        return await self.state() == states.FAILURE

    async def info(self) -> TaskInfo:
        """The stored record in full: state, result, traceback, meta, date_done, retries."""
        rec = await self._read()
        if rec is None:
            return TaskInfo(states.PENDING, None, None, None, None, 0)
        custom = rec.status not in states.ALL_STATES
        return TaskInfo(
            state=rec.status,
            result=outcome(rec),
            traceback=rec.traceback,
            meta=rec.result if custom else None,
            date_done=datetime.fromtimestamp(rec.date_done, UTC) if rec.date_done else None,
            retries=rec.retries,
        )

    async def forget(self) -> None:
        """Delete the stored record (and the stored items of a streamed task this handle has
        seen, :meth:`stream`); the state reads PENDING afterwards, and :meth:`get` waits for a
        record stored after this (the task run again under its id), as for any pending task."""
        backend = await self.app.result_backend()
        rec, ids = self._record, [self.id]
        if rec is not None and rec.streamed:
            ids += [item_key(self.id, i) for i in range(rec.streamed)]
        await backend.delete(ids)
        self._forgot()

    def _forgot(self) -> None:
        """Drop what this handle saw of its task (its records were deleted)."""
        self._record = None
        if self._mailbox is not None:
            # What came before reads as forgotten too: a wait sees only later records.
            self._forgotten = self._mailbox.size()

    async def revoke(self, terminate: bool = False) -> None:
        """Make sure the task never runs: its state becomes ``REVOKED``, on every worker, also
        on workers started later (see :mod:`aqueue.worker.revoke`). ``terminate=True`` also cancels
        it if it is running (a plain function in a thread runs on, its result discarded).

        Raises:
            BrokerConnectionError: the control transport cannot be reached.
        """
        await self.app.control.revoke(self.id, terminate)
        self._record = None

    def then(
        self,
        on_done: Callable[[AsyncResult[R]], T | Awaitable[T]],
        on_error: Callable[[AsyncResult[R]], Any] | None = None,
    ) -> asyncio.Task[T]:
        """Call ``on_done(self)`` (sync or async) when the task succeeds.

        ``on_error(self)`` is called instead when it fails; without ``on_error`` the failure is
        raised by the returned awaitable. Returns an ``asyncio.Task`` that yields ``on_done``'s
        value; it runs on the current loop (the app keeps a reference until it finishes).
        """

        async def run() -> T:
            try:
                await self.get()
            except Exception:
                if on_error is None:
                    raise
                await _call(on_error, self)
                return None  # type: ignore[return-value]
            return await _call(on_done, self)  # type: ignore[no-any-return]

        return self.app.spawn(run())


def _message(rec: ResultRecord) -> dict[str, Any]:
    return {
        "task_id": rec.task_id,
        "status": rec.status,
        "result": rec.result,
        "traceback": rec.traceback,
        "date_done": rec.date_done,
    }


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    value = fn(*args)
    if inspect.isawaitable(value):
        value = await value
    return value
