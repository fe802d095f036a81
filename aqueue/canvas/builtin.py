"""The tasks every app has: ``aqueue.map`` and ``aqueue.starmap`` (``task.map``/``task.starmap``).

As Celery's ``celery.map`` / ``celery.starmap``: one message, and the worker that runs it calls
the named task's function for each item in turn, in-process (not as separate messages), and
returns the list of results. A plain (non-async) task runs its whole list in one thread.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import TYPE_CHECKING, Any

from aqueue.canvas.primitives import MAP_TASK, STARMAP_TASK
from aqueue.exceptions import TaskNotRegistered

if TYPE_CHECKING:
    from aqueue.app import Aqueue


def register(app: Aqueue) -> None:
    """Register ``aqueue.map`` and ``aqueue.starmap`` on ``app``."""

    @app.task(name=MAP_TASK)
    async def xmap(it: list[Any], task: str) -> list[Any]:
        """Call task ``task`` with each item of ``it``; return the results in order."""
        return await _call_each(app, task, [(item,) for item in it])

    @app.task(name=STARMAP_TASK)
    async def xstarmap(it: list[Any], task: str) -> list[Any]:
        """Call task ``task`` with each item of ``it`` as its arguments; return the results."""
        return await _call_each(app, task, [tuple(item) for item in it])


async def _call_each(app: Aqueue, name: str, calls: list[tuple[Any, ...]]) -> list[Any]:
    task = app.tasks.get(name)
    if task is None:
        raise TaskNotRegistered(f"task {name!r} is not registered in this worker's app")
    if not task.is_async:
        # to_thread copies the context, so a bound task still sees the map's self.request.
        return await asyncio.to_thread(lambda: [task(*args) for args in calls])
    results = []
    for args in calls:
        value = task(*args)
        results.append(await value if inspect.isawaitable(value) else value)
    return results
