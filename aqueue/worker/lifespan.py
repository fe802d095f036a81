"""Worker lifespan: resources opened once per worker process, reachable from every task.

An app registers one lifespan, an async context manager function of the worker (as
Starlette's and FastAPI's ``lifespan``)::

    @app.worker_lifespan
    async def lifespan(worker: Worker) -> AsyncIterator[State]:
        pool = await create_pool(DSN)      # before the worker takes its first message
        try:
            yield State(db=pool)           # what tasks get from aqueue.worker_state()
        finally:
            await pool.close()             # after the last running task has finished

    @app.task
    async def count_users() -> int:
        db = aqueue.worker_state(State).db
        ...

The worker enters it in :meth:`~aqueue.Worker.start`, once its servers answer and before any
message is fetched, and leaves it in :meth:`~aqueue.Worker.stop`, after the running tasks have
finished (or been cancelled at ``worker_shutdown_timeout``). Each worker process of
``--processes N`` runs its own; so does the pytest plugin's in-process worker. Tasks, their
hooks and errbacks read the yielded value with :func:`worker_state` (a context variable of the
worker's runners, copied into the thread of a plain function).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar, overload

if TYPE_CHECKING:
    from aqueue.worker.worker import Worker

T = TypeVar("T")

#: What ``@app.worker_lifespan`` takes: an async generator function of the worker that yields
#: once, or a function returning an async context manager (``@contextlib.asynccontextmanager``).
LifespanFunction = (
    Callable[["Worker"], AsyncIterator[Any]]
    | Callable[["Worker"], AbstractAsyncContextManager[Any]]
)
#: The normalised form the worker enters.
Lifespan = Callable[["Worker"], AbstractAsyncContextManager[Any]]


class _Unset:
    def __repr__(self) -> str:
        return "<no worker state>"


_UNSET = _Unset()
#: The running worker's lifespan state; set in its runners' context only.
current_state: ContextVar[Any] = ContextVar("aqueue_worker_state", default=_UNSET)


def as_lifespan(fn: LifespanFunction) -> Lifespan:
    """``fn`` as a function returning an async context manager.

    Raises:
        TypeError: ``fn`` is a coroutine function or not callable (it must yield once).
    """
    if inspect.isasyncgenfunction(fn):
        return contextlib.asynccontextmanager(fn)
    if inspect.iscoroutinefunction(fn) or not callable(fn):
        raise TypeError(
            f"worker_lifespan takes an async generator function that yields once (or an "
            f"@asynccontextmanager function), not {fn!r}"
        )
    return fn  # type: ignore[return-value]  # checked when entered (async with)


@overload
def worker_state() -> Any: ...
@overload
def worker_state(kind: type[T]) -> T: ...
def worker_state(kind: type[T] | None = None) -> Any:
    """The value the app's ``worker_lifespan`` yielded, in a task run by a worker.

    Args:
        kind: the type the value must have; given, the return value is typed as it.

    Raises:
        LookupError: not inside a task (or hook) run by a worker with a lifespan, e.g. in
            eager mode or when the task is called directly; the message says which.
        TypeError: the value is not a ``kind``.
    """
    value = current_state.get()
    if value is _UNSET:
        raise LookupError(
            "no worker state here: aqueue.worker_state() works in a task run by a worker "
            "whose app has a @app.worker_lifespan (not in eager mode, nor when the task is "
            "called directly)"
        )
    if kind is not None and not isinstance(value, kind):
        raise TypeError(
            f"the worker state is a {type(value).__qualname__}, not a {kind.__qualname__}"
        )
    return value
