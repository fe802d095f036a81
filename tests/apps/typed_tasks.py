"""Types registered at import, and a task that echoes what it received, for worker processes.

``python -m aqueue worker -A tests.apps.typed_tasks`` builds the app from ``$AQUEUE_BROKER_URL``
and ``$AQUEUE_E2E_QUEUE``; the test imports this module too, so both sides register the types.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from aqueue import Aqueue, register_type
from tests.apps.tasks import backend_for


@dataclass(frozen=True)
class Point:
    """A dataclass registered with the one-liner."""

    x: int
    y: int
    at: datetime  # a typed value inside a registered one


class Money:
    """A plain class registered with its own encode/decode."""

    def __init__(self, amount: Decimal, currency: str) -> None:
        self.amount = amount
        self.currency = currency

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and (other.amount, other.currency) == (
            self.amount,
            self.currency,
        )

    def __hash__(self) -> int:
        return hash((self.amount, self.currency))

    def __repr__(self) -> str:
        return f"Money({self.amount!r}, {self.currency!r})"


register_type(Point)
register_type(Money, "tests.money", lambda m: [m.amount, m.currency], lambda v: Money(*v))


def build(url: str, queue: str = "default", **settings: Any) -> Aqueue:
    """A fresh app on ``url`` with the ``typed.echo`` task."""
    backend = backend_for(url)  # AMQP: $AQUEUE_RESULT_BACKEND
    app = Aqueue("typed", broker=url, backend=backend, task_default_queue=queue, **settings)

    @app.task(name="typed.echo")
    async def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
        """The arguments as received, and their type names (checked inside the worker)."""
        return {
            "args": list(args),
            "kwargs": kwargs,
            "types": [type(a).__qualname__ for a in args],
            "kwarg_types": {k: type(v).__qualname__ for k, v in kwargs.items()},
        }

    return app


if os.environ.get("AQUEUE_BROKER_URL"):
    app = build(
        os.environ["AQUEUE_BROKER_URL"],
        os.environ.get("AQUEUE_E2E_QUEUE", "default"),
        accept_content=["json", "msgpack"],
    )
