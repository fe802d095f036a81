"""The shop's tasks: found by ``app.autodiscover_tasks()`` in ``proj/aqueue_app.py``."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from examples.django_app.proj.aqueue_app import app


@app.task(name="shop.order_total")
async def order_total(prices: list[Decimal], placed: datetime) -> dict[str, object]:
    """Sum an order. Decimal and datetime arrive as themselves (aqueue's json keeps them)."""
    return {"total": sum(prices, Decimal(0)), "placed": placed, "weekday": placed.strftime("%A")}
