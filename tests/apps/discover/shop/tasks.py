"""Found by ``autodiscover_tasks``."""

from __future__ import annotations

from tests.apps.discover.app import app


@app.task(name="discover.shop.total")
async def total(prices: list[float]) -> float:
    return sum(prices)
