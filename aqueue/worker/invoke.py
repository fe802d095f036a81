"""Calling a task's function once: on the loop for ``async def``, in a thread otherwise."""

from __future__ import annotations

import asyncio
import contextvars
from concurrent.futures import Executor
from typing import Any

from aqueue.exceptions import TimeLimitExceeded
from aqueue.task import Request, Task, current_request


async def invoke(
    task: Task[Any, Any],
    request: Request,
    time_limit: float | None,
    threads: Executor | None = None,
) -> Any:
    """Run ``task`` with ``request.args``/``request.kwargs`` and return its value.

    ``self.request`` reads ``request`` inside the task, in a thread too. A coroutine that runs
    past ``time_limit`` seconds is cancelled; a plain function cannot be stopped from outside its
    thread, so the worker stops waiting for it and the thread finishes on its own.

    Raises:
        TimeLimitExceeded: the run took longer than ``time_limit`` seconds.
        Whatever the task raises (including :class:`~aqueue.exceptions.Retry`).
    """
    token = current_request.set(request)
    try:
        if task.is_async:
            call = task(*request.args, **request.kwargs)
        else:
            loop = asyncio.get_running_loop()
            ctx = contextvars.copy_context()
            call = loop.run_in_executor(
                threads, lambda: ctx.run(task, *request.args, **request.kwargs)
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
        current_request.reset(token)
