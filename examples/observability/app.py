"""An app with every observability piece on: Prometheus metrics, OpenTelemetry traces, log lines
that carry the task, a signal receiver and a middleware.

Run a worker that serves its metrics (``pip install 'aqueue[prometheus,otel]'``)::

    aqueue worker -A examples.observability.app --metrics-port 9808 --log-format json

and scrape ``http://127.0.0.1:9808/metrics`` (``/healthz``, ``/readyz`` for probes). On the
embedded default (SQLite) no server is needed; set ``AQUEUE_BROKER_URL`` for Redis or RabbitMQ.
"""

from __future__ import annotations

import logging
from typing import Any

from aqueue import Aqueue, signals
from aqueue.contrib.otel import OpenTelemetry
from aqueue.logs import get_task_logger
from aqueue.message import Message
from aqueue.middleware import Middleware, PublishNext, RunNext
from aqueue.task import Request, Task

logger = get_task_logger(__name__)


class Tenant(Middleware):
    """Carries the sending tenant in a header; the task reads it as ``request.headers``."""

    async def publish(self, messages: list[Message], call_next: PublishNext) -> None:
        for message in messages:
            message.headers.setdefault("tenant", "acme")
        await call_next(messages)

    async def run(self, task: Task[Any, Any], request: Request, call_next: RunNext) -> Any:
        logger.info("running for tenant %s", request.headers.get("tenant"))
        return await call_next()


app = Aqueue("observability", middleware=[Tenant()])
OpenTelemetry().install(app)  # spans go to the global tracer provider (none set: dropped)


@app.task(name="obs.charge", max_retries=2, default_retry_delay=0.1, bind=True)
async def charge(self: Any, order: int) -> str:
    """Succeeds mostly; fails for every 10th order; every 7th order's first try meets a flaky
    gateway and is retried (the same orders each run, so the counts are known)."""
    if order % 10 == 9:
        raise ValueError(f"order {order}: card declined")
    if order % 7 == 3 and self.request.retries == 0:
        raise self.retry()
    logger.info("charged order %d", order)
    return f"order {order} charged"


@signals.task_failure.connect(sender="obs.charge")
def alert(sender: Any, task_id: str, exception: BaseException, **kwargs: Any) -> None:
    logging.getLogger("alerts").warning("order task %s failed: %s", task_id, exception)
