"""The ``rpc://`` result backend as the app sees it, before any AMQP code is imported.

``rpc://`` (Celery also writes a bare ``rpc``) names no server: results travel back over the
AMQP broker, so the app resolves it to the broker's URL (:func:`rpc_server`), whose transport
serves the results role (:mod:`aqueue.transports.amqp.results`). What it cannot do is refused
with :func:`rpc_cannot` wherever it is asked for (control and beat in the app, chords in
:mod:`aqueue.canvas.dispatch`).
"""

from __future__ import annotations

from aqueue.exceptions import ConfigurationError

__all__ = ["AMQP_SCHEMES", "COUNT_A_CHORD", "is_rpc", "rpc_cannot", "rpc_server"]

#: Schemes of the AMQP broker URLs an ``rpc://`` result backend can use (``pyamqp`` is
#: Celery's name for the same thing).
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
#: What ``rpc://`` cannot do for a chord (see :func:`rpc_cannot`).
COUNT_A_CHORD = "count a chord's header results (a chord needs a result store)"


def is_rpc(url: str | None) -> bool:
    """True for the ``rpc://`` result backend's URL (Celery also accepts a bare ``rpc``)."""
    if url is None:
        return False
    lowered = url.lower()
    return lowered == "rpc" or lowered.startswith("rpc://")


def rpc_server(broker_url: str) -> str:
    """The URL of the server an ``rpc://`` result backend runs on: the broker's, which must be
    AMQP (results travel back as messages on it).

    Raises:
        ConfigurationError: the broker is not AMQP.
    """
    scheme = broker_url.partition("://")[0].lower()
    if scheme not in AMQP_SCHEMES:
        raise ConfigurationError(
            f"the rpc:// result backend sends results back over an AMQP broker (RabbitMQ), but "
            f"the broker is a {scheme}:// one: use an amqp:// broker, or store results on the "
            f"broker's own server (leave result_backend unset, or give it the broker's URL)"
        )
    return broker_url


def rpc_cannot(needs: str) -> ConfigurationError:
    """The error for asking ``rpc://`` to ``needs`` (e.g. ``"keep beat's entries"``): it only
    sends each task's states back to the client that sent it, and stores nothing."""
    return ConfigurationError(
        f"the rpc:// result backend only sends each task's states back to the client that sent "
        f"it and stores nothing, so it cannot {needs}: set result_backend to a Redis or SQLite "
        f"URL (e.g. 'redis://127.0.0.1:6379/1'); RabbitMQ can stay the broker"
    )
