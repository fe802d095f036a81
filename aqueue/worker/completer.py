"""Finishing messages in batches: store many results in one round trip, then ack many.

Every finished task needs two writes: its result in the result backend, then the ack of its
message in the broker - in that order, so a crash between them means the message is delivered
again rather than its result lost (at-least-once). Done one task at a time that is two round
trips per task, and the worker's CPU goes into client overhead. The completer coalesces: runners
that finish in the same turn of the event loop share one ``backend.store`` call and then one
``broker.ack`` call, and each runner still returns only after its own message is acked.

On a broker that tracks runs (:class:`~aqueue.transports.base.RunTracking`) the marks of runs
about to start travel here too, in the same broker call as the acks: a runner that finishes
one message hands in the start of its next one with the ack, so marking costs neither a round
trip nor a wait of its own. Where the broker can (:class:`~aqueue.transports.base.WrittenStarts`)
that call is only written, once the results are stored: the runners go on to their next tasks
without waiting for its answer, which is read while they run, so a busy runner waits for one
round trip per task (the store), not two. Marks with no ack to ride on (the runners of an idle
worker starting) are only written too.

One batch is finished at a time: runners that finish while a batch is being stored and acked
join the next one, which is finished as a whole when the first is done. On a broker that
pushes deliveries one at a time (RabbitMQ) runners finish a few per loop turn, and batches
then cover a round trip instead of a turn; a lone runner still waits for no batch but its own.

A result backend that cannot be reached (a dropped connection, or no answer within
:attr:`Completer.timeout` seconds: a connection the network left open but silent) loses
nothing and fails nothing: the records are stored again, on a fresh connection, after a pause
shared by every runner waiting (:data:`STORE_BACKOFF`), until the backend takes them; their
messages stay leased meanwhile (the worker renews their leases). Only records the backend
*refuses* fail their caller (:class:`NotStored`): an error other than a connection error (a
serialisation error, an error reply about the value), or a connection error repeated
:data:`REFUSALS` times in a row while the backend answers a read right after each (Redis
closes the connection on a value larger than its ``proto-max-bulk-len``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, TypeVar

from aqueue.batching import Batcher, ItemErrors
from aqueue.exceptions import BrokerConnectionError, BrokerError
from aqueue.transports import Broker, Delivery, RunTracking, WrittenStarts

if TYPE_CHECKING:
    from aqueue.dependencies import Dependencies
    from aqueue.transports import Records, ReplyTo, ResultBackend

logger = logging.getLogger(__name__)

#: Seconds a store may wait for the result backend's answer (the worker sets
#: ``broker_connection_timeout``, which bounds a send's round trips too); past it the store
#: counts as a connection failure and is tried again on a fresh connection.
STORE_TIMEOUT = 4.0
#: Seconds between the tries of records the result backend could not be reached for: the first
#: pause, doubled after each failed try up to the last, back to the first once a store works.
STORE_BACKOFF = (0.1, 2.0)
#: Tries in a row that fail with a connection error while the backend answers a read right
#: after each: the records are then taken as refused (:class:`BackendUnreachable` with
#: ``answering``), not the backend as away.
REFUSALS = 3

Run = tuple[Delivery, bool]  # a delivery about to run, and whether as an isolated suspect
_T = TypeVar("_T")
_Item = tuple[Sequence[tuple[str, bytes]], Sequence[Delivery], str | None, Run | None]


class NotStored(BrokerError):
    """The records of a :meth:`Completer.finish` call were not stored, so none of its messages
    was acked (they stay leased: delivered again after the visibility timeout).

    Attributes:
        reason: the result backend's error for these records (a ``BrokerConnectionError``, a
            ``SerializationError``, or any error the backend raised).
    """

    def __init__(self, reason: Exception) -> None:
        super().__init__(f"result not stored: {reason}")
        self.reason = reason


class BackendUnreachable(NotStored, BrokerConnectionError):
    """:class:`NotStored` because the result backend could not be reached (``reason``).

    Attributes:
        answering: the backend answered a read made right after the failure: the connection
            error may be its way of refusing these records (Redis closes the connection on a
            value larger than its ``proto-max-bulk-len``), not an outage.
    """

    def __init__(self, reason: Exception, answering: bool = False) -> None:
        super().__init__(reason)
        self.answering = answering


def not_stored(reason: Exception, answering: bool = False) -> NotStored:
    """The :class:`NotStored` of ``reason``: a :class:`BackendUnreachable` (with ``answering``)
    if it is a ``BrokerConnectionError``."""
    if isinstance(reason, BrokerConnectionError):
        return BackendUnreachable(reason, answering)
    return NotStored(reason)


class Completer:
    """Coalesces result stores and acks from concurrent runners.

    Args:
        broker: where acks go.
        backend: where results go, or ``None`` when results are not stored.
        expires: seconds results are kept (the ``result_expires`` setting), or ``None``.
        max_batch: flush at once when a batch holds this many calls.

    One batch is stored and acked at a time (:class:`~aqueue.batching.Batcher`'s
    ``in_flight=1``); calls made meanwhile wait in the next batch.

    Attributes:
        timeout: seconds a store may wait for the backend's answer (:data:`STORE_TIMEOUT`;
            the worker sets ``broker_connection_timeout``), ``None`` for no bound. A store
            past it counts as a connection failure, and is tried again.
    """

    def __init__(
        self,
        broker: Broker,
        backend: ResultBackend | None,
        expires: float | None,
        max_batch: int = 500,
    ) -> None:
        self.broker = broker
        self.backend = backend
        self.expires = expires
        self.tracker = broker if isinstance(broker, RunTracking) else None
        tracks = self.tracker is not None
        self.early = broker if tracks and isinstance(broker, WrittenStarts) else None
        self._batcher: Batcher[_Item] = Batcher(self._flush, max_batch, in_flight=1)
        self._answers: set[asyncio.Future[None]] = set()  # of marks written, not answered yet
        self._lost: set[int] = set()  # ids of runs whose lease was found lost when marked
        self.timeout: float | None = STORE_TIMEOUT
        # Records the backend could not be reached for wait for one shared pause, so that their
        # callers try again together, in one batch; the pause doubles while tries fail.
        self._retry: asyncio.Future[None] | None = None
        self._pause = STORE_BACKOFF[0]
        self._failing = False  # an outage was logged, not its end yet
        # Settlings of waiting tasks that did not answer in time: left to end on their own
        # (see _store_records), kept referenced until then.
        self._abandoned: set[asyncio.Future[None]] = set()
        # Stores the records in place of the backend's plain store (one round trip that also
        # says which of them tasks wait for) and settles the tasks sent after= them, before the
        # acks; set by the executor when the backend keeps waiter sets.
        self.dependencies: Dependencies | None = None

    async def finish(
        self,
        records: Sequence[tuple[str, bytes]],
        acks: Sequence[Delivery],
        reply_to: str | None = None,
        start: Run | None = None,
    ) -> bool:
        """Store ``records`` then ack ``acks``, batched with other runners' calls.

        ``records`` are ``(task id, encoded record)`` pairs; ``reply_to`` is the sender's reply
        channel (the message's ``reply_to``), where the backend also publishes them. ``start``
        is a run to mark as started along with the acks (only on a RunTracking broker).

        Returns:
            False if the lease of ``start`` was found lost (another consumer has the message:
            it must not run here); True otherwise.

        While the backend cannot be reached (connection errors, or no answer within
        :attr:`timeout` seconds) ``records`` are stored again after a pause (see
        :data:`STORE_BACKOFF`) until it takes them: this waits as long as the backend is away,
        and the message stays leased meanwhile.

        Raises:
            NotStored: ``records`` were not stored because the backend refused them (an error
                other than a connection error, or :class:`BackendUnreachable` with
                ``answering`` after :data:`REFUSALS` tries in a row); nothing of this call was
                acked. The records of the other callers in the batch are stored alone then,
                so that one record the backend refuses (too large, not storable) fails only
                its own caller.
            BrokerConnectionError (or any error of the broker): the records were stored but
                the acks failed; every caller in the batch gets the error, and its messages
                stay leased, so they are delivered again after the visibility timeout
                (nothing is lost).
        """
        item = (records, acks, reply_to, start)
        try:
            await self._batcher.submit([item])
        except BackendUnreachable as exc:
            await self._store_again(item, exc)
        if start is None or id(start[0]) not in self._lost:
            return True
        self._lost.discard(id(start[0]))
        return False

    async def _store_again(self, item: _Item, exc: BackendUnreachable) -> None:
        """Submit ``item`` again after the shared pause, until its records are stored.

        Raises:
            BackendUnreachable: ``exc`` (or a later try's), once :data:`REFUSALS` tries in a
                row failed while the backend answered right after each: the records
                themselves are what it does not take.
            NotStored: a try failed with another error (a refusal).
            BrokerError: the records were stored but the acks failed (as :meth:`finish`).
        """
        refused = 0
        while True:
            # Counted in a row only: a try that found the backend away is no refusal.
            refused = refused + 1 if exc.answering else 0
            if refused >= REFUSALS:
                raise exc
            self._outage(exc)
            await self._wait_to_retry()
            try:
                await self._batcher.submit([item])
            except BackendUnreachable as again:
                exc = again
            else:
                self._recovered()
                return

    async def _wait_to_retry(self) -> None:
        """Wait for the pause before the next try, shared by all the callers waiting now (they
        then try again in one batch); each pause is twice the last, up to
        ``STORE_BACKOFF[1]`` seconds."""
        retry = self._retry
        if retry is None or retry.done():
            loop = asyncio.get_running_loop()
            retry = self._retry = loop.create_future()
            loop.call_later(self._pause, _resolve, retry)
            self._pause = min(self._pause * 2, STORE_BACKOFF[1])
        # Shielded: a caller cancelled (a shutdown) does not cancel the others' pause.
        await asyncio.shield(retry)

    def _outage(self, exc: BackendUnreachable) -> None:
        """Log that results are waiting for the backend: once per outage, then at debug."""
        if self._failing:
            logger.debug("results still not stored: %s", exc)
            return
        self._failing = True
        logger.warning(
            "%s; trying again every %gs at most until the result backend takes them (their "
            "messages stay leased)",
            exc,
            STORE_BACKOFF[1],
        )

    def _recovered(self) -> None:
        """A store worked again: the next outage starts from the first pause."""
        self._pause = STORE_BACKOFF[0]
        if self._failing:
            self._failing = False
            logger.warning("the result backend takes results again")

    async def settled(self) -> None:
        """Wait for the answers to the marks only written (:meth:`premark`, and batches of
        marks alone): before a worker hands back what it holds, so that no mark is still on its
        way."""
        if self._answers:
            await asyncio.gather(*self._answers, return_exceptions=True)

    async def premark(self, runs: Sequence[Run], acks: Sequence[Delivery] = ()) -> bool:
        """Write the acks of ``acks`` and the marks of ``runs``, about to be taken by runners,
        without waiting for the answer (a :class:`~aqueue.transports.base.WrittenStarts`
        broker): the fetcher marks what it hands straight to idle runners, and a flush the
        next runs of the runners whose results it stored, which then start them at once.

        Returns:
            True if the command was written; False if this broker or these leases cannot be
            marked so (nothing was sent: mark and ack them with an answer, as usual).

        Raises:
            BrokerConnectionError: the command could not be written.
        """
        if self.early is None:
            return False
        answer = await self.early.start_written(runs, acks)
        if answer is None:
            return False
        self._await_answer(answer, len(runs), len(acks))
        return True

    def _await_answer(self, answer: Awaitable[None], runs: int, acks: int) -> None:
        """Read ``answer`` (to ``acks`` acks and ``runs`` marks written) in the background,
        until :meth:`settled`."""
        pending = asyncio.ensure_future(answer)
        self._answers.add(pending)
        pending.add_done_callback(lambda done: self._answered(done, runs, acks))

    def _answered(self, answer: asyncio.Future[None], runs: int, acks: int) -> None:
        self._answers.discard(answer)
        if answer.cancelled() or answer.exception() is None:
            return
        # Written before the tasks started, so in all likelihood done; should they not be, a
        # worker dying during these runs would not count against their messages, and a
        # message whose ack was lost is delivered again once its lease runs out (its result
        # is stored already: at least once, as when a worker dies between store and ack).
        logger.warning(
            "the acks of %d message(s) and start marks of %d run(s) were written but not "
            "answered: %s",
            acks,
            runs,
            answer.exception(),
        )

    async def _flush(self, items: list[_Item]) -> ItemErrors:
        errors = await self._store(items) if self.backend is not None else {}
        done = [item for i, item in enumerate(items) if i not in errors] if errors else items
        acks = [d for _, ds, _, _ in done for d in ds]
        starts = [run for *_, run in done if run is not None]
        if starts and self.tracker is not None:
            # The results are stored: the acks and the next runs' marks need only be written,
            # and the runners go on while the answer is read.
            if not await self.premark(starts, acks):
                kept = await self.tracker.start(starts, acks)
                lost = (d for (d, _), ours in zip(starts, kept, strict=True) if not ours)
                self._lost.update(id(d) for d in lost)
        elif acks:
            await self.broker.ack(acks)
        return errors or None

    async def _store(self, items: Sequence[_Item]) -> dict[int, BaseException]:
        """Store the records of ``items`` in one call; the errors of those not stored, by
        index in ``items`` (:class:`NotStored`): all of them when the one call failed for a
        lone caller, or each caller's own when they were stored one by one after it."""
        holders = [i for i, (recs, _, _, _) in enumerate(items) if recs]
        if not holders:
            return {}
        try:
            await self._store_records(items)
        except Exception as exc:
            if len(holders) == 1:
                return await self._not_stored(items, {holders[0]: exc})
            return await self._not_stored(items, await self._store_each(items, holders))
        return {}

    async def _store_each(self, items: Sequence[_Item], holders: list[int]) -> dict[int, Exception]:
        """After a batch's store failed: store each caller's records alone, smallest first,
        so one record the backend refuses fails no other; the errors of those not stored, by
        index. Should the smallest fail to reach the backend too, it is down (not one
        record): the others fail with that error, without a round trip each."""
        errors: dict[int, Exception] = {}
        holders = sorted(holders, key=lambda i: sum(len(data) for _, data in items[i][0]))
        stored = False
        for n, index in enumerate(holders):
            try:
                await self._store_records([items[index]])
            except Exception as exc:
                errors[index] = exc
                if not stored and isinstance(exc, BrokerConnectionError):
                    errors.update((i, exc) for i in holders[n + 1 :])
                    break
            else:
                stored = True
        return errors

    async def _not_stored(
        self, items: Sequence[_Item], errors: dict[int, Exception]
    ) -> dict[int, BaseException]:
        """The :class:`NotStored` of each of ``errors`` (the backend's, by index in
        ``items``). When some are connection errors, one read tells whether the backend
        answers now (``answering``): away, or refusing what these callers hold."""
        unreachable = next(
            (i for i, exc in errors.items() if isinstance(exc, BrokerConnectionError)), None
        )
        answering = unreachable is not None and await self._reachable(items[unreachable])
        return {i: not_stored(exc, answering) for i, exc in errors.items()}

    async def _reachable(self, item: _Item) -> bool:
        """Whether the backend answers a read of ``item``'s first task id within
        :attr:`timeout` seconds."""
        assert self.backend is not None
        return await answers(self.backend, item[0][0][0], self.timeout)

    async def _bounded(self, call: Awaitable[_T]) -> _T:
        """``await call`` within :attr:`timeout` seconds (:func:`bounded`)."""
        return await bounded(call, self.timeout)

    async def _store_records(self, items: Sequence[_Item]) -> None:
        """Store the records of ``items`` (and settle the tasks waiting for them)."""
        assert self.backend is not None
        records = [r for recs, _, _, _ in items for r in recs]
        replies = {r[0]: reply for recs, _, reply, _ in items if reply for r in recs}
        deps = self.dependencies
        if deps is None:
            await self._bounded(store(self.backend, records, self.expires, replies))
            return
        waited = await self._bounded(deps.store_waited(records, replies or None))
        if not waited:
            return
        if self.timeout is None:
            await deps.settle_waited(records, waited)
            return
        # Not cancelled when it does not answer in time: cut between a claim and its publish,
        # a waiting task would stay held for ever. It goes on in the background while the next
        # try, on a fresh connection, stores and settles again: storing a record again and
        # settling with claims leave the same final state (the claims make it safe).
        call = asyncio.ensure_future(deps.settle_waited(records, waited))
        bound = asyncio.timeout(self.timeout)
        try:
            async with bound:
                await asyncio.shield(call)
        except TimeoutError as exc:
            if not bound.expired():
                raise  # the backend's own
            raise _no_answer(self.timeout) from exc
        finally:
            if not call.done():  # timed out, or this caller cancelled (a shutdown)
                self._abandoned.add(call)
                call.add_done_callback(self._ended)

    def _ended(self, call: asyncio.Future[None]) -> None:
        """A store left to end on its own (see :meth:`_store_records`) ended."""
        self._abandoned.discard(call)
        if not call.cancelled() and call.exception() is not None:
            logger.debug("a store that did not answer in time failed: %s", call.exception())


async def bounded(call: Awaitable[_T], timeout: float | None) -> _T:
    """``await call``, cancelled past ``timeout`` seconds (``None``: no bound).

    Raises:
        BrokerConnectionError: no answer within ``timeout`` seconds (redis-py drops a
            connection whose command is cancelled: the next try opens a fresh one).
    """
    bound = asyncio.timeout(timeout)
    try:
        async with bound:
            return await call
    except TimeoutError as exc:
        if not bound.expired():
            raise  # the backend's own
        raise _no_answer(timeout) from exc


async def answers(backend: ResultBackend, task_id: str, timeout: float | None) -> bool:
    """Whether ``backend`` answers a read of ``task_id`` within ``timeout`` seconds: a store
    it failed with a connection error while it answers may be its refusal of the records."""
    try:
        await bounded(backend.get_many([task_id]), timeout)
    except Exception:
        return False
    return True


def _no_answer(timeout: float | None) -> BrokerConnectionError:
    """The error of a store or read that got no answer within ``timeout`` seconds."""
    return BrokerConnectionError(f"the result backend did not answer within {timeout:g}s")


def _resolve(future: asyncio.Future[None]) -> None:
    """End the pause ``future`` (a timer's callback)."""
    if not future.done():
        future.set_result(None)


async def store(
    backend: ResultBackend, records: Records, expires: float | None, replies: ReplyTo | None
) -> None:
    """``backend.store(records, expires, replies)``, without ``replies`` when there are none:
    the plain call, which backends written before reply channels take too.

    Raises:
        BrokerConnectionError (or any error of the backend): the records were not stored.
    """
    if replies:
        await backend.store(records, expires, replies)
    else:
        await backend.store(records, expires)
