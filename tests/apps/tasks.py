"""Tasks used by the end-to-end tests, in-process and in worker subprocesses.

``build(url)`` makes a fresh app with every test task registered under a stable name
(``e2e.*``), so the same names work in a subprocess started with ``-A tests.apps.tasks``
(which builds its app from ``$AQUEUE_BROKER_URL`` and ``$AQUEUE_E2E_QUEUE``).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aqueue import Aqueue, Task

# (hook name, task id) pairs recorded by HookedTask, for the hooks test.
EVENTS: list[tuple[str, str]] = []
# Futures of `returned()` callers, resolved by HookedTask.after_return (the last hook called).
_RETURNED: dict[str, list[asyncio.Future[None]]] = {}


async def returned(task_id: str) -> list[str]:
    """Wait until ``after_return`` ran for ``task_id``; the hooks recorded for it, in order.

    Hooks run after the outcome is stored (as in Celery), so a client can see the result first.
    """
    if not any(name.startswith("after_return") and tid == task_id for name, tid in EVENTS):
        waiter = asyncio.get_running_loop().create_future()
        _RETURNED.setdefault(task_id, []).append(waiter)
        await waiter
    return [name for name, tid in EVENTS if tid == task_id]


class QuotaError(Exception):
    """A custom exception type that the client can import, to check it is rebuilt."""


class HookedTask(Task[Any, Any]):
    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        EVENTS.append(("on_success", task_id))

    async def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: str
    ) -> None:
        EVENTS.append(("on_failure", task_id))

    async def on_retry(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: str
    ) -> None:
        EVENTS.append(("on_retry", task_id))

    def after_return(
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        EVENTS.append((f"after_return:{status}", task_id))
        for waiter in _RETURNED.pop(task_id, []):
            if not waiter.done():
                waiter.set_result(None)


@dataclass
class Tasks:
    app: Aqueue
    add: Any
    mul: Any
    echo_request: Any
    progress: Any
    flaky: Any
    backoff: Any
    always_fails: Any
    slow: Any
    sleep_then_mark: Any
    hooked: Any
    hooked_fail: Any
    unserialisable: Any
    record_order: Any
    errback: Any
    quota: Any
    track_concurrency: Any


ORDER: list[Any] = []
RUNNING = {"now": 0, "peak": 0}
ERRBACKS: list[tuple[str | None, str]] = []


def backend_for(url: str) -> str | None:
    """The result backend to pair with broker ``url``: the same URL, except for AMQP.

    An AMQP broker stores no results: ``None`` leaves the app to ``$AQUEUE_RESULT_BACKEND``,
    which the ``amqp`` transport fixtures point at Redis (worker subprocesses inherit it).
    """
    return None if url.startswith(("amqp://", "amqps://")) else url


def build(url: str, queue: str = "default", backend: str | None = None, **settings: Any) -> Tasks:
    """A fresh app on broker ``url`` with the test tasks registered.

    The result backend is ``backend``, else :func:`backend_for` ``(url)``.
    """
    backend = backend or backend_for(url)
    app = Aqueue("e2e", broker=url, backend=backend, task_default_queue=queue, **settings)

    @app.task(name="e2e.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="e2e.mul")
    def mul(x: int, y: int) -> int:  # a plain function: runs in the worker's threads
        return x * y

    @app.task(name="e2e.echo_request", bind=True)
    async def echo_request(self: Task[Any, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        r = self.request
        return {
            "id": r.id,
            "task": r.task,
            "args": list(r.args),
            "kwargs": r.kwargs,
            "retries": r.retries,
            "queue": r.queue,
            "hostname": r.hostname,
        }

    @app.task(name="e2e.progress", bind=True)
    async def progress(self: Task[Any, Any], steps: int, gate: str | None = None) -> str:
        for i in range(steps):
            await self.update_state(state="PROGRESS", meta={"current": i + 1, "total": steps})
            await asyncio.sleep(0.05)
        return "done"

    @app.task(name="e2e.flaky", bind=True, max_retries=3)
    async def flaky(self: Task[Any, Any], succeed_on: int) -> int:
        if self.request.retries < succeed_on:
            raise self.retry(exc=OSError("transient"), countdown=0.05)
        return self.request.retries

    @app.task(
        name="e2e.backoff",
        bind=True,
        autoretry_for=(OSError,),
        max_retries=2,
        retry_backoff=0.05,
        retry_jitter=False,
    )
    async def backoff(self: Task[Any, Any]) -> int:
        raise OSError(f"attempt {self.request.retries}")

    @app.task(name="e2e.always_fails")
    async def always_fails(message: str) -> None:
        raise ValueError(message)

    @app.task(name="e2e.slow", time_limit=0.2)
    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "finished"

    @app.task(name="e2e.sleep_then_mark")
    async def sleep_then_mark(seconds: float, mark_dir: str, name: str) -> str:
        await asyncio.sleep(seconds)
        path = Path(mark_dir) / f"{name}.{os.getpid()}.{time.monotonic_ns()}"
        path.write_text(str(os.getpid()))
        return name

    @app.task(name="e2e.hooked", base=HookedTask)
    def hooked(x: int) -> int:
        return x

    @app.task(name="e2e.hooked_fail", base=HookedTask)
    async def hooked_fail() -> None:
        raise KeyError("nope")

    @app.task(name="e2e.unserialisable")
    async def unserialisable() -> object:
        return object()

    @app.task(name="e2e.record_order")
    async def record_order(tag: Any) -> Any:
        ORDER.append(tag)
        return tag

    @app.task(name="e2e.errback")
    def errback(request: Any, exc: BaseException, traceback: str) -> None:
        ERRBACKS.append((request.id, repr(exc)))

    @app.task(name="e2e.quota")
    async def quota() -> None:
        raise QuotaError("over quota")

    @app.task(name="e2e.track_concurrency")
    async def track_concurrency(seconds: float) -> int:
        RUNNING["now"] += 1
        RUNNING["peak"] = max(RUNNING["peak"], RUNNING["now"])
        try:
            await asyncio.sleep(seconds)
        finally:
            RUNNING["now"] -= 1
        return RUNNING["peak"]

    return Tasks(
        app,
        add,
        mul,
        echo_request,
        progress,
        flaky,
        backoff,
        always_fails,
        slow,
        sleep_then_mark,
        hooked,
        hooked_fail,
        unserialisable,
        record_order,
        errback,
        quota,
        track_concurrency,
    )


# For worker subprocesses: ``aqueue worker -A tests.apps.tasks:app``.
_url = os.environ.get("AQUEUE_BROKER_URL", "memory://")
app = build(
    _url,
    queue=os.environ.get("AQUEUE_E2E_QUEUE", "default"),
    broker_transport_options={
        "visibility_timeout": float(os.environ.get("AQUEUE_E2E_VISIBILITY", "30"))
    },
).app
