"""Batch tasks: many queued calls of one task handed to one invocation, as a list.

``@app.task(batch_size=100, batch_timeout=1.0)`` makes a batch task (for bulk inserts, and APIs
with batch endpoints). Callers send calls one by one, as to any task, and each gets its own
result handle; the worker gathers the calls it fetches and calls the function once per batch
with a list of :class:`~aqueue.task.Request` (each with its ``id``, ``args`` and ``kwargs``)::

    @app.task(batch_size=100, batch_timeout=1.0)
    async def store_rows(calls: list[Request]) -> list[int]:
        ids = await db.insert_many([call.args[0] for call in calls])
        return ids                          # one result per call, in the calls' order

A batch is run when it holds ``batch_size`` calls, or ``batch_timeout`` seconds after its
first call arrived, whichever comes first; calls of other tasks run meanwhile as usual. The
function's outcome decides each call's:

- a list (or tuple) as long as the calls: item *i* is call *i*'s result; an item that is an
  exception instance fails that call alone (its ``FAILURE`` with that exception), the others
  succeed;
- a raised exception fails every call of the batch with it (``Retry`` retries every call);
- any other value (not a list, or of another length) fails every call with a ``TypeError``
  saying so.

Each call is still its own message: its own result record, ack, links, chord membership and
``task_success``/``task_failure`` signals, all stored in the same shared round trips
(:class:`~aqueue.worker.completer.Completer`); a unique call's lock and an ``after=`` call's
dependencies (``request.dependencies``) work per call as for any task. A call revoked while it
waits is not run. The
batch's ``time_limit``, ``soft_time_limit`` and the app's middleware apply to the one
invocation (``task_prerun``/``task_postrun`` are not sent for batch calls). ``self.request``
inside it is a request for the batch (``args`` is the calls' list, ``id`` ``None``).

Calls wait in the worker's memory, leased (their leases renewed), so the worker raises its
prefetch bound to hold two full batches beside its concurrency (:func:`prefetch_for`). On
shutdown, calls still waiting are released at once; a batch running gets the shutdown timeout
like any task, then its calls are released to run again (at least once). A call that comes back
as a suspect (running when a worker died: it is run isolated) runs alone and at once, as a batch
of one: no other suspect could join it, and a death while it runs is blamed on it alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aqueue import signals, states
from aqueue.exceptions import BrokerError, DependencyFailed, Retry
from aqueue.task import Request, Task
from aqueue.worker.invoke import invoke, is_task_failure

if TYPE_CHECKING:
    from aqueue.message import Message
    from aqueue.transports import Delivery
    from aqueue.worker.execute import Executor

__all__ = ["Batches", "invoke_one", "per_call", "prefetch_for"]

logger = logging.getLogger("aqueue.worker")


def prefetch_for(tasks: Iterable[Task[Any, Any]], prefetch: int, concurrency: int) -> int:
    """The prefetch bound a worker needs: ``prefetch``, or room for two full batches of its
    largest batch task beside ``concurrency`` (one running while the next fills)."""
    sizes = [t.batch_size for t in tasks if t.batch_size is not None]
    return max(prefetch, 2 * max(sizes) + concurrency) if sizes else prefetch


@dataclass(slots=True)
class _Call:
    delivery: Delivery
    msg: Message
    isolated: bool  # runs as the worker's one suspect (RunTracking)
    premarked: bool  # its run was marked already, with the runner's last ack
    done: bool = False  # finished (counted, its slot freed)


@dataclass(slots=True)
class _Pending:
    task: Task[Any, Any]
    timer: asyncio.TimerHandle | None = None
    calls: list[_Call] = field(default_factory=list)


class Batches:
    """Gathers the calls of batch tasks and runs each batch as one invocation.

    Args:
        executor: the worker's executor, whose outcome handling each call goes through.

    Attributes:
        finished: called with each call's delivery once it is done with (the worker frees
            its slot); not called for calls cancelled by a shutdown (they are released).
        invocations: batches run so far.
    """

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.finished: Callable[[Delivery], None] = lambda delivery: None
        self.invocations = 0
        self._pending: dict[str, _Pending] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False

    def add(
        self,
        task: Task[Any, Any],
        delivery: Delivery,
        msg: Message,
        isolated: bool,
        premarked: bool,
    ) -> None:
        """Put a call of batch ``task`` in its batch; the batch runs once full or timed out.
        After :meth:`close` the call is left alone (still leased: released by the shutdown)."""
        if self._closed:
            return
        call = _Call(delivery, msg, isolated, premarked)
        if isolated:
            # A suspect (it was running when a worker died) runs alone, so that a death while
            # it runs is blamed on it alone; and at once: no other suspect can join it (the
            # worker runs one at a time), so waiting batch_timeout would only delay it - and
            # every suspect after it.
            self._start(task, [call], f"a suspect call of {task.name}, alone")
            return
        pending = self._pending.get(task.name)
        if pending is None:
            pending = self._pending[task.name] = _Pending(task)
            loop = asyncio.get_running_loop()
            pending.timer = loop.call_later(task.batch_timeout, self._flush, task.name)
        pending.calls.append(call)
        if len(pending.calls) >= (task.batch_size or 1):
            self._flush(task.name)

    def close(self) -> list[asyncio.Task[None]]:
        """Stop batching (shutdown): calls not yet in a running batch are dropped here (they
        stay leased, for the worker to release); return the batches still running."""
        self._closed = True
        for pending in self._pending.values():
            if pending.timer is not None:
                pending.timer.cancel()
        self._pending.clear()
        return list(self._running)

    def waiting(self) -> int:
        """Calls gathered and not yet running."""
        return sum(len(p.calls) for p in self._pending.values())

    def _flush(self, name: str) -> None:
        pending = self._pending.pop(name, None)
        if pending is None:
            return
        if pending.timer is not None:
            pending.timer.cancel()
        self._start(
            pending.task,
            pending.calls,
            f"a batch of {len(pending.calls)} call(s) of {pending.task.name}",
        )

    def _start(self, task: Task[Any, Any], calls: list[_Call], name: str) -> None:
        """Run ``calls`` of ``task`` as one batch, in an ``asyncio.Task`` named ``name`` (for
        the log of a shutdown waiting for it: Worker.stop)."""
        run = asyncio.get_running_loop().create_task(self._run(task, calls), name=name)
        self._running.add(run)
        run.add_done_callback(self._running.discard)

    # -- one batch -------------------------------------------------------------------------

    async def _run(self, task: Task[Any, Any], calls: list[_Call]) -> None:
        """Run one batch to the end; every call is finished, whatever happens (but a
        shutdown's cancellation, which leaves them to be released).

        Raises:
            asyncio.CancelledError: only when this batch's cancellation was requested (the
                worker is stopping); KeyboardInterrupt and SystemExit pass through too.
        """
        try:
            live = await self._admit(task, calls)
            if live:
                self.invocations += 1
                await self._invoke(task, live)
        except BrokerError as exc:  # left leased: delivered again after the visibility timeout
            logger.error("could not start a batch of %s: %s", task.name, exc)
        except BaseException as exc:
            # Its cancellation (a shutdown) leaves the calls to be released. Anything else is
            # a bug (a stray CancelledError too): the calls are left to their leases.
            if not is_task_failure(exc):
                raise
            logger.exception("a batch of %s failed in the worker", task.name)
        for call in calls:
            self._finish(call)

    def _finish(self, call: _Call) -> None:
        if not call.done:
            call.done = True
            self.executor.done += 1
            self.executor.locks.drop(call.delivery)
            self.finished(call.delivery)

    async def _admit(self, task: Task[Any, Any], calls: list[_Call]) -> list[_Call]:
        """The calls to run: not revoked meanwhile, acked early (``acks_late=False``) or
        marked as running (RunTracking) with their leases still held. The others are finished
        (revoked: stored as such and acked; lease lost: let go)."""
        ex, conf = self.executor, self.executor.app.conf
        live = []
        for call in calls:
            if call.msg.id in ex.revoked:
                await _guarded(ex, call, ex._revoke(call.delivery, call.msg, "revoked"))
                await ex.locks.discard(call.msg)
                self._finish(call)
            else:
                live.append(call)
        acks_late = task.acks_late if task.acks_late is not None else conf.task_acks_late
        if not acks_late:
            await ex.completer.finish((), [c.delivery for c in live])
            ex._acked_early.update(id(c.delivery) for c in live)
            return live
        if not ex.tracks_runs:
            return live
        unmarked = [c for c in live if not c.premarked]
        kept = await asyncio.gather(*(ex._start(c.delivery, c.isolated) for c in unmarked))
        lost = {id(c) for c, ours in zip(unmarked, kept, strict=True) if not ours}
        for call in live:
            if id(call) in lost:
                logger.warning(
                    "Task %s[%s] not started: its lease ran out and another worker has it",
                    call.msg.task,
                    call.msg.id,
                )
                self._finish(call)
        return [c for c in live if id(c) not in lost]

    async def _invoke(self, task: Task[Any, Any], calls: list[_Call]) -> None:
        ex, conf = self.executor, self.executor.app.conf
        time_limit = task.time_limit or conf.task_time_limit
        soft_limit = getattr(task, "soft_time_limit", None) or conf.task_soft_time_limit
        requests = [ex._request(c.delivery, c.msg, time_limit) for c in calls]
        calls, requests = await self._prepare(task, calls, requests)
        if not calls:
            return
        now = time.time()
        for request, call in zip(requests, calls, strict=True):
            ex.active[call.msg.id] = request
            ex.terminable.started[call.msg.id] = now
            if ex.on_event is not None:
                ex.on_event("task-started", call.msg, {})
        logger.info("Task %s: a batch of %d call(s) started", task.name, len(calls))
        batch = Request(
            task=task.name,
            args=(requests,),
            hostname=ex.hostname,
            time_limit=time_limit,
            called_directly=False,
        )
        started = time.monotonic()
        tb: str | None = None
        current = asyncio.current_task()
        entered = 0 if current is None else current.cancelling()  # see is_task_failure
        try:
            try:
                values = await ex._body(task, batch, time_limit, soft_limit)
            except Retry as retry:
                tb = traceback.format_exc()
                pairs = zip(calls, requests, strict=True)
                retries = [ex._retried(c.delivery, c.msg, task, r, retry, tb) for c, r in pairs]
                await _each(ex, calls, retries)
                await self._unlock(calls, states.RETRY)
                return
            except BaseException as exc:
                # A CancelledError the function let out with no cancellation of this batch
                # requested (a helper it cancelled), a GeneratorExit...: every call's failure,
                # as any exception. A shutdown's cancellation leaves the calls to be released.
                if not is_task_failure(exc, entered):
                    raise
                values = [exc] * len(calls)
                tb = traceback.format_exc()
            else:
                values = per_call(task, values, len(calls))
            runtime = time.monotonic() - started
            await _each(
                ex,
                calls,
                [
                    _outcome(ex, task, call, request, value, tb, runtime)
                    for call, request, value in zip(calls, requests, values, strict=True)
                ],
            )
        finally:
            for call in calls:
                ex.active.pop(call.msg.id, None)
                ex.terminable.started.pop(call.msg.id, None)
        await self._unlock(calls, states.SUCCESS)

    async def _prepare(
        self, task: Task[Any, Any], calls: list[_Call], requests: list[Request]
    ) -> tuple[list[_Call], list[Request]]:
        """Give each call the results of its ``after=`` dependencies and move its unique lock
        onto the lease, as for any task; a call whose dependency has no result fails alone."""
        ex = self.executor
        kept: list[tuple[_Call, Request]] = []
        for call, request in zip(calls, requests, strict=True):
            if "after" in call.msg.options and ex.dependencies is not None:
                try:
                    request.dependencies = await ex.dependencies.results(call.msg)
                except DependencyFailed as exc:
                    failing = ex._failure(
                        call.delivery, call.msg, task, request, exc, str(exc), 0.0
                    )
                    await _guarded(ex, call, failing)
                    await self._unlock([call], states.FAILURE)
                    continue
            if "unique" in call.msg.options:
                await ex.locks.start(call.delivery, call.msg)
            kept.append((call, request))
        return [c for c, _ in kept], [r for _, r in kept]

    async def _unlock(self, calls: list[_Call], state: str) -> None:
        """Free the unique locks of ``calls`` (kept for a retry: ``state`` RETRY)."""
        for call in calls:
            if "unique" in call.msg.options:
                await self.executor.locks.finish(call.delivery, call.msg, state)


async def invoke_one(task: Task[Any, Any], request: Request, time_limit: float | None) -> Any:
    """Run batch ``task`` for one call, as a batch of one (eager mode); return its result.

    Raises:
        The call's exception: raised by the function, or returned in its place.
    """
    batch = Request(task=task.name, args=([request],), time_limit=time_limit, is_eager=True)
    [value] = per_call(task, await invoke(task, batch, time_limit), 1)
    if isinstance(value, BaseException):
        raise value
    return value


def per_call(task: Task[Any, Any], values: Any, count: int) -> list[Any]:
    """The function's return value as one outcome per call (see the module docstring)."""
    if isinstance(values, list | tuple) and len(values) == count:
        return list(values)
    got = f"a {type(values).__name__}"
    if isinstance(values, list | tuple):
        got += f" of {len(values)}"
    error = TypeError(
        f"batch task {task.name} must return a list of one result per call ({count}), "
        f"in the calls' order; it returned {got}"
    )
    return [error] * count


