"""Middleware: an ordered chain of async wrappers around publishing and around running a task.

It is the seam that metrics, tracing, error reporting and user code plug into. Subclass
:class:`Middleware`, override what you need, and add it to the app (the first added is the
outermost)::

    class Tenant(Middleware):
        async def publish(self, messages, call_next):
            for message in messages:
                message.headers["tenant"] = current_tenant.get()
            await call_next(messages)

        async def run(self, task, request, call_next):
            token = current_tenant.set(request.headers.get("tenant"))
            try:
                return await call_next()
            finally:
                current_tenant.reset(token)

    app = Aqueue("proj", middleware=[Tenant()])     # or app.add_middleware(Tenant())

``publish`` wraps every publication of task messages (``delay``, ``apply_async``,
``delay_many``, canvas, retries, beat): ``messages`` are the :class:`~aqueue.message.Message`
objects about to be encoded, whose ``headers`` dicts may be changed (what is added travels with
the message and is ``request.headers`` in the worker). ``run`` wraps each run of a task in the
worker (not eager runs): it returns the task's value or raises its exception; ``request`` is the
:class:`~aqueue.task.Request` (``request.headers``). A middleware that does not call
``call_next`` stops the publication or the run (the run then fails with what it raises, or
succeeds with what it returns). An app with no middleware calls no wrapper at all.

Celery has no middleware (its signals are the nearest); taskiq and dramatiq have middlewares of
this kind.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aqueue.message import Message
    from aqueue.task import Request, Task

__all__ = ["Middleware", "PublishNext", "RunNext", "chain_publish", "chain_run"]

#: What :meth:`Middleware.publish` calls to go on: publishes ``messages``.
PublishNext = Callable[[list["Message"]], Awaitable[None]]
#: What :meth:`Middleware.run` calls to go on: runs the task, returns its value.
RunNext = Callable[[], Awaitable[Any]]


class Middleware:
    """A wrapper around publishing and running; both methods pass through by default."""

    async def publish(self, messages: list[Message], call_next: PublishNext) -> None:
        """Around publishing ``messages`` (one call of ``delay``, or one batch).

        Raises:
            Exception: whatever ``call_next`` raises (``BrokerConnectionError``,
                ``EncodeError``...), or the middleware's own exception, which the sender gets.
        """
        await call_next(messages)

    async def run(self, task: Task[Any, Any], request: Request, call_next: RunNext) -> Any:
        """Around one run of ``task`` for ``request`` in a worker.

        Returns:
            The task's value (what ``call_next()`` returned, or a replacement).

        Raises:
            Exception: the task's exception (from ``call_next()``), or the middleware's own,
                which counts as the task's (retried per the task's options, else stored as its
                failure).
        """
        return await call_next()


def chain_publish(
    middlewares: Sequence[Middleware], publish: PublishNext
) -> Callable[[list[Message]], Awaitable[None]]:
    """``publish`` wrapped by ``middlewares`` (the first outermost); ``publish`` itself when
    there are none."""
    call: PublishNext = publish
    for middleware in reversed(middlewares):
        call = _publish_step(middleware, call)
    return call


def _publish_step(middleware: Middleware, call_next: PublishNext) -> PublishNext:
    async def step(messages: list[Message]) -> None:
        await middleware.publish(messages, call_next)

    return step


async def chain_run(
    middlewares: Sequence[Middleware], task: Task[Any, Any], request: Request, run: RunNext
) -> Any:
    """Run ``run()`` inside ``middlewares`` (the first outermost).

    Returns:
        What the outermost middleware returns.
    """
    call: RunNext = run
    for middleware in reversed(middlewares):
        call = _run_step(middleware, task, request, call)
    return await call()


def _run_step(
    middleware: Middleware, task: Task[Any, Any], request: Request, call_next: RunNext
) -> RunNext:
    async def step() -> Any:
        return await middleware.run(task, request, call_next)

    return step
