"""The sends that consult the result backend before publishing: idempotent (``task_id=``),
unique (``unique_key=``, ``@app.task(unique=...)``) and held (``after=``).

:func:`needs_guard` is the one check a plain send pays; :func:`send_guarded` takes the marks and
locks (:mod:`aqueue.sending.unique`), then publishes or holds the message
(:mod:`aqueue.dependencies`), and frees what it took if that fails. A send whose caller is
cancelled goes on to its end all the same: once its mark or lock may be taken, other sends may
have returned its handle. A send that finds a mark or lock held by a send in flight in this
process waits for that send's outcome before returning its handle: if it failed, the waiting
send takes the mark or lock itself and sends its call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
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

logger = logging.getLogger("aqueue.app")


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
    lock = unique_lock(msg.task, msg.args, msg.kwargs, task, options, msg.expires, msg.eta)
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

    A caller cancelled meanwhile (a web request given up on) gets ``CancelledError`` at once,
    and the send goes on to its end: other sends of the same id or key may have found its
    mark or lock already and returned its handle, so it must be published (or, failing, free
    what it took); and a lock request may have reached the server, which would hold it for its
    whole TTL with nothing published.

    A mark or lock held by a send in flight in this process (an earlier send of the same call,
    still publishing) is waited for: its handle is returned once that send has published, and
    this send goes on itself if that one failed.

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
    sending = asyncio.ensure_future(_send(app, msg, explicit_id, handle, publish))
    try:
        return await asyncio.shield(sending)
    except asyncio.CancelledError:
        if sending.done():
            raise  # cancelled itself (the loop is closing): it freed what it took
        _LEFT.add(sending)
        sending.add_done_callback(functools.partial(_ended, msg))
        raise


async def _send(
    app: Aqueue,
    msg: Message,
    explicit_id: bool,
    handle: Callable[[Message], AsyncResult[Any]],
    publish: Callable[[Message], Awaitable[AsyncResult[Any]]],
) -> AsyncResult[Any]:
    """:func:`send_guarded`'s work, which its caller's cancellation does not stop.

    A mark or lock found held by a send in flight in this process is not taken as sent: this
    send waits for that one's outcome, and takes the mark or lock itself if that one failed
    (and freed it), so that no handle it returns is of a call never sent.
    """
    taken: list[tuple[Locks, str, str]] = []
    in_flight: list[tuple[int, str]] = []  # its keys in _SENDING (taken is cleared when freed)
    try:
        if explicit_id and app.has_result_backend:
            backend = await app.result_backend()
            if has_locks(backend):
                token = uuid.uuid4().hex
                while await backend.lock(sent_key(msg.id), token, sent_ttl(app)) != token:
                    if not await _failed_meanwhile(backend, sent_key(msg.id)):
                        return AsyncResult(msg.id, app, msg.task)  # sent before: never twice
                _take(taken, in_flight, backend, sent_key(msg.id), token)
        lock = UniqueLock.from_message(msg)
        if lock is not None:
            held = locks(await _backend(app), "a unique task")
            while (holder := await _lock_unique(app, held, lock, msg.id)) != msg.id:
                if not await _failed_meanwhile(held, lock.key):
                    await _free(taken)
                    return AsyncResult(holder, app, msg.task)
            _take(taken, in_flight, held, lock.key, msg.id)
        if msg.options.get("after"):
            deps = Dependencies(app, await app.result_backend())
            result = handle(msg)  # its mailbox exists before the message may be published
            await deps.hold(msg)
            return result
        return await publish(msg)
    except BaseException:
        await _free(taken)
        raise
    finally:
        _done_sending(in_flight)


async def _lock_unique(app: Aqueue, held: Locks, lock: UniqueLock, task_id: str) -> str:
    """Take ``lock`` for ``task_id``; returns its holder (``task_id`` when taken)."""
    holder = await held.lock(lock.key, task_id, lock.ttl)
    if holder != task_id and await _finished(app, holder):
        # Its outcome is stored and its worker is about to free the lock: not pending.
        await held.unlock(lock.key, holder)
        holder = await held.lock(lock.key, task_id, lock.ttl)
    return holder


#: The guarded sends in flight in this process, by (``id()`` of their result backend, the key
#: of a mark or lock they hold): a send finding that key held waits for their outcome.
_SENDING: dict[tuple[int, str], asyncio.Future[Any]] = {}


def _take(
    taken: list[tuple[Locks, str, str]],
    in_flight: list[tuple[int, str]],
    held: Locks,
    key: str,
    owner: str,
) -> None:
    """Note a mark or lock taken by the current send (in ``taken``, freed if the send fails),
    and the send as in flight under it (in :data:`_SENDING`, and its entry in ``in_flight``)."""
    taken.append((held, key, owner))
    sending = asyncio.current_task()
    if sending is not None:  # always: _send runs as a task of its own
        _SENDING[(id(held), key)] = sending
        in_flight.append((id(held), key))


def _done_sending(in_flight: list[tuple[int, str]]) -> None:
    """The current send has ended: it is no longer in flight under its keys."""
    sending = asyncio.current_task()
    for entry in in_flight:
        if _SENDING.get(entry) is sending:
            del _SENDING[entry]


async def _failed_meanwhile(held: Locks, key: str) -> bool:
    """Wait for the send in flight in this process under ``key``, if any.

    Returns:
        True if there was one and it failed or was cancelled: it freed ``key`` (if it could),
        which is to be taken again. False if there was none (the holder is elsewhere, or sent)
        or it sent its call.
    """
    sending = _SENDING.get((id(held), key))
    if (
        sending is None
        or sending is asyncio.current_task()
        or sending.get_loop() is not asyncio.get_running_loop()
    ):
        return False
    # asyncio.wait: a cancellation of this send must not cancel the one waited for.
    await asyncio.wait([sending])
    return sending.cancelled() or sending.exception() is not None


#: Guarded sends whose callers were cancelled, kept until they end (the loop holds tasks
#: weakly).
_LEFT: set[asyncio.Future[Any]] = set()


def _ended(msg: Message, sending: asyncio.Future[Any]) -> None:
    """A guarded send whose caller was cancelled has ended: its failure has nobody else to
    reach, so it is logged (what it took is freed already)."""
    _LEFT.discard(sending)
    if sending.cancelled():
        return
    exc = sending.exception()
    if exc is not None:
        logger.warning(
            "send of %s[%s], given up on by its caller, failed: %s; nothing of it is held",
            msg.task,
            msg.id,
            exc,
        )


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
