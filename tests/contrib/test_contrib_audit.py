"""The optional integrations under input they do not expect: a tracing middleware given message
headers of any type, metrics fed task names of any number, a metrics endpoint with a client
that sends nothing. A real worker on Redis."""

from __future__ import annotations

import socket
import threading
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry

from aqueue import Aqueue, Worker
from aqueue.contrib.otel import OpenTelemetry
from aqueue.contrib.prometheus import MAX_UNKNOWN_NAMES, Metrics, serve
from aqueue.exceptions import TaskNotRegistered
from tests.net import free_port

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def apps(redis_server: str, clean_signals: None) -> AsyncIterator[tuple[Aqueue, Aqueue]]:
    """A worker's app and a producer's (with no middleware: another service, another
    language), on one queue."""
    queue = f"q-{uuid.uuid4().hex[:12]}"
    worker_app = Aqueue("audited", broker=redis_server, backend=redis_server)
    producer = Aqueue("producer", broker=redis_server, backend=redis_server)
    for app in (worker_app, producer):
        app.conf.task_default_queue = queue
    yield worker_app, producer
    await producer.close()
    await worker_app.close()


@pytest.mark.parametrize(
    "headers",
    [
        {"traceparent": 5},
        {"traceparent": ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", 1]},
        {
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "tracestate": {"vendor": 1},
        },
        {"baggage": 3},
        {"traceparent": "not a trace context", "baggage": "=;=,,"},
    ],
)
async def test_trace_headers_of_another_type_do_not_fail_the_task(
    apps: tuple[Aqueue, Aqueue], headers: dict[str, object]
) -> None:
    span = await traced_run(*apps, headers)
    assert dict(span.attributes or {})["aqueue.task.outcome"] == "success"


async def traced_run(app: Aqueue, producer: Aqueue, headers: dict[str, object]) -> Any:
    """Run task ``t.ok`` on a worker of ``app`` traced with OpenTelemetry, sent by
    ``producer`` with ``headers``; return its span once the run returned 42."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    OpenTelemetry(provider).install(app)

    @app.task(name="t.ok")
    async def ok() -> int:
        return 42

    async with Worker(app, concurrency=2):
        r = await producer.send_task("t.ok", headers=headers)
        assert await r.get(timeout=10) == 42
    [span] = [s for s in exporter.get_finished_spans() if s.name == "process t.ok"]
    return span


class Failing(TraceContextTextMapPropagator):
    """A propagator that cannot read any message."""

    def extract(self, *args: Any, **kwargs: Any) -> Context:
        raise ValueError("unreadable")


@pytest.fixture
def failing_propagator() -> Iterator[None]:
    """The global propagator is :class:`Failing` while the test runs."""
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(Failing())
    yield
    propagate.set_global_textmap(before)


async def test_a_propagator_that_fails_starts_a_new_trace(
    apps: tuple[Aqueue, Aqueue], failing_propagator: None
) -> None:
    span = await traced_run(*apps, {})
    assert span.parent is None  # a trace of its own


async def test_names_of_unregistered_tasks_get_a_bounded_number_of_labels(
    apps: tuple[Aqueue, Aqueue],
) -> None:
    app, producer = apps
    registry = CollectorRegistry()
    Metrics(registry, interval=0.5).install(app)

    @app.task(name="m.known")
    async def known() -> None:
        return None

    unknown = MAX_UNKNOWN_NAMES + 150
    async with Worker(app, concurrency=50) as worker:
        sent = [await producer.send_task(f"m.nobody.{uuid.uuid4().hex}") for _ in range(unknown)]
        sent.append(await producer.send_task("m.known"))
        for r in sent[:-1]:
            with pytest.raises(TaskNotRegistered):
                await r.get(timeout=20)
        assert await sent[-1].get(timeout=20) is None
        await worker.wait_processed(unknown + 1)

    def by_task(metric: str) -> dict[str, float]:
        return {
            s.labels["task"]: s.value
            for family in registry.collect()
            for s in family.samples
            if s.name == metric
        }

    for metric in ("aqueue_tasks_received_total", "aqueue_tasks_dead_lettered_total"):
        counts = by_task(metric)
        assert sum(counts.values()) == unknown + (metric == "aqueue_tasks_received_total")
        # The first MAX_UNKNOWN_NAMES unknown names by name, the others under "?".
        assert len(counts) <= MAX_UNKNOWN_NAMES + 2, (metric, len(counts))
        assert counts["?"] >= unknown - MAX_UNKNOWN_NAMES
    assert by_task("aqueue_tasks_received_total")["m.known"] == 1


def test_a_silent_client_neither_blocks_the_endpoint_nor_its_close() -> None:
    """A connection that sends nothing (a TCP probe, a stalled scraper) must not stop the
    answers to others, nor hang the worker's exit (which closes the server)."""
    port = free_port()
    server = serve(port, "127.0.0.1", registry=CollectorRegistry(), alive=lambda: True)
    silent = socket.create_connection(("127.0.0.1", port))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            assert answer.status == 200
    finally:
        closing = threading.Thread(target=server.close, daemon=True)
        closing.start()
        closing.join(5)
        silent.close()
    assert not closing.is_alive(), "close() hangs on a silent connection"
