"""What a running dashboard watches: the event stream, the workers' heartbeats, queue depths.

:class:`Monitor` runs three coroutines in the dashboard's event loop (never in a worker):

- the *listener* applies every task event to the :class:`~aqueue.dashboard.history.TaskHistory`
  (workers started with ``-E`` send them; see :mod:`aqueue.control.events`);
- the *sampler*, every :data:`SAMPLE_INTERVAL` seconds, reads the workers' heartbeats (the
  control transport's ``workers`` table) and the queue depths
  (:class:`~aqueue.transports.base.QueueAdmin`), and asks new workers for their registered tasks;
- the *notifier*, twice a second, tells the open pages what changed (server-sent events) and
  writes the changed records to the :class:`~aqueue.dashboard.store.HistoryStore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import orjson

from aqueue.control.events import events
from aqueue.control.protocol import Reply
from aqueue.control.queues import WorkerStatus, live_workers, queue_depths
from aqueue.dashboard.history import TaskHistory
from aqueue.dashboard.store import HistoryStore
from aqueue.exceptions import AqueueError
from aqueue.transports.base import QueueDepth

if TYPE_CHECKING:
    from aqueue.app import Aqueue

__all__ = ["SAMPLE_INTERVAL", "Monitor"]

logger = logging.getLogger("aqueue.dashboard")

#: Seconds between two reads of the heartbeats and queue depths.
SAMPLE_INTERVAL = 2.0
#: Seconds between two notifications of the open pages (and two history writes at most).
NOTIFY_INTERVAL = 0.5
#: Seconds :meth:`Monitor.start` waits for the event subscription at most.
START_TIMEOUT = 5.0
#: Queue-depth samples kept for the Overview's chart (30 minutes).
DEPTH_SAMPLES = 900
#: Seconds between two history writes.
SAVE_INTERVAL = 1.0


class Monitor:
    """The dashboard's live state for ``app`` (see the module docstring).

    Args:
        app: the app whose workers, queues and beat are shown.
        max_tasks: task records kept at most.
        max_age: seconds a task record is kept.
        persist: keep the history in the control transport (:mod:`aqueue.dashboard.store`).
    """

    def __init__(
        self,
        app: Aqueue,
        *,
        max_tasks: int = 100_000,
        max_age: float = 86_400.0,
        persist: bool = True,
    ) -> None:
        self.app = app
        self.history = TaskHistory(max_tasks, max_age)
        self.persist = persist
        self.workers: list[WorkerStatus] = []
        self.registered: dict[str, list[str]] = {}
        self._asked: dict[str, frozenset[str]] = {}  # hostname -> its workers (nodes) asked
        self.queues: list[QueueDepth] = []
        self.depths: deque[tuple[float, dict[str, QueueDepth]]] = deque(maxlen=DEPTH_SAMPLES)
        self.error: str | None = None
        self.listening = False
        self._store: HistoryStore | None = None
        self._listeners: set[asyncio.Queue[bytes]] = set()
        self._changed: set[str] = set()
        self._changed_ids: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._started: asyncio.Task[None] | None = None
        self._last_save = 0.0
        self._background: set[asyncio.Task[None]] = set()
        self._live = asyncio.Event()

    # -- life --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the stored history and start watching; later calls wait for the first. It
        returns once the event subscription is live (events sent afterwards are all seen), or
        after :data:`START_TIMEOUT` seconds without one (the page then says why).

        Raises:
            BrokerConnectionError: the control transport cannot be reached.
        """
        failed = self._started is not None and self._started.done() and self._started.exception()
        if self._started is None or failed:  # a failed start is tried again on the next page
            self._started = asyncio.ensure_future(self._start())
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        if self.persist:
            transport = await self.app.control_transport()
            self._store = HistoryStore(transport, self.history.max_tasks, self.history.max_age)
            self.history.load(await self._store.load())
            self.history.dirty.clear()
        await self.sample()
        self._tasks = [
            asyncio.create_task(self._keep(self._listen)),
            asyncio.create_task(self._keep(self._sample_loop)),
            asyncio.create_task(self._keep(self._notify_loop)),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._live.wait(), START_TIMEOUT)

    async def stop(self) -> None:
        """Stop watching; write what is not written yet (best effort)."""
        running = [*self._tasks, *self._background]
        self._tasks = []
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        with contextlib.suppress(AqueueError):
            await self._save(force=True)

    async def _keep(self, loop: Callable[[], Awaitable[None]]) -> None:
        """Run ``loop``; when the server goes away, show why, wait a second and run it again."""
        while True:
            try:
                await loop()
            except AqueueError as exc:
                self.error = str(exc)
                self.listening = False
                self._mark("status")
                logger.warning("dashboard: %s; retrying in 1s", exc)
                await asyncio.sleep(1.0)
            except Exception:  # a bug must not stop the page updates for good
                logger.exception("dashboard: %s failed; restarting it in 1s", loop.__name__)
                await asyncio.sleep(1.0)

    # -- events ------------------------------------------------------------------------------

    async def _listen(self) -> None:
        def ready() -> None:
            self._live.set()
            self.listening = True
            self.error = None
            self._mark("status")

        async for event in events(self.app, on_ready=ready):
            self.apply(event)

    def apply(self, event: dict[str, Any]) -> None:
        """Take one event in (tasks: into the history; workers: noted for the pages)."""
        kind = str(event.get("type", ""))
        if kind.startswith("task-"):
            record = self.history.apply(event)
            if record is not None:
                self._mark("tasks", record.id)
        elif kind.startswith("worker-"):
            self._mark("workers")

    def _mark(self, kind: str, task_id: str | None = None) -> None:
        self._changed.add(kind)
        if task_id is not None and len(self._changed_ids) < 200:
            self._changed_ids.add(task_id)

    # -- sampling ----------------------------------------------------------------------------

    async def _sample_loop(self) -> None:
        expired_at = time.monotonic()
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL)
            await self.sample()
            if time.monotonic() - expired_at > 60:
                self.history.expire()
                expired_at = time.monotonic()

    async def sample(self) -> None:
        """Read the heartbeats and the queue depths now.

        Raises:
            BrokerConnectionError: a server cannot be reached.
        """
        now = time.time()
        workers = await live_workers(self.app)
        if [(w.node, w.active, w.processed) for w in workers] != [
            (w.node, w.active, w.processed) for w in self.workers
        ]:
            self._mark("workers")
        self.workers = workers
        self._ask_new_workers(workers)
        depths = await queue_depths(self.app, workers)
        if depths != self.queues:
            self._mark("queues")
        self.queues = depths
        self.depths.append((now, {d.queue: d for d in depths}))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def notify_soon(self) -> None:
        """After an action: sample again now and tell the open pages."""

        async def resample() -> None:
            with contextlib.suppress(AqueueError):
                await self.sample()
            self._mark("queues")
            self._mark("beat")

        self._spawn(resample())

    def _ask_new_workers(self, workers: list[WorkerStatus]) -> None:
        """Ask for the registered tasks of each hostname whose workers changed: one seen for
        the first time, or started again under its name (a new release may run other tasks);
        forget the hostnames no longer live."""
        nodes: dict[str, frozenset[str]] = {}
        for w in workers:
            nodes[w.hostname] = nodes.get(w.hostname, frozenset()) | {w.node}
        for gone in set(self._asked) - set(nodes):
            del self._asked[gone]
        for gone in set(self.registered) - set(nodes):
            del self.registered[gone]
        for hostname, now in nodes.items():
            if self._asked.get(hostname) != now:
                self._asked[hostname] = now
                self.registered.setdefault(hostname, [])
                self._spawn(self._ask_registered(hostname, now))

    async def _ask_registered(self, hostname: str, nodes: frozenset[str]) -> None:
        """Ask ``hostname`` for its registered tasks; with no answer, the next sample asks
        again (``nodes``: its workers when asked)."""
        replies: list[Reply] = []
        with contextlib.suppress(AqueueError):
            replies = await self.app.control.broadcast(
                "registered", destination=[hostname], timeout=2.0, limit=1
            )
        if replies and isinstance(replies[0].value, list):
            self.registered[hostname] = [str(v) for v in replies[0].value]
            self._mark("workers")
        elif self._asked.get(hostname) == nodes:
            del self._asked[hostname]

    # -- notifying and saving ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[bytes]]:
        """A queue of change notes for one open page (JSON: ``{"kinds": [...], "tasks": [...]}``);
        a page too slow to read them loses the oldest, never blocks the others."""
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=20)
        self._listeners.add(queue)
        try:
            yield queue
        finally:
            self._listeners.discard(queue)

    async def _notify_loop(self) -> None:
        while True:
            await asyncio.sleep(NOTIFY_INTERVAL)
            self.notify()
            await self._save()

    def notify(self) -> None:
        """Send the changes gathered since the last call to every open page."""
        if not self._changed:
            return
        note = orjson.dumps({"kinds": sorted(self._changed), "tasks": sorted(self._changed_ids)})
        self._changed.clear()
        self._changed_ids.clear()
        for queue in self._listeners:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(note)

    async def _save(self, force: bool = False) -> None:
        if self._store is None or not self.history.dirty:
            return
        if not force and time.monotonic() - self._last_save < SAVE_INTERVAL:
            return
        self._last_save = time.monotonic()
        batch, self.history.dirty = self.history.dirty, {}
        try:
            await self._store.save(batch.values())
        except AqueueError:
            self.history.dirty = {**batch, **self.history.dirty}  # written on the next turn
            raise
