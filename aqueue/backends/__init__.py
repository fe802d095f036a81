"""Result backends, one module each, chosen by URL scheme. See :mod:`aqueue.backends.base`."""

from __future__ import annotations

from aqueue.backends.base import ResultBackend
from aqueue.exceptions import ConfigurationError

__all__ = ["ResultBackend", "backend_from_url"]


def backend_from_url(url: str) -> ResultBackend:
    """Create the result backend for ``url`` (not yet connected).

    Args:
        url: ``memory://``, ``sqlite:///path.db``, ``redis://host:port/db`` or ``rediss://...``.

    Raises:
        ConfigurationError: the scheme is not supported (amqp:// is a broker only: pair it with a
            Redis or SQLite result backend).
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        from aqueue.backends.memory import MemoryBackend

        return MemoryBackend(url)
    if scheme == "sqlite":
        from aqueue.backends.sqlite import SQLiteBackend

        return SQLiteBackend(url)
    if scheme in ("redis", "rediss"):
        from aqueue.backends.redis import RedisBackend

        return RedisBackend(url)
    hint = " (AMQP is a broker, not a result backend)" if scheme in ("amqp", "amqps") else ""
    raise ConfigurationError(
        f"result_backend {url!r} is not supported{hint}: use memory://, sqlite:///path.db, "
        f"redis://host:port/db or rediss://host:port/db"
    )
