"""OpenTelemetry traces: ``pip install 'aqueue[otel]'``, then ``OpenTelemetry().install(app)``
in the producers and in the worker (the app module is the usual place; configure the SDK's
tracer provider and exporter as for any other library).

Every publication of a task message gets a ``PRODUCER`` span named ``send <task name>``, and
every run of a task in a worker a ``CONSUMER`` span named ``process <task name>``, child of the
span that sent it: the trace context travels in the message's headers (``traceparent`` and
``tracestate``, or whatever the global propagator writes). Messages a task's run leads to -
the next steps of its chain, its chord's callback, retries, errbacks, tasks it sends itself -
are sent from inside that run's context, so a web request, its task and the tasks of its chain
or chord are one trace.

Attributes follow OpenTelemetry's messaging semantic conventions: ``messaging.system``
(``"aqueue"``), ``messaging.operation.type`` (``send`` / ``process``),
``messaging.operation.name``, ``messaging.destination.name`` (the queue),
``messaging.message.id`` (the task id), plus ``aqueue.task.name``, ``aqueue.task.retries`` and,
on failure, the exception as a span event with an error status. A retry is not an error: its
span gets ``aqueue.task.outcome = "retry"``.

A message's headers are whatever its sender wrote: trace headers that are not strings, or that
the propagator cannot read, are ignored (the run's span then starts a new trace), never the
run's failure.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aqueue import signals
from aqueue.contrib import missing_extra
from aqueue.exceptions import Retry
from aqueue.middleware import Middleware, PublishNext, RunNext
from aqueue.task import current_request

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.propagators.textmap import Getter
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - the extra is installed in the tests
    raise missing_extra(__name__, "opentelemetry-api", "otel") from exc

if TYPE_CHECKING:
    from aqueue.app import Aqueue
    from aqueue.message import Message
    from aqueue.task import Request, Task

__all__ = ["OpenTelemetry"]

_SYSTEM = "aqueue"

log = logging.getLogger("aqueue.contrib.otel")


class _TextHeaders(Getter[Mapping[str, Any]]):
    """Reads a message's headers for the propagator: only string values (a header of another
    type, which a propagator would fail on, is absent)."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return [key for key in carrier if isinstance(key, str)]


_TEXT_HEADERS = _TextHeaders()


def _extract(headers: Mapping[str, Any]) -> otel_context.Context:
    """The trace context a message's ``headers`` carry; an empty one (a new trace) when they
    carry none that can be read."""
    try:
        return propagate.extract(headers, getter=_TEXT_HEADERS)
    except Exception as exc:  # a propagator of the app's that fails on what a sender wrote
        log.warning("tracing: cannot read the trace context of a message: %r", exc)
        return otel_context.Context()


class OpenTelemetry(Middleware):
    """Spans for sending and running tasks, linked across processes through message headers.

    Args:
        tracer_provider: where spans go (default: the global provider, as set by the SDK's
            ``trace.set_tracer_provider``).
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.tracer = trace.get_tracer("aqueue", tracer_provider=tracer_provider)
        # The context of each task running in this process, by task id: what it sends after
        # its body returned (chain steps, chord callbacks) is sent from there.
        self._running: dict[str, otel_context.Context] = {}

    def install(self, app: Aqueue) -> None:
        """Add this middleware to ``app`` (once) and forget each task's context when it ends."""
        if self not in app.middleware:
            app.add_middleware(self)
        signals.task_postrun.connect(self._on_postrun, dispatch_uid=f"aqueue.otel:{id(self)}")

    def _start(
        self,
        operation: str,
        kind: SpanKind,
        parent: otel_context.Context | None,
        about: Message | Request,
    ) -> trace.Span:
        """A ``send`` or ``process`` span for ``about``, with the messaging semantic
        conventions' attributes."""
        return self.tracer.start_span(
            f"{operation} {about.task}",
            context=parent,
            kind=kind,
            attributes={
                "messaging.system": _SYSTEM,
                "messaging.operation.type": operation,
                "messaging.operation.name": operation,
                "messaging.destination.name": about.queue or "",
                "messaging.message.id": about.id or "",
                "aqueue.task.name": about.task or "",
                "aqueue.task.retries": about.retries,
            },
        )

    def _parent(self) -> otel_context.Context | None:
        """The context to send from: the current span's, else that of the task this process
        is finishing (its workflow sends after its body returned)."""
        if trace.get_current_span().get_span_context().is_valid:
            return None  # the current context
        request = current_request.get()
        return None if request is None or request.id is None else self._running.get(request.id)

    async def publish(self, messages: list[Message], call_next: PublishNext) -> None:
        parent = self._parent()
        spans = []
        for message in messages:
            span = self._start("send", SpanKind.PRODUCER, parent, message)
            propagate.inject(message.headers, context=trace.set_span_in_context(span, parent))
            spans.append(span)
        try:
            await call_next(messages)
        except BaseException as exc:
            for span in spans:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            for span in spans:
                span.end()

    async def run(self, task: Task[Any, Any], request: Request, call_next: RunNext) -> Any:
        parent = _extract(request.headers)
        span = self._start("process", SpanKind.CONSUMER, parent, request)
        span.set_attribute("aqueue.task.delivery_count", request.delivery_count)
        here = trace.set_span_in_context(span, parent)
        if request.id is not None:
            self._running[request.id] = here
        token = otel_context.attach(here)
        try:
            value = await call_next()
        except Retry:
            span.set_attribute("aqueue.task.outcome", "retry")
            raise
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            span.set_attribute("aqueue.task.outcome", "failure")
            raise
        else:
            span.set_attribute("aqueue.task.outcome", "success")
            return value
        finally:
            otel_context.detach(token)
            span.end()

    def _on_postrun(self, task_id: str, **_: Any) -> None:
        self._running.pop(task_id, None)
