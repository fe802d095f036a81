"""What the AMQP broker needs from aio-pika: the robust connection, errors, URL redaction.

aio-pika raises its own (and aiormq's) exceptions; :func:`amqp_errors` turns them into aqueue's
tree so that callers catch :class:`~aqueue.exceptions.BrokerConnectionError` as they do for Redis.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import aio_pika
import aio_pika.abc
import aiormq.exceptions
import pamqp.decode
from aio_pika.connection import make_url
from yarl import URL

from aqueue.exceptions import BrokerConnectionError, BrokerError, ConfigurationError
from aqueue.transports import TLS_SCHEMES, plain_hint, scheme, tls_hint
from aqueue.transports.tls import AMQP_KEYS, TLSOptions, client_certificate_hint, tls_refusal
from aqueue.transports.urls import redacted_url as _redacted

__all__ = ["amqp_error", "amqp_errors", "open_connection", "redacted_url"]

log = logging.getLogger(__name__)


def _short_str(value: bytes) -> tuple[int, str | bytes]:
    """pamqp's decoder of AMQP short strings (``shortstr``: message properties such as
    ``correlation_id`` and ``message_id``, a delivery's routing key), except that one that is
    not UTF-8 comes back as ``bytes``, as pamqp's decoder of long strings already does.

    AMQP's short strings are octets; RabbitMQ passes them on unchecked. pamqp's own decoder
    raises on one that is not UTF-8, which fails the whole frame in aiormq's reader: the
    connection drops, RabbitMQ delivers the message again on the new one, which drops in turn,
    for ever, and nothing else is consumed.

    Raises:
        ValueError: the data is too short.
    """
    try:
        return _PAMQP_SHORT_STR(value)
    except UnicodeDecodeError:
        length = value[0]
        return length + 1, bytes(value[1 : length + 1])


def _field_table(value: bytes) -> tuple[int, Any]:
    """pamqp's decoder of AMQP field tables (message headers, nested tables), except that a
    field name that is not UTF-8 comes back as ``bytes`` (a field name is a short string:
    octets, passed on by RabbitMQ unchecked, failing the frame as :func:`_short_str` says).
    Such headers cannot be published again: the broker's arrival check makes the delivery a
    defect, which the worker dead-letters.

    Raises:
        ValueError: the table is cut short or malformed.
    """
    try:
        return _PAMQP_FIELD_TABLE(value)
    except UnicodeDecodeError:
        pass  # a field name (values have decoders of their own, lenient as this is)
    try:
        end = 4 + int.from_bytes(value[:4], "big")
        if end > len(value):
            raise ValueError("field table length exceeds the data")
        table: dict[str | bytes, Any] = {}
        offset = 4
        while offset < end:
            size = value[offset]
            name = bytes(value[offset + 1 : offset + 1 + size])
            offset += 1 + size
            consumed, item = pamqp.decode.embedded_value(value[offset:end])
            offset += consumed
            try:
                table[name.decode()] = item
            except UnicodeDecodeError:
                table[name] = item
        return end, table
    except IndexError as exc:
        raise ValueError("field table cut short") from exc


_PAMQP_SHORT_STR = pamqp.decode.short_str
_PAMQP_FIELD_TABLE = pamqp.decode.field_table
# pamqp decodes a property or method field through METHODS (pamqp.decode.by_type), and a
# value inside a table or array through TABLE_MAPPING, by its type octet ("F": a table).
pamqp.decode.METHODS["shortstr"] = _short_str
pamqp.decode.METHODS["table"] = _field_table
pamqp.decode.TABLE_MAPPING[b"F"] = _field_table


def redacted_url(url: str) -> str:
    """``url`` fit for logs and messages (:func:`aqueue.transports.urls.redacted_url`), each
    node of a cluster's ``;``-separated list alike."""
    return ";".join(_redacted(node) for node in url.split(";"))


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
    try:
        yield
    except _TRANSLATED as exc:
        raise amqp_error(url, action, exc) from exc


# What amqp_error translates: aio-pika's and aiormq's errors, and the socket's.
_TRANSLATED = (
    aiormq.exceptions.AMQPError,
    ConnectionError,
    OSError,
    TimeoutError,
    RuntimeError,  # aio-pika: "connection closed", "reconnecting right now"
)


def amqp_error(url: str, action: str, exc: BaseException) -> BrokerError:
    """The aqueue error for ``exc``, an aio-pika/aiormq error (or a socket's) raised during
    ``action`` (see :func:`amqp_errors`): :class:`BrokerError` for a refusal,
    :class:`BrokerConnectionError` for anything else, including a ``basic.nack`` (RabbitMQ could
    not store a message: trying again may succeed)."""
    where = f"RabbitMQ at {redacted_url(url)}"
    if isinstance(exc, _REFUSED):
        return BrokerError(f"{where} refused {action}: {_describe(exc)}")
    if isinstance(exc, aiormq.exceptions.DeliveryError):
        return BrokerConnectionError(
            f"{where} did not store a message during {action}: it answered basic.nack (a queue "
            f"over its max-length with overflow=reject-publish, or a replica set that cannot "
            f"commit)"
        )
    return BrokerConnectionError(
        f"{where} unreachable during {action}: {type(exc).__name__}: {_describe(exc)}"
    )


