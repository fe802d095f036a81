"""App settings: Celery's lowercase names, checked when they are set.

``app.conf`` is a :class:`Settings`. Every setting reads and writes as an attribute
(``app.conf.timezone = "UTC"``), as a mapping item (``app.conf["timezone"]``,
``app.conf.get("timezone")``, ``"timezone" in app.conf``) and through :meth:`Settings.update`;
an unknown name or a bad value raises :class:`~aqueue.exceptions.ConfigurationError` at once,
naming the setting and the fix. A Celery setting aqueue does not have is answered with what to
use instead (:mod:`aqueue.celery_settings`), any other unknown name with the closest aqueue
name; Celery 3's upper-case names (``CELERY_RESULT_BACKEND``...) with the name to use.

With no broker URL anywhere, the embedded default is ``aqueue.db`` beside the module that made
the app (:func:`caller_directory`), so every process that imports that module - a worker, a
client started in another directory - uses the same file.
"""

from __future__ import annotations
import __future__

import dataclasses
import difflib
import importlib
import inspect
import math
import os
import sys
import zoneinfo
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import FrameType
from typing import Any

from aqueue.celery_settings import CELERY_3_NAMES, CELERY_ONLY
from aqueue.discovery import is_missing
from aqueue.exceptions import ConfigurationError, UnknownSetting
from aqueue.serialization import COMPRESSIONS, is_content_type, serializer_names
from aqueue.signing import Signing, check_key_setting
from aqueue.transports import CLUSTER_SCHEMES, SCHEMES, SENTINEL_OPTIONS, SENTINEL_SCHEMES
from aqueue.transports import scheme as _scheme
from aqueue.transports.base import MIN_SOCKET_TIMEOUT, ConnectionOptions
from aqueue.transports.tls import AMQP_KEYS, REDIS_KEYS, KeySet, TLSOptions, from_setting
from aqueue.transports.urls import redacted_url

#: The embedded default, when no directory is known (the app was made in a REPL or
#: ``python -c``): ``aqueue.db`` in the working directory.
DEFAULT_URL = "sqlite:///aqueue.db"
#: The embedded default's file name, in the directory of the module that made the app.
DEFAULT_FILE = "aqueue.db"
BROKER_ENV = "AQUEUE_BROKER_URL"
BACKEND_ENV = "AQUEUE_RESULT_BACKEND"
BROKER_SCHEMES = (
    "memory",
    "sqlite",
    "redis",
    "rediss",
    *SENTINEL_SCHEMES,
    *CLUSTER_SCHEMES,
    "amqp",
    "amqps",
    "pyamqp",
)
# rpc:// (or "rpc"): results sent back over the AMQP broker to their caller (docs/amqp.md).
BACKEND_SCHEMES = (
    "memory",
    "sqlite",
    "redis",
    "rediss",
    *SENTINEL_SCHEMES,
    *CLUSTER_SCHEMES,
    "rpc",
)


def _url(schemes: tuple[str, ...]) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if value is None or ("rpc" in schemes and value == "rpc"):  # Celery's backend='rpc'
            return
        if not isinstance(value, str) or "://" not in value:
            raise ConfigurationError(
                f"{name} must be a URL such as 'redis://127.0.0.1:6379/0' or "
                f"'sqlite:///aqueue.db', not {value!r}"
            )
        scheme = value.split("://", 1)[0].lower()
        if scheme not in schemes:
            raise ConfigurationError(
                f"{name} {value!r}: scheme {scheme!r} is not supported; use one of "
                + ", ".join(f"{s}://" for s in schemes)
            )

    return check


def _one_of(choices: tuple[str, ...], allow_none: bool = False) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if (value is None and allow_none) or value in choices:
            return
        raise ConfigurationError(f"{name} must be one of {', '.join(choices)}, not {value!r}")

    return check


