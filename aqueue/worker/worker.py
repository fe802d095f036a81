"""The worker: one event loop that fetches messages and runs up to ``concurrency`` at a time.

Three kinds of coroutine cooperate, with no per-message ``asyncio.Task``:

- the *fetcher* leases messages in batches from the broker, never holding more than the prefetch
  bound (``concurrency * worker_prefetch_multiplier``), into an in-memory buffer;
- ``concurrency`` *runners* each take the next message from the buffer and execute it
  (:class:`~aqueue.worker.execute.Executor`);
- the *renewer* extends the leases of every held message every third of the visibility timeout,
  so a long task is not delivered again to another worker while this one is alive.

Shutdown (SIGTERM/SIGINT or :meth:`Worker.stop`) is graceful: fetching stops, messages not yet
started are released to the broker at once, running tasks get ``worker_shutdown_timeout``
seconds to finish, and any still running then are cancelled and released (not acked), so they
run again elsewhere. Nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from aqueue.brokers import Broker, Delivery
from aqueue.exceptions import AqueueError
from aqueue.worker.execute import Executor

if TYPE_CHECKING:
    from aqueue.app import Aqueue

logger = logging.getLogger("aqueue.worker")

FETCH_TIMEOUT = 1.0  # seconds a fetch blocks; bounds how long a stop waits for the fetcher
RECONNECT_DELAY = 1.0  # seconds between attempts while the broker is unreachable


class Worker:
    """Consume ``queues`` and run tasks of ``app``.

    Args:
        app: the app whose tasks run here.
        queues: queue names to consume, earlier first on ties (default: ``task_default_queue``).
        concurrency: tasks in flight at once (default ``worker_concurrency``, 100).
        prefetch_multiplier: messages held per concurrency slot (default
            ``worker_prefetch_multiplier``, 4).
        hostname: this worker's name (default ``aqueue@<host>``), in ``self.request.hostname``.
        shutdown_timeout: seconds running tasks get to finish on stop (default
            ``worker_shutdown_timeout``, 30).

    Use as ``await worker.run()`` (until stopped), or ``async with Worker(app):`` to run it in
    the background of the current loop.
    """

    def __init__(
        self,
        app: Aqueue,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        prefetch_multiplier: int | None = None,
        hostname: str | None = None,
        shutdown_timeout: float | None = None,
    ) -> None:
        conf = app.conf
        self.app = app
        self.queues = list(queues or [conf.task_default_queue])
        self.concurrency = concurrency or conf.worker_concurrency
        self.prefetch = self.concurrency * (prefetch_multiplier or conf.worker_prefetch_multiplier)
        self.hostname = hostname or f"aqueue@{socket.gethostname()}"
        self.shutdown_timeout = (
            conf.worker_shutdown_timeout if shutdown_timeout is None else shutdown_timeout
        )
        self.visibility_timeout = float(
            conf.broker_transport_options.get("visibility_timeout", 30.0)
        )
        self.started_at = 0.0
        self._buffer: asyncio.Queue[Delivery] = asyncio.Queue()
        self._held: dict[int, Delivery] = {}
        self._slot_free = asyncio.Event()
        self._stopping = asyncio.Event()
        self._force = asyncio.Event()
        self._stopped = asyncio.Event()
        self._ready = asyncio.Event()
        self._runners: list[asyncio.Task[None]] = []
        self._helpers: list[asyncio.Task[None]] = []
        self._fetcher: asyncio.Task[None] | None = None
        self._main: asyncio.Task[None] | None = None
        self._threads = ThreadPoolExecutor(self.concurrency, thread_name_prefix="aqueue-task")
        self.executor: Executor | None = None
        self.broker: Broker | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and begin consuming; returns once the worker is ready.

        Raises:
            BrokerConnectionError: the broker or result backend cannot be reached.
        """
        self.app.apply_annotations()
        self.broker = await self.app.broker()
        backend = await self.app.result_backend() if self.app.has_result_backend else None
        if backend is None:
            logger.warning("no result backend configured: task results will not be stored")
        self.executor = Executor(self.app, self.broker, backend, self.hostname, self._threads)
        self.started_at = time.time()
        self._runners = [asyncio.create_task(self._run_one()) for _ in range(self.concurrency)]
        self._helpers = [asyncio.create_task(self._renew_leases())]
        self._fetcher = asyncio.create_task(self._fetch_loop())
        self._ready.set()
        # Scripts and supervisors wait for this line, so it shows at any -l level, as Celery's.
        logger.log(
            max(logging.INFO, logger.getEffectiveLevel()),
            "%s ready: consuming %s with concurrency %d (prefetch %d), pid %d",
            self.hostname,
            ",".join(self.queues),
            self.concurrency,
            self.prefetch,
            os.getpid(),
        )

    async def run(self, install_signal_handlers: bool = False) -> None:
        """Start, then run until :meth:`stop` (or SIGTERM/SIGINT if ``install_signal_handlers``)."""
        if install_signal_handlers:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
        await self.start()
        await self._stopped.wait()

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stopping.is_set():
            logger.warning("second %s: stopping now, running tasks go back to the queue", sig.name)
            self._force.set()
            return
        logger.info("%s received: warm shutdown, finishing running tasks", sig.name)
        self.app.spawn(self.stop())

    async def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: no new fetches; unstarted messages released; running tasks get
        ``timeout`` seconds (default ``shutdown_timeout``) before they are cancelled and released.
        """
        if self._stopping.is_set():
            await self._stopped.wait()
            return
        self._stopping.set()
        self._slot_free.set()
        grace = self.shutdown_timeout if timeout is None else timeout
        if self._fetcher is not None:
            await self._fetcher
        unstarted = []
        while not self._buffer.empty():
            d = self._buffer.get_nowait()
            self._held.pop(id(d), None)
            unstarted.append(d)
        if self._runners:
            for _ in self._runners:  # a sentinel-free wake-up: runners see _stopping once idle
                self._buffer.put_nowait(_STOP)
            forced: asyncio.Future[Any] = asyncio.ensure_future(self._force.wait())
            finished: asyncio.Future[Any] = asyncio.gather(*self._runners, return_exceptions=True)
            await asyncio.wait(
                [finished, forced],
                timeout=grace,
                return_when=asyncio.FIRST_COMPLETED,
            )
            forced.cancel()
            pending = {t for t in self._runners if not t.done()}
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
                logger.warning(
                    "%d running task(s) cancelled at shutdown, released for redelivery",
                    len(pending),
                )
        leftover = unstarted + list(self._held.values())
        self._held.clear()
        if leftover and self.broker is not None:
            with contextlib.suppress(AqueueError):
                await self.broker.release(leftover)
        for helper in self._helpers:
            helper.cancel()
        await asyncio.gather(*self._helpers, return_exceptions=True)
        self._threads.shutdown(wait=False, cancel_futures=True)
        logger.info("%s stopped (%d tasks processed)", self.hostname, self.processed)
        self._stopped.set()

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def processed(self) -> int:
        """Messages handled since start (any outcome)."""
        return self.executor.done if self.executor else 0

    @property
    def active(self) -> dict[str, Any]:
        """Requests running now, by task id."""
        return dict(self.executor.active) if self.executor else {}

    # -- the three loops ---------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        assert self.broker is not None
        while not self._stopping.is_set():
            free = self.prefetch - len(self._held)
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            try:
                batch = await self._fetch_or_stop(free)
            except AqueueError as exc:
                logger.error(
                    "fetching from the broker failed: %s; retrying in %gs", exc, RECONNECT_DELAY
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), RECONNECT_DELAY)
                continue
            for delivery in batch:
                self._held[id(delivery)] = delivery
                self._buffer.put_nowait(delivery)

    async def _fetch_or_stop(self, limit: int) -> list[Delivery]:
        # A stop must not wait out a blocking fetch: cancel it, but keep a batch that raced in.
        assert self.broker is not None
        fetch = asyncio.ensure_future(self.broker.fetch(self.queues, limit, FETCH_TIMEOUT))
        stop = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait((fetch, stop), return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not fetch.done():
            fetch.cancel()
        try:
            return await fetch
        except asyncio.CancelledError:
            if not self._stopping.is_set():
                raise
            return []

    async def _run_one(self) -> None:
        assert self.executor is not None
        while True:
            delivery = await self._buffer.get()
            if delivery is _STOP:
                return
            try:
                await self.executor.handle(delivery)
            except asyncio.CancelledError:
                # Cancelled at shutdown mid-task: stays in _held, released by stop().
                raise
            self._held.pop(id(delivery), None)
            self._slot_free.set()

    async def _renew_leases(self) -> None:
        assert self.broker is not None
        interval = self.visibility_timeout / 3
        while True:
            await asyncio.sleep(interval)
            held = list(self._held.values())
            if held:
                try:
                    await self.broker.renew(held)
                except AqueueError as exc:
                    logger.error("renewing leases failed: %s", exc)


_STOP = Delivery("", b"", 0, None)
