"""``task_always_eager``: run a task inline where it is sent, for unit tests with no worker.

As in Celery, the call runs at once in the caller's loop and the returned result is already
finished; nothing touches the broker or the result backend. Retries (``self.retry`` and
``autoretry_for``) run again immediately, up to the task's ``max_retries`` (for
``autoretry_for``, ``retry_kwargs["max_retries"]`` first, as in the worker). The time limits
apply as in the worker (``soft_time_limit`` raises ``SoftTimeLimitExceeded`` inside a coroutine),
and what the task raises counts as in the worker: a ``CancelledError`` of its own (a helper it
cancelled and awaited) is its failure, raised to the caller as a ``TaskError`` naming it.
``link`` and ``link_error`` are called as the worker calls them, inline: a link with the result
(its own failure is logged, the parent's result stands), an errback task of this app with the
failed call's ``(request, exc, traceback)`` before the failure is raised or returned; so are
the task's ``on_success``, ``on_failure``, ``on_retry`` and ``after_return`` hooks (what they
raise is logged). As in Celery's eager ``apply()``, the task signals are sent: ``task_prerun``
and ``task_postrun`` around every attempt, ``task_retry`` for a retry, ``task_success`` or
``task_failure`` for the outcome. The worker's own signals (``task_received``,
``task_revoked``...) and middleware are not run.

Unlike Celery, the arguments and the result go through the serializer on the way, as they would
through a broker (``task_eager_serializes``, default True): the message is built, encoded and
decoded (routing, options, ``serializer=``, ``accept_content`` and all), and the task gets what a
worker would get. So a value that a broker could not carry (an unregistered type, pickle not in
``accept_content``) fails the test that sends it, and a tuple arrives as the list JSON makes of
it. Set ``task_eager_serializes=False`` to pass the objects through untouched.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aqueue import message, signals, states
from aqueue.exceptions import EncodeError, Retry
from aqueue.results.record import ResultRecord, describe_exception, outcome
from aqueue.results.result import AsyncResult
from aqueue.task import Request, Task
from aqueue.worker.batch import invoke_one
from aqueue.worker.invoke import call_hook, cancelling, invoke, is_task_failure

if TYPE_CHECKING:
    from aqueue.app import Aqueue
    from aqueue.canvas.primitives import Signature

logger = logging.getLogger("aqueue.eager")


class EagerResult(AsyncResult[Any]):
    """A result that is already known; every method answers without I/O."""

    def __init__(self, task_id: str, app: Aqueue, record: ResultRecord) -> None:
        super().__init__(task_id, app, record.name)
        self._record = record

    async def _read(self) -> ResultRecord | None:
        return self._record

    async def forget(self) -> None:
        """Nothing is stored, so nothing to forget."""

    def stream(self, timeout: float | None = None) -> AsyncIterator[Any]:
        """The items of the finished run (its result's list, or its one value), without I/O;
        raises its exception after them when it failed (``timeout`` is not used)."""
        return _items(self._record)


async def _items(record: ResultRecord | None) -> AsyncIterator[Any]:
    if record is not None and record.status == states.SUCCESS:
        for item in record.result if record.streamed is not None else [record.result]:
            yield item
    elif record is not None:
        raise outcome(record)


async def apply_eager(
    app: Aqueue,
    task: Task[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: dict[str, Any],
) -> EagerResult:
    """Run ``task`` now and return its finished result.

    Raises:
        The task's exception when ``task_eager_propagates`` is True (the default), a
        ``TaskError`` for a ``BaseException`` that is not an ``Exception``; otherwise the
        failure is kept in the returned result. An :class:`EncodeError` for a result that
        cannot be serialised likewise.
        EncodeError, DecodeError, ContentDisallowed: with ``task_eager_serializes``, the
            arguments cannot travel as the message would carry them (raised before running).
        ConfigurationError: ``link`` or ``link_error`` holds something not a signature.
    """
    task_id = options.get("task_id") or str(uuid.uuid4())
    if app.conf.task_eager_serializes:
        args, kwargs = _over_the_wire(app, task, args, kwargs, options)
    time_limit = options.get("time_limit") or task.time_limit or app.conf.task_time_limit
    # As the worker reads them (worker/execute.py): the soft limit is a task option only.
    soft_limit = getattr(task, "soft_time_limit", None) or app.conf.task_soft_time_limit
    retry_limit = (task.retry_kwargs or {}).get("max_retries", task.effective_max_retries())
    from aqueue.canvas.primitives import callbacks  # canvas imports this module's callers

    links = callbacks(options.get("link"), app, "link")
    errbacks = callbacks(options.get("link_error"), app, "link_error")
    retries = 0
    while True:
        request = Request(
            id=task_id,
            task=task.name,
            args=args,
            kwargs=kwargs,
            retries=retries,
            time_limit=time_limit,
            is_eager=True,
            called_directly=False,
        )
        await _prerun(task, request)
        entered = cancelling()
        try:
            if task.batch_size is None:
                value = await invoke(task, request, time_limit, soft_time_limit=soft_limit)
            else:
                value = await invoke_one(task, request, time_limit)
        except Retry as retry:
            reason = retry.exc if retry.exc is not None else retry
            await _retried(task, request, reason, traceback.format_exc())
            await _postrun(task, request, retry, states.RETRY)
            retries += 1
            continue
        except BaseException as exc:
            # As in the worker: a CancelledError of the task's own (a helper it cancelled and
            # awaited), a GeneratorExit... is its failure; the caller's cancellation is not.
            if not is_task_failure(exc, entered):
                raise
            if (
                task.autoretry_for
                and isinstance(exc, task.autoretry_for)
                and (retry_limit is None or retries < retry_limit)
            ):
                await _retried(task, request, exc, traceback.format_exc())
                await _postrun(task, request, exc, states.RETRY)
                retries += 1
                continue
            record = ResultRecord(
                task_id,
                states.FAILURE,
                describe_exception(exc),
                traceback.format_exc(),
                time.time(),
                retries,
                task.name,
            )
            tb = record.traceback
            if signals.task_failure.receivers:
                await signals.task_failure.send(
                    task, task_id=task_id, exception=exc, args=request.args,
                    kwargs=request.kwargs, traceback=tb, einfo=tb, request=request,
                )  # fmt: skip
            await _errbacks(app, errbacks, request, exc, tb)
            await call_hook(task.on_failure, exc, task_id, request.args, request.kwargs, tb)
            await call_hook(
                task.after_return, states.FAILURE, exc, task_id, request.args, request.kwargs, tb
            )
            await _postrun(task, request, exc, states.FAILURE)
            if app.conf.task_eager_propagates:
                if isinstance(exc, Exception):
                    raise
                # Raised as itself, a CancelledError would read as the caller's own
                # cancellation: raised as the worker's caller would get it (a TaskError).
                raise outcome(record) from exc
            return EagerResult(task_id, app, record)
        record = ResultRecord(task_id, states.SUCCESS, value, None, time.time(), retries, task.name)
        if task.is_stream:
            record = dataclasses.replace(record, streamed=len(value))
        if app.conf.task_eager_serializes:
            try:
                record = _stored(app, record)
            except EncodeError as exc:
                await _postrun(task, request, exc, states.FAILURE)
                if app.conf.task_eager_propagates:
                    raise
                return EagerResult(task_id, app, _failure(task_id, exc, retries, task.name))
        await _links(links, (record.result,), task_id, options)
        await call_hook(task.on_success, value, task_id, request.args, request.kwargs)
        await call_hook(
            task.after_return, states.SUCCESS, value, task_id, request.args, request.kwargs, None
        )
        if signals.task_success.receivers:
            await signals.task_success.send(task, result=value, request=request)
        await _postrun(task, request, value, states.SUCCESS)
        return EagerResult(task_id, app, record)


def _over_the_wire(
    app: Aqueue,
    task: Task[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: dict[str, Any],
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments as a worker would decode them from the message this call would send.

    Raises:
        EncodeError, DecodeError, ContentDisallowed: as sending and receiving would.
        ConfigurationError: an option is invalid.
    """
    sent = app.sender.build_message(task.name, args, kwargs, task, options).encode()
    received = message.decode(sent, frozenset(app.conf.accept_content))
    return received.args, received.kwargs


def _stored(app: Aqueue, record: ResultRecord) -> ResultRecord:
    """``record`` as a client would read it back from the result backend.

    Raises:
        EncodeError: the result cannot be serialised with ``result_serializer``.
    """
    return ResultRecord.decode(record.encode(app.conf.result_serializer), app.accept_results)


def _failure(task_id: str, exc: BaseException, retries: int, name: str) -> ResultRecord:
    return ResultRecord(
        task_id, states.FAILURE, describe_exception(exc), None, time.time(), retries, name
    )


async def _links(
    links: list[Signature], args: tuple[Any, ...], task_id: str, options: dict[str, Any]
) -> None:
    """Call each ``link`` with ``args`` (the result), inline, as the worker sends them. A link
    that fails is its own failure, logged: the parent's result stands."""
    for sig in links:
        try:
            await sig.apply_async(
                args, parent_id=task_id, root_id=options.get("root_id") or task_id
            )
        except Exception:
            logger.exception("link %r of %s failed (task_always_eager)", sig, task_id)


async def _errbacks(
    app: Aqueue, errbacks: list[Signature], request: Request, exc: BaseException, tb: str | None
) -> None:
    """Call each ``link_error`` as the worker does: a task of this app with the failed call's
    ``(request, exc, traceback)``, any other sent with its task id. What one raises is logged."""
    for sig in errbacks:
        errback = app.tasks.get(sig.task)
        try:
            if errback is None:
                await sig.apply_async((request.id,), parent_id=request.id)
                continue
            call = Request(
                id=request.id, task=sig.task, args=(request, exc, tb), kwargs=sig.kwargs,
                is_eager=True, called_directly=False,
            )  # fmt: skip
            await invoke(errback, call, None)
        except Exception:
            logger.exception("errback %r of %s failed (task_always_eager)", sig, request.id)


async def _prerun(task: Task[Any, Any], request: Request) -> None:
    """``task_prerun``, as the worker sends it before a run."""
    if signals.task_prerun.receivers:
        await signals.task_prerun.send(
            task, task_id=request.id, task=task, args=request.args, kwargs=request.kwargs,
            request=request,
        )  # fmt: skip


async def _postrun(task: Task[Any, Any], request: Request, retval: Any, state: str) -> None:
    """``task_postrun``, as the worker sends it after a run, whatever its outcome."""
    if signals.task_postrun.receivers:
        await signals.task_postrun.send(
            task, task_id=request.id, task=task, args=request.args, kwargs=request.kwargs,
            retval=retval, state=state, request=request,
        )  # fmt: skip


async def _retried(task: Task[Any, Any], request: Request, exc: BaseException, tb: str) -> None:
    """The hooks of a retry, as the worker calls them: ``on_retry``, then ``after_return``,
    then the ``task_retry`` signal."""
    await call_hook(task.on_retry, exc, request.id, request.args, request.kwargs, tb)
    await call_hook(
        task.after_return, states.RETRY, exc, request.id, request.args, request.kwargs, tb
    )
    if signals.task_retry.receivers:
        await signals.task_retry.send(task, request=request, reason=exc, einfo=tb)