def _describe(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    if isinstance(exc, aiormq.exceptions.PublishError):
        frame = getattr(exc, "frame", None)
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

    ``url`` may list the nodes of a RabbitMQ cluster, separated by ``;`` (kombu's failover
    form, as Celery users write ``broker_url``): the first connection goes to the first node
    that answers, in order, and after a drop each reconnection attempt that fails moves on to
    the next node, round robin (:class:`FailoverConnection`).

    Args:
        url: ``amqp://user:password@host:port/vhost`` or ``amqps://...``, or several joined by
            ``;``; aio-pika's query parameters (``?heartbeat=10``, TLS files) are passed
            through.
        reconnect_interval: seconds between reconnection attempts after the connection drops.
        timeout: seconds the first connection may take in all (TCP, TLS, the AMQP handshake;
            shared out between the nodes not tried yet).
        setup: awaited with the new connection to open its channels; if it raises, the
            connection is closed and the error raised (aio-pika's translated).
        on_reconnect: added to the connection's reconnect callbacks once it is set up.
        tls: TLS from ``broker_use_ssl``: the connection speaks TLS whatever the scheme
            (an ``amqp://`` URL with no port then goes to 5671, as kombu's does); the URL's
            ``cafile``, ``certfile``, ``keyfile`` and ``no_verify_ssl`` take precedence.

    Raises:
        ConfigurationError: ``url`` is not a valid AMQP URL, or a TLS file cannot be read.
        BrokerConnectionError: no node can be reached, one refused the login or the vhost or
            presented a certificate that is not trusted, or none answered within ``timeout``
            (names the URL without its password).
    """
    nodes = url.split(";")
    for node in nodes:
        try:
            _ = urlsplit(node).port
        except ValueError as exc:
            raise ConfigurationError(f"invalid AMQP URL {redacted_url(url)!r}: {exc}") from exc
    servers = [_with_tls(node, tls) for node in nodes]
    if len(nodes) > 1 and not FAILOVER:
        log.warning(
            "this aio-pika cannot move a dropped connection to another node: the connection "
            "to %s reconnects to the node it had",
            redacted_url(url),
        )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for first in range(len(nodes)):
        order = servers[first:] + servers[:first]
        urls = [make_url(server, reconnect_interval=reconnect_interval) for server, _ in order]
        # What aio_pika.connect_robust does, keeping the connection to close if it never opens.
        connection: aio_pika.RobustConnection = (
            FailoverConnection(urls, order[0][1], reconnect_interval)
            if len(urls) > 1
            else aio_pika.RobustConnection(
                urls[0],
                ssl_context=order[0][1],
                client_properties=_CLIENT,
                reconnect_interval=reconnect_interval,
            )
        )
        last = first == len(nodes) - 1
        left = (deadline - loop.time()) / (len(nodes) - first)
        try:
            async with asyncio.timeout(left):  # aio-pika's own covers the handshake only
                await _first_connect(nodes[first], connection, left, tls is not None, last, url)
            break
        except BaseException as exc:
            # Given up (or cancelled): without close() its reconnection loop would run on.
            await connection.close()
            if isinstance(exc, _NextNode):
                continue
            if isinstance(exc, TimeoutError):
                if not last:
                    continue
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


class _NextNode(Exception):
    """A node could not be reached: try the next one."""


async def _first_connect(
    url: str,
    connection: aio_pika.abc.AbstractRobustConnection,
    timeout: float,
    tls: bool,
    last: bool = True,
    nodes: str | None = None,
) -> None:
    """Open ``connection`` the first time, its errors translated but a timeout left as is.

    Args:
        tls: TLS comes from ``broker_use_ssl`` (whatever the URL's scheme).
        last: no other node to try: an unreachable server is an error, not :class:`_NextNode`.
        nodes: every node's URL (``;``-separated), named when none could be reached.

    Raises:
        BrokerConnectionError: the server cannot be reached (and it is the ``last`` node),
            refused the login or the vhost, or presented a certificate that is not trusted.
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
        if not last:
            raise _NextNode() from exc
        with amqp_errors(nodes or url, "connect"):
            raise


_CLIENT = {"connection_name": "aqueue"}


class FailoverConnection(aio_pika.RobustConnection):
    """A robust connection over several nodes of a RabbitMQ cluster (kombu's
    ``"amqp://a//;amqp://b//"``): a reconnection attempt that fails moves on to the next node,
    round robin, so that a node stopped for good does not keep its clients away.

    aio-pika's robust connection reconnects to its one URL; the attempt is its (private)
    ``__connect_transport``, wrapped here. Where a later aio-pika lacks it, the connection
    still reconnects, to the node it had (:data:`FAILOVER` is ``False``).

    Args:
        urls: the nodes, as aio-pika takes them, the one to connect to first first.
        ssl_context: TLS for every node, or ``None``.
        reconnect_interval: seconds between reconnection attempts.
    """

    def __init__(
        self, urls: Sequence[URL], ssl_context: ssl.SSLContext | None, reconnect_interval: float
    ) -> None:
        super().__init__(
            urls[0],
            ssl_context=ssl_context,
            client_properties=_CLIENT,
            reconnect_interval=reconnect_interval,
        )
        self._nodes = list(urls)
        self._node = 0

    # aio-pika's own name for one connection attempt (RobustConnection.__connect_transport).
    async def _RobustConnection__connect_transport(self) -> None:
        try:
            await getattr(super(), _ATTEMPT)()
        except BaseException:
            self._node = (self._node + 1) % len(self._nodes)
            self.url = self._nodes[self._node]
            raise


_ATTEMPT = "_RobustConnection__connect_transport"
#: Whether this aio-pika lets :class:`FailoverConnection` move to another node.
FAILOVER = hasattr(aio_pika.RobustConnection, _ATTEMPT)


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
