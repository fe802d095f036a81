"""``aqueue worker --metrics-port N``: Prometheus metrics and health endpoints for a worker, or
for the children of ``--processes`` (served by the supervisor, from prometheus_client's
multi-process files). Needs the ``prometheus`` extra; see :mod:`aqueue.contrib.prometheus`."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from aqueue.app import Aqueue

__all__ = [
    "MetricsAddressOption",
    "MetricsPortOption",
    "child_metrics",
    "metrics_for",
    "supervisor_metrics",
]

#: Set by the supervisor for its children: count into the multi-process files, serve nothing.
CHILD_ENV = "AQUEUE_METRICS_CHILD"
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable

MetricsPortOption = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        min=1,
        max=65535,
        help="Serve Prometheus /metrics, /healthz and /readyz on this port (aqueue[prometheus]).",
    ),
]
MetricsAddressOption = Annotated[
    str, typer.Option("--metrics-address", help="The address of --metrics-port.")
]


def _prometheus() -> Any:
    """The :mod:`aqueue.contrib.prometheus` module.

    Raises:
        typer.Exit: (code 2) prometheus_client is not installed.
    """
    try:
        from aqueue.contrib import prometheus
    except ImportError as exc:
        typer.echo(f"error: --metrics-port: {exc}", err=True)
        raise typer.Exit(2) from exc
    return prometheus


def _bound(serve: Callable[[], Any], port: int) -> Any:
    try:
        return serve()
    except OSError as exc:
        typer.echo(f"error: --metrics-port {port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from exc


@contextlib.contextmanager
def metrics_for(app: Aqueue, port: int | None, address: str) -> Iterator[None]:
    """Count ``app``'s tasks and serve them on ``address:port`` while the block runs (nothing
    when ``port`` is ``None``).

    Raises:
        typer.Exit: (code 2) the extra is missing or the port cannot be bound.
    """
    if port is None:
        yield
        return
    prometheus = _prometheus()
    metrics = prometheus.Metrics()
    metrics.install(app)
    server = _bound(
        lambda: prometheus.serve(port, address, alive=metrics.alive, ready=metrics.ready), port
    )
    try:
        yield
    finally:
        server.close()


def child_metrics(app: Aqueue) -> None:
    """In a child of a supervisor serving metrics: count ``app``'s tasks into the shared files."""
    if os.environ.get(CHILD_ENV):
        _prometheus().Metrics().install(app)


@contextlib.contextmanager
def supervisor_metrics(
    port: int | None, address: str
) -> Iterator[Callable[[Callable[[], bool], Callable[[], bool]], Callable[[int], None]] | None]:
    """For ``--processes`` with ``--metrics-port``: make the children count into a fresh
    multi-process directory; yield ``start(ready, alive) -> on_exit``, which serves the
    directory with ``ready`` as readiness (``/readyz``) and ``alive`` as liveness
    (``/healthz``), and returns what marks a dead child's samples. ``None`` without a port.
    The directory is removed after the block.

    Raises:
        typer.Exit: (code 2) the extra is missing or the port cannot be bound.
    """
    if port is None:
        yield None
        return
    prometheus = _prometheus()
    directory = tempfile.mkdtemp(prefix="aqueue-metrics-")
    os.environ[_MULTIPROC_ENV] = directory
    os.environ[CHILD_ENV] = "1"
    servers: list[Any] = []

    def start(ready: Callable[[], bool], alive: Callable[[], bool]) -> Callable[[int], None]:
        servers.append(
            _bound(
                lambda: prometheus.serve(
                    port, address, alive=alive, ready=ready, multiprocess_dir=directory
                ),
                port,
            )
        )

        def on_exit(pid: int) -> None:
            prometheus.multiprocess.mark_process_dead(pid, directory)

        return on_exit

    try:
        yield start
    finally:
        for server in servers:
            server.close()
        shutil.rmtree(directory, ignore_errors=True)
