"""The worker: one event loop that fetches messages and runs up to ``concurrency`` at a time.

Three kinds of coroutine cooperate, with no per-message ``asyncio.Task``:

- the *fetcher* leases messages in batches from the broker, never holding more than the prefetch
  bound (``concurrency * worker_prefetch_multiplier``), into an in-memory buffer;
- ``concurrency`` *runners* each take the next message from the buffer and execute it
  (:class:`~aqueue.worker.execute.Executor`);
- the *renewer* extends the leases of every held message every third of the visibility timeout,
  so a long task is not delivered again to another worker while this one is alive.

Operations ride along (see :mod:`aqueue.worker.remote`, :mod:`aqueue.worker.ratelimit`,
:mod:`aqueue.worker.revoke`, :mod:`aqueue.control.events`): a fetched message of a rate-limited task
waits in the :class:`~aqueue.worker.ratelimit.RateGate` for a token instead of going to the runners;
the executor skips revoked messages (one lookup in a local set) and can terminate a running one;
:class:`~aqueue.worker.remote.Remote` answers control commands and beats; with events on, an
:class:`~aqueue.control.events.EventDispatcher` publishes task events. None of these costs anything
while unused: no rate limit means no message is even looked at before a runner takes it.

Each of these loops runs under a supervisor (:meth:`Worker._supervise`): one that crashes (a
bug; no message can make one crash, see :mod:`aqueue.worker.execute`) is logged with its
traceback and started again, so the worker never silently loses a loop.

Suspects (see :class:`~aqueue.transports.base.RunTracking`): on a broker that tracks runs, a
message that was running when its last worker died comes back with ``delivery_count > 1``. A
worker runs at most one suspect at a time (the others wait, best-struck first), alongside its
ordinary work, so that when a suspect kills its worker the strike lands on that one message.

Starting waits for the broker: while it (or the result backend) cannot be reached, the worker
retries with a capped backoff (one log line per outage) and starts consuming once it answers.

Shutdown (SIGTERM/SIGINT or :meth:`Worker.stop`) is graceful: fetching stops, messages not yet
started are released to the broker at once, running tasks get ``worker_shutdown_timeout``
seconds to finish, and any still running then are cancelled and released (not acked), so they
run again elsewhere. Nothing is lost. A task that absorbs the cancellation is cancelled again
each :data:`CANCEL_INTERVAL` seconds, named in the log, up to :data:`CANCEL_ROUNDS` times; then
the worker stops without it, handing its message back all the same (see :meth:`Worker.stop`).
A second signal stops at once: the running tasks get one last cancellation and one turn of the
loop, and their messages are handed back.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import itertools
import logging
import os
import resource
import secrets
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from aqueue import signals
from aqueue.control.events import EventDispatcher
from aqueue.exceptions import AqueueError, BrokerConnectionError, ConfigurationError
from aqueue.transports import Broker, Delivery, Outgoing, ResultBackend, pushes_deliveries
from aqueue.transports.urls import redacted_url
from aqueue.worker.batch import prefetch_for
from aqueue.worker.deadline import DeadlineWatch
from aqueue.worker.execute import Executor, NextRun
from aqueue.worker.invoke import cancelling, is_task_failure
from aqueue.worker.lifespan import current_state
from aqueue.worker.ratelimit import Bucket, LocalBucket, RateGate, SharedBucket, parse_rate
from aqueue.worker.remote import HEARTBEAT_INTERVAL, Remote
from aqueue.worker.revoke import Revocations
from aqueue.worker.threads import TaskThreads

if TYPE_CHECKING:
    from aqueue.app import Aqueue
    from aqueue.config import Settings

logger = logging.getLogger("aqueue.worker")

FETCH_TIMEOUT = 1.0  # seconds a fetch blocks; bounds how long a stop waits for the fetcher
RECONNECT_DELAY = 1.0  # seconds between attempts while the broker is unreachable
# Seconds between attempts to reach the broker at start: the first pause, doubled up to the
# last (so a worker starts at most this long after its broker appears).
CONNECT_BACKOFF = (0.1, 2.0)
# Seconds before a crashed internal loop is started again: the first pause, doubled up to the
# last while it keeps crashing; a loop that ran longer than the last starts from the first.
RESTART_BACKOFF = (0.1, 5.0)
# Cold shutdown: seconds between the cancellations of the tasks still running after the
# shutdown timeout (one may absorb a cancellation: some client libraries do), and how many
# cancellations they get before the worker stops without them.
CANCEL_INTERVAL = 1.0
CANCEL_ROUNDS = 10
_MAX_PRIORITY = 255  # the highest priority a message may carry (aqueue.message checks it)


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
        send_events: publish task and worker events (default ``worker_send_task_events``).
        max_tasks_per_child: stop (to be replaced) after this many messages; default
            ``worker_max_tasks_per_child`` in a ``--processes`` child, else none.
        max_memory_per_child: stop (to be replaced) once resident memory exceeds this many KiB
            after a task; default ``worker_max_memory_per_child`` in a ``--processes`` child.

    The app's ``worker_lifespan`` is entered at start and left at stop (see
    :mod:`aqueue.worker.lifespan`); :attr:`state` holds what it yielded.

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
        send_events: bool | None = None,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
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
        self._stop_signal: str | None = None  # the signal that asked for the shutdown, if any
        self._force = asyncio.Event()
        self._helpers_done = asyncio.Event()  # set by stop() once no message is held
        self._stopped = asyncio.Event()
        self._ready = asyncio.Event()
        self._progress = asyncio.Event()  # set each time a runner finishes a message
        self._runners: list[asyncio.Task[None]] = []
        # Suspects (see the module docstring): the one running or waiting for a runner, and
        # the others, parked in a heap: most strikes first, then in arrival order.
        self._suspect: Delivery | None = None
        self._parked: list[tuple[int, int, Delivery]] = []
        self._idle = 0  # runners waiting for a delivery
        # ids of the deliveries in the buffer whose run the fetcher marked already (the ones it
        # handed straight to idle runners, see _handed)
        self._premarked: set[int] = set()
        self._arrivals = itertools.count()
        self._helpers: list[asyncio.Task[None]] = []
        self._fetcher: asyncio.Task[None] | None = None
        self._fetch: asyncio.Future[list[Delivery]] | None = None  # the fetch under way
        self._main: asyncio.Task[None] | None = None
        self._start_task: asyncio.Task[Any] | None = None  # the task running start()
        self._start_ended = asyncio.Event()  # start() has returned or raised
        self._stop_task: asyncio.Future[None] | None = None  # the shutdown, once begun
        self._threads = TaskThreads(self.concurrency)
        self.executor: Executor | None = None
        self.broker: Broker | None = None
        self.pid = os.getpid()
        # Unique per run: hostnames may repeat (several workers on a host, a restart).
        self.node = f"{self.hostname}.{self.pid}.{secrets.token_hex(3)}"
        self.send_events = conf.worker_send_task_events if send_events is None else send_events
        self.revocations = Revocations()
        self.gate: RateGate | None = None
        self.remote: Remote | None = None
        self.events: EventDispatcher | None = None
        self._queues_changed = asyncio.Event()
        # Worker lifespan: the entered context manager, and what it yielded.
        self.state: Any = None
        self._lifespan: contextlib.AbstractAsyncContextManager[Any] | None = None
        self._context = contextvars.copy_context()  # the runners'; holds the state
        # Recycling (--processes children): limits, and why this worker stopped itself.
        supervised = _SUPERVISED[0]
        if max_tasks_per_child is None and supervised:
            max_tasks_per_child = conf.worker_max_tasks_per_child
        if max_memory_per_child is None and supervised:
            max_memory_per_child = conf.worker_max_memory_per_child
        self.max_tasks_per_child = max_tasks_per_child or None
        self.max_memory_per_child = max_memory_per_child or None
        self.recycle_reason: str | None = None
        self._taken = 0  # deliveries given to runners (max_tasks_per_child counts them)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and begin consuming; returns once the worker is ready.

        While the broker, result backend or control transport cannot be reached this waits,
        trying again with a capped backoff (:data:`CONNECT_BACKOFF`) and logging once per
        outage; a :meth:`stop` meanwhile ends the wait and the worker never starts.

        Starting either finishes or is undone: should it fail, or be cancelled, once the
        lifespan has started (a server gone, ``asyncio.wait_for(worker.start(), ...)`` timing
        out), the worker is stopped (:meth:`stop`: the lifespan's shutdown runs, nothing is
        left running) before the error is raised. A :meth:`stop` from another task while this
        runs waits for it to reach a step where it gives up, then undoes what it did.

        Raises:
            ConfigurationError: a task's ``rate_limit`` is not a rate, or a URL is invalid.
            Exception: whatever the lifespan's startup raises, or a server error while
                starting (``BrokerConnectionError`` with the connection retries off).
        """
        self._start_task = asyncio.current_task()
        try:
            await self._start()
        except BaseException:
            self._start_ended.set()
            if self._lifespan is not None or self.executor is not None:
                await self.stop()  # undo: the lifespan's shutdown runs, nothing is left running
            raise
        finally:
            self._start_ended.set()

    async def _start(self) -> None:
        """The steps of :meth:`start`; returns early once a stop has come."""
        self.app.apply_annotations()
        rates = {name: parse_rate(task.rate_limit) for name, task in self.app.tasks.items()}
        if _SUPERVISED[0]:
            await signals.worker_process_init.send(None)
        await signals.worker_init.send(self)
        connected = await self._connect()
        if connected is None or self._stopped_while_starting():
            return  # stopped while waiting for the broker
        self.broker, backend = connected
        await self._enter_lifespan()
        if self._stopped_while_starting():  # stopped while the lifespan started
            return
        if backend is None:
            logger.warning("no result backend configured: task results will not be stored")
        self.executor = Executor(self.app, self.broker, backend, self.hostname, self._threads)
        self.executor.revoked = self.revocations
        self.executor.batches.finished = self._finished
        # A store is bounded as a send is: a backend that stops answering without closing the
        # connection (redis_socket_timeout is None by default) would hold every result.
        self.executor.completer.timeout = self.app.conf.broker_connection_timeout
        self.prefetch = prefetch_for(self.app.tasks.values(), self.prefetch, self.concurrency)
        self.started_at = time.time()
        await self._start_operations(rates)
        if self._stopped_while_starting():
            return
        self._runners = [
            asyncio.create_task(
                self._supervise(f"runner {i}", self._run_one),
                context=self._context.copy(),
                name=f"runner {i}",  # named in the log of a shutdown waiting for it
            )
            for i in range(self.concurrency)
        ]
        self._helpers = [asyncio.create_task(self._supervise("lease renewer", self._renew_leases))]
        self._watch_deadlines()
        self._fetcher = asyncio.create_task(self._supervise("fetcher", self._fetch_loop))
        self._ready.set()
        await signals.worker_ready.send(self)
        # Scripts and supervisors wait for this line, so it shows at any -l level, as Celery's;
        # like Celery's banner it names the servers (passwords masked) and counts the tasks.
        backend_url = self.app.conf.resolved_backend_url()
        logger.log(
            max(logging.INFO, logger.getEffectiveLevel()),
            "%s ready: consuming %s with concurrency %d (prefetch %d), pid %d; "
            "broker %s, results %s, %d task(s) registered",
            self.hostname,
            ",".join(self.queues),
            self.concurrency,
            self.prefetch,
            os.getpid(),
            redacted_url(self.app.conf.resolved_broker_url()),
            redacted_url(backend_url) if backend_url else "disabled",
            sum(not name.startswith("aqueue.") for name in self.app.tasks),  # not the builtins
        )

    def _stopped_while_starting(self) -> bool:
        """True if a stop has come: :meth:`start` then goes no further, and the shutdown,
        which waits for start to end, stops what it did (the lifespan included)."""
        return self._stopping.is_set()

    def _watch_deadlines(self) -> None:
        """Start the soft-deadline watch if any task has a deadline (:mod:`.deadline`)."""
        assert self.executor is not None
        default = self.app.conf.task_soft_deadline
        interval = DeadlineWatch.interval_for(self.app.tasks.values(), default)
        if interval is not None:
            watch = DeadlineWatch(self.executor, default)
            loop = self._supervise("deadline watch", lambda: watch.run(interval))
            self._helpers.append(asyncio.create_task(loop))

    async def _enter_lifespan(self) -> None:
        """Run the app's worker lifespan up to its ``yield`` (see :mod:`.lifespan`).

        Raises:
            Exception: whatever the lifespan's startup raises; the worker does not start.
        """
        conf = self.app.conf
        unsupervised = [
            name
            for name in ("worker_max_tasks_per_child", "worker_max_memory_per_child")
            if getattr(conf, name) and not _SUPERVISED[0]
        ]
        if unsupervised and not (self.max_tasks_per_child or self.max_memory_per_child):
            logger.warning(
                "%s is set but applies only to the worker processes of `aqueue worker "
                "--processes N` (as Celery's applies only to prefork children): this single "
                "worker process is never replaced",
                " and ".join(unsupervised),
            )
        make = self.app.worker_lifespan_function
        if make is None:
            return
        lifespan = make(self)
        try:
            self.state = await lifespan.__aenter__()
        except Exception:
            logger.exception("%s: the worker lifespan's startup failed", self.hostname)
            raise
        self._lifespan = lifespan
        self._context.run(current_state.set, self.state)
        logger.info("%s: worker lifespan started", self.hostname)

    async def _exit_lifespan(self) -> None:
        """Run the rest of the worker lifespan (its shutdown); an error is logged."""
        lifespan, self._lifespan = self._lifespan, None
        if lifespan is None:
            return
        with _logged("running the worker lifespan's shutdown"):
            await lifespan.__aexit__(None, None, None)
            logger.info("%s: worker lifespan stopped", self.hostname)

    async def _connect(self) -> tuple[Broker, ResultBackend | None] | None:
        """The connected broker and result backend (and control transport, when there is
        one), waiting while any cannot be reached; ``None`` if stopped while waiting."""
        retry, limit = _retry_policy(self.app.conf, startup=True)
        pause, failures = CONNECT_BACKOFF[0], 0
        while True:
            try:
                broker = await self.app.broker()
                backend = await self.app.result_backend() if self.app.has_result_backend else None
                with contextlib.suppress(ConfigurationError):  # none: _start_operations says so
                    await self.app.control_transport()
            except BrokerConnectionError as exc:
                failures += 1
                if not retry or (limit is not None and failures > limit):
                    raise  # broker_connection_retry(_on_startup) off, or out of retries
                if failures == 1:
                    logger.error(
                        "%s cannot start yet: %s; waiting for it (retrying every %gs at most)",
                        self.hostname,
                        exc,
                        CONNECT_BACKOFF[1],
                    )
                else:  # one line per outage; each further attempt only at debug level
                    logger.debug("%s: still unreachable, trying again in %gs", self.hostname, pause)
            else:
                if failures:
                    logger.warning("%s: the servers answer again, starting", self.hostname)
                return broker, backend
            if await self._stopping_within(pause):
                return None
            pause = min(pause * 2, CONNECT_BACKOFF[1])

    async def _stopping_within(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for a stop; True if the worker is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    async def _supervise(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run ``loop`` until it returns; when it raises, log it and run it again.

        Pauses between restarts back off (:data:`RESTART_BACKOFF`) while the loop keeps
        crashing, and end early when the worker stops (the loop then sees the stop and
        returns). Its own cancellation is not caught (nor KeyboardInterrupt, SystemExit); a
        ``CancelledError`` with no cancellation of this task requested is a crash like any.
        """
        pause = RESTART_BACKOFF[0]
        while True:
            began = time.monotonic()
            try:
                await loop()
                return
            except BaseException as exc:
                # Not only Exception: a stray CancelledError or GeneratorExit (a task's, had it
                # got through) must not end a runner for good, a concurrency slot lost.
                if not is_task_failure(exc):
                    raise
                logger.exception(
                    "%s: internal task %s crashed; restarting it in %gs", self.hostname, name, pause
                )
            if time.monotonic() - began > RESTART_BACKOFF[1]:
                pause = RESTART_BACKOFF[0]  # it had been running fine: a new incident
            await self._stopping_within(pause)
            pause = min(pause * 2, RESTART_BACKOFF[1])

    async def _start_operations(self, rates: dict[str, float | None]) -> None:
        """Rate limits, remote control, revocations and events (see the module docstring)."""
        assert self.executor is not None
        try:
            transport = await self.app.control_transport()
        except ConfigurationError as exc:
            logger.warning("remote control, revocations and global rate limits are off: %s", exc)
            transport = None
        bucket: Bucket = LocalBucket()
        if transport is not None and self.app.conf.rate_limit_scope == "global":
            bucket = SharedBucket(transport)
        self.gate = RateGate(
            bucket, self._ungated, self._defer, self.revocations, self.prefetch // 2
        )
        for name, rate in rates.items():
            if rate is not None:
                self.gate.set_rate(name, rate)
        if transport is None:
            return
        self.remote = Remote(self, transport)
        await self.remote.start()  # the last step that can fail: nothing is left running then
        if self.send_events:
            self.events = EventDispatcher(transport, self.hostname)
            self.events.start()
            self.executor.on_event = self.events.task_event
            self.events.send("worker-online", **self.event_info())

    async def run(self, install_signal_handlers: bool = False) -> None:
        """Start, then run until :meth:`stop` (or SIGTERM/SIGINT if ``install_signal_handlers``)."""
        if install_signal_handlers:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
        await self.start()
        await self._stopped.wait()

    async def wait_stopped(self) -> None:
        """Wait until the worker has stopped (by :meth:`stop`, a signal or remote control)."""
        await self._stopped.wait()

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stopping.is_set():
            logger.warning("second %s: stopping now, running tasks go back to the queue", sig.name)
            self._force.set()
            return
        logger.info("%s received: warm shutdown, finishing running tasks", sig.name)
        self._stop_signal = sig.name
        self.app.spawn(self.stop())

    async def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: no new fetches; unstarted messages released; running tasks get
        ``timeout`` seconds (default ``shutdown_timeout``) before they are cancelled and released.

        A task that absorbs its cancellation (catches ``CancelledError`` and goes on) is named
        in the log and cancelled again every :data:`CANCEL_INTERVAL` seconds; after
        :data:`CANCEL_ROUNDS` cancellations the worker stops without it: its message is handed
        back like the others (it runs again elsewhere), and the task is left running in this
        event loop, where it may still finish (a run twice: at least once, never lost). So
        ``stop()`` returns within ``timeout + CANCEL_ROUNDS * CANCEL_INTERVAL`` seconds, plus
        the broker calls of the release; a second signal ends the wait at once.

        The shutdown runs in a task of its own, once: further calls wait for it, and a call
        that is cancelled (``asyncio.wait_for(worker.stop(), ...)`` timing out) leaves it
        running to its end (:meth:`wait_stopped`). During a :meth:`start` it begins once
        start has stopped at its next step, and stops what start did; called from start
        itself (a ``worker_init`` receiver, the lifespan's startup), it returns at once.
        """
        if self._stop_task is None:
            self._stopping.set()
            self._slot_free.set()
            if self._fetch is not None:
                self._fetch.cancel()  # a no-op once it is done: its batch is kept
            self._stop_task = asyncio.ensure_future(self._shutdown(timeout))
        if asyncio.current_task() is self._start_task and not self._start_ended.is_set():
            return  # waiting here would wait for this very start() to end
        await asyncio.shield(self._stop_task)

    async def _shutdown(self, timeout: float | None) -> None:
        """The shutdown :meth:`stop` describes, run once in a task of its own."""
        await signals.worker_shutting_down.send(
            self.hostname, sig=self._stop_signal, how="Warm", exitcode=0
        )
        grace = self.shutdown_timeout if timeout is None else timeout
        # A start under way ends at its next step (it sees _stopping): what it started is
        # then stopped here, not left running after stop() returns.
        if self._start_task is not None:
            await self._start_ended.wait()
        if self._fetcher is not None:
            await asyncio.gather(self._fetcher, return_exceptions=True)  # supervised: ends
        if self.gate is not None:
            with _logged("closing the rate gate"):
                await self.gate.close()  # what it parked is still held: released below
        unstarted = []
        while not self._buffer.empty():
            d = self._buffer.get_nowait()
            self._held.pop(id(d), None)
            unstarted.append(d)
        self._premarked.clear()
        if self._runners:
            for _ in self._runners:  # a sentinel-free wake-up: runners see _stopping once idle
                self._buffer.put_nowait(_STOP)
            # Calls waiting for a batch stay held (released below); running batches are waited
            # for like the runners.
            running = [*self._runners, *(self.executor.batches.close() if self.executor else [])]
            forced: asyncio.Future[Any] = asyncio.ensure_future(self._force.wait())
            finished: asyncio.Future[Any] = asyncio.gather(*running, return_exceptions=True)
            await asyncio.wait(
                [finished, forced],
                timeout=grace,
                return_when=asyncio.FIRST_COMPLETED,
            )
            forced.cancel()
            pending = {t for t in running if not t.done()}
            if pending:
                await self._cancel_running(pending)
        if self.executor is not None:
            await self.executor.completer.settled()  # no mark on its way during the release
        leftover = unstarted + list(self._held.values())
        self._held.clear()
        if self.broker is not None and pushes_deliveries(self.broker):
            # Released messages must not be pushed straight back to this stopped worker.
            with contextlib.suppress(AqueueError, TimeoutError):
                await self.broker.stop_fetching()
        if leftover and self.broker is not None:
            with contextlib.suppress(AqueueError):
                await self.broker.release(leftover)
        await self._exit_lifespan()  # no task of this worker runs any more
        self._helpers_done.set()
        for helper in self._helpers:
            helper.cancel()
        await asyncio.gather(*self._helpers, return_exceptions=True)
        if self.events is not None:
            with _logged("stopping events"):
                self.events.send("worker-offline", **self.event_info())
                await self.events.stop()
        if self.remote is not None:
            with _logged("stopping remote control"):
                await self.remote.stop()
        self._threads.shutdown(wait=False, cancel_futures=True)
        logger.info("%s stopped (%d tasks processed)", self.hostname, self.processed)
        await signals.worker_shutdown.send(self)
        self._stopped.set()

    async def _cancel_running(self, pending: set[asyncio.Task[Any]]) -> None:
        """Cancel the runners and batches in ``pending`` (still running when the shutdown
        timeout ran out) and wait for them, cancelling again each :data:`CANCEL_INTERVAL`
        seconds those that absorb it, naming them in the log, at most :data:`CANCEL_ROUNDS`
        times; then give them up (left running). A second signal (:meth:`_on_signal`) ends
        the rounds at once (:meth:`_cancel_once_more`). Their messages stay held:
        :meth:`stop` hands them back after this, whether or not they stopped."""
        count = len(pending)
        forced: asyncio.Future[Any] = asyncio.ensure_future(self._force.wait())
        try:
            for round_ in range(1, CANCEL_ROUNDS + 1):
                if self._force.is_set():
                    await self._cancel_once_more(pending)
                    break
                for task in pending:
                    task.cancel()
                ended: asyncio.Future[Any] = asyncio.gather(*pending, return_exceptions=True)
                await asyncio.wait(
                    [ended, forced], timeout=CANCEL_INTERVAL, return_when=asyncio.FIRST_COMPLETED
                )
                pending = {task for task in pending if not task.done()}
                if not pending:
                    break
                if self._force.is_set():
                    await self._cancel_once_more(pending)
                    break
                if round_ == CANCEL_ROUNDS:
                    logger.error(
                        "%d task(s) still running after %d cancellations at shutdown, stopping "
                        "without them: their messages are handed back to run again (they may "
                        "finish here too): %s",
                        len(pending),
                        CANCEL_ROUNDS,
                        self._running_in(pending),
                    )
                    break
                logger.warning(
                    "%d task(s) still running %gs after being cancelled at shutdown (the "
                    "cancellation was absorbed), cancelling again: %s",
                    len(pending),
                    CANCEL_INTERVAL,
                    self._running_in(pending),
                )
        finally:
            forced.cancel()
        logger.warning("%d running task(s) cancelled at shutdown, released for redelivery", count)

    async def _cancel_once_more(self, pending: set[asyncio.Task[Any]]) -> None:
        """After a second signal: cancel ``pending`` a last time and give them one turn of the
        loop to end in (no waiting: the user asked to stop now); those still running are
        named in the log and given up."""
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0)
        if pending:
            logger.error(
                "%d task(s) still running after a second signal, stopping without them: their "
                "messages are handed back to run again (they may finish here too): %s",
                len(pending),
                self._running_in(pending),
            )

    def _running_in(self, tasks: set[asyncio.Task[Any]]) -> str:
        """What ``tasks`` (runners, batches) are running, for the log: ``runner 0 (name[id])``."""
        assert self.executor is not None
        bodies = self.executor.terminable.runners()
        active = self.executor.active
        names = []
        for task in tasks:
            task_id = bodies.get(task)
            request = active.get(task_id) if task_id is not None else None
            what = f" ({request.task}[{task_id}])" if request is not None else ""
            names.append(f"{task.get_name()}{what}")
        return ", ".join(sorted(names))

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def is_ready(self) -> bool:
        """True from the moment it consumes until it begins to shut down (readiness)."""
        return self._ready.is_set() and not self._stopping.is_set()

    @property
    def processed(self) -> int:
        """Messages handled since start (any outcome)."""
        return self.executor.done if self.executor else 0

    async def wait_processed(self, count: int) -> None:
        """Wait until :attr:`processed` reaches ``count`` (for tests: no polling, no sleeps).

        A message counts once it is finished: outcome stored and acked, or dead-lettered.
        """
        while self.processed < count:
            self._progress.clear()
            await self._progress.wait()

    @property
    def active(self) -> dict[str, Any]:
        """Requests running now, by task id."""
        return dict(self.executor.active) if self.executor else {}

    # -- operations (called by remote control) -----------------------------------------------

    def held(self) -> list[Delivery]:
        """Messages fetched and not finished: running, waiting for a runner, or parked."""
        return list(self._held.values())

    def stats(self) -> dict[str, Any]:
        """This worker's counters (``inspect stats``, heartbeats)."""
        return {
            "hostname": self.hostname,
            "pid": self.pid,
            "node": self.node,
            "concurrency": self.concurrency,
            "prefetch": self.prefetch,
            "queues": list(self.queues),
            "processed": self.processed,
            "active": len(self.active),
            "held": len(self._held),
            "started": self.started_at,
            "uptime": time.time() - self.started_at if self.started_at else 0.0,
            "events": self.send_events,  # from the first heartbeat on, before events start
            "rate_limit_scope": self.app.conf.rate_limit_scope,
        }

    def event_info(self) -> dict[str, Any]:
        """The fields of this worker's ``worker-*`` events."""
        return {
            "node": self.node,
            "concurrency": self.concurrency,
            "active": len(self.active),
            "processed": self.processed,
            "queues": list(self.queues),
            "freq": HEARTBEAT_INTERVAL,
        }

    def set_rate_limit(self, name: str, rate: str | float | None) -> None:
        """Change task ``name``'s rate limit here (``None``/``0``: none).

        Raises:
            ConfigurationError: ``rate`` is not a rate.
        """
        parsed = parse_rate(rate)
        task = self.app.tasks.get(name)
        if task is not None:
            task.rate_limit = None if parsed is None else str(rate)
        if self.gate is not None:
            self.gate.set_rate(name, parsed)

    def terminate(self, task_id: str) -> bool:
        """Cancel the running task ``task_id`` (revoke with terminate); True if it ran here."""
        return self.executor is not None and self.executor.terminable.terminate(task_id)

    def add_consumer(self, queue: str) -> dict[str, Any]:
        """Consume ``queue`` too, from the next fetch on."""
        if queue not in self.queues:
            self.queues.append(queue)
            self._queues_changed.set()
        return {"ok": f"now consuming from {queue!r}", "queues": list(self.queues)}

    def cancel_consumer(self, queue: str) -> dict[str, Any]:
        """Stop consuming ``queue`` from the next fetch on (messages held are still run)."""
        if queue in self.queues:
            self.queues.remove(queue)
        return {"ok": f"no longer consuming from {queue!r}", "queues": list(self.queues)}

    # -- the three loops ---------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        assert self.broker is not None
        retry, limit = _retry_policy(self.app.conf, startup=False)
        failures = 0
        while not self._stopping.is_set() and self.recycle_reason is None:
            # Parked suspects wait for their turn, not for a runner: they leave room to fetch.
            free = self.prefetch - len(self._held) + len(self._parked)
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            if not self.queues:  # every queue cancelled (cancel_consumer): wait for one
                self._queues_changed.clear()
                await _first(self._queues_changed.wait(), self._stopping.wait())
                continue
            try:
                batch = await self._fetch_or_stop(free)
            except AqueueError as exc:
                failures += 1
                if not retry or (limit is not None and failures > limit):
                    logger.critical(
                        "fetching from the broker failed: %s; stopping (broker_connection_retry "
                        "is off, or broker_connection_max_retries=%s were used up)",
                        exc,
                        limit,
                    )
                    self.app.spawn(self.stop())
                    return
                if failures == 1:  # one line per outage, not one per attempt
                    logger.error(
                        "fetching from the broker failed: %s; retrying every %gs",
                        exc,
                        RECONNECT_DELAY,
                    )
                await self._stopping_within(RECONNECT_DELAY)
                continue
            if failures:
                logger.warning("fetching from the broker works again")
                failures = 0
            gate = self.gate if self.gate is not None and self.gate.active else None
            ready = []
            for delivery in batch:
                self._held[id(delivery)] = delivery
                gated = gate is not None and self._park(gate, delivery)
                if not gated and not self._parks_suspect(delivery):
                    ready.append(delivery)
            if await self._handed(ready):
                await asyncio.sleep(0)  # the runners start them before the next fetch is sent
            self._next_suspect()
            await self._release_surplus()

    def _enqueue(self, delivery: Delivery) -> None:
        """Hand ``delivery`` to the runners; a suspect is parked for the suspect slot instead
        (given out by :meth:`_next_suspect`, once the whole batch is parked)."""
        if not self._parks_suspect(delivery):
            self._buffer.put_nowait(delivery)

    def _parks_suspect(self, delivery: Delivery) -> bool:
        """Park ``delivery`` for the suspect slot if it is a suspect; False if it is not."""
        assert self.executor is not None
        if delivery.delivery_count > 1 and self.executor.tracks_runs:
            entry = (-delivery.strikes, next(self._arrivals), delivery)
            heapq.heappush(self._parked, entry)
            return True
        return False

    async def _handed(self, ready: list[Delivery]) -> bool:
        """Put ``ready`` (fetched, neither gated nor suspects) in the buffer. When idle runners
        will take them all at once, their runs are marked first, by one write that is not
        waited on (:meth:`~aqueue.worker.completer.Completer.premark`): the runners then start
        them without a round trip. True if they were so marked."""
        assert self.executor is not None
        marked = False
        if ready and self._buffer.empty() and self._idle >= len(ready):
            try:
                marked = await self.executor.completer.premark([(d, False) for d in ready])
            except AqueueError:
                pass  # the runners mark them as usual
            except Exception:
                # A bug of the broker's, say: still the runners get them (mark them), else
                # they would stay held, their leases renewed, never run, for ever.
                logger.exception("marking the runs of %d fetched message(s) failed", len(ready))
        if marked:
            self._premarked.update(id(d) for d in ready)
        for delivery in ready:
            self._buffer.put_nowait(delivery)
        return marked

    def _ungated(self, delivery: Delivery) -> None:
        """The rate gate lets ``delivery`` through."""
        self._enqueue(delivery)
        self._next_suspect()

    def _next_suspect(self) -> None:
        """Give the slot to the best parked suspect if it is free (one suspect at a time)."""
        if self._suspect is None and self._parked and not self._stopping.is_set():
            self._suspect = heapq.heappop(self._parked)[2]
            self._buffer.put_nowait(self._suspect)

    async def _release_surplus(self) -> None:
        """Hand back the parked suspects beyond ``prefetch`` (worst struck last), so that a
        flood of suspects cannot hold more than twice the prefetch bound; then wait for the
        slot to move before fetching again, rather than fetch them straight back."""
        if len(self._parked) <= self.prefetch:
            return
        assert self.broker is not None
        self._parked.sort()
        surplus = [d for _, _, d in self._parked[self.prefetch :]]
        del self._parked[self.prefetch :]
        heapq.heapify(self._parked)
        for delivery in surplus:
            self._held.pop(id(delivery), None)
        with _logged("handing back surplus suspects"):
            await self.broker.release(surplus)
        self._slot_free.clear()
        await _first(self._slot_free.wait(), self._stopping.wait())

    def _park(self, gate: RateGate, delivery: Delivery) -> bool:
        """Give ``delivery`` to the rate gate if its task is rate-limited; False otherwise."""
        env = _envelope(delivery.body)
        if env is None:
            return False  # not even JSON: the executor dead-letters it
        return gate.submit(env["id"], env["task"], delivery)

    async def _defer(self, delivery: Delivery, eta: float) -> bool:
        """Publish ``delivery`` again to run at ``eta`` (epoch seconds) and ack this copy.

        Publish before ack: a crash in between leaves two copies (at least once), never none.
        """
        assert self.broker is not None
        env = _envelope(delivery.body)
        if env is None:
            return False
        priority = env.get("priority")
        # Checked when it runs (a bad one is dead-lettered then); here only the broker's
        # level, which must be one the broker can store (SQLite: a 64-bit integer).
        if type(priority) is not int or not 0 <= priority <= _MAX_PRIORITY:
            priority = 0
        again = Outgoing(delivery.queue, delivery.body, env["id"], priority, eta)
        try:
            await self.broker.publish([again])
            await self.broker.ack([delivery])
        except AqueueError as exc:
            logger.warning("could not defer rate-limited task %s: %s", env["id"], exc)
            return False
        except Exception:
            # Not deferred, kept here (the gate parks it): else it would stay held, never run.
            logger.exception("could not defer rate-limited task %s", env["id"])
            return False
        self._held.pop(id(delivery), None)
        self._slot_free.set()
        return True

    async def _fetch_or_stop(self, limit: int) -> list[Delivery]:
        # A stop must not wait out a blocking fetch: stop() cancels the fetch unless it is done,
        # so a batch that raced in is kept. Awaiting the fetch itself (not it and the stop event
        # together) costs no task for the event and one loop turn fewer per wake-up.
        assert self.broker is not None
        fetch = self._fetch = asyncio.ensure_future(
            self.broker.fetch(self.queues, limit, FETCH_TIMEOUT)
        )
        try:
            return await fetch
        except asyncio.CancelledError:
            if not (self._stopping.is_set() and fetch.cancelled()):
                raise
            return []
        finally:
            self._fetch = None

    async def _run_one(self) -> None:
        assert self.executor is not None
        # On a RunTracking broker the runner takes its next delivery as this one finishes, so
        # that its start is marked with this one's ack (aqueue.worker.execute.NextRun).
        after = NextRun(self._take_ready) if self.executor.tracks_runs else None
        delivery: Delivery | None = None
        premarked = False
        while True:
            if delivery is None:
                if not self._may_take():
                    return  # this worker is being recycled: stop() follows
                self._idle += 1
                try:
                    delivery = await self._buffer.get()
                finally:
                    self._idle -= 1
                if delivery is _STOP:
                    return
                premarked = id(delivery) in self._premarked
                self._premarked.discard(id(delivery))
                self._taken += 1
            if after is not None:
                after.taken = None
            try:
                done = await self.executor.handle(
                    delivery, delivery is self._suspect, premarked, after
                )
            except BaseException as exc:
                if not is_task_failure(exc):
                    # Cancelled at shutdown mid-task: stays in _held, released by stop() (so
                    # does a next delivery taken meanwhile).
                    raise
                # handle() lets nothing else through; should a bug, its message is still let
                # go (its lease runs out), a next delivery taken meanwhile goes back to the
                # other runners, and the supervisor restarts this runner.
                self._finished(delivery)
                self._give_back(after)
                raise
            if done:  # else it waits in a batch, which finishes it (aqueue.worker.batch)
                self._finished(delivery)
            delivery, premarked = self._next_of(after)

    def _take_ready(self) -> tuple[Delivery, bool] | None:
        """The next delivery waiting for a runner, without waiting; ``None`` if there is none
        (a stop sentinel is left for a runner's own get)."""
        if self._buffer.empty() or not self._may_take():
            return None
        delivery = self._buffer.get_nowait()
        if delivery is _STOP:
            self._buffer.put_nowait(delivery)
            return None
        self._premarked.discard(id(delivery))  # marked again with the ack: no harm
        self._taken += 1
        return delivery, delivery is self._suspect

    def _may_take(self) -> bool:
        """False once a per-child limit is reached: no further message starts here."""
        if self.recycle_reason is not None:
            return False
        return not self.max_tasks_per_child or self._taken < self.max_tasks_per_child

    def _next_of(self, after: NextRun | None) -> tuple[Delivery | None, bool]:
        """What the runner handles next: the delivery it took while finishing, if any, and
        whether its run is marked already. One whose lease was found lost is let go."""
        taken = after.taken if after is not None else None
        if taken is None:
            return None, False
        if taken.marked is False:
            self._lost(taken.delivery)
            return None, False
        return taken.delivery, bool(taken.marked)

    def _lost(self, delivery: Delivery) -> None:
        """A delivery taken by a runner (counted in ``_taken``) whose lease was found lost: let
        go, and counted as processed, as :meth:`Executor.handle` counts one it finds lost.
        Otherwise, with ``max_tasks_per_child``, the runners would stop taking work at the
        limit while :attr:`processed` never reached it: a worker neither working nor
        recycled."""
        assert self.executor is not None
        logger.warning("a message was not started: its lease ran out and another worker has it")
        self.executor.done += 1
        self._finished(delivery)

    def _give_back(self, after: NextRun | None) -> None:
        """The next delivery a runner took (:class:`NextRun`) when the runner ends before
        running it (a bug): back to the buffer for another runner, no longer counted as taken;
        one whose lease was found lost is let go (:meth:`_lost`)."""
        taken = after.taken if after is not None else None
        if after is None or taken is None:
            return
        after.taken = None
        if taken.marked is False:
            self._lost(taken.delivery)
            return
        self._taken -= 1
        self._buffer.put_nowait(taken.delivery)  # still held: stop() releases it if need be

    def _finished(self, delivery: Delivery) -> None:
        """``delivery`` is done with (acked, dead-lettered, or left to its lease)."""
        self._held.pop(id(delivery), None)
        if delivery is self._suspect:
            self._suspect = None
            self._next_suspect()
        self._slot_free.set()
        self._progress.set()
        if (self.max_tasks_per_child or self.max_memory_per_child) and self.recycle_reason is None:
            self._check_limits()

    def _check_limits(self) -> None:
        """Stop gracefully, to be replaced, once a per-child limit is reached."""
        reason = None
        if self.max_tasks_per_child and self.processed >= self.max_tasks_per_child:
            reason = f"worker_max_tasks_per_child={self.max_tasks_per_child} reached"
        elif self.max_memory_per_child:
            rss = resident_kib()
            if rss > self.max_memory_per_child:
                reason = (
                    f"worker_max_memory_per_child={self.max_memory_per_child} KiB exceeded "
                    f"({rss} KiB resident)"
                )
        if reason is None or self._stopping.is_set():
            return
        self.recycle_reason = reason
        logger.warning(
            "%s: %s after %d task(s): finishing running tasks, then exiting to be replaced",
            self.hostname,
            reason,
            self.processed,
        )
        self.app.spawn(self._recycle())

    async def _recycle(self) -> None:
        """Stop after the fetcher's fetch in flight has returned (at most ``FETCH_TIMEOUT``):
        cancelling it could leave a batch the server handed out unseen, delivered again only
        after the visibility timeout; returned, it is handed back at once by :meth:`stop`."""
        self._slot_free.set()
        self._queues_changed.set()
        if self._fetcher is not None:
            await asyncio.wait({self._fetcher}, timeout=FETCH_TIMEOUT + RECONNECT_DELAY)
        await self.stop()

    async def _renew_leases(self) -> None:
        assert self.broker is not None
        interval = self.visibility_timeout / 3
        # Ends on its flag too: a cancel landing inside a redis-py command can be swallowed.
        # Leases are renewed until the runners are done (stop() sets the flag after them).
        while not self._helpers_done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._helpers_done.wait(), interval)
            if self._helpers_done.is_set():
                return
            held = list(self._held.values())
            if held:
                try:
                    await self.broker.renew(held)
                except AqueueError as exc:
                    logger.error("renewing leases failed: %s", exc)


