"""``aqueue worker``: consume queues and run tasks; with ``-B`` also beat, with ``--processes N``
N worker processes under a supervisor (:mod:`aqueue.worker.supervisor`).

::

    aqueue worker -A proj.tasks [-c 100] [-Q default,io] [-l info] [-B] [-E] [--processes N]
                  [--logfile PATH] [--pidfile PATH]
    aqueue -A proj.tasks worker ...                  # Celery's order works too
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from aqueue.app import Aqueue
from aqueue.beat import Beat
from aqueue.cli._common import (
    app_spec,
    fail,
    load_app,
    run,
    setup_logging,
    split,
    use_log_format,
)
from aqueue.cli.metrics import (
    MetricsAddressOption,
    MetricsPortOption,
    child_metrics,
    metrics_for,
    supervisor_metrics,
)
from aqueue.cli.options import (
    AppOption,
    LogfileOption,
    LogFormatOption,
    LoglevelOption,
    PidfileOption,
)
from aqueue.cli.pidfile import hold_pidfile
from aqueue.exceptions import AqueueError
from aqueue.worker import Worker

__all__ = ["WorkerOptions", "run_worker_with_beat", "supervise", "worker"]


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """The options of one ``aqueue worker``, as given (``None``: the app's setting)."""

    concurrency: int | None = None
    queues: str | None = None
    loglevel: str = "INFO"
    hostname: str | None = None
    prefetch_multiplier: int | None = None
    beat: bool = False
    events: bool = False

    def build(self, app: Aqueue) -> tuple[Worker, Beat | None]:
        """The worker, and beat with ``-B``, for ``app``.

        Raises:
            ConfigurationError: a setting of the app does not fit (e.g. beat's schedule).
        """
        worker = Worker(app, split(self.queues), self.concurrency, self.prefetch_multiplier,
                        self.hostname, send_events=self.events or None)  # fmt: skip
        return worker, Beat(app) if self.beat else None

    def child_args(self) -> tuple[list[str], list[str]]:
        """``aqueue worker`` options for every child of a supervisor, and for the first only
        (``-B``: one beat, not N). The hostname is the supervisor's to give."""
        args = ["-l", self.loglevel]
        if self.concurrency is not None:
            args += ["-c", str(self.concurrency)]
        if self.queues:
            args += ["-Q", self.queues]
        if self.prefetch_multiplier is not None:
            args += ["--prefetch-multiplier", str(self.prefetch_multiplier)]
        if self.events:
            args.append("-E")
        return args, ["-B"] if self.beat else []


def worker(
    ctx: typer.Context,
    app: AppOption = None,
    concurrency: Annotated[
        int | None, typer.Option("-c", "--concurrency", min=1, help="Tasks in flight at once.")
    ] = None,
    queues: Annotated[
        str | None, typer.Option("-Q", "--queues", help="Comma-separated queues to consume.")
    ] = None,
    loglevel: LoglevelOption = "info",
    hostname: Annotated[
        str | None, typer.Option("-n", "--hostname", help="This worker's name.")
    ] = None,
    prefetch_multiplier: Annotated[
        int | None,
        typer.Option("--prefetch-multiplier", min=1, help="Messages held per slot."),
    ] = None,
    beat: Annotated[
        bool, typer.Option("-B", "--beat", help="Also run beat (periodic tasks) in this process.")
    ] = False,
    events: Annotated[
        bool, typer.Option("-E", "--events", help="Send task events (see aqueue events).")
    ] = False,
    processes: Annotated[
        int, typer.Option("--processes", min=1, help="Worker processes, under a supervisor.")
    ] = 1,
    logfile: LogfileOption = None,
    log_format: LogFormatOption = None,
    pidfile: PidfileOption = None,
    metrics_port: MetricsPortOption = None,
    metrics_address: MetricsAddressOption = "0.0.0.0",
) -> None:
    """Run a worker: consume the queues and run tasks until SIGTERM or SIGINT."""
    spec = app_spec(ctx, app)
    use_log_format(log_format)  # by the environment: --processes children inherit it
    options = WorkerOptions(concurrency, queues, loglevel, hostname, prefetch_multiplier,
                            beat, events)  # fmt: skip
    metrics = (metrics_port, metrics_address)
    if processes > 1:  # N copies of this command, without --processes
        supervise(spec, processes, options, logfile, pidfile, metrics)
    run_worker(spec, options, logfile, pidfile, metrics)


def run_worker(
    spec: str,
    options: WorkerOptions,
    logfile: Path | None = None,
    pidfile: Path | None = None,
    metrics: tuple[int | None, str] = (None, ""),
) -> None:
    """Load the app, set up logging (unless a ``setup_logging`` receiver in it does), hold the
    pidfile, and run one worker (and beat with ``-B``) until it stops.

    Raises:
        typer.Exit: (code 2) the app cannot be loaded or its broker reached; (code 1) the
            pidfile names a running process.
    """
    try:
        the_app = load_app(spec)
    except AqueueError as exc:
        raise fail(exc) from exc
    finally:  # the app's own setup_logging receivers are connected now, if it loaded
        setup_logging(options.loglevel, logfile)
    child_metrics(the_app)  # a --processes child of a supervisor serving metrics
    with hold_pidfile(pidfile), metrics_for(the_app, *metrics):
        _run_worker(the_app, options)


def _run_worker(the_app: Aqueue, options: WorkerOptions) -> None:
    try:
        w, b = options.build(the_app)
    except AqueueError as exc:
        raise fail(exc) from exc

    async def main() -> None:
        try:
            if b is not None:
                await run_worker_with_beat(w, b)
            else:
                await w.run(install_signal_handlers=True)
        finally:
            await the_app.close()

    run(main())
    if w.recycle_reason is not None:  # a per-child limit: the supervisor starts another
        from aqueue.worker.supervisor import RECYCLE_EXIT

        raise typer.Exit(RECYCLE_EXIT)


async def run_worker_with_beat(worker: Worker, beat: Beat) -> None:
    """Run ``beat`` in the worker's event loop (``aqueue worker -B``) until the worker stops.

    Beat starts first, so a store it cannot reach fails the command before any task is taken;
    the worker's SIGTERM/SIGINT handling then stops both.

    Raises:
        BrokerConnectionError: the store or the broker cannot be reached at start.
    """
    await beat.start()
    try:
        await worker.run(install_signal_handlers=True)
    finally:
        await beat.stop()


def supervise(
    spec: str,
    processes: int,
    options: WorkerOptions,
    logfile: Path | None,
    pidfile: Path | None,
    metrics: tuple[int | None, str] = (None, ""),
) -> NoReturn:
    """``aqueue worker --processes N``: run N workers with these options under a
    :class:`~aqueue.worker.supervisor.Supervisor`; exit with its code.

    The pidfile holds the supervisor's id. With ``--logfile``, the supervisor's stderr - its
    own log and the lines it relays from its children - goes to the file. With
    ``--metrics-port``, the supervisor serves the children's metrics (summed).
    """
    from aqueue.worker.supervisor import Supervisor  # asyncio subprocess machinery: only here

    try:
        shutdown_timeout = load_app(spec).conf.worker_shutdown_timeout  # fail here, not N times
    except AqueueError as exc:
        raise fail(exc) from exc
    args, first = options.child_args()
    setup_logging(options.loglevel, logfile)
    # refused pidfile: said on the terminal, not in the file
    with hold_pidfile(pidfile), supervisor_metrics(*metrics) as serve_metrics:
        if logfile is not None:
            redirect_stderr(logfile)  # what the children log reaches the file too
        supervisor = Supervisor(spec, processes, args, options.hostname, first, shutdown_timeout)
        if serve_metrics is not None:
            supervisor.on_exit = serve_metrics(supervisor.ready, supervisor.alive)
        code = supervisor.run()
    raise typer.Exit(code)


def redirect_stderr(logfile: Path) -> None:
    """Make this process's stderr (file descriptor 2) append to ``logfile``.

    Raises:
        typer.Exit: (code 2) the file cannot be opened.
    """
    try:
        fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as exc:
        typer.echo(f"error: --logfile {logfile}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from exc
    os.dup2(fd, 2)
    os.close(fd)
