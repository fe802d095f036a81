"""A blocking client for Flask, Django, scripts and any code that is not async.

aqueue's API is awaitable; a Flask or Django view is a plain function. This module runs the
awaitable API on one background event loop per process and blocks the calling thread until the
answer comes, with the names a Celery user reaches for::

    from aqueue import sync
    from proj.tasks import app, add

    r = sync.delay(add, 2, 2)                 # Celery: add.delay(2, 2)
    r.get(timeout=10)                         # 4, as Celery's AsyncResult.get
    r.id, r.state, r.ready(), r.successful()
    r = sync.apply_async(add, (2, 2), countdown=10, queue="io")
    r = sync.send_task(app, "proj.tasks.add", (2, 2))
    sync.AsyncResult(app, task_id).get(timeout=10)
    sync.call(app.control.ping)               # any other coroutine function, run there

Why a module and not ``add.delay_sync(...)``: a call that blocks is visibly not the awaitable one
at the call site (``sync.delay(add, ...)`` against ``await add.delay(...)``), the task object
keeps one API, and ``sync.call`` serves the rest of it (control, inspection, canvas) without
a blocking twin of every method. ``sync.delay(add, "x")`` is still checked by a type checker
against ``add``'s parameters.

How it works
------------
The first call starts an event loop in a daemon thread (``aqueue-sync``); every call from any
thread hands it a coroutine with :func:`asyncio.run_coroutine_threadsafe` and waits for the
answer. The app keeps its connections per event loop, so every call of the process shares one
set of connections (one Redis pool, one SQLite connection): file descriptors stay flat however
many calls are made. The standard library's ``run_coroutine_threadsafe`` is the whole of the
portal; a dependency (anyio's blocking portal) would add a package and no capability that this
needs, and asgiref's ``async_to_sync`` runs each call on a loop of its own, which would reconnect
for every call.

- **Threads**: safe from any number of threads (a Flask or Django server's worker threads).
- **fork** (gunicorn ``--preload``, multiprocessing): a child process never uses its parent's
  loop or connections. :func:`os.register_at_fork` drops them in the child (the parent's objects
  are kept aside, untouched, so nothing closes the parent's sockets), and the child's first call
  starts its own loop and connects anew. A result handle made before the fork is rebound.
- **Exit**: :func:`shutdown` closes the connections of the apps used here, stops the loop and
  joins the thread; it runs at interpreter exit (:mod:`atexit`), once the other non-daemon
  threads have finished (their calls complete, as the rest of their code does), and may be
  called earlier (the next call starts afresh).
- A ``SystemExit`` or ``KeyboardInterrupt`` raised by the awaited code is raised in the calling
  thread; the loop goes on serving the others.
- Calling from async code (a thread whose event loop is running) raises ``RuntimeError``:
  ``await`` the async API there instead of blocking the loop.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures.thread
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, Unpack

from aqueue import loops
from aqueue.app import Aqueue
from aqueue.results.result import AsyncResult as _AsyncResult
from aqueue.results.result import OnMessageArg, TaskInfo
from aqueue.sending.options import SendOptions

if TYPE_CHECKING:
    from aqueue.task import Task

__all__ = [
    "AsyncResult",
    "SyncResult",
    "apply_async",
    "call",
    "delay",
    "send_task",
    "shutdown",
]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

_JOIN_TIMEOUT = 10.0  # seconds shutdown() waits for the loop's thread to finish


class _Exit:
    """A ``KeyboardInterrupt`` or ``SystemExit`` a call raised, carried to its caller."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Portal:
    """One event loop running in a daemon thread, and the apps used on it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = loops.new_event_loop()  # uvloop's where installed (AQUEUE_LOOP)
        self.apps: weakref.WeakSet[Aqueue] = weakref.WeakSet()
        self.thread = threading.Thread(target=self._run, name="aqueue-sync", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            try:
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
                self.loop.run_until_complete(self.loop.shutdown_default_executor())
            finally:
                self.loop.close()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run ``await fn(*args, **kwargs)`` on the loop; block until it is done.

        Raises:
            RuntimeError: called from the loop's own thread, or from a running event loop.
            BaseException: whatever ``fn`` raises (``SystemExit`` too: here, not on the loop).
        """
        self._check_caller()

        async def run() -> T | _Exit:
            try:
                return await fn(*args, **kwargs)
            except (KeyboardInterrupt, SystemExit) as exc:
                # Out of the coroutine, asyncio raises these out of the loop: the loop ends,
                # for every thread of the process. They are the caller's, raised in its thread.
                return _Exit(exc)

        future = asyncio.run_coroutine_threadsafe(run(), self.loop)
        try:
            value = future.result()
        except BaseException:
            future.cancel()  # KeyboardInterrupt in the caller: the coroutine is cancelled too
            raise
        if isinstance(value, _Exit):
            raise value.exc
        return value

    def _check_caller(self) -> None:
        if threading.get_ident() == self.thread.ident:
            raise RuntimeError(
                "aqueue.sync was called from its own event loop (e.g. in a task run there): "
                "await the async API instead"
            )
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        raise RuntimeError(
            "aqueue.sync blocks, and this thread runs an event loop: await the async API "
            "instead (e.g. `await add.delay(2, 2)`)"
        )

    def stop(self) -> None:
        """Close the apps' connections on this loop, cancel what still runs there, stop it."""
        if self.thread.is_alive():
            try:
                self.call(self._close_all)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(_JOIN_TIMEOUT)

    async def _close_all(self) -> None:
        for app in list(self.apps):
            await app.close()
        me = asyncio.current_task()
        others = [t for t in asyncio.all_tasks() if t is not me]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)


