"""Transports: one folder per kind of server, each serving its roles over one client.

==========  ======  =======  =======  ====  =============================================
scheme      broker  results  control  beat  folder
==========  ======  =======  =======  ====  =============================================
memory      yes     yes      yes      yes   :mod:`aqueue.transports.memory` (one process)
sqlite      yes     yes      yes      yes   :mod:`aqueue.transports.sqlite` (one host)
redis(s)    yes     yes      yes      yes   :mod:`aqueue.transports.redis`
sentinel    yes     yes      yes      yes   :mod:`aqueue.transports.redis` (Redis Sentinel)
cluster     yes     yes      yes      yes   :mod:`aqueue.transports.redis` (Redis Cluster)
amqp(s)     yes     rpc      no       no    :mod:`aqueue.transports.amqp` (RabbitMQ)
==========  ======  =======  =======  ====  =============================================

``pyamqp`` is Celery's name for ``amqp``. The result backend ``rpc://`` is not a server of its
own: the app resolves it to the AMQP broker's transport, whose results role sends each task's
states back to the client that sent it (:mod:`aqueue.transports.amqp.results`).

Each folder's ``__init__`` defines ``Transport``, a :class:`~aqueue.transports.base.Transport`:
one instance per app, event loop and URL (the app keeps them), whose roles share one client -
one Redis connection pool, one SQLite connection and thread, one AMQP connection. Adding a
transport is one folder plus a line in :data:`SCHEMES`. The role Protocols are in
:mod:`aqueue.transports.base`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from aqueue.exceptions import ConfigurationError
from aqueue.transports import base
from aqueue.transports.base import *  # noqa: F403  (the role Protocols, re-exported)
from aqueue.transports.base import Broker, ConnectionOptions, ResultBackend, Transport

__all__ = [
    *base.__all__,
    "SCHEMES",
    "CLUSTER_SCHEMES",
    "SENTINEL_OPTIONS",
    "SENTINEL_SCHEMES",
    "TLS_SCHEMES",
    "backend_from_url",
    "broker_from_url",
    "plain_hint",
    "scheme",
    "tls_hint",
    "transport_for",
    "transport_type",
    "visibility_timeout",
]

#: URL scheme -> the transport folder under ``aqueue/transports/`` that serves it.
SCHEMES: dict[str, str] = {
    "memory": "memory",
    "sqlite": "sqlite",
    "redis": "redis",
    "rediss": "redis",
    "redis+sentinel": "redis",
    "rediss+sentinel": "redis",
    "sentinel": "redis",
    "redis+cluster": "redis",
    "rediss+cluster": "redis",
    "amqp": "amqp",
    "amqps": "amqp",
    "pyamqp": "amqp",
}


#: Redis Sentinel's schemes: ``redis+sentinel://host:26379,host2:26379/service/db`` (TLS:
#: ``rediss+sentinel://``) and kombu's ``sentinel://host:26379;sentinel://host2:26379``
#: (:mod:`aqueue.transports.redis.sentinel`).
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel", "sentinel")
#: Redis Cluster's schemes: ``redis+cluster://host:port[,host2:port2...]`` (TLS:
#: ``rediss+cluster://``) (:mod:`aqueue.transports.redis.cluster`).
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
#: The transport options of a Sentinel URL, Celery's and kombu's names: the service's name
#: and redis-py's connection arguments for the sentinels themselves.
SENTINEL_OPTIONS = ("master_name", "sentinel_kwargs")


def scheme(url: str) -> str:
    """The lower-cased scheme of ``url`` (``""`` when it has none)."""
    return url.split("://", 1)[0].lower() if "://" in url else ""


#: Each plain scheme's TLS counterpart.
TLS_SCHEMES = {"redis": "rediss", "amqp": "amqps", "pyamqp": "amqps"}


def tls_hint(url: str, tls: bool | None = None) -> str:
    """What to check when a TLS connection got no answer: ``""`` for a plain one, else a
    parenthesised hint, with a leading space.

    Args:
        url: the server's URL.
        tls: whether the connection speaks TLS; ``None``: as the URL's scheme says
            (``rediss://``, ``amqps://``). ``True`` for a plain URL whose TLS comes from
            ``broker_use_ssl`` / ``redis_backend_use_ssl``.
    """
    name = scheme(url)
    if tls is None:
        tls = name in TLS_SCHEMES.values()
    if not tls:
        return ""
    speaker = f"{name}://" if name in TLS_SCHEMES.values() else "this connection (*_use_ssl)"
    return f" ({speaker} speaks TLS: is the server listening for TLS on that port?)"


def plain_hint(url: str) -> str:
    """What to check when a plain connection (``redis://``, ``amqp://``) was cut by the server
    while it opened, as a server listening for TLS on that port does: a parenthesised hint with
    a leading space (``""`` for other schemes)."""
    name = scheme(url)
    secure = TLS_SCHEMES.get(name)
    if secure is None:
        return ""
    settings = "broker_use_ssl / redis_backend_use_ssl" if secure == "rediss" else "broker_use_ssl"
    return (
        f" ({name}:// is plain TCP, and a server listening for TLS on that port cuts it: for "
        f"TLS use {secure}:// or {settings})"
    )


def transport_type(url: str) -> type[Transport]:
    """The transport class for ``url``'s scheme (its folder is imported on first use, so an app
    on SQLite never imports aio-pika).

    Raises:
        ConfigurationError: no transport serves the scheme.
    """
    name = SCHEMES.get(scheme(url))
    if name is None:
        raise ConfigurationError(
            f"{url!r} has no supported scheme: use memory://, sqlite:///path.db, "
            f"redis://host:port/db, rediss://host:port/db, "
            f"redis+sentinel://host:26379,host2:26379/service/db, "
            f"redis+cluster://host:port,host2:port2, amqp://host:port/vhost or "
            f"amqps://..."
        )
    cls: type[Transport] = importlib.import_module(f"aqueue.transports.{name}").Transport
    return cls


def transport_for(
    url: str, *, shared: bool = True, connection: ConnectionOptions | None = None
) -> Transport:
    """A new transport for ``url`` (nothing connected yet); see :class:`Transport`.

    Args:
        connection: timeouts and pool size for its client (the app passes its settings';
            default: :class:`ConnectionOptions`'s defaults).

    Raises:
        ConfigurationError: no transport serves the scheme, or the URL is invalid.
    """
    return transport_type(url)(url, shared=shared, connection=connection)


def broker_from_url(url: str, transport_options: Mapping[str, Any] | None = None) -> Broker:
    """A broker for ``url`` with a client of its own, closed with it (not yet connected).

    Args:
        url: ``memory://``, ``sqlite:///path.db``, ``redis://host:port/db``, ``rediss://...``,
            a Redis Sentinel or Redis Cluster URL (``redis+sentinel://...``,
            ``redis+cluster://host:port,host2:port2``),
            ``amqp://user:password@host:port/vhost`` or ``amqps://...`` (RabbitMQ).
        transport_options: the ``broker_transport_options`` setting, e.g.
            ``{"visibility_timeout": 30.0}`` (seconds).

    Raises:
        ConfigurationError: the scheme is not supported, or an option is unknown or invalid.
    """
    return transport_for(url, shared=False).broker(dict(transport_options or {}))


def backend_from_url(url: str) -> ResultBackend:
    """A result backend for ``url`` with a client of its own, closed with it (not yet
    connected).

    Raises:
        ConfigurationError: the scheme has no result backend. (``amqp://`` gives the ``rpc://``
            backend, which sends results back to their caller and stores none.)
    """
    return transport_for(url, shared=False).result_backend()


def visibility_timeout(options: Mapping[str, Any], default: float = 30.0) -> float:
    """Read and check ``visibility_timeout`` (seconds > 0) from transport options.

    Raises:
        ConfigurationError: not a number of seconds > 0.
    """
    value = options.get("visibility_timeout", default)
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise ConfigurationError(
            f"broker_transport_options['visibility_timeout'] must be a number of seconds > 0, "
            f"not {value!r}"
        )
    return float(value)
