"""The AMQP transport (``amqp://``, ``amqps://``: RabbitMQ through aio-pika): a broker only.
Results, control and beat's state live on the result backend's server (Redis or SQLite);
docs/amqp.md has the whole design.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from aqueue.transports.amqp.broker import AMQPBroker
from aqueue.transports.base import BaseTransport, Broker

__all__ = ["AMQPBroker", "Transport"]


class Transport(BaseTransport):
    """``amqp://`` / ``amqps://``: the broker (its connection is the broker's own)."""

    roles: ClassVar[frozenset[str]] = frozenset({"broker"})
    missing_hint = (
        "pair it with a Redis or SQLite result backend (result_backend='redis://127.0.0.1:6379/1')"
    )

    def _make_broker(self, options: Mapping[str, Any]) -> Broker:
        # broker_connection_timeout, unless broker_transport_options names its own.
        return AMQPBroker(self.url, {"connect_timeout": self.connection.connect_timeout, **options})