_lock = threading.Lock()
_portal: _Portal | None = None
# Portals inherited across fork: their thread is gone and their sockets are the parent's, so
# they are kept referenced (never closed, never used) rather than finalised in the child.
_inherited: list[_Portal] = []
_started_in: int | None = None  # the process id a portal was last started in


def _current(app: Aqueue | None = None) -> _Portal:
    """This process's portal (started on first use), with ``app`` noted for :func:`shutdown`."""
    global _portal, _started_in
    portal = _portal
    if portal is None:
        with _lock:
            portal = _portal
            if portal is None:
                portal = _portal = _Portal()
                _started_in = portal.pid
    if app is not None:
        portal.apps.add(app)
    return portal


def _after_fork_in_child() -> None:
    global _portal, _lock
    if _portal is not None:
        _inherited.append(_portal)
    _portal = None
    _lock = threading.Lock()  # the parent's may have been held by a thread that is not here


os.register_at_fork(after_in_child=_after_fork_in_child)


def shutdown() -> None:
    """Close the connections of the apps used through this module, stop the background loop and
    join its thread. Runs at interpreter exit; safe to call at any time (the next call starts a
    new loop).

    Raises:
        RuntimeError: called from the background loop itself.
    """
    global _portal
    with _lock:
        portal, _portal = _portal, None
    if portal is not None and portal.pid == os.getpid():
        portal.stop()


def _at_exit() -> None:
    """:func:`shutdown` at interpreter exit, once the other threads that may still call this
    module have finished.

    Python joins the non-daemon threads only after this hook has run: closing at once would
    cancel their calls in flight (``CancelledError``) and leave their next ones on a loop
    nobody closes, or failing (a ThreadPoolExecutor refuses work once its own exit hook ran).
    So they are joined first, as the interpreter would join them anyway. Not the workers of
    ThreadPoolExecutors: idle, they wait for that executor exit hook, which runs after this one.
    """
    if _started_in != os.getpid():
        return  # never used in this process: nothing to close, no one to wait for
    skip = {threading.current_thread(), threading.main_thread()}
    while True:
        pool = getattr(concurrent.futures.thread, "_threads_queues", {})
        waited = [
            thread
            for thread in threading.enumerate()
            if thread not in skip and not thread.daemon and thread not in pool
        ]
        if not waited:
            break
        for thread in waited:
            thread.join()  # a thread that started others: they are seen on the next round
    shutdown()


# Before the interpreter shuts down ThreadPoolExecutors (which a transport may need to close its
# connections): threading's own exit hooks run before atexit's, newest first.
_register_exit = getattr(threading, "_register_atexit", atexit.register)
_register_exit(_at_exit)


# -- results --------------------------------------------------------------------------------------


