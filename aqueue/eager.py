"""``task_always_eager``: run a task inline where it is sent, for unit tests with no worker.

As in Celery, the call runs at once in the caller's loop and the returned result is already
finished; nothing touches the broker or the result backend. Retries (``self.retry`` and
``autoretry_for``) run again immediately, up to the task's ``max_retries``.

Unlike Celery, the arguments and the result go through the serializer on the way, as they would
through a broker (``task_eager_serializes``, default True): the message is built, encoded and
decoded (routing, options, ``serializer=``, ``accept_content`` and all), and the task gets what a
worker would get. So a value that a broker could not carry (an unregistered type, pickle not in
``accept_content``) fails the test that sends it, and a tuple arrives as the list JSON makes of
it. Set ``task_eager_serializes=False`` to pass the objects through untouched.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aqueue import message, states
from aqueue.exceptions import EncodeError, Retry
from aqueue.results.record import ResultRecord, describe_exception, outcome
from aqueue.results.result import AsyncResult
from aqueue.task import Request, Task
from aqueue.worker.batch import invoke_one
from aqueue.worker.invoke import invoke

if TYPE_CHECKING:
    from aqueue.app import Aqueue


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
        The task's exception when ``task_eager_propagates`` is True (the default); otherwise the
        failure is kept in the returned result. An :class:`EncodeError` for a result that
        cannot be serialised likewise.
        EncodeError, DecodeError, ContentDisallowed: with ``task_eager_serializes``, the
            arguments cannot travel as the message would carry them (raised before running).
    """
    task_id = options.get("task_id") or str(uuid.uuid4())
    if app.conf.task_eager_serializes:
        args, kwargs = _over_the_wire(app, task, args, kwargs, options)
    time_limit = options.get("time_limit") or task.time_limit or app.conf.task_time_limit
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
        try:
            if task.batch_size is None:
                value = await invoke(task, request, time_limit)
            else:
                value = await invoke_one(task, request, time_limit)
        except Retry:
            retries += 1
            continue
        except Exception as exc:
            limit = task.effective_max_retries()
            if (
                task.autoretry_for
                and isinstance(exc, task.autoretry_for)
                and (limit is None or retries < limit)
            ):
                retries += 1
                continue
            if app.conf.task_eager_propagates:
                raise
            record = ResultRecord(
                task_id,
                states.FAILURE,
                describe_exception(exc),
                traceback.format_exc(),
                time.time(),
                retries,
                task.name,
            )
            return EagerResult(task_id, app, record)
        record = ResultRecord(task_id, states.SUCCESS, value, None, time.time(), retries, task.name)
        if task.is_stream:
            record = dataclasses.replace(record, streamed=len(value))
        if app.conf.task_eager_serializes:
            try:
                record = _stored(app, record)
            except EncodeError as exc:
                if app.conf.task_eager_propagates:
                    raise
                return EagerResult(task_id, app, _failure(task_id, exc, retries, task.name))
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
