"""What the AMQP broker needs from aio-pika: the robust connection, errors, URL redaction.

aio-pika raises its own (and aiormq's) exceptions; :func:`amqp_errors` turns them into aqueue's
tree so that callers catch :class:`~aqueue.exceptions.BrokerConnectionError` as they do for Redis.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import aio_pika
import aio_pika.abc
import aiormq.exceptions
from aio_pika.connection import make_url

from aqueue.exceptions import BrokerConnectionError, BrokerError, ConfigurationError
from aqueue.transports import TLS_SCHEMES, plain_hint, scheme, tls_hint
from aqueue.transports.tls import AMQP_KEYS, TLSOptions, client_certificate_hint, tls_refusal
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
    tls: TLSOptions | None = None,
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
        tls: TLS from ``broker_use_ssl``: the connection speaks TLS whatever the scheme
            (an ``amqp://`` URL with no port then goes to 5671, as kombu's does); the URL's
            ``cafile``, ``certfile``, ``keyfile`` and ``no_verify_ssl`` take precedence.

    Raises:
        ConfigurationError: ``url`` is not a valid AMQP URL, or a TLS file cannot be read.
        BrokerConnectionError: the server cannot be reached, refused the login or the vhost,
            presented a certificate that is not trusted, or did not answer within ``timeout``
            (names the URL without its password).
    """
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"invalid AMQP URL {redacted_url(url)!r}: {exc}") from exc
    server, context = _with_tls(url, tls)
    # What aio_pika.connect_robust does, keeping the connection to close if it never opens.
    connection = aio_pika.RobustConnection(
        make_url(server, reconnect_interval=reconnect_interval),
        ssl_context=context,
        client_properties={"connection_name": "aqueue"},
        reconnect_interval=reconnect_interval,
    )
    try:
        async with asyncio.timeout(timeout):  # aio-pika's own covers the handshake only
            await _first_connect(url, connection, timeout, tls is not None)
    except BaseException as exc:
        # Given up (or cancelled): without close() its reconnection loop would run on.
        await connection.close()
        if isinstance(exc, TimeoutError):
            raise BrokerConnectionError(_no_answer(url, timeout, tls is not None)) from exc
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


def _with_tls(url: str, tls: TLSOptions | None) -> tuple[str, ssl.SSLContext | None]:
    """``url`` as aio-pika takes it and the TLS context to pass (``None``: as the URL says).

    Raises:
        ConfigurationError: a TLS file cannot be read.
    """
    if tls is None:
        return url, None
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    if "no_verify_ssl" in query:
        verify = query["no_verify_ssl"] == "0"  # aiormq's reading
        tls = replace(tls, cert_reqs=ssl.CERT_REQUIRED if verify else ssl.CERT_NONE)
    tls = replace(
        tls,
        ca_certs=query.get("cafile", tls.ca_certs),
        certfile=query.get("certfile", tls.certfile),
        keyfile=query.get("keyfile", tls.keyfile),
    )
    scheme = TLS_SCHEMES.get(parts.scheme.lower(), parts.scheme)
    return urlunsplit(parts._replace(scheme=scheme)), tls.context()


async def _first_connect(
    url: str, connection: aio_pika.abc.AbstractRobustConnection, timeout: float, tls: bool
) -> None:
    """Open ``connection`` the first time, its errors translated but a timeout left as is.

    Args:
        tls: TLS comes from ``broker_use_ssl`` (whatever the URL's scheme).

    Raises:
        BrokerConnectionError: the server cannot be reached, refused the login or the vhost,
            or presented a certificate that is not trusted.
        TimeoutError: no answer within ``timeout``.
    """
    try:
        await connection.connect(timeout=timeout)
    except TimeoutError:
        raise
    except Exception as exc:
        failure = _login_failure(url, exc, tls)
        if failure is not None:
            raise BrokerConnectionError(failure) from exc
        with amqp_errors(url, "connect"):
            raise


def _login_failure(url: str, exc: Exception, tls: bool) -> str | None:
    """What went wrong opening a connection, when the server said (a refused login or vhost,
    a TLS refusal) or a server listening for TLS cut a plain connection; else ``None``."""
    where = f"RabbitMQ at {redacted_url(url)}"
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        return (
            f"{where} refused the login (check the user, password and vhost in the URL; "
            f"the guest user may only connect from localhost): {exc}"
        )
    if _vhost_refused(exc):
        return (
            f"{where} refused the vhost {_vhost(url)!r}: it does not exist, or the user has no "
            f"permissions on it (rabbitmqctl set_permissions -p <vhost> <user> ...)"
        )
    refusal = tls_refusal(exc, AMQP_KEYS)
    if refusal is not None:
        return f"{where} failed TLS during connect: {refusal}"
    if isinstance(exc.__cause__, ConnectionResetError | BrokenPipeError):
        # A server listening for TLS cuts a plain connection; one that wants a client
        # certificate cuts a TLS connection that shows none.
        secure = tls or scheme(url) == "amqps"
        hint = client_certificate_hint(AMQP_KEYS) if secure else plain_hint(url)
        return f"{where} unreachable during connect: {type(exc).__name__}: {_describe(exc)}{hint}"
    return None


def _vhost_refused(exc: Exception) -> bool:
    """True when RabbitMQ closed the connection at ``Connection.Open``: it refuses the vhost
    (``NOT_ALLOWED``; aiormq 7 reports that as an unexpected ``Connection.Close`` frame)."""
    if isinstance(exc, aiormq.exceptions.ConnectionNotAllowed):
        return True
    text = str(exc)
    return (
        isinstance(exc, aiormq.exceptions.InvalidFrameError)
        and "Connection.OpenOk" in text
        and "Connection.Close" in text
    )


def _vhost(url: str) -> str:
    """The vhost ``url`` names, as RabbitMQ sees it (``/`` when none)."""
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def _no_answer(url: str, seconds: float, tls: bool = False) -> str:
    """The message for a server that did not answer a connection within ``seconds``."""
    hint = tls_hint(url, True if tls else None)
    return f"RabbitMQ at {redacted_url(url)} did not answer connect within {seconds:g}s{hint}"