def _seconds(allow_none: bool) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if value is None and allow_none:
            return
        if isinstance(value, timedelta):
            value = value.total_seconds()
        if not _finite(value) or value < 0:
            raise ConfigurationError(
                f"{name} must be a number of seconds >= 0{' or None' if allow_none else ''}, "
                f"not {value!r}{_not_finite(value, allow_none)}"
            )

    return check


def _timeout(allow_none: bool, minimum: float = 0.0) -> Callable[[str, Any], None]:
    """Seconds > 0 (and >= ``minimum``), or ``None`` where allowed."""

    def check(name: str, value: Any) -> None:
        if value is None and allow_none:
            return
        if isinstance(value, timedelta):
            value = value.total_seconds()
        if not _finite(value) or value <= 0 or value < minimum:
            least = f">= {minimum:g}" if minimum else "> 0"
            raise ConfigurationError(
                f"{name} must be a number of seconds {least}{' or None' if allow_none else ''}, "
                f"not {value!r}{_not_finite(value, allow_none)}"
            )

    return check


def _finite(value: Any) -> bool:
    """True for an int or a float that is neither NaN nor infinite (NaN passes ``< 0``; an
    infinity reaches Redis as ``int(inf)``, a retry's eta as JSON null): not a bool."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) or math.isfinite(value)


def _not_finite(value: Any, allow_none: bool) -> str:
    """What to add to the error for a NaN or an infinity (nothing for other values)."""
    if not isinstance(value, float) or math.isfinite(value):
        return ""
    return " (a finite number: None means no limit)" if allow_none else " (a finite number)"


def _optional(check: Callable[[str, Any], None]) -> Callable[[str, Any], None]:
    """``check``, or ``None``."""

    def check_optional(name: str, value: Any) -> None:
        if value is not None:
            check(name, value)

    return check_optional


def _pool_size(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < MIN_POOL:
        raise ConfigurationError(
            f"{name} must be a whole number >= {MIN_POOL} or None (the default, "
            f"{DEFAULT_POOL}), not {value!r}: a worker holds a few connections for its "
            f"subscriptions and its blocking fetch"
        )


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a whole number >= 1, not {value!r}")


def _non_negative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{name} must be a whole number >= 0, not {value!r}")


def _priority(name: str, value: Any) -> None:
    """A priority, 0..9 (9 first) as a send's ``priority=`` is: checked here so that a bad
    default fails at startup, naming the setting, not every send."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 9:
        raise ConfigurationError(f"{name} must be a whole number 0..9 (9 first), not {value!r}")


