"""The sends that consult the result backend before publishing: idempotent (``task_id=``),
unique (``unique_key=``, ``@app.task(unique=...)``) and held (``after=``).

:func:`needs_guard` is the one check a plain send pays; :func:`send_guarded` takes the marks and
locks (:mod:`aqueue.sending.unique`), then publishes or holds the message
(:mod:`aqueue.dependencies`), and frees what it took if that fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from aqueue.dependencies import Dependencies, after_ids
from aqueue.exceptions import AqueueError, DecodeError
from aqueue.results.result import AsyncResult
from aqueue.sending.unique import UniqueLock, locks, sent_key, sent_ttl, unique_lock
from aqueue.transports import Locks, has_locks

if TYPE_CHECKING:
    from aqueue.app import Aqueue
    from aqueue.message import Message
    from aqueue.task import Task

__all__ = ["needs_guard", "send_guarded", "with_guards"]


def needs_guard(task: Task[Any, Any] | None, options: Mapping[str, Any]) -> bool:
    """True when a send must consult the result backend first (see the module doc)."""
    return bool(
        options.get("task_id") is not None
        or options.get("unique_key") is not None
        or options.get("after") is not None
        or (task is not None and task.unique)
    )


def with_guards(msg: Message, task: Task[Any, Any] | None, options: Mapping[str, Any]) -> Message:
    """``msg`` carrying its unique lock and dependencies in ``options`` for the worker.

    Raises:
        ConfigurationError: a unique option or ``after`` is invalid.
    """
    extra = dict(msg.options)
    lock = unique_lock(msg.task, msg.args, msg.kwargs, task, options, msg.expires)
    if lock is not None:
        extra["unique"] = lock.to_dict()
    if options.get("after") is not None:
        extra["after"] = after_ids(options["after"])
    return msg.replace(options=extra) if extra != msg.options else msg


async def send_guarded(
    app: Aqueue,
    msg: Message,
    explicit_id: bool,
    handle: Callable[[Message], AsyncResult[Any]],
    publish: Callable[[Message], Awaitable[AsyncResult[Any]]],
) -> AsyncResult[Any]:
    """Send ``msg`` (built by :func:`with_guards`) unless its id was sent already or a call
    with its unique key is pending, whose handle is then returned instead.

    Args:
        explicit_id: the caller chose the task id (``task_id=``): the send is idempotent when
            the result backend keeps locks.
        handle: makes ``msg``'s result handle (before anything is sent).
        publish: publishes ``msg`` and returns its handle.

    Raises:
        ConfigurationError: unique or ``after=`` without a result backend that keeps locks and
            waiter sets.
        BrokerConnectionError: the result backend or the broker cannot be reached; nothing
            taken is left held.
    """
    taken: list[tuple[Locks, str, str]] = []
    try:
        if explicit_id and app.has_result_backend:
            backend = await app.result_backend()
            if has_locks(backend):
                token = uuid.uuid4().hex
                if await backend.lock(sent_key(msg.id), token, sent_ttl(app)) != token:
                    return AsyncResult(msg.id, app, msg.task)  # sent before: never twice
                taken.append((backend, sent_key(msg.id), token))
        lock = UniqueLock.from_message(msg)
        if lock is not None:
            held = locks(await _backend(app), "a unique task")
            holder = await held.lock(lock.key, msg.id, lock.ttl)
            if holder != msg.id and await _finished(app, holder):
                # Its outcome is stored and its worker is about to free the lock: not pending.
                await held.unlock(lock.key, holder)
                holder = await held.lock(lock.key, msg.id, lock.ttl)
            if holder != msg.id:
                await _free(taken)
                return AsyncResult(holder, app, msg.task)
            taken.append((held, lock.key, msg.id))
        if msg.options.get("after"):
            deps = Dependencies(app, await app.result_backend())
            result = handle(msg)  # its mailbox exists before the message may be published
            await deps.hold(msg)
            return result
        return await _published(publish(msg), taken)
    except BaseException:
        await _free(taken)
        raise


async def _published(
    publishing: Awaitable[AsyncResult[Any]], taken: list[tuple[Locks, str, str]]
) -> AsyncResult[Any]:
    """Await ``publishing``; when the caller is cancelled meanwhile (a web request given up
    on), the publish goes on, as it would in the batch it shares with other sends, and what
    the send took is freed only once that publish has failed: freed at once, a retry of the
    same ``task_id`` would publish the message a second time, and a second call of a unique
    task would be sent while the first is queued. ``taken`` is emptied when its fate is left
    to the publish."""
    task = asyncio.ensure_future(publishing)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if task.done() and task.cancelled():
            raise  # the publish itself was cancelled (the loop is closing): free at once
        if task.done() and task.exception() is not None:
            raise
        held = list(taken)
        taken.clear()
        if not task.done():
            _LEFT.add(task)
            task.add_done_callback(lambda done: _settle(done, held))
        raise


#: Publishes whose callers were cancelled, kept until they end (the loop holds tasks weakly).
_LEFT: set[asyncio.Future[Any]] = set()
#: Frees of what a failed publish had taken, kept until they end.
_FREEING: set[asyncio.Future[None]] = set()


def _settle(done: asyncio.Future[Any], held: list[tuple[Locks, str, str]]) -> None:
    """A publish whose caller was cancelled has ended: free what its send took if it failed."""
    _LEFT.discard(done)
    if not done.cancelled() and done.exception() is None:
        return
    freeing = asyncio.ensure_future(_free(held))
    _FREEING.add(freeing)
    freeing.add_done_callback(_FREEING.discard)


async def _finished(app: Aqueue, task_id: str) -> bool:
    """True if ``task_id``'s stored record is final (SUCCESS, FAILURE, REVOKED); an unreadable
    one is not."""
    try:
        return await AsyncResult(task_id, app).ready()
    except DecodeError:
        return False


async def _backend(app: Aqueue) -> Any:
    return await app.result_backend() if app.has_result_backend else None


async def _free(taken: list[tuple[Locks, str, str]]) -> None:
    """Free the marks and locks a send took; one that cannot be freed expires on its own."""
    for held, key, owner in taken:
        with contextlib.suppress(AqueueError):
            await held.unlock(key, owner)
    taken.clear()
