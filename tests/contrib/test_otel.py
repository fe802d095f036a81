"""OpenTelemetry: a request, then a chain of three tasks through a real worker on Redis, is one
trace with correctly parented spans; a failure is an error span; headers carry the context."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from aqueue import Aqueue, Worker
from aqueue.contrib.otel import OpenTelemetry

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def traced(
    redis_server: str, exporter: InMemorySpanExporter, clean_signals: None
) -> AsyncIterator[tuple[Aqueue, TracerProvider]]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = Aqueue("traced", broker=redis_server, backend=redis_server)
    app.conf.task_default_queue = f"q-{uuid.uuid4().hex[:12]}"
    OpenTelemetry(provider).install(app)
    yield app, provider
    await app.close()


def _by_name(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    [span] = [s for s in spans if s.name == name]
    return span


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_a_request_and_its_chain_of_three_are_one_trace(
    traced: tuple[Aqueue, TracerProvider], exporter: InMemorySpanExporter
) -> None:
    app, provider = traced

    @app.task(name="t.step1")
    async def step1(x: int) -> int:
        return x + 1

    @app.task(name="t.step2")
    async def step2(x: int) -> int:
        return x * 10

    @app.task(name="t.step3")
    async def step3(x: int) -> int:
        return x - 3

    async with Worker(app, concurrency=4):
        with provider.get_tracer("web").start_as_current_span("GET /orders") as request_span:
            result = await (step1.s(1) | step2.s() | step3.s()).delay()
        # Each run's span ends when its body returns, before its result is stored.
        assert await result.get(timeout=20) == 17
    spans = exporter.get_finished_spans()
    trace_id = request_span.get_span_context().trace_id
    assert {s.context.trace_id for s in spans} == {trace_id}
    request = _by_name(spans, "GET /orders")
    send1, run1 = _by_name(spans, "send t.step1"), _by_name(spans, "process t.step1")
    send2, run2 = _by_name(spans, "send t.step2"), _by_name(spans, "process t.step2")
    send3, run3 = _by_name(spans, "send t.step3"), _by_name(spans, "process t.step3")
    assert _parent_id(send1) == request.context.span_id
    assert _parent_id(run1) == send1.context.span_id
    assert _parent_id(send2) == run1.context.span_id
    assert _parent_id(run2) == send2.context.span_id
    assert _parent_id(send3) == run2.context.span_id
    assert _parent_id(run3) == send3.context.span_id
    assert send1.kind is SpanKind.PRODUCER and run1.kind is SpanKind.CONSUMER
    attributes = dict(run2.attributes or {})
    assert attributes["messaging.system"] == "aqueue"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.destination.name"] == app.conf.task_default_queue
    assert attributes["aqueue.task.name"] == "t.step2"
    assert attributes["aqueue.task.outcome"] == "success"


async def test_a_failing_task_is_an_error_span(
    traced: tuple[Aqueue, TracerProvider], exporter: InMemorySpanExporter
) -> None:
    app, _ = traced

    @app.task(name="t.boom")
    async def boom() -> None:
        raise ValueError("no stock")

    async with Worker(app, concurrency=2):
        with pytest.raises(ValueError, match="no stock"):
            await (await boom.delay()).get(timeout=10)
    run = _by_name(exporter.get_finished_spans(), "process t.boom")
    assert run.status.status_code is StatusCode.ERROR
    assert "ValueError: no stock" in (run.status.description or "")
    assert [e.name for e in run.events] == ["exception"]