class SyncResult(Generic[R]):
    """A task's result handle with blocking methods, as Celery's ``AsyncResult``.

    Wraps an :class:`aqueue.AsyncResult`; each method runs it on the background loop.
    """

    def __init__(self, result: _AsyncResult[R], portal: _Portal) -> None:
        self._result = result
        self._portal = portal

    def __repr__(self) -> str:
        return f"<SyncResult: {self.id}>"

    def _call(self, method: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """``await method(handle, *args, **kwargs)`` on the portal's loop (``method``: an
        :class:`~aqueue.results.result.AsyncResult` method)."""
        result, portal = self._bound()
        return portal.call(method, result, *args, **kwargs)

    def _bound(self) -> tuple[_AsyncResult[R], _Portal]:
        """The handle and the portal to use now: rebound after a fork."""
        portal = _current(self._result.app)
        if portal is not self._portal:
            self._result = self._result.app.AsyncResult(self._result.id)
            self._portal = portal
        return self._result, portal

    @property
    def id(self) -> str:
        """The task id."""
        return self._result.id

    task_id = id

    @property
    def async_result(self) -> _AsyncResult[R]:
        """The awaitable handle (for code that runs on the background loop)."""
        return self._result

    def get(
        self, timeout: float | None = None, propagate: bool = True, on_message: OnMessageArg = None
    ) -> R:
        """Wait for the task's value, as Celery's ``get``.

        Args:
            timeout: seconds to wait; ``None`` waits for ever.
            propagate: re-raise the task's exception (else return it).
            on_message: called with Celery's dict on each state change, in the loop's thread.

        Raises:
            aqueue.exceptions.TimeoutError: not finished within ``timeout`` seconds.
            Exception: the task's exception, when it failed and ``propagate`` is True.
        """
        result, portal = self._bound()
        return portal.call(result.get, timeout=timeout, propagate=propagate, on_message=on_message)

    wait = get

    @property
    def state(self) -> str:
        """The current state (reads the result backend, as Celery's ``state`` does)."""
        return self._call(_AsyncResult.state)

    status = state

    def ready(self) -> bool:
        """True when the task has finished (SUCCESS, FAILURE or REVOKED)."""
        return self._call(_AsyncResult.ready)

    def successful(self) -> bool:
        """True when the task finished with SUCCESS."""
        return self._call(_AsyncResult.successful)

    def failed(self) -> bool:
        """True when the task finished with FAILURE."""
        return self._call(_AsyncResult.failed)

    def info(self) -> TaskInfo:
        """State, result, traceback, meta, date done and retries in one read."""
        return self._call(_AsyncResult.info)

    @property
    def result(self) -> Any:
        """The last known outcome, no I/O: ``None`` until the task is seen finished."""
        return self._result.result

    @property
    def traceback(self) -> str | None:
        """The failure's traceback, once seen; no I/O."""
        return self._result.traceback

    def forget(self) -> None:
        """Remove the stored result."""
        self._call(_AsyncResult.forget)

    def revoke(self, terminate: bool = False) -> None:
        """Revoke the task; ``terminate=True`` also cancels it while it runs."""
        self._call(_AsyncResult.revoke, terminate=terminate)


# -- sending --------------------------------------------------------------------------------------


def delay(task: Task[P, R], /, *args: P.args, **kwargs: P.kwargs) -> SyncResult[R]:
    """Send a call of ``task`` and return its blocking handle: Celery's ``task.delay(...)``.

    Raises:
        BrokerConnectionError: the broker cannot be reached.
        EncodeError: an argument cannot be serialised (nothing is sent).
        TypeError: the arguments do not fit the task.
    """
    portal = _current(task.app)
    return SyncResult(portal.call(task.delay, *args, **kwargs), portal)


def apply_async(
    task: Task[Any, R],
    args: Iterable[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    **options: Unpack[SendOptions],
) -> SyncResult[R]:
    """Send a call of ``task`` with options (``countdown``, ``eta``, ``queue``, ``priority``...,
    as :meth:`aqueue.Aqueue.send_task`): Celery's ``task.apply_async(...)``.

    Raises:
        BrokerConnectionError, EncodeError, ConfigurationError: as ``apply_async``.
    """
    portal = _current(task.app)
    sent = portal.call(task.apply_async, tuple(args or ()), kwargs, **options)
    return SyncResult(sent, portal)


def send_task(
    app: Aqueue,
    name: str,
    args: Iterable[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    **options: Unpack[SendOptions],
) -> SyncResult[Any]:
    """Send a call of the task called ``name``, without importing it: Celery's
    ``app.send_task(...)``.

    Raises:
        BrokerConnectionError, EncodeError, ConfigurationError: as ``send_task``.
    """
    portal = _current(app)
    return SyncResult(portal.call(app.send_task, name, args, kwargs, **options), portal)


def AsyncResult(app: Aqueue, task_id: str) -> SyncResult[Any]:
    """The blocking handle of an existing task id: Celery's ``app.AsyncResult(task_id)``."""
    portal = _current(app)
    return SyncResult(app.AsyncResult(task_id), portal)


def call(fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``await fn(*args, **kwargs)`` on the background loop and return its value, e.g.
    ``sync.call(app.control.ping)`` or ``sync.call(chain(...).delay)`` (the handle that returns
    is awaitable there: ``sync.call(handle.get, timeout=10)``).

    The app of ``fn`` (a method of an app, a task or a result) is closed by :func:`shutdown`.

    Raises:
        RuntimeError: called from a running event loop.
        Exception: whatever ``fn`` raises.
    """
    return _current(_app_of(fn)).call(fn, *args, **kwargs)


def _app_of(fn: Any) -> Aqueue | None:
    """The app behind a bound method of an app, a task, a result or an app's helper."""
    owner = getattr(fn, "__self__", None)
    for candidate in (owner, getattr(owner, "app", None)):
        if isinstance(candidate, Aqueue):
            return candidate
    return None