def _boolean(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, not {value!r}")


def _mapping(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, Mapping):
        raise ConfigurationError(f"{name} must be a dict, not {type(value).__name__}")


def _sentinel_mapping(name: str, value: Any) -> None:
    _mapping(name, value)
    unknown = set(value or {}) - set(SENTINEL_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"{name}: aqueue reads only the Redis Sentinel options {list(SENTINEL_OPTIONS)} "
            f"here, not {sorted(unknown)} (the redis_* settings and the URL's query configure "
            f"the rest)"
        )


def _routes(name: str, value: Any) -> None:
    if isinstance(value, list | tuple):
        for i, entry in enumerate(value):
            if not (isinstance(entry, Mapping) or callable(entry)):
                raise ConfigurationError(
                    f"{name}[{i}] must be a dict or a function, not {entry!r} (every entry of "
                    f"the list is one, tried in order)"
                )
        return
    if value is None or isinstance(value, Mapping) or callable(value):
        return
    raise ConfigurationError(f"{name} must be a dict, a list of dicts or a function")


EXCHANGE_TYPES = ("direct", "topic", "fanout")
_QUEUE_KEYS = frozenset({"exchange", "exchange_type", "routing_key"})


def _task_queues(name: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"{name} must be a dict from queue name to its binding, e.g. "
            f"{{'feeds': {{'exchange': 'media', 'exchange_type': 'topic', "
            f"'routing_key': 'media.#'}}}}, not {type(value).__name__}"
        )
    types: dict[str, str] = {}
    for queue, entry in value.items():
        where = f"{name}[{queue!r}]"
        if not isinstance(queue, str) or not queue:
            raise ConfigurationError(f"{name} keys must be non-empty queue names, not {queue!r}")
        if not isinstance(entry, Mapping):
            raise ConfigurationError(f"{where} must be a dict, not {type(entry).__name__}")
        unknown = set(entry) - _QUEUE_KEYS
        if unknown:
            raise ConfigurationError(
                f"{where} has unknown keys {sorted(unknown)}; use {sorted(_QUEUE_KEYS)}"
            )
        exchange = entry.get("exchange")
        if not isinstance(exchange, str) or not exchange:
            raise ConfigurationError(f"{where}['exchange'] must be a non-empty exchange name")
        kind = entry.get("exchange_type", "direct")
        if kind not in EXCHANGE_TYPES:
            raise ConfigurationError(
                f"{where}['exchange_type'] must be one of {', '.join(EXCHANGE_TYPES)}, not {kind!r}"
            )
        if types.setdefault(exchange, kind) != kind:
            raise ConfigurationError(
                f"{name}: exchange {exchange!r} has two types, {types[exchange]!r} and {kind!r}"
            )
        if not isinstance(entry.get("routing_key", queue), str):
            raise ConfigurationError(f"{where}['routing_key'] must be a string")


def _accept(name: str, value: Any) -> None:
    if not isinstance(value, list | tuple | set | frozenset) or not all(
        isinstance(v, str) and is_content_type(v) for v in value
    ):
        raise ConfigurationError(
            f"{name} must be a list of content types from {', '.join(serializer_names())} "
            f"(names or MIME types), e.g. ['json'], not {value!r}"
        )


def _serializer(name: str, value: Any) -> None:
    """A serializer's name: built in, or added with ``aqueue.register_serializer``."""
    if value not in serializer_names():
        raise ConfigurationError(
            f"{name} must be one of {', '.join(serializer_names())} (or a name given to "
            f"aqueue.register_serializer first), not {value!r}"
        )


def _queue_name(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{name} must be a non-empty queue name, not {value!r}")


def _use_ssl(key_sets: tuple[KeySet, ...], allow_true: bool) -> Callable[[str, Any], None]:
    """Celery's ``*_use_ssl``: ``False``, a dict of one kind of server's TLS keys, or ``True``
    where allowed (see :func:`aqueue.transports.tls.from_setting`)."""

    def check(name: str, value: Any) -> None:
        from_setting(name, value, key_sets, allow_true=allow_true)

    return check


def _timezone(name: str, value: Any) -> None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise ConfigurationError(
            f"{name} {value!r} is not a known IANA time zone (e.g. 'UTC', 'Asia/Shanghai')"
        ) from None


_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "broker_url": _url(BROKER_SCHEMES),
    "result_backend": _url(BACKEND_SCHEMES),
    "task_serializer": _serializer,
    "result_serializer": _serializer,
    "accept_content": _accept,
    "task_compression": _one_of(COMPRESSIONS, allow_none=True),
    "result_expires": _seconds(allow_none=True),
    "task_acks_late": _boolean,
    "task_default_queue": _queue_name,
    "task_default_priority": _priority,
    "task_routes": _routes,
    "task_queues": _task_queues,
    "task_annotations": _routes,
    "task_time_limit": _seconds(allow_none=True),
    "task_default_retry_delay": _seconds(allow_none=False),
    "task_max_retries": _non_negative_int,
    "task_max_deliveries": _positive_int,
    "task_always_eager": _boolean,
    "task_eager_propagates": _boolean,
    "task_eager_serializes": _boolean,
    "task_track_started": _boolean,
    "task_ignore_result": _boolean,
    "worker_concurrency": _positive_int,
    "worker_prefetch_multiplier": _positive_int,
    "worker_shutdown_timeout": _seconds(allow_none=False),
    "worker_send_task_events": _boolean,
    "rate_limit_scope": _one_of(("global", "worker")),
    "timezone": _timezone,
    "enable_utc": _boolean,
    "beat_schedule": _mapping,
    "broker_transport_options": _mapping,
    "result_backend_transport_options": _sentinel_mapping,
    "broker_connection_timeout": _timeout(allow_none=False),
    "broker_connection_retry": _boolean,
    "broker_connection_max_retries": _optional(_non_negative_int),
    "broker_connection_retry_on_startup": _optional(_boolean),
    "broker_pool_limit": _pool_size,
    "redis_socket_timeout": _timeout(allow_none=True, minimum=MIN_SOCKET_TIMEOUT),
    "redis_socket_connect_timeout": _timeout(allow_none=True),
    "redis_retry_on_timeout": _boolean,
    "redis_max_connections": _pool_size,
    "broker_use_ssl": _use_ssl((REDIS_KEYS, AMQP_KEYS), allow_true=True),
    "redis_backend_use_ssl": _use_ssl((REDIS_KEYS,), allow_true=False),
    # Worker side of issue 12 (README "Worker lifespan and limits"):
    "task_soft_time_limit": _seconds(allow_none=True),
    "task_soft_deadline": _seconds(allow_none=True),
    "task_reject_on_worker_lost": _boolean,
    "worker_max_tasks_per_child": _optional(_non_negative_int),
    "worker_max_memory_per_child": _optional(_non_negative_int),
    "result_extended": _boolean,
    # Message signing and size (docs/signing.md):
    "task_signing_key": check_key_setting,
    "task_max_message_size": _optional(_positive_int),
}

#: Connections in a Redis pool when neither broker_pool_limit nor redis_max_connections is set.
DEFAULT_POOL = 128
#: The smallest pool allowed: a worker holds up to 4 connections (pub/sub subscriptions and the
#: blocking fetch) for as long as it runs, and needs more for its commands.
MIN_POOL = 10


@dataclass(slots=True)
class Settings(Mapping[str, Any]):
    """The app's settings; see the README's Configuration section for each one's meaning.

    Durations are seconds. Defaults follow Celery's, except ``task_acks_late`` (True: a message
    is acked only after its result is stored) and ``worker_concurrency`` (100 coroutines).

    Also a mapping from setting name to value, as Celery's ``app.conf`` is: ``conf["timezone"]``
    (an unknown name raises :class:`~aqueue.exceptions.UnknownSetting`, a ``KeyError``),
    ``conf.get(name, default)``, ``name in conf``, ``conf[name] = value`` (checked as attribute
    assignment is), ``dict(conf)``.
    """

    broker_url: str | None = None
    result_backend: str | None = None
    task_serializer: str = "json"
    result_serializer: str = "json"
    accept_content: list[str] = field(default_factory=lambda: ["json"])
    task_compression: str | None = None
    result_expires: float | None = 86400.0
    task_acks_late: bool = True
    task_default_queue: str = "default"
    task_default_priority: int = 0
    task_routes: Any = None
    task_queues: dict[str, dict[str, str]] | None = None
    task_annotations: Any = None
    task_time_limit: float | None = None
    task_default_retry_delay: float = 180.0
    task_max_retries: int = 3
    task_max_deliveries: int = 5
    task_always_eager: bool = False
    task_eager_propagates: bool = True
    # Eager calls encode and decode arguments and results as a broker would (False: skip it).
    task_eager_serializes: bool = True
    task_track_started: bool = False
    task_ignore_result: bool = False
    worker_concurrency: int = 100
    worker_prefetch_multiplier: int = 4
    worker_shutdown_timeout: float = 30.0
    worker_send_task_events: bool = False
    # Where a task's rate_limit is counted: "global" (all workers share it) or Celery's "worker".
    rate_limit_scope: str = "global"
    timezone: str = "UTC"
    enable_utc: bool = True
    beat_schedule: dict[str, Any] = field(default_factory=dict)
    broker_transport_options: dict[str, Any] = field(default_factory=dict)
    # A result backend's own Redis Sentinel options (master_name, sentinel_kwargs), as Celery's.
    result_backend_transport_options: dict[str, Any] = field(default_factory=dict)
    # When a server is down (README "When a server is down"):
    broker_connection_timeout: float = 4.0
    broker_connection_retry: bool = True
    broker_connection_max_retries: int | None = None  # None or 0: forever
    broker_connection_retry_on_startup: bool | None = None  # None: broker_connection_retry
    broker_pool_limit: int | None = None  # None: DEFAULT_POOL
    redis_socket_timeout: float | None = None  # Celery: 120; see the README
    redis_socket_connect_timeout: float | None = None  # None: broker_connection_timeout
    redis_retry_on_timeout: bool = False
    redis_max_connections: int | None = None  # None: DEFAULT_POOL
    # TLS with Celery's keys (docs/security.md): False, True (broker only) or a dict.
    broker_use_ssl: bool | dict[str, Any] = False
    redis_backend_use_ssl: bool | dict[str, Any] = False
    # Worker side (README "Worker lifespan and limits"):
    task_soft_time_limit: float | None = None  # seconds: SoftTimeLimitExceeded in the task
    task_soft_deadline: float | None = None  # seconds: a run past it is reported, not stopped
    task_reject_on_worker_lost: bool = True  # False: a task whose worker died -> WorkerLostError
    worker_max_tasks_per_child: int | None = None  # with --processes; None or 0: no limit
    worker_max_memory_per_child: int | None = None  # KiB resident, with --processes; None/0: none
    result_extended: bool = False  # store name, args, kwargs, worker, queue with the result
    #: Not a setting: the signers made from ``task_signing_key`` when it is set, ``None``
    #: without a key (:mod:`aqueue.signing`); read-only. Declared before the key, so that
    #: ``__init__`` sets this default first.
    signing: Signing | None = field(default=None, init=False, repr=False, compare=False)
    # A secret, or a list of them (the first signs): HMAC-SHA256 of messages and results.
    task_signing_key: str | bytes | list[str | bytes] | None = field(default=None, repr=False)
    task_max_message_size: int | None = None  # bytes; a larger message is refused at send
    # Not a setting: the embedded default URL for this app (see locate_default).
    _default_url: str = field(default=DEFAULT_URL, init=False, repr=False, compare=False)

    def __setattr__(self, name: str, value: Any) -> None:
        check = _CHECKS.get(name)
        if check is None:
            # signing: only its default, in __init__ (a slot not set yet); then with the key.
            if name == "_default_url" or (name == "signing" and not hasattr(self, name)):
                object.__setattr__(self, name, value)
                return
            raise UnknownSetting(_unknown(name))
        check(name, value)
        if isinstance(value, timedelta):
            value = value.total_seconds()
        elif value is None and name in _EMPTY_WHEN_NONE:
            value = {}  # Celery's default for it: what reads it takes a dict
        elif name == "task_signing_key":
            object.__setattr__(self, "signing", Signing.from_setting(value))
        object.__setattr__(self, name, value)

    # -- the mapping view (Celery's app.conf is a mapping) -----------------------------------

    def __getitem__(self, name: str) -> Any:
        """``conf["timezone"]``: the setting's value.

        Raises:
            UnknownSetting: not an aqueue setting (a ``KeyError``, as Celery raises; the message
                says what to use instead).
        """
        if name in _CHECKS:
            return getattr(self, name)
        raise UnknownSetting(_unknown(name))

    def __setitem__(self, name: str, value: Any) -> None:
        """``conf["timezone"] = "UTC"``: set a setting, checked as attribute assignment is.

        Raises:
            UnknownSetting: not an aqueue setting (a ``ConfigurationError`` and a ``KeyError``).
            ConfigurationError: the value is invalid.
        """
        if not isinstance(name, str):
            raise UnknownSetting(_unknown(name))
        setattr(self, name, value)

    def __contains__(self, name: object) -> bool:
        """``name in conf``: True for an aqueue setting's name."""
        return name in _CHECKS

    def __iter__(self) -> Iterator[str]:
        """Every setting's name, in declaration order."""
        return iter(_setting_names())

    def __len__(self) -> int:
        return len(_CHECKS)

    def get(self, name: str, default: Any = None, /) -> Any:
        """The setting's value, or ``default`` when ``name`` is not an aqueue setting (as
        Celery's ``conf.get``; a Celery setting aqueue does not have gives ``default`` too)."""
        return getattr(self, name) if name in _CHECKS else default

    def update(self, other: Mapping[str, Any] | None = None, /, **settings: Any) -> None:
        """Set several settings at once, each checked as if set alone.

        Raises:
            ConfigurationError: a name is unknown or a value is invalid; nothing is changed.
        """
        items = {**(other or {}), **settings}
        trial = dataclasses.replace(self)
        for name, value in items.items():
            setattr(trial, name, value)
        for name, value in items.items():
            setattr(self, name, value)

    def as_dict(self) -> dict[str, Any]:
        """Every setting and its value."""
        return {name: getattr(self, name) for name in _setting_names()}

    def from_object(self, obj: object | str) -> None:
        """Load settings from a module path (``"proj.config"``), a module, a class or an object.

        Lower-case public attributes are settings; classes, functions and modules among them are
        skipped (e.g. an imported ``timedelta``). Upper-case names are skipped too, except
        Celery 3's names of settings aqueue has (``CELERY_RESULT_BACKEND``), refused with the
        name to use instead (others, like ``BROKER_HOST``, may be the module's own constants).

        Raises:
            ConfigurationError: the module cannot be imported, or a setting is wrong.
        """
        if isinstance(obj, str):
            obj = _import_config(obj)
        found: dict[str, Any] = {}
        for name in dir(obj):
            if name.startswith("_"):
                continue
            if CELERY_3_NAMES.get(name) in _CHECKS:
                raise UnknownSetting(_unknown(name))
            value = getattr(obj, name)
            if not name.islower() or inspect.ismodule(value) or inspect.isclass(value):
                continue
            if isinstance(value, __future__._Feature):  # from __future__ import annotations
                continue
            if inspect.isroutine(value) and name not in _CHECKS:
                continue
            found[name] = value
        self.update(found)

    def locate_default(self, directory: str | None) -> None:
        """Put the embedded default database in ``directory`` (made absolute now):
        ``sqlite:////<directory>/aqueue.db``; ``None``: :data:`DEFAULT_URL`, relative to the
        working directory. ``Aqueue`` calls it with the directory of the module that made the
        app (:func:`caller_directory`)."""
        if directory is None:
            self._default_url = DEFAULT_URL
        else:
            self._default_url = "sqlite:///" + os.path.join(
                os.path.abspath(directory), DEFAULT_FILE
            )

    def resolved_broker_url(self) -> str:
        """``broker_url``, else ``$AQUEUE_BROKER_URL``, else the embedded default (see
        :meth:`locate_default`).

        Raises:
            ConfigurationError: ``$AQUEUE_BROKER_URL`` is used and is not a broker URL (the
                message names the variable, as a bad ``broker_url`` names the setting).
        """
        return self.broker_url or _from_env(BROKER_ENV, BROKER_SCHEMES) or self._default_url

    def resolved_backend_url(self) -> str | None:
        """The result backend's URL, or ``None`` when there is none.

        ``result_backend``, else ``$AQUEUE_RESULT_BACKEND``, else the broker's own URL when the
        broker can also store results (memory, SQLite, Redis). An AMQP broker with no result
        backend set has none: results cannot be awaited until one is configured. ``rpc://`` is
        returned as given (the app resolves it to the AMQP broker's transport).

        Raises:
            ConfigurationError: ``$AQUEUE_RESULT_BACKEND`` (or ``$AQUEUE_BROKER_URL``) is used
                and is not a URL of that role.
        """
        url = self.result_backend or _from_env(BACKEND_ENV, BACKEND_SCHEMES)
        if url:
            return url
        broker = self.resolved_broker_url()
        if broker.split("://", 1)[0].lower() in BACKEND_SCHEMES:
            return broker
        return None

    def connection_options(self, url: str) -> ConnectionOptions:
        """How the app's client for the server at ``url`` connects: the broker's settings where
        ``url`` is the broker's, the result backend's where it is the backend's, both where one
        server is both (the shorter connect timeout, the larger pool).

        The connect timeout is ``broker_connection_timeout`` for the broker and
        ``redis_socket_connect_timeout`` (else ``broker_connection_timeout``) for the result
        backend; the pool is ``broker_pool_limit`` / ``redis_max_connections``. Every Redis
        connection reads ``redis_socket_timeout`` and ``redis_retry_on_timeout``. TLS is
        ``broker_use_ssl`` for the broker and ``redis_backend_use_ssl`` for a Redis result
        backend (:meth:`tls_options`). A Redis Sentinel URL's ``master_name`` and
        ``sentinel_kwargs`` come from ``broker_transport_options`` when it is the broker's,
        else from ``result_backend_transport_options`` (as Celery reads them).

        Raises:
            ConfigurationError: the TLS settings do not fit the server (see
                :meth:`tls_options`).
        """
        is_broker = url == self.resolved_broker_url()
        is_backend = not is_broker or url == self.resolved_backend_url()  # or control, beat
        timeouts: list[float] = []
        pools: list[int | None] = []
        if is_broker:
            timeouts.append(self.broker_connection_timeout)
            pools.append(self.broker_pool_limit)
        if is_backend:
            timeouts.append(self.redis_socket_connect_timeout or self.broker_connection_timeout)
            pools.append(self.redis_max_connections)
        sizes = [size for size in pools if size is not None]
        return ConnectionOptions(
            connect_timeout=min(timeouts),
            socket_timeout=self.redis_socket_timeout,
            retry_on_timeout=self.redis_retry_on_timeout,
            max_connections=max(sizes) if sizes else DEFAULT_POOL,
            tls=self.tls_options(url, is_broker=is_broker, is_backend=is_backend),
            sentinel=self._sentinel_options(url, is_broker),
            max_deliveries=self.task_max_deliveries,
        )

    def _sentinel_options(self, url: str, is_broker: bool) -> dict[str, Any] | None:
        """The Sentinel options of the server at ``url`` (``None``: not a Sentinel URL)."""
        if _scheme(url) not in SENTINEL_SCHEMES:
            return None
        options = (
            self.broker_transport_options if is_broker else self.result_backend_transport_options
        )
        return {k: options[k] for k in SENTINEL_OPTIONS if k in options}

    def tls_options(self, url: str, *, is_broker: bool, is_backend: bool) -> TLSOptions | None:
        """TLS for the Redis or RabbitMQ server at ``url`` from Celery's settings, or ``None``
        (none set, or a server with no network: memory, SQLite).

        Args:
            url: the server's URL.
            is_broker: it is the broker: ``broker_use_ssl`` applies (Redis or RabbitMQ keys,
                as the server is).
            is_backend: it is the result backend (or control's, beat's): on Redis,
                ``redis_backend_use_ssl`` applies.

        Raises:
            ConfigurationError: a setting has the other kind of server's keys (``ca_certs``
                for Redis, ``ssl_ca_certs`` for RabbitMQ), or one Redis server is both broker
                and result backend - one connection pool - and the two settings differ.
        """
        key_set = {"redis": REDIS_KEYS, "amqp": AMQP_KEYS}.get(SCHEMES.get(_scheme(url), ""))
        if key_set is None:
            return None
        found: dict[str, TLSOptions] = {}
        wanted = [("broker_use_ssl", self.broker_use_ssl, True)] if is_broker else []
        if is_backend and key_set is REDIS_KEYS:
            wanted.append(("redis_backend_use_ssl", self.redis_backend_use_ssl, False))
        for name, value, allow_true in wanted:
            try:
                options = from_setting(name, value, (key_set,), allow_true=allow_true)
            except ConfigurationError as exc:
                raise ConfigurationError(f"{exc} (the server is {redacted_url(url)})") from None
            if options is not None:
                found[name] = options
        if len(set(found.values())) > 1:
            raise ConfigurationError(
                f"{redacted_url(url)} is both the broker and the result backend, over one "
                f"connection pool, but broker_use_ssl and redis_backend_use_ssl differ: set "
                f"one of them, or both alike"
            )
        return next(iter(found.values()), None)


#: The dict settings that ``None`` sets to ``{}``.
_EMPTY_WHEN_NONE = frozenset(
    {"beat_schedule", "broker_transport_options", "result_backend_transport_options"}
)
#: The environment URLs checked already, as (variable, value): read on every send, checked once.
_ENV_CHECKED: set[tuple[str, str]] = set()


def _from_env(variable: str, schemes: tuple[str, ...]) -> str | None:
    """``$variable`` when set and not empty, else ``None``.

    Raises:
        ConfigurationError: it is not a URL with one of ``schemes``; the message names the
            variable (a setting, which would override it, names itself).
    """
    value = os.environ.get(variable)
    if not value:
        return None
    if (variable, value) not in _ENV_CHECKED:
        _url(schemes)(f"${variable}", value)
        _ENV_CHECKED.add((variable, value))
    return value


def _setting_names() -> tuple[str, ...]:
    """The settings' names in declaration order (the dataclass fields that are settings)."""
    global _NAMES
    if _NAMES is None:
        _NAMES = tuple(f.name for f in dataclasses.fields(Settings) if f.name in _CHECKS)
    return _NAMES


_NAMES: tuple[str, ...] | None = None


def _unknown(name: object) -> str:
    """What to say of a name that is not an aqueue setting: the name to use for one of Celery
    3's, the answer for a Celery setting aqueue does not have, else the closest aqueue name
    (never a spelling guess for a Celery name)."""
    text = str(name)
    renamed = CELERY_3_NAMES.get(text)
    if renamed is not None:
        if renamed in _CHECKS:
            return f"setting {text} is Celery 3's name: call it {renamed!r} instead"
        answer = CELERY_ONLY.get(renamed)
        told = f"setting {text} is Celery 3's name for {renamed!r}, which aqueue does not have"
        return told if answer is None else f"{told}: {answer}"
    answer = CELERY_ONLY.get(text)
    if answer is not None:
        return f"{text!r} is a Celery setting that aqueue does not have: {answer}"
    close = difflib.get_close_matches(text, _CHECKS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "; see the README for the list"
    return f"unknown setting {text!r}{hint}"


def _import_config(path: str) -> object:
    """Import the module ``path`` of ``config_from_object``.

    Raises:
        ConfigurationError: it (or a package above it) is not found, or it was found and its
            own code raised (a missing dependency, a ``NameError``...): the message says which,
            and the error raised is its ``__cause__`` (its traceback is the user's).
    """
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as exc:
        if is_missing(exc, path):
            raise ConfigurationError(
                f"config_from_object({path!r}): cannot import it ({exc}); "
                f"give a module path importable from the working directory"
            ) from exc
        raise _config_failed(path, exc) from exc
    except Exception as exc:  # whatever the module's own code raised while it was imported
        raise _config_failed(path, exc) from exc


def _config_failed(path: str, exc: Exception) -> ConfigurationError:
    return ConfigurationError(
        f"config_from_object({path!r}): the module was found but its import failed: "
        f"{type(exc).__name__}: {exc}"
    )


def caller_directory() -> str | None:
    """The directory of the file of the nearest caller outside the aqueue package: the module
    that made the app (``Aqueue(...)`` at its top level, a subclass's ``__init__``, a
    factory function). ``None`` when that code has no file (a REPL, ``python -c``, a notebook).
    """
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module != "aqueue" and not module.startswith("aqueue."):
            path = frame.f_globals.get("__file__")
            return os.path.dirname(os.path.abspath(path)) if isinstance(path, str) else None
        frame = frame.f_back
    return None
