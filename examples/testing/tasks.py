"""The code under test: an app and two tasks, configured for production (a Redis URL)."""

from __future__ import annotations

from aqueue import Aqueue

app = Aqueue("shop", broker="redis://127.0.0.1:6379/0")  # never reached by the tests
app.conf.task_routes = {"shop.invoice": {"queue": "billing"}}


@app.task(name="shop.add")
async def add(x: int, y: int) -> int:
    return x + y


@app.task(name="shop.invoice")
async def invoice(order: int) -> str:
    if order < 0:
        raise ValueError(f"no order {order}")
    return f"invoice-{order}"
