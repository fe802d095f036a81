"""Calling a task's function once: on the loop for ``async def``, in a thread otherwise."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from collections.abc import Callable, Coroutine, Generator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

from aqueue.cancellation import cancelling, is_task_failure
from aqueue.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from aqueue.task import Request, Task, current_request
from aqueue.worker.stream import Emit, drain
from aqueue.worker.threads import TaskThreads

logger = logging.getLogger("aqueue.worker")

__all__ = ["call_hook", "cancelling", "invoke", "is_task_failure"]


async def _given_up_on_cancel(
    waiting: asyncio.Future[Any], running: Future[Any], threads: TaskThreads
) -> Any:
    """Await a thread's run; cancelled (a time limit, a terminate, a shutdown) while the thread
    is still in it, hand the run over as given up on (:meth:`TaskThreads.give_up`)."""
    try:
        return await waiting
    except asyncio.CancelledError:
        threads.give_up(running)
        raise


async def call_hook(hook: Callable[..., Any], *args: Any) -> None:
    """Call a task's hook (``on_success``, ``on_failure``, ``on_retry``, ``after_return``), sync
    or async; what it raises is logged, not raised, but a cancellation of the caller (see
    :func:`is_task_failure`)."""
    entered = cancelling()
    try:
        value = hook(*args)
        if inspect.isawaitable(value):
            await value
    except BaseException as exc:
        if not is_task_failure(exc, entered):
            raise
        logger.exception("hook %s raised", getattr(hook, "__qualname__", hook))


async def invoke(
    task: Task[Any, Any],
    request: Request,
    time_limit: float | None,
    threads: Executor | None = None,
    soft_time_limit: float | None = None,
    emit: Emit | None = None,
) -> Any:
    """Run ``task`` with ``request.args``/``request.kwargs`` and return its value.

    An async-generator task is run to its end; each item it yields goes to ``emit`` (which
    stores it: :class:`~aqueue.worker.stream.StreamWriter`) and its value is the items' list
    (:func:`~aqueue.worker.stream.drain`).

    ``self.request`` reads ``request`` inside the task, in a thread too. A coroutine that runs
    past ``time_limit`` seconds is cancelled; a plain function cannot be stopped from outside its
    thread, so the worker stops waiting for it and the thread finishes on its own.

    At ``soft_time_limit`` seconds (when shorter than ``time_limit``), a coroutine gets
    :class:`~aqueue.exceptions.SoftTimeLimitExceeded` raised at the ``await`` it is waiting
    in, and may clean up until ``time_limit``; a plain function in a thread cannot be
    interrupted, so only a warning is logged.

    Raises:
        TimeLimitExceeded: the run took longer than ``time_limit`` seconds.
        SoftTimeLimitExceeded: the coroutine reached ``soft_time_limit`` and did not catch it.
        Whatever the task raises (including :class:`~aqueue.exceptions.Retry`).
    """
    token = current_request.set(request)
    soft = soft_time_limit
    if soft is not None and time_limit is not None and soft >= time_limit:
        soft = None  # the hard limit comes first (or together): it decides
    warning: asyncio.TimerHandle | None = None
    try:
        call: Any
        if task.is_async or task.is_stream:
            call = task(*request.args, **request.kwargs)
            if not task.is_async:  # an async generator: its items are streamed
                call = drain(call, emit, task.stream_max_items)
            if soft is not None:
                call = _soft_limited(call, soft, f"{task.name}[{request.id}]")
        else:
            loop = asyncio.get_running_loop()
            ctx = contextvars.copy_context()
            if isinstance(threads, TaskThreads):
                running = threads.submit(ctx.run, task, *request.args, **request.kwargs)
                call = _given_up_on_cancel(asyncio.wrap_future(running), running, threads)
            else:
                call = loop.run_in_executor(
                    threads, lambda: ctx.run(task, *request.args, **request.kwargs)
                )
            if soft is not None:
                warning = loop.call_later(
                    soft,
                    logger.warning,
                    "%s[%s] passed its soft time limit of %gs: a plain function in a thread "
                    "cannot be interrupted, it runs on (make it async def to get "
                    "SoftTimeLimitExceeded)",
                    task.name,
                    request.id,
                    soft,
                )
        if time_limit is None:
            return await call
        timeout = asyncio.timeout(time_limit)
        try:
            async with timeout:
                return await call
        except TimeoutError:
            if timeout.expired():
                raise TimeLimitExceeded(
                    f"{task.name}[{request.id}] exceeded its time limit of {time_limit:g}s"
                ) from None
            raise
    finally:
        if warning is not None:
            warning.cancel()
        current_request.reset(token)


async def _soft_limited(coro: Coroutine[Any, Any, Any], seconds: float, what: str) -> Any:
    """Await ``coro``; after ``seconds``, raise SoftTimeLimitExceeded inside it.

    As :class:`~aqueue.worker.revoke.Terminable` does, no ``asyncio.Task`` is made: the running
    task is cancelled at the soft limit, and :class:`_Interruptible` turns exactly that
    cancellation (``Task.uncancel``) into the exception thrown into ``coro``; any other
    cancellation (shutdown, the hard limit, terminate) passes through unchanged.
    """
    current = asyncio.current_task()
    if current is None:  # not in a task: nothing to interrupt
        return await coro
    driver = _Interruptible(coro, current, what, seconds)
    handle = asyncio.get_running_loop().call_later(seconds, driver.fire)
    try:
        return await driver
    finally:
        handle.cancel()


@dataclass(slots=True, eq=False)
class _Interruptible:
    """Drives a coroutine step by step, throwing SoftTimeLimitExceeded into it once fired."""

    coro: Coroutine[Any, Any, Any]
    task: asyncio.Task[Any]  # the task awaiting the coroutine: cancelled to wake it
    what: str  # names the task in the exception's message
    seconds: float  # the soft limit
    fired: bool = False
    delivered: bool = False
    # The task's cancelling() before the soft limit's cancel: a count above it once ours is
    # taken back means another cancellation (shutdown, the hard limit, terminate) came too.
    # Compared with this, not with 0, so that a cancellation the task absorbed before (the
    # count left raised) cannot make every later soft limit look like a shutdown.
    before: int = 0

    def fire(self) -> None:
        """The soft limit: wake the task with a cancellation this driver will convert."""
        self.fired = True
        self.before = self.task.cancelling()
        self.task.cancel()

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self.coro
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                if thrown is not None:
                    exc, thrown = thrown, None
                    yielded = coro.throw(exc)
                else:
                    yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value
            sent = None
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except asyncio.CancelledError as exc:
                thrown = exc
                if self.fired and not self.delivered:
                    self.delivered = True
                    if self.task.uncancel() <= self.before:  # ours alone: not a shutdown too
                        thrown = SoftTimeLimitExceeded(
                            f"{self.what} exceeded its soft time limit of {self.seconds:g}s"
                        )
            except BaseException as exc:
                thrown = exc
