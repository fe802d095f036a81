"""The AMQP transport (``amqp://``, ``amqps://``, Celery's ``pyamqp://``: RabbitMQ through
aio-pika): the broker, and the ``rpc://`` result backend, which sends each task's states back to
the client that sent it (:mod:`.results`). Control and beat's state live on a Redis or SQLite
result backend's server; docs/amqp.md has the whole design.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from aqueue.exceptions import ConfigurationError
from aqueue.transports.amqp.broker import AMQPBroker
from aqueue.transports.amqp.results import RpcBackend
from aqueue.transports.base import BaseTransport, Broker, ConnectionOptions, ResultBackend

__all__ = ["AMQPBroker", "RpcBackend", "Transport", "server_url"]


class Transport(BaseTransport):
    """``amqp://`` / ``amqps://`` / ``pyamqp://``: the broker, and the results of ``rpc://``
    (the app resolves a ``rpc://`` result backend to its broker's transport). Each role opens a
    connection of its own.

    Attributes:
        server_url: the URL as aio-pika takes it (see :func:`server_url`).
    """

    roles: ClassVar[frozenset[str]] = frozenset({"broker", "results"})
    missing_hint = (
        "RabbitMQ carries tasks and rpc:// results only: pair it with a Redis or SQLite result "
        "backend (result_backend='redis://127.0.0.1:6379/1')"
    )

    def __init__(
        self, url: str, *, shared: bool = True, connection: ConnectionOptions | None = None
    ) -> None:
        super().__init__(url, shared=shared, connection=connection)
        self.server_url = server_url(url)

    def _make_broker(self, options: Mapping[str, Any]) -> Broker:
        # broker_connection_timeout, unless broker_transport_options names its own.
        return AMQPBroker(
            self.server_url,
            {"connect_timeout": self.connection.connect_timeout, **options},
            tls=self.connection.tls,
            max_deliveries=self.connection.max_deliveries,
        )

    def _make_results(self) -> ResultBackend:
        return RpcBackend(
            self.server_url,
            connect_timeout=self.connection.connect_timeout,
            tls=self.connection.tls,
        )


def server_url(url: str) -> str:
    """``url`` as aio-pika takes it, with kombu's defaults: Celery's ``pyamqp://`` is
    ``amqp://``, and a URL with no host is localhost (so ``amqp://`` alone, as in the Celery
    tutorials, is ``guest:guest`` at ``localhost:5672``, vhost ``/``). Each node of kombu's
    failover list (``"amqp://a//;amqp://b//"``: a cluster's nodes) is read alike.

    Raises:
        ConfigurationError: ``url`` cannot be parsed.
    """
    if ";" in url:
        return ";".join(server_url(node) for node in url.split(";") if node.strip())
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise ConfigurationError(
            f"invalid AMQP URL {url.partition('://')[0]}://...: {exc}"
        ) from exc
    scheme = "amqp" if parts.scheme.lower() == "pyamqp" else parts.scheme.lower()
    netloc = parts.netloc
    if not host:
        userinfo, at, hostport = netloc.rpartition("@")
        netloc = f"{userinfo}{at}localhost{hostport}"  # hostport is "" or ":port"
    return urlunsplit((scheme, netloc, parts.path, parts.query, parts.fragment))