async def _outcome(
    ex: Executor,
    task: Task[Any, Any],
    call: _Call,
    request: Request,
    value: Any,
    tb: str | None,
    runtime: float,
) -> None:
    """Store, signal and ack one call's outcome (``value``: its result, or an exception)."""
    if isinstance(value, BaseException):
        trace = tb or "".join(traceback.format_exception(value))
        await ex._failure(call.delivery, call.msg, task, request, value, trace, runtime)
        return
    if await ex._success(call.delivery, call.msg, task, value, runtime) and (
        signals.task_success.receivers
    ):
        await signals.task_success.send(task, result=value, request=request)


async def _each(ex: Executor, calls: list[_Call], steps: list[Any]) -> None:
    """Run each call's outcome concurrently (their stores and acks share round trips)."""
    await asyncio.gather(*(_guarded(ex, c, s) for c, s in zip(calls, steps, strict=True)))


async def _guarded(ex: Executor, call: _Call, step: Any) -> None:
    """Await one call's ``step`` as :meth:`Executor.handle` would: a broker error leaves the
    call leased (delivered again); anything else dead-letters it."""
    try:
        await step
    except BrokerError as exc:
        logger.error("could not finish message from %s: %s", call.delivery.queue, exc)
    except Exception as exc:
        await ex._give_up(call.delivery, exc)
    finally:
        ex._acked_early.discard(id(call.delivery))
