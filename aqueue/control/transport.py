"""Which control transport an app uses, and one connected instance per app and event loop.

Control goes over the broker's server: ``memory://``, ``sqlite://`` and ``redis://`` brokers
carry it themselves. A broker without a control transport of its own (AMQP) uses the result
backend's server instead (Redis or SQLite), which every worker and client of the app share too.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING

from aqueue.control.base import ControlTransport
from aqueue.exceptions import ConfigurationError

if TYPE_CHECKING:
    from aqueue.app import Aqueue

__all__ = ["close_control", "control_transport", "control_url", "transport_from_url"]

_SCHEMES = ("memory", "sqlite", "redis", "rediss")

_open: weakref.WeakKeyDictionary[
    Aqueue, weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ControlTransport]
] = weakref.WeakKeyDictionary()


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def control_url(app: Aqueue) -> str:
    """The URL of the server that carries ``app``'s control traffic and shared state.

    Raises:
        ConfigurationError: neither the broker nor the result backend can carry it.
    """
    broker = app.conf.resolved_broker_url()
    if _scheme(broker) in _SCHEMES:
        return broker
    backend = app.conf.resolved_backend_url()
    if backend is not None and _scheme(backend) in _SCHEMES:
        return backend
    raise ConfigurationError(
        f"remote control, revocations, rate limits and events need a Redis, SQLite or memory "
        f"broker or result backend; the broker {broker!r} has no control transport of its own "
        f"and no result backend is configured: set result_backend (e.g. 'redis://...')"
    )


def transport_from_url(url: str) -> ControlTransport:
    """Create (not connect) the control transport for ``url``.

    Raises:
        ConfigurationError: the scheme has no control transport.
    """
    scheme = _scheme(url)
    if scheme == "memory":
        from aqueue.control.memory import MemoryControl

        return MemoryControl(url)
    if scheme == "sqlite":
        from aqueue.control.sqlite import SQLiteControl

        return SQLiteControl(url)
    if scheme in ("redis", "rediss"):
        from aqueue.control.redis import RedisControl

        return RedisControl(url)
    raise ConfigurationError(f"{url!r} has no control transport: use memory, sqlite or redis")


async def control_transport(app: Aqueue) -> ControlTransport:
    """``app``'s connected control transport for the running loop (connecting on first use).

    Raises:
        ConfigurationError: no server can carry control traffic (see :func:`control_url`).
        BrokerConnectionError: the server cannot be reached.
    """
    loop = asyncio.get_running_loop()
    per_loop = _open.setdefault(app, weakref.WeakKeyDictionary())
    transport = per_loop.get(loop)
    if transport is None:
        url = control_url(app)
        if _scheme(url) == "memory":
            # One in-process state per URL, whatever the loop, like the memory broker.
            transport = app._shared_memory("control", url, lambda: transport_from_url(url))
        else:
            transport = transport_from_url(url)
        per_loop[loop] = transport
    await transport.connect()  # idempotent, and safe to race
    return transport


async def close_control(app: Aqueue) -> None:
    """Close ``app``'s control transport of the running loop, if one is open."""
    per_loop = _open.get(app)
    if per_loop is None:
        return
    transport = per_loop.pop(asyncio.get_running_loop(), None)
    if transport is not None:
        await transport.close()
