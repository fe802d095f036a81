"""Tasks for the operations tests (revoke, rate limits, remote control, status, supervisor).

``build(url, queue)`` makes a fresh app with the tasks under stable names (``ops.*``); worker
subprocesses use ``-A tests.apps.ops_tasks:app``, built from ``$AQUEUE_BROKER_URL``,
``$AQUEUE_OPS_QUEUE`` and ``$AQUEUE_OPS_VISIBILITY``. ``url_for`` gives each test a fresh URL of
a transport, as ``tests/conftest.py`` does (memory: a private in-process name).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from aqueue import Aqueue, Task
from aqueue.control.events import events
from aqueue.transports import Broker
from tests.transport_choice import chosen_transports

OPS_TRANSPORTS = chosen_transports(["memory", "sqlite", "redis"])
SHARED_TRANSPORTS = ["sqlite", "redis"]


def url_for(transport: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh URL of ``transport`` for one test (Redis: the session's server, db 0)."""
    if transport == "memory":
        return f"memory://{uuid.uuid4().hex}"
    if transport == "sqlite":
        return f"sqlite:///{tmp_path}/ops.db"
    if transport == "sentinel":
        from tests.conftest import sentinel_url  # only under pytest

        return sentinel_url(request)
    if transport == "amqp":
        # RabbitMQ stores no results: Redis is the result backend, through
        # $AQUEUE_RESULT_BACKEND, which worker and CLI subprocesses inherit (build leaves an
        # AMQP app's backend to it).
        backend = f"{request.getfixturevalue('redis_server')}/0"
        request.getfixturevalue("monkeypatch").setenv("AQUEUE_RESULT_BACKEND", backend)
        return str(request.getfixturevalue("rabbitmq_server").url)
    return f"{request.getfixturevalue('redis_server')}/0"


@dataclass
class OpsTasks:
    app: Aqueue
    add: Any
    record: Any
    block: Any
    block_sync: Any
    pid_after: Any
    progress: Any
    starts: list[tuple[str, float]] = field(default_factory=list)  # (task id, epoch start)
    finished: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)


def env_of(t: OpsTasks) -> dict[str, str]:
    """The environment of a worker or ``aqueue`` process that loads ``t``'s app
    (``-A tests.apps.ops_tasks:app``)."""
    return {
        "AQUEUE_BROKER_URL": t.app.conf.broker_url or "",
        "AQUEUE_OPS_QUEUE": t.app.conf.task_default_queue,
    }


async def run_aqueue(
    t: OpsTasks, *args: str, stdin: bytes | None = None, timeout: float = 30
) -> tuple[int, str, str]:
    """Run ``aqueue <args>`` for ``t``'s app; return (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aqueue",
        *args,
        env={**os.environ, **env_of(t)},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def build(url: str, queue: str, tag: str = "", **settings: Any) -> OpsTasks:
    """A fresh app on ``url`` (broker and backend; an AMQP broker's backend is
    ``$AQUEUE_RESULT_BACKEND``) whose tasks record what they did.

    ``tag`` is appended to every task name (``ops.record<tag>``): rate-limit buckets and runtime
    rates are stored by task name on the server, so tests sharing a Redis server use their own.
    """
    backend = None if url.startswith(("amqp://", "amqps://")) else url  # see url_for
    app = Aqueue("ops", broker=url, backend=backend, task_default_queue=queue, **settings)
    starts: list[tuple[str, float]] = []
    finished: list[str] = []
    cancelled: list[str] = []

    @app.task(name=f"ops.add{tag}")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name=f"ops.record{tag}", bind=True)
    async def record(self: Task[Any, Any], tag: Any) -> Any:
        starts.append((str(self.request.id), time.time()))
        return tag

    @app.task(name=f"ops.block{tag}", bind=True)
    async def block(self: Task[Any, Any], seconds: float, mark_dir: str | None = None) -> str:
        """Sleeps; leaves a mark file (named by its id) only if it ran to the end."""
        task_id = str(self.request.id)
        starts.append((task_id, time.time()))
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            cancelled.append(task_id)
            raise
        finished.append(task_id)
        if mark_dir is not None:
            (Path(mark_dir) / task_id).write_text(str(os.getpid()))
        return "finished"

    @app.task(name=f"ops.block_sync{tag}", bind=True)
    def block_sync(self: Task[Any, Any], seconds: float) -> str:
        time.sleep(seconds)
        finished.append(str(self.request.id))
        return "finished"

    @app.task(name=f"ops.pid_after{tag}")
    async def pid_after(seconds: float) -> int:
        await asyncio.sleep(seconds)
        return os.getpid()

    @app.task(name=f"ops.progress{tag}", bind=True)
    async def progress(self: Task[Any, Any], steps: int, pause: float = 0.02) -> str:
        for i in range(steps):
            await self.update_state(state="PROGRESS", meta={"current": i + 1, "total": steps})
            await asyncio.sleep(pause)
        return "done"

    return OpsTasks(
        app, add, record, block, block_sync, pid_after, progress, starts, finished, cancelled
    )


class EventLog:
    """Collects the app's events in the background (``async with EventLog(app) as log``);
    :meth:`wait` returns the first event matching, waiting for it without polling."""

    def __init__(self, app: Aqueue) -> None:
        self.app = app
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._ready = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventLog:
        self._reader = asyncio.create_task(self._read())
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait([ready, self._reader], return_when=asyncio.FIRST_COMPLETED)
        if self._reader.done():
            await self._reader  # raises what stopped it
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    async def _read(self) -> None:
        async for event in events(self.app, on_ready=self._ready.set):
            async with self._changed:
                self.events.append(event)
                self._changed.notify_all()

    async def wait(self, timeout: float = 10, **fields: Any) -> dict[str, Any]:
        """The first event whose items include ``fields`` (e.g. ``type="task-started"``)."""

        def match() -> dict[str, Any] | None:
            for event in self.events:
                if all(event.get(k) == v for k, v in fields.items()):
                    return event
            return None

        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: match() is not None)
        found = match()
        assert found is not None
        return found


# For worker subprocesses: ``aqueue worker -A tests.apps.ops_tasks:app``.
app = build(
    os.environ.get("AQUEUE_BROKER_URL", "memory://"),
    os.environ.get("AQUEUE_OPS_QUEUE", "default"),
    broker_transport_options={
        "visibility_timeout": float(os.environ.get("AQUEUE_OPS_VISIBILITY", "30"))
    },
).app


async def dead_letter_all(broker: Broker, queue: str, count: int) -> None:
    """Fetch ``count`` messages of ``queue`` and dead-letter each, in the order fetched."""
    taken = 0
    while taken < count:
        deliveries = await broker.fetch([queue], count - taken, 5.0)
        assert deliveries, "the messages sent never arrived"
        for delivery in deliveries:
            await broker.dead_letter(delivery, "set aside by the test")
        taken += len(deliveries)
