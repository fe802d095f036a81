"""What the AMQP broker needs from aio-pika: the robust connection, errors, URL redaction.

aio-pika raises its own (and aiormq's) exceptions; :func:`amqp_errors` turns them into aqueue's
tree so that callers catch :class:`~aqueue.exceptions.BrokerConnectionError` as they do for Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import aio_pika
import aio_pika.abc
import aiormq.exceptions
from aio_pika.connection import make_url

from aqueue.exceptions import BrokerConnectionError, BrokerError, ConfigurationError
from aqueue.transports import tls_hint
from aqueue.transports.urls import redacted_url

__all__ = ["amqp_errors", "open_connection", "redacted_url"]


# A channel-level refusal: the connection is fine, the request was wrong (arguments differ from
# an existing queue's, an exchange is missing, an unroutable message was returned...).
_REFUSED = (
    aiormq.exceptions.ChannelPreconditionFailed,
    aiormq.exceptions.ChannelNotFoundEntity,
    aiormq.exceptions.ChannelAccessRefused,
    aiormq.exceptions.PublishError,
)


@contextmanager
def amqp_errors(url: str, action: str) -> Iterator[None]:
    """Translate aio-pika/aiormq errors raised inside the block into aqueue's error tree.

    Raises:
        BrokerError: RabbitMQ refused the request (names ``url`` without its password, and the
            server's reply, e.g. ``PRECONDITION_FAILED - inequivalent arg 'x-max-priority'``).
        BrokerConnectionError: the server could not be reached, the connection or channel closed
            under the request, or no reply came in time.
    """
    where = f"RabbitMQ at {redacted_url(url)}"
    try:
        yield
    except _REFUSED as exc:
        raise BrokerError(f"{where} refused {action}: {_describe(exc)}") from exc
    except (
        aiormq.exceptions.AMQPError,
        ConnectionError,
        OSError,
        TimeoutError,
        RuntimeError,  # aio-pika: "connection closed", "reconnecting right now"
    ) as exc:
        raise BrokerConnectionError(
            f"{where} unreachable during {action}: {type(exc).__name__}: {_describe(exc)}"
        ) from exc


def _describe(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    if isinstance(exc, aiormq.exceptions.PublishError):
        frame = exc.args[1] if len(exc.args) > 1 else None
        reply = getattr(frame, "reply_text", None) or "returned"
        exchange = getattr(frame, "exchange", "") or "(default)"
        key = getattr(frame, "routing_key", "")
        return f"{reply}: no queue is bound to exchange {exchange} for routing key {key!r}"
    return text


async def open_connection(
    url: str,
    reconnect_interval: float,
    timeout: float,
    *,
    setup: Callable[[aio_pika.abc.AbstractRobustConnection], Awaitable[None]] | None = None,
    on_reconnect: Callable[..., None] | None = None,
) -> aio_pika.abc.AbstractRobustConnection:
    """Open a robust connection: it reconnects by itself and re-opens its channels.

    Args:
        url: ``amqp://user:password@host:port/vhost`` or ``amqps://...``; aio-pika's query
            parameters (``?heartbeat=10``, TLS files) are passed through.
        reconnect_interval: seconds between reconnection attempts after the connection drops.
        timeout: seconds the first connection may take in all (TCP, TLS, the AMQP handshake).
        setup: awaited with the new connection to open its channels; if it raises, the
            connection is closed and the error raised (aio-pika's translated).
        on_reconnect: added to the connection's reconnect callbacks once it is set up.

    Raises:
        ConfigurationError: ``url`` is not a valid AMQP URL.
        BrokerConnectionError: the server cannot be reached, refused the login, or did not
            answer within ``timeout`` (names the URL without its password).
    """
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"invalid AMQP URL {redacted_url(url)!r}: {exc}") from exc
    # What aio_pika.connect_robust does, keeping the connection to close if it never opens.
    connection = aio_pika.RobustConnection(
        make_url(url, reconnect_interval=reconnect_interval),
        client_properties={"connection_name": "aqueue"},
        reconnect_interval=reconnect_interval,
    )
    try:
        async with asyncio.timeout(timeout):  # aio-pika's own covers the handshake only
            await _first_connect(url, connection, timeout)
    except BaseException as exc:
        # Given up (or cancelled): without close() its reconnection loop would run on.
        await connection.close()
        if isinstance(exc, TimeoutError):
            raise BrokerConnectionError(_no_answer(url, timeout)) from exc
        raise
    if setup is not None:
        try:
            with amqp_errors(url, "connect"):
                await setup(connection)
        except BaseException:
            await connection.close()
            raise
    if on_reconnect is not None:
        connection.reconnect_callbacks.add(on_reconnect)
    return connection


async def _first_connect(
    url: str, connection: aio_pika.abc.AbstractRobustConnection, timeout: float
) -> None:
    """Open ``connection`` the first time, its errors translated but a timeout left as is.

    Raises:
        BrokerConnectionError: the server cannot be reached or refused the login.
        TimeoutError: no answer within ``timeout``.
    """
    try:
        await connection.connect(timeout=timeout)
    except TimeoutError:
        raise
    except aiormq.exceptions.ProbableAuthenticationError as exc:
        raise BrokerConnectionError(
            f"RabbitMQ at {redacted_url(url)} refused the login (check the user, password "
            f"and vhost in the URL; the guest user may only connect from localhost): {exc}"
        ) from exc
    except Exception:
        with amqp_errors(url, "connect"):
            raise


def _no_answer(url: str, seconds: float) -> str:
    """The message for a server that did not answer a connection within ``seconds``."""
    return (
        f"RabbitMQ at {redacted_url(url)} did not answer connect within {seconds:g}s{tls_hint(url)}"
    )
