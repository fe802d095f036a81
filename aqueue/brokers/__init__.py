"""Brokers, one module each, chosen by URL scheme; :mod:`aqueue.brokers.base` has the contract."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aqueue.brokers.base import (
    Binding,
    Broker,
    DeadLetter,
    Delivery,
    Outgoing,
    dead_letter_queue,
)
from aqueue.exceptions import ConfigurationError

__all__ = [
    "Binding",
    "Broker",
    "DeadLetter",
    "Delivery",
    "Outgoing",
    "broker_from_url",
    "dead_letter_queue",
]

SCHEMES = ("memory", "sqlite", "redis", "rediss", "amqp", "amqps")


def broker_from_url(url: str, transport_options: Mapping[str, Any] | None = None) -> Broker:
    """Create the broker for ``url`` (not yet connected).

    Args:
        url: ``memory://``, ``sqlite:///path.db``, ``redis://host:port/db``, ``rediss://...``,
            ``amqp://user:password@host:port/vhost`` or ``amqps://...`` (RabbitMQ).
        transport_options: the ``broker_transport_options`` setting, e.g.
            ``{"visibility_timeout": 30.0}`` (seconds).

    Raises:
        ConfigurationError: the scheme is not supported, or an option is unknown or invalid.
    """
    opts = dict(transport_options or {})
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        from aqueue.brokers.memory import MemoryBroker

        return MemoryBroker(url, opts)
    if scheme == "sqlite":
        from aqueue.brokers.sqlite import SQLiteBroker

        return SQLiteBroker(url, opts)
    if scheme in ("redis", "rediss"):
        from aqueue.brokers.redis import RedisBroker

        return RedisBroker(url, opts)
    if scheme in ("amqp", "amqps"):
        from aqueue.brokers.amqp import AMQPBroker

        return AMQPBroker(url, opts)
    raise ConfigurationError(
        f"broker_url {url!r} has no supported scheme: use memory://, sqlite:///path.db, "
        f"redis://host:port/db, rediss://host:port/db, amqp://host:port/vhost or amqps://..."
    )


def visibility_timeout(options: Mapping[str, Any], default: float = 30.0) -> float:
    """Read and check ``visibility_timeout`` (seconds > 0) from transport options."""
    value = options.get("visibility_timeout", default)
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise ConfigurationError(
            f"broker_transport_options['visibility_timeout'] must be a number of seconds > 0, "
            f"not {value!r}"
        )
    return float(value)
