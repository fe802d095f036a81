"""Prometheus metrics for workers: ``pip install 'aqueue[prometheus]'``, then
``aqueue worker -A proj --metrics-port 9808`` serves ``/metrics``, ``/healthz`` and ``/readyz``.

Metrics (labels ``task`` and ``queue`` unless said otherwise):

- ``aqueue_tasks_received_total``, ``aqueue_tasks_succeeded_total``,
  ``aqueue_tasks_failed_total``, ``aqueue_tasks_retried_total``,
  ``aqueue_tasks_revoked_total``, ``aqueue_tasks_dead_lettered_total``: counters of messages
  received and of each outcome (a message dead-lettered before it was decoded has ``task`` and
  ``queue`` as far as they are known, else ``"?"``; a message naming a task this worker does not
  know has its name as ``task`` for the first :data:`MAX_UNKNOWN_NAMES` such names, then
  ``"?"``, as any sender may write any name and each label value is a series kept forever);
- ``aqueue_task_runtime_seconds``: a histogram of run times (successes and failures);
- ``aqueue_task_queue_wait_seconds``: a histogram of the time from sending (or from the eta, for
  a delayed message) to the start of the run;
- ``aqueue_tasks_in_flight`` (label ``worker``): tasks running now;
- ``aqueue_tasks_prefetched`` (label ``worker``): messages fetched and not started;
- ``aqueue_queue_depth`` (labels ``queue`` and ``state``: ``ready``, ``delayed``, ``unacked``,
  ``dead``): from the broker's queue administration, sampled every ``interval`` seconds.

With ``--processes N`` the supervisor serves the port and the children write their samples to a
shared directory (prometheus_client's multi-process mode): the counters and histograms are
summed over the children, the gauges of live children too, and queue depths are the largest
sample (every child reads the same queues).

``/healthz`` answers 200 while the worker's event loop turns (a tick it schedules every
sampling interval, apart from the sampling itself so a slow broker does not count, came within
three intervals), else 503 - for a liveness probe. ``/readyz`` answers 200 once the worker is
connected and consuming, and 503 before and while it shuts down - for a readiness probe.
With ``--processes N``, the supervisor answers ``/readyz`` with 200 while every child is ready,
and ``/healthz`` with 503 while a child is down (from its death until its replacement is ready)
or the supervisor stops (:meth:`aqueue.worker.supervisor.Supervisor.alive`).

In code, without the CLI: ``metrics = Metrics(); metrics.install(app)`` before the worker starts,
then ``metrics.watch(worker)`` and ``serve(port, ...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socketserver
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from aqueue import signals
from aqueue.contrib import missing_extra
from aqueue.middleware import Middleware, RunNext
from aqueue.transports.base import QueueAdmin

try:
    import prometheus_client as prom
    from prometheus_client import multiprocess
except ImportError as exc:  # pragma: no cover - the extra is installed in the tests
    raise missing_extra(__name__, "prometheus_client", "prometheus") from exc

if TYPE_CHECKING:
    from aqueue.app import Aqueue
    from aqueue.task import Request, Task
    from aqueue.worker import Worker

__all__ = ["MAX_UNKNOWN_NAMES", "Metrics", "MetricsServer", "serve"]

log = logging.getLogger("aqueue.contrib.prometheus")

#: Run-time and queue-wait buckets, seconds: from a no-op task to a long batch job.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_UNKNOWN = "?"
#: How many names of tasks not registered in the app get a ``task`` label of their own.
MAX_UNKNOWN_NAMES = 100
_LABELS = ("task", "queue")


class Metrics(Middleware):
    """The task and worker metrics of one process, registered in ``registry``.

    Args:
        registry: where the metrics are registered (default: prometheus_client's global one).
        interval: seconds between two samples of the gauges (prefetched, queue depths).
    """

    def __init__(
        self, registry: prom.CollectorRegistry | None = None, interval: float = 5.0
    ) -> None:
        r = prom.REGISTRY if registry is None else registry
        self.registry = r
        self.interval = interval

        def counter(name: str, doc: str) -> prom.Counter:
            return prom.Counter(f"aqueue_tasks_{name}", doc, _LABELS, registry=r)

        self.received = counter("received", "Task messages received by the worker.")
        self.succeeded = counter("succeeded", "Tasks that succeeded.")
        self.failed = counter("failed", "Tasks that failed (no retry left).")
        self.retried = counter("retried", "Task runs that ended in a retry.")
        self.revoked = counter("revoked", "Tasks revoked or expired before or while running.")
        self.dead_lettered = counter("dead_lettered", "Messages sent to a dead-letter queue.")
        self.runtime = prom.Histogram(
            "aqueue_task_runtime_seconds", "Run time of tasks.", _LABELS, registry=r,
            buckets=BUCKETS,
        )  # fmt: skip
        self.queue_wait = prom.Histogram(
            "aqueue_task_queue_wait_seconds", "Time from sending (or the eta) to the run.",
            _LABELS, registry=r, buckets=BUCKETS,
        )  # fmt: skip
        self.in_flight = prom.Gauge(
            "aqueue_tasks_in_flight", "Tasks running now.", ("worker",), registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.prefetched = prom.Gauge(
            "aqueue_tasks_prefetched", "Messages fetched and not started.", ("worker",),
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.queue_depth = prom.Gauge(
            "aqueue_queue_depth", "Messages a queue holds, by state.", ("queue", "state"),
            registry=r, multiprocess_mode="max",
        )  # fmt: skip
        self.last_tick = time.monotonic()
        self._sampler: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._worker: Worker | None = None
        self._app: Aqueue | None = None
        self._names: set[str] = set()  # task names labelled as they are
        self._unknown_names = 0  # of them, names of tasks the app does not have

    # -- wiring ----------------------------------------------------------------------------

    def install(self, app: Aqueue) -> None:
        """Count ``app``'s tasks: add this middleware and connect the signal receivers (once,
        however often it is called)."""
        if self not in app.middleware:
            app.add_middleware(self)
        self._app = app
        uid = f"aqueue.contrib.prometheus:{id(self)}"
        receivers: Iterable[tuple[signals.Signal, Callable[..., Any]]] = (
            (signals.task_received, self._counting(self.received)),
            (signals.task_success, self._counting(self.succeeded)),
            (signals.task_failure, self._counting(self.failed)),
            (signals.task_retry, self._counting(self.retried)),
            (signals.task_revoked, self._counting(self.revoked)),
            (signals.task_dead_lettered, self._on_dead_lettered),
            (signals.worker_ready, self._on_worker_ready),
            (signals.worker_shutdown, self._on_worker_shutdown),
        )
        for signal, receiver in receivers:
            signal.connect(receiver, dispatch_uid=f"{uid}:{signal.name}")

    def watch(self, worker: Worker) -> None:
        """Sample ``worker``'s gauges every :attr:`interval` seconds on its event loop, from
        now until it stops (started by ``worker_ready`` when :meth:`install` was used)."""
        self._worker = worker
        self.last_tick = time.monotonic()
        loop = asyncio.get_running_loop()
        if self._sampler is None or self._sampler.done():
            self._sampler = loop.create_task(self._sample_forever(worker))
        if self._ticker is None or self._ticker.done():
            self._ticker = loop.create_task(self._tick_forever())

    def alive(self) -> bool:
        """True while the event loop answered a tick within three intervals (liveness); the
        ticks do not wait for the broker, so a slow queue-depth sample does not fail it."""
        return time.monotonic() - self.last_tick < 3 * self.interval

    def ready(self) -> bool:
        """True while the watched worker is connected and consuming (readiness)."""
        worker = self._worker
        return worker is not None and worker.is_ready

    # -- the middleware: run time and in-flight --------------------------------------------

    async def run(self, task: Task[Any, Any], request: Request, call_next: RunNext) -> Any:
        labels = (request.task or _UNKNOWN, request.queue or _UNKNOWN)
        now = time.time()
        sent = request.sent_at
        if sent is not None:
            self.queue_wait.labels(*labels).observe(max(now - max(sent, request.eta or 0), 0.0))
        gauge = self.in_flight.labels(request.hostname or _UNKNOWN)
        gauge.inc()
        started = time.perf_counter()
        try:
            return await call_next()
        finally:
            self.runtime.labels(*labels).observe(time.perf_counter() - started)
            gauge.dec()

    # -- the signal receivers --------------------------------------------------------------

    def _task_label(self, name: str | None) -> str:
        """The ``task`` label of a message naming ``name``: the name of a task of the app, or
        one of the first :data:`MAX_UNKNOWN_NAMES` other names; else ``"?"``."""
        if name in self._names:
            return name
        if not name:
            return _UNKNOWN
        if self._app is not None and name in self._app.tasks:
            self._names.add(name)
            return name
        if self._unknown_names < MAX_UNKNOWN_NAMES:
            self._unknown_names += 1
            self._names.add(name)
            return name
        return _UNKNOWN

    def _counting(self, counter: prom.Counter) -> Callable[..., None]:
        """A receiver of a task signal that counts it in ``counter`` by task and queue."""

        def count(request: Request, **_: Any) -> None:
            counter.labels(self._task_label(request.task), request.queue or _UNKNOWN).inc()

        return count

    def _on_dead_lettered(self, name: str | None, queue: str | None, **_: Any) -> None:
        self.dead_lettered.labels(self._task_label(name), queue or _UNKNOWN).inc()

    def _on_worker_ready(self, sender: Worker, **_: Any) -> None:
        self.watch(sender)

    async def _on_worker_shutdown(self, sender: Worker, **_: Any) -> None:
        tasks = [t for t in (self._sampler, self._ticker) if t is not None]
        self._sampler = self._ticker = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- sampling --------------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        while True:
            self.last_tick = time.monotonic()
            await asyncio.sleep(self.interval)

    async def _sample_forever(self, worker: Worker) -> None:
        while True:
            try:
                await self._sample(worker)
            except Exception as exc:  # the broker is down: the next sample tries again
                log.warning("metrics: could not sample the queues: %s", exc)
            await asyncio.sleep(self.interval)

    async def _sample(self, worker: Worker) -> None:
        running = len(worker.active)
        self.in_flight.labels(worker.hostname).set(running)
        self.prefetched.labels(worker.hostname).set(max(len(worker.held()) - running, 0))
        broker = await worker.app.broker()
        if not isinstance(broker, QueueAdmin):  # AMQP, for now: no depths
            return
        for depth in await broker.queue_depths(list(worker.queues)):
            for state in ("ready", "delayed", "unacked", "dead"):
                value = getattr(depth, state)
                if value is not None:  # None: the broker cannot count it (AMQP's unacked)
                    self.queue_depth.labels(depth.queue, state).set(value)


# -- the HTTP endpoint ---------------------------------------------------------------------------


#: Seconds a connection may stay silent (no request, or no reading of the answer) before it
#: is dropped.
CONNECTION_TIMEOUT = 10.0


class MetricsServer(socketserver.ThreadingMixIn, WSGIServer):
    """The endpoint's server (standard library WSGI); :meth:`close` stops and closes it.

    Each connection is served in a thread of its own (as prometheus_client's own server does),
    so a client that sends nothing - a TCP probe, a stalled scraper - neither keeps the others
    waiting, /healthz included, nor holds :meth:`close` up.
    """

    daemon_threads = True  # close() does not wait for them

    def close(self) -> None:
        """Stop serving and close the socket. Idempotent."""
        self.shutdown()
        self.server_close()


class _QuietHandler(WSGIRequestHandler):
    timeout = CONNECTION_TIMEOUT  # seconds; a silent connection does not hold a thread forever

    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not log lines
        pass


def serve(
    port: int,
    address: str = "0.0.0.0",
    *,
    registry: prom.CollectorRegistry | None = None,
    alive: Callable[[], bool] = lambda: True,
    ready: Callable[[], bool] = lambda: True,
    multiprocess_dir: str | None = None,
) -> MetricsServer:
    """Serve ``/metrics``, ``/healthz`` (``alive()``) and ``/readyz`` (``ready()``) on
    ``address:port`` from a daemon thread (the standard library's WSGI server, as
    prometheus_client's own ``start_http_server``); return the server (``close()`` stops it).

    Args:
        registry: the metrics to serve (default: the global registry), unless
            ``multiprocess_dir`` is given: then the samples the processes write there.

    Raises:
        OSError: the port cannot be bound (in use, or not allowed).
    """
    if multiprocess_dir is not None:
        registry = prom.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
    metrics_app = prom.make_wsgi_app(prom.REGISTRY if registry is None else registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path in ("/healthz", "/readyz"):
            ok = (alive if path == "/healthz" else ready)()
            status = "200 OK" if ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n" if ok else b"not ok\n"]
        if path in ("/", "/metrics"):
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: /metrics, /healthz or /readyz\n"]

    server = make_server(
        address, port, app, server_class=MetricsServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="aqueue-metrics", daemon=True)
    thread.start()
    return server
