"""The threads plain-function (``def``) tasks run in, which a run that is given up on does not
keep from the runs after it.

A thread cannot be interrupted: a run past its ``time_limit``, terminated by a revoke or cut
short by a shutdown goes on in its thread, its result discarded. In a plain pool of
``concurrency`` threads, each such thread is one fewer for the runs after it: with every thread
so taken, the next run waits in the pool's queue (and fails its own time limit there without
having started). So a run given up on while its thread still runs hands the pool over: new runs
go to a fresh pool of the same size, and the old one ends once its threads return (their work is
kept: runs already queued there still start).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

__all__ = ["TaskThreads"]

P = ParamSpec("P")
T = TypeVar("T")


class TaskThreads(Executor):
    """An executor of ``size`` threads whose runs given up on (:meth:`give_up`) do not count.

    Args:
        size: threads for runs in flight (the worker's concurrency).
        prefix: the threads' name prefix.
    """

    def __init__(self, size: int, prefix: str = "aqueue-task") -> None:
        self._size = size
        self._prefix = prefix
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(size, thread_name_prefix=prefix)
        self._closed = False
        self.given_up = 0  # runs given up on while their thread ran (diagnostics)

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` in a thread of the current pool."""
        with self._lock:
            return self._pool.submit(fn, *args, **kwargs)

    def give_up(self, run: Future[Any]) -> None:
        """``run`` is no longer awaited (time limit, terminate, shutdown): if its thread is still
        in it, later runs go to a fresh pool, so that the thread it keeps is not one of theirs."""
        if run.done() or run.cancel():  # over, or never started: no thread kept
            return
        with self._lock:
            if self._closed:  # shut down: no later runs to make room for
                return
            old, self._pool = (
                self._pool,
                ThreadPoolExecutor(self._size, thread_name_prefix=self._prefix),
            )
            self.given_up += 1
        old.shutdown(wait=False)  # its threads end with their runs; queued runs still start

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Shut the current pool down (see :meth:`ThreadPoolExecutor.shutdown`); pools handed
        over before end with their last run."""
        with self._lock:
            pool, self._closed = self._pool, True
        pool.shutdown(wait=wait, cancel_futures=cancel_futures)