#: Set (``[True]``) in a worker process run by the ``--processes`` supervisor: only there do
#: ``worker_max_tasks_per_child`` and ``worker_max_memory_per_child`` apply by default.
_SUPERVISED = [False]


def mark_supervised() -> None:
    """Note that this process is a ``--processes`` child (called by the supervisor's child)."""
    _SUPERVISED[0] = True


def resident_kib() -> int:
    """This process's resident memory now, in KiB (Linux: ``/proc/self/statm``; elsewhere the
    peak, ``ru_maxrss``)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak  # macOS: bytes


def _envelope(body: bytes) -> dict[str, Any] | None:
    """A message's envelope (id, task name, priority...), or None if it is not one."""
    try:
        env = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(env, dict) or not isinstance(env.get("id"), str):
        return None
    return env if isinstance(env.get("task"), str) else None


def _retry_policy(conf: Settings, startup: bool) -> tuple[bool, int | None]:
    """Whether to retry reaching the broker, and at most how many times in a row (``None``: no
    limit), at start or after losing it: ``broker_connection_retry``,
    ``broker_connection_retry_on_startup`` (``None``: as the former) and
    ``broker_connection_max_retries`` (``None`` or 0: no limit), as in Celery."""
    retry = conf.broker_connection_retry
    if startup and conf.broker_connection_retry_on_startup is not None:
        retry = conf.broker_connection_retry_on_startup
    return retry, conf.broker_connection_max_retries or None


@contextlib.contextmanager
def _logged(action: str) -> Iterator[None]:
    """Log (with its traceback) an error of a shutdown step instead of raising it, so that
    stopping always reaches its end. Not only an ``Exception``: a stray ``CancelledError``
    (user code, such as the lifespan's shutdown, that cancelled a helper and awaited it)
    would end the shutdown half-way, the worker never stopped (see
    :func:`~aqueue.cancellation.is_task_failure`); a real cancellation, KeyboardInterrupt and
    SystemExit still propagate."""
    entered = cancelling()
    try:
        yield
    except BaseException as exc:
        if not is_task_failure(exc, entered):
            raise
        logger.exception("error while %s", action)


async def _first(*aws: Any) -> None:
    """Wait until the first of ``aws`` finishes; cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


_STOP = Delivery("", b"", 0, None)
