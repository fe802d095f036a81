"""The options of sending a task and of declaring one, as typed declarations.

:class:`SendOptions` is what ``apply_async``, ``send_task``, ``delay_many`` and signatures take
(Celery's ``apply_async`` options); :class:`TaskOptions` is what ``@app.task(...)`` and
``task_annotations`` take. Both are ``TypedDict`` s used with ``typing.Unpack``, so a type
checker rejects ``apply_async(countdwn=1)`` and ``@app.task(max_retries="3")``; the runtime
check (:func:`check_send_options`, :func:`check_task_options`) reads the same declarations, so
the two cannot drift apart.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypedDict

from aqueue.exceptions import ConfigurationError

if TYPE_CHECKING:
    from aqueue.canvas.primitives import Signature

__all__ = [
    "SEND_OPTIONS",
    "TASK_OPTIONS",
    "AnyRetryPolicy",
    "RetryPolicy",
    "SendOptions",
    "TaskOptions",
    "check_option_values",
    "check_send_options",
    "check_task_options",
    "epoch_value",
    "headers_value",
    "priority_value",
    "seconds_value",
    "text_value",
    "time_limit_value",
]


class RetryPolicy(TypedDict, total=False):
    """How publishing retries on a connection error (Celery's ``retry_policy``), in seconds.

    The n-th retry (from 0) waits ``min(interval_start + n * interval_step, interval_max)``.
    """

    max_retries: int
    interval_start: float
    interval_step: float
    interval_max: float


#: A retry policy as the publishing functions take it: keys given override the defaults
#: (``None``: the defaults).
AnyRetryPolicy = RetryPolicy | Mapping[str, Any] | None


class SendOptions(TypedDict, total=False):
    """Celery's ``apply_async`` options. Durations are seconds.

    Attributes:
        countdown: run no earlier than this many seconds from now.
        eta: run no earlier than this time (a naive datetime is UTC; a number is epoch seconds).
        expires: seconds from now, or a datetime, after which the message is not run (its state
            becomes REVOKED).
        task_id: the id to use instead of a new one.
        queue: the queue to send to (default: routes, the task's own, ``task_default_queue``).
        priority: 0..9, 9 runs first.
        headers: extra message headers, read by the task as ``self.request.headers``.
        link, link_error: signatures (or lists of them) called with the result / on failure.
        serializer: ``"json"``, ``"msgpack"`` or ``"pickle"``.
        compression: ``"zlib"`` or ``None``.
        shadow: another name for the task in logs.
        ignore_result: store no result.
        time_limit: seconds the run may take.
        retry: retry publishing on a connection error (default True).
        retry_policy: how to retry publishing (:class:`RetryPolicy`).
        exchange, routing_key: AMQP routing (see docs/amqp.md).
        parent_id, root_id, group_id: workflow links (set by canvas; rarely by hand).
        options: extra message options carried to the worker as is.
        unique_key: make this call unique under this key (for its task's name): while a call
            with the same key is queued (or running, per the task's ``unique``), the send
            returns that call's handle and sends nothing (docs/tasks.md, "Unique tasks").
        after: results (or task ids) this call waits for: it is held until all of them
            succeed, and fails with :class:`~aqueue.exceptions.DependencyFailed` if one does
            not; a bound task reads their results as ``self.request.dependencies``.
    """

    countdown: float
    eta: datetime | float
    expires: float | datetime
    task_id: str
    queue: str
    priority: int
    headers: dict[str, Any]
    link: Signature | dict[str, Any] | list[Any] | tuple[Any, ...] | None
    link_error: Signature | dict[str, Any] | list[Any] | tuple[Any, ...] | None
    serializer: str
    compression: str | None
    shadow: str
    ignore_result: bool
    time_limit: float | None
    retry: bool
    retry_policy: RetryPolicy
    exchange: str
    routing_key: str
    parent_id: str | None
    root_id: str | None
    group_id: str | None
    options: dict[str, Any]
    unique_key: str
    after: list[Any] | tuple[Any, ...]


class TaskOptions(TypedDict, total=False):
    """The options of ``@app.task(...)``, as in Celery; durations are seconds.

    Attributes:
        max_retries: retries allowed before ``self.retry`` gives up (``None``: no limit).
        default_retry_delay: seconds before a retry without ``countdown``.
        retry_backoff: with ``autoretry_for``: ``True`` or a base in seconds for exponential
            backoff.
        retry_backoff_max: the longest backoff, seconds.
        retry_jitter: randomise each backoff in ``[0, delay]``.
        autoretry_for: exception types that retry the task automatically.
        retry_kwargs: options of automatic retries, e.g. ``{"max_retries": 5}``.
        time_limit: seconds a run may take before ``TimeLimitExceeded``.
        soft_time_limit: seconds after which ``SoftTimeLimitExceeded`` is raised inside an
            ``async def`` task, which may clean up before ``time_limit``.
        reject_on_worker_lost: False: a run whose worker died is a ``WorkerLostError``
            failure instead of being run again (default ``task_reject_on_worker_lost``).
        rate_limit: e.g. ``"10/m"``.
        queue, priority: where and how urgently it is sent by default.
        ignore_result: store no result.
        acks_late: ack after the outcome is stored (default ``task_acks_late``).
        serializer, compression: how its arguments are encoded by default.
        track_started: store a STARTED state when a run starts.
        expires: default ``expires`` of its messages (seconds or a datetime).
        typing: check each call's arguments against the function's signature before sending
            (default True, as Celery's ``typing``): ``delay("a")`` of a two-parameter task
            raises :class:`~aqueue.exceptions.ArgumentsError`, a ``TypeError``, and sends
            nothing. ``False`` sends any arguments (the worker refuses a call that does not fit).
        unique: one call per key at a time: ``True`` or ``"running"`` (locked from the send
            until the run ends), ``"queued"`` (until the run starts); a second send meanwhile
            returns the first call's handle (docs/tasks.md, "Unique tasks").
        unique_key: ``fn(*args, **kwargs) -> str``, the key of a call (default: its arguments).
        unique_ttl: the longest a unique call stays locked while queued, in seconds (default
            its ``expires``, else 3600); while running the lock follows the message's lease.
        batch_size, batch_timeout: the worker hands up to ``batch_size`` queued calls to one
            invocation, as a list of :class:`~aqueue.task.Request`, waiting at most
            ``batch_timeout`` seconds for a batch to fill (docs/tasks.md "Batching").
        soft_deadline: seconds a run may take before it is reported as slow, not stopped
            (default ``task_soft_deadline``; docs/tasks.md "Slow and stuck tasks").
        stream_max_items: the most items an async-generator task may yield (default 10,000).
    """

    max_retries: int | None
    default_retry_delay: float
    retry_backoff: bool | float
    retry_backoff_max: float
    retry_jitter: bool
    autoretry_for: tuple[type[BaseException], ...] | list[type[BaseException]]
    retry_kwargs: dict[str, Any]
    time_limit: float | None
    soft_time_limit: float | None
    reject_on_worker_lost: bool | None
    rate_limit: str | None
    queue: str | None
    priority: int | None
    ignore_result: bool
    acks_late: bool | None
    serializer: str | None
    compression: str | None
    track_started: bool
    expires: float | datetime | None
    typing: bool
    unique: bool | str
    unique_key: Callable[..., str] | None
    unique_ttl: float | None
    # Worker features (docs/tasks.md: batching, slow tasks, result streaming):
    batch_size: int | None
    batch_timeout: float
    soft_deadline: float | None
    stream_max_items: int


#: The names :class:`SendOptions` declares.
SEND_OPTIONS: frozenset[str] = frozenset(SendOptions.__annotations__)
#: The names :class:`TaskOptions` declares, in declaration order.
TASK_OPTIONS: tuple[str, ...] = tuple(TaskOptions.__annotations__)


def _check(options: Mapping[str, Any], known: frozenset[str] | tuple[str, ...], what: str) -> None:
    unknown = set(options).difference(known)
    if unknown:
        bad = sorted(unknown)[0]
        close = difflib.get_close_matches(bad, list(known), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigurationError(f"unknown {what} option {bad!r}{hint}")


def check_send_options(options: Mapping[str, Any]) -> None:
    """Check that every key of ``options`` is a :class:`SendOptions` name.

    Raises:
        ConfigurationError: an unknown option, with the closest valid name.
    """
    _check(options, SEND_OPTIONS, "apply_async")


def check_task_options(options: Mapping[str, Any]) -> None:
    """Check that every key of ``options`` is a :class:`TaskOptions` name.

    Raises:
        ConfigurationError: an unknown option, with the closest valid name.
    """
    _check(options, TASK_OPTIONS, "task")


def check_option_values(options: Mapping[str, Any]) -> None:
    """Check the values :meth:`Sender.build_message` converts (``priority``, ``eta``,
    ``countdown``, ``expires``, ``headers``) with its own converters, building nothing: for
    the parts of a workflow that a worker sends later (:mod:`aqueue.canvas.dispatch`).

    Raises:
        ConfigurationError: a value no message can be built with.
    """
    if options.get("priority") is not None:
        priority_value(options["priority"])
    epoch_value(options.get("eta"), "eta")
    if options.get("countdown") is not None:
        seconds_value(options["countdown"], "countdown")
    expires = options.get("expires")
    if isinstance(expires, int | float):
        seconds_value(expires, "expires")
    else:
        epoch_value(expires, "expires")
    headers_value(options.get("headers"))
    time_limit_value(options.get("time_limit"))
    for option in ("task_id", "parent_id", "root_id", "group_id"):
        text_value(options.get(option), option)
    if options.get("queue") is not None:
        text_value(options["queue"], "queue")
    extra = options.get("options")
    if extra is not None and not isinstance(extra, Mapping):
        raise ConfigurationError(f"options must be a dict, not {extra!r}")


def priority_value(value: Any) -> int:
    """A ``priority`` option: a whole number 0..9.

    Raises:
        ConfigurationError: anything else.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 9:
        raise ConfigurationError(f"priority must be a whole number 0..9, not {value!r}")
    return value


def seconds_value(value: Any, option: str) -> float:
    """``option`` (``countdown``, ``expires``) as a finite number of seconds.

    Raises:
        ConfigurationError: not a number, or not finite (``nan`` would reach the wire as
            ``null``: a countdown of ``nan`` would run the task at once).
    """
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{option} must be a number of seconds, not {value!r}") from None
    if not math.isfinite(seconds):
        raise ConfigurationError(f"{option} must be a finite number of seconds, not {value!r}")
    return seconds


def time_limit_value(value: Any) -> float | None:
    """A ``time_limit`` option: seconds > 0, finite, or ``None`` (the task's own).

    Raises:
        ConfigurationError: anything else (a worker would drop the message as malformed).
    """
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value < math.inf  # False for nan
    ):
        raise ConfigurationError(
            f"time_limit must be a finite number of seconds > 0 or None, not {value!r}"
        )
    return value


def text_value(value: Any, option: str) -> Any:
    """``value`` of ``option`` (``task_id``, ``parent_id``, ``root_id``, ``group_id``,
    ``queue``) when it is ``None`` or a string (non-empty for ``queue``).

    Raises:
        ConfigurationError: anything else (a worker would drop the message as malformed, or it
            would go to a queue nobody reads).
    """
    if value is None or (type(value) is str and (value or option != "queue")):
        return value
    what = "a non-empty string" if option == "queue" else "a string"
    raise ConfigurationError(f"{option} must be {what}, not {value!r}")


def headers_value(value: Any) -> dict[str, Any]:
    """A ``headers`` option as a new dict (``None``: empty).

    Raises:
        ConfigurationError: not a mapping.
    """
    try:
        return dict(value or {})
    except (TypeError, ValueError):
        raise ConfigurationError(f"headers must be a dict, not {value!r}") from None


def epoch_value(value: Any, option: str) -> float | None:
    """``option`` (``eta``, ``expires``) as epoch seconds: a datetime (naive: UTC) or a
    number; ``None`` stays ``None``.

    Raises:
        ConfigurationError: anything else.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return float(value.timestamp())
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):  # on the wire it would be null: no eta, no expiry
            raise ConfigurationError(f"{option} must be a finite number, not {value!r}")
        return float(value)
    raise ConfigurationError(f"{option} must be a datetime, not {type(value).__name__}")
