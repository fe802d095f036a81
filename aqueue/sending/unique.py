"""Unique tasks and idempotent sends: the locks a send takes before it publishes.

Both live in the result backend's :class:`~aqueue.transports.base.Locks` (Redis: one Lua script;
SQLite: one transaction; memory: a thread lock), so they hold across every process sending to
it, whatever the broker (with RabbitMQ, in its Redis or SQLite result backend).

- **Unique tasks** (``@app.task(unique=...)``, ``apply_async(unique_key=...)``): a send takes
  the lock ``unique:<task name>:<key>`` for its own task id, for ``unique_ttl`` seconds, before
  publishing. Another id holding it means a call with that key is queued or running: the send
  returns that call's handle and publishes nothing. The worker then moves the lock onto the
  message's lease while the task runs (:mod:`aqueue.worker.locks`) and frees it when the run
  ends - or, for ``unique="queued"``, when it starts.
- **Idempotent sends** (``apply_async(task_id=...)``): the send takes ``sent:<task id>`` for
  ``result_expires`` seconds (a day when results never expire); held already, the id was sent:
  the send returns its handle and publishes nothing, so the task runs once however many times a
  client retries the call within that window.

A send whose publish fails frees what it took, so a retried send is not refused.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from aqueue.exceptions import ConfigurationError
from aqueue.transports import Locks, ResultBackend, has_locks, scheme

if TYPE_CHECKING:
    from aqueue.app import Aqueue
    from aqueue.message import Message
    from aqueue.task import Task

__all__ = [
    "DEFAULT_UNIQUE_TTL",
    "UniqueLock",
    "check_unique_options",
    "locks",
    "sent_key",
    "sent_ttl",
    "unique_lock",
]

#: Seconds a queued unique call keeps its lock, from when it is due, when neither ``unique_ttl``
#: nor ``expires`` is set.
DEFAULT_UNIQUE_TTL = 3600.0
#: Seconds an idempotent send's mark lasts when results never expire (``result_expires=None``).
_SENT_TTL = 86400.0
#: The ``unique`` values and the mode each means.
_MODES: dict[Any, str] = {True: "running", "running": "running", "queued": "queued"}


@dataclass(frozen=True, slots=True)
class UniqueLock:
    """The lock of one unique call, carried in its message (``Message.options["unique"]``).

    Attributes:
        key: the lock's name, ``unique:<task name>:<key>``.
        mode: ``"running"`` (held until the run ends) or ``"queued"`` (until it starts).
        ttl: seconds the lock lasts while the call is queued.
    """

    key: str
    mode: str
    ttl: float

    def to_dict(self) -> dict[str, Any]:
        """The form the message carries."""
        return {"key": self.key, "mode": self.mode, "ttl": self.ttl}

    @classmethod
    def from_message(cls, msg: Message) -> UniqueLock | None:
        """The lock ``msg`` was sent under, or ``None`` (not unique, or a malformed entry)."""
        info = msg.options.get("unique")
        if not isinstance(info, dict):
            return None
        key, mode, ttl = info.get("key"), info.get("mode"), info.get("ttl")
        if not isinstance(key, str) or mode not in ("running", "queued"):
            return None
        if isinstance(ttl, bool) or not isinstance(ttl, int | float):
            ttl = DEFAULT_UNIQUE_TTL
        return cls(key, str(mode), float(ttl))


def check_unique_options(options: Mapping[str, Any]) -> None:
    """Check ``@app.task``'s ``unique``, ``unique_key`` and ``unique_ttl``.

    Raises:
        ConfigurationError: one has a wrong type or value; the message names it.
    """
    unique = options.get("unique", False)
    if unique is not False and unique not in _MODES:
        raise ConfigurationError(
            f"unique must be True, False, 'queued' or 'running', not {unique!r}"
        )
    key = options.get("unique_key")
    if key is not None and not callable(key):
        raise ConfigurationError(
            f"unique_key of a task is a function of the call's arguments returning the key "
            f"(pass a fixed key per call: apply_async(unique_key=...)), not {key!r}"
        )
    _check_ttl(options.get("unique_ttl"))


def _check_ttl(ttl: Any) -> None:
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0):
        raise ConfigurationError(f"unique_ttl must be a positive number of seconds, not {ttl!r}")


def unique_lock(
    name: str,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    task: Task[Any, Any] | None,
    options: Mapping[str, Any],
    expires: float | None,
    eta: float | None = None,
) -> UniqueLock | None:
    """The lock a send of ``name`` must take, or ``None`` when the call is not unique.

    A call is unique when it has ``unique_key=`` or its task has ``unique``; the key is the
    call's ``unique_key``, else the task's ``unique_key(*args, **kwargs)``, else a digest of the
    arguments. A per-call key on a task without ``unique`` locks until the run ends.

    Args:
        expires: the message's expiry (epoch seconds) or ``None``: a queued lock lasts no longer.
        eta: when the message is due (epoch seconds) or ``None``: without ``unique_ttl`` or
            ``expires``, its lock lasts :data:`DEFAULT_UNIQUE_TTL` from then, not from now (a
            call due in two hours stays locked until it runs).

    Raises:
        ConfigurationError: the key is not a non-empty string, or an option is invalid.
    """
    key = options.get("unique_key")
    mode = getattr(task, "unique", False)
    if key is None and not mode:
        return None
    if mode is not False and mode not in _MODES:
        raise ConfigurationError(f"unique of {name} must be True, 'queued' or 'running'")
    if key is None:
        make = getattr(task, "unique_key", None)
        key = make(*args, **kwargs) if make is not None else _digest(args, kwargs)
    if not isinstance(key, str) or not key:
        raise ConfigurationError(f"a unique key must be a non-empty string, not {key!r}")
    ttl = getattr(task, "unique_ttl", None)
    _check_ttl(ttl)
    if ttl is None:
        now = time.time()
        if expires is not None:
            ttl = max(expires - now, 0.001)
        else:
            ttl = DEFAULT_UNIQUE_TTL + (max(eta - now, 0.0) if eta is not None else 0.0)
    return UniqueLock(f"unique:{name}:{key}", _MODES.get(mode, "running"), float(ttl))


def _digest(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """A key for a call from its arguments: equal arguments, equal key, in any process."""
    data = orjson.dumps(
        [args, kwargs], option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=repr
    )
    return hashlib.sha256(data).hexdigest()[:32]


def sent_key(task_id: str) -> str:
    """The mark of an idempotent send of ``task_id``."""
    return f"sent:{task_id}"


def sent_ttl(app: Aqueue) -> float:
    """Seconds an idempotent send's mark lasts: ``result_expires``, or a day if ``None``."""
    expires = app.conf.result_expires
    return float(expires) if expires else _SENT_TTL


def locks(backend: ResultBackend | None, what: str) -> Locks:
    """``backend`` as :class:`~aqueue.transports.base.Locks`.

    Raises:
        ConfigurationError: there is no result backend, or it keeps no locks (``rpc://``);
            ``what`` names the feature that needs them.
    """
    if backend is not None and has_locks(backend):
        return backend
    where = (
        "no result backend" if backend is None else f"the result backend {scheme(backend.url)}://"
    )
    raise ConfigurationError(
        f"{what} needs a result backend that keeps locks (redis://, sqlite://, memory://); "
        f"this app has {where}"
    )
