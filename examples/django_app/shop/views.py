"""Views: plain Django functions, sending with the blocking client :mod:`aqueue.sync`."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from django.http import HttpRequest, JsonResponse

from aqueue import sync
from examples.django_app.proj.aqueue_app import app
from examples.django_app.shop.tasks import order_total


def order_total_view(request: HttpRequest) -> JsonResponse:
    """``/orders/total/?price=1.10&price=2.20``: send the task, answer with its id."""
    prices = [Decimal(p) for p in request.GET.getlist("price")]
    r = sync.delay(order_total, prices, datetime.now(UTC))
    return JsonResponse({"task_id": r.id}, status=202)


def result(request: HttpRequest, task_id: str) -> JsonResponse:
    """``/results/<id>/``: wait up to ``?timeout=`` seconds (default 10) for the result."""
    r = sync.AsyncResult(app, task_id)
    value = r.get(timeout=float(request.GET.get("timeout", 10)))
    return JsonResponse(
        {
            "state": r.state,
            "total": str(value["total"]),
            "placed": value["placed"].isoformat(),
            "weekday": value["weekday"],
        }
    )
