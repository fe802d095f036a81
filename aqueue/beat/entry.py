"""A periodic entry: which task beat sends, with what, on which schedule.

Entries come from the ``beat_schedule`` setting (and ``app.add_periodic_task``), as in Celery::

    beat_schedule = {
        "every-30s": {"task": "proj.add", "schedule": timedelta(seconds=30), "args": (16, 16)},
    }

or are stored at runtime in the result backend (``await app.beat.add(...)``, see
:mod:`aqueue.beat.control`); a stored entry replaces a ``beat_schedule`` entry of the same name
until it is removed.

Keys of an entry: ``task`` (a registered name; required), ``schedule`` (required: a
``timedelta``, a number of seconds or a ``crontab``), ``args``, ``kwargs``, ``options``
(``apply_async`` options: ``queue``, ``priority``, ``expires``, ``headers``...; ``task_id`` and
``eta`` are beat's own) and ``catch_up``, aqueue's own: what to do with ticks missed while no
beat was running - ``"once"`` (default: send the latest missed tick once), ``"all"`` (send every
missed tick, oldest first) or ``"none"`` (drop them; only a tick found within
:data:`ON_TIME` seconds of its time is sent).
"""

from __future__ import annotations

import difflib
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Unpack

import orjson

from aqueue.beat.schedules import Schedule, schedule_from_dict, to_schedule
from aqueue.canvas.primitives import Signature
from aqueue.exceptions import ConfigurationError
from aqueue.sending.options import SEND_OPTIONS, SendOptions

if TYPE_CHECKING:
    from aqueue.app import Aqueue

__all__ = [
    "CATCH_UP",
    "ON_TIME",
    "Entry",
    "add_periodic_task",
    "parse_entry",
    "static_entries",
    "tick_task_id",
]

CATCH_UP = ("once", "all", "none")

#: With ``catch_up="none"``, a tick first seen more than this many seconds after its time is
#: dropped as missed. Beats look at least once a second, so an on-time tick is never this late.
ON_TIME = 5.0

_KEYS = ("task", "schedule", "args", "kwargs", "options", "catch_up")

# The key a signed stored entry carries its signature under (aqueue.signing).
_SIGNATURE_KEY = "hmac"

# Options beat sets itself on every message it sends.
_OWN_OPTIONS = frozenset({"task_id", "eta"})

# Every beat process derives the same task id from (entry, tick): a tick sent twice (see the
# scheduler's failure modes) is then one task id, which results and dedup can rely on.
_TASK_ID_NAMESPACE = uuid.UUID("9b3f6c1e-5a7d-4c2b-9e0f-8d1a2b3c4d5e")


@dataclass(frozen=True, slots=True)
class Entry:
    """One periodic entry, checked.

    Attributes:
        name: the entry's name (the key in ``beat_schedule``).
        task: the registered task name to send.
        schedule: when (a :class:`~aqueue.beat.schedules.Schedule`).
        args, kwargs: the call's arguments.
        options: ``apply_async`` options; a number ``expires`` counts from the tick.
        catch_up: ``"once"``, ``"all"`` or ``"none"`` (see the module docstring).
        dynamic: stored at runtime (``app.beat.add``) rather than in ``beat_schedule``.
        since: for a stored entry, when it was last added or changed (epoch seconds): ticks
            before it are never sent.
        last_run: the last tick sent (epoch seconds), as listed by ``app.beat.list()``.
    """

    name: str
    task: str
    schedule: Schedule
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    catch_up: str = "once"
    dynamic: bool = False
    since: float | None = None
    last_run: float | None = None

    def expires_at(self, tick: float) -> float | None:
        """When a message sent for ``tick`` expires (epoch seconds), or ``None``."""
        expires = self.options.get("expires")
        if expires is None:
            return None
        if isinstance(expires, int | float):
            return tick + float(expires)
        return float(expires.timestamp())

    def encode(self) -> bytes:
        """The JSON form kept in the beat store (dynamic entries).

        Raises:
            ConfigurationError: args, kwargs or options are not JSON-serialisable.
        """
        expires = self.options.get("expires")
        if expires is not None and not isinstance(expires, int | float):
            raise ConfigurationError(
                f"beat entry {self.name!r}: a stored entry's 'expires' option must be a number "
                f"of seconds (counted from each tick), not {expires!r}"
            )
        data = {
            "task": self.task,
            "schedule": self.schedule.to_dict(),
            "args": list(self.args),
            "kwargs": self.kwargs,
            "options": self.options,
            "catch_up": self.catch_up,
            "since": self.since,
        }
        try:
            return orjson.dumps(data)
        except TypeError as exc:
            raise ConfigurationError(
                f"beat entry {self.name!r}: a stored entry's args, kwargs and options must be "
                f"JSON-serialisable ({exc})"
            ) from exc


def decode_entry(app: Aqueue, name: str, data: bytes) -> Entry:
    """Read back an entry stored by :meth:`Entry.encode` (signed by ``app.beat.add`` when
    ``task_signing_key`` is set, and then verified), checked as :func:`parse_entry` checks a
    ``beat_schedule`` entry: a stored entry is not always what ``app.beat.add`` wrote.

    Raises:
        ConfigurationError: ``data`` is not a stored entry (not JSON, an unknown key, a value
            of the wrong type); the message names the entry and the key.
        SecurityError: with signing, the entry is unsigned or its signature is bad.
    """
    signing = app.conf.signing
    if signing is not None:
        signing.beat.verify(data)
    where = f"stored beat entry {name!r}"
    try:
        spec = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ConfigurationError(f"{where} is unreadable: not JSON ({exc})") from None
    if not isinstance(spec, dict):
        raise ConfigurationError(f"{where} is unreadable: not a JSON object")
    spec.pop(_SIGNATURE_KEY, None)
    since = spec.pop("since", None)
    if since is not None and (
        isinstance(since, bool) or not isinstance(since, int | float) or not math.isfinite(since)
    ):
        raise ConfigurationError(f"{where}: 'since' must be epoch seconds, not {since!r}")
    try:
        spec["schedule"] = schedule_from_dict(spec.get("schedule"))
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    try:
        entry = parse_entry(app, name, spec, dynamic=True, what="stored beat entry")
    except (TypeError, ValueError) as exc:  # an option of the wrong type, met building a message
        raise ConfigurationError(f"{where}: {exc}") from None
    expires = entry.options.get("expires")
    if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int | float)):
        raise ConfigurationError(f"{where}: 'expires' must be a number of seconds")
    return replace(entry, since=since)


def parse_entry(
    app: Aqueue,
    name: str,
    spec: Mapping[str, Any],
    *,
    dynamic: bool = False,
    what: str = "beat_schedule entry",
) -> Entry:
    """Check a ``beat_schedule`` entry (or, ``what`` says, another kind) and build its
    :class:`Entry`.

    Raises:
        ConfigurationError: a key is unknown or missing, or a value is invalid; the message
            names the entry and the key.
    """
    where = f"{what} {name!r}"
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"a beat entry's name must be a non-empty string, not {name!r}")
    if not isinstance(spec, Mapping):
        raise ConfigurationError(f"{where} must be a dict, not {type(spec).__name__}")
    for key in spec:
        if key not in _KEYS:
            close = difflib.get_close_matches(str(key), _KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; use {', '.join(_KEYS)}"
            raise ConfigurationError(f"{where}: unknown key {key!r}{hint}")
    task = spec.get("task")
    if not isinstance(task, str) or not task:
        raise ConfigurationError(f"{where}: 'task' must be a registered task name, not {task!r}")
    if "schedule" not in spec:
        raise ConfigurationError(f"{where}: 'schedule' is required (timedelta, seconds, crontab)")
    try:
        schedule = to_schedule(spec["schedule"])
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    args = spec.get("args") or ()
    kwargs = spec.get("kwargs") or {}
    if isinstance(args, str | bytes) or not isinstance(args, list | tuple):
        raise ConfigurationError(f"{where}: 'args' must be a list or tuple, not {args!r}")
    if not isinstance(kwargs, Mapping):
        raise ConfigurationError(f"{where}: 'kwargs' must be a dict, not {kwargs!r}")
    options = _options(app, where, task, tuple(args), dict(kwargs), spec.get("options") or {})
    catch_up = spec.get("catch_up", "once")
    if catch_up not in CATCH_UP:
        raise ConfigurationError(
            f"{where}: 'catch_up' must be one of {', '.join(CATCH_UP)}, not {catch_up!r}"
        )
    return Entry(name, task, schedule, tuple(args), dict(kwargs), options, catch_up, dynamic)


def static_entries(app: Aqueue) -> dict[str, Entry]:
    """The entries of ``app.conf.beat_schedule``, checked.

    Raises:
        ConfigurationError: an entry is invalid.
    """
    return {name: parse_entry(app, name, spec) for name, spec in app.conf.beat_schedule.items()}


def _options(
    app: Aqueue,
    where: str,
    task: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: Any,
) -> dict[str, Any]:

    if not isinstance(options, Mapping):
        raise ConfigurationError(f"{where}: 'options' must be a dict, not {options!r}")
    allowed = SEND_OPTIONS - _OWN_OPTIONS
    for key in options:
        if key in _OWN_OPTIONS:
            raise ConfigurationError(f"{where}: option {key!r} is set by beat for each tick")
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigurationError(f"{where}: unknown option {key!r}{hint}")
    out = dict(options)
    if isinstance(out.get("expires"), timedelta):
        out["expires"] = out["expires"].total_seconds()
    # The same checks send_task makes (priority range, expires type...), now rather than at 3 am.
    try:
        app.sender.build_message(task, args, kwargs, app.tasks.get(task), out)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    return out


def tick_task_id(entry: str, tick: float) -> str:
    """The task id of ``entry``'s message for ``tick`` (epoch seconds): a uuid5, the same in
    every process."""
    return str(uuid.uuid5(_TASK_ID_NAMESPACE, f"{entry}\x00{tick_ms(tick)}"))


def tick_ms(tick: float) -> int:
    """A tick as whole milliseconds: how stores and task ids name it."""
    return round(tick * 1000)


def add_periodic_task(
    app: Aqueue,
    schedule: Any,
    sig: Signature,
    *,
    name: str | None = None,
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    **options: Unpack[SendOptions],
) -> str:
    """Add ``sig`` to ``beat_schedule``, sent every ``schedule`` (Celery's method).

    Args:
        app: the app whose ``beat_schedule`` gets the entry (``app.add_periodic_task`` binds it).
        schedule: a ``timedelta``, a number of seconds or a ``crontab``.
        sig: the task call, e.g. ``add.s(1, 1)``.
        name: the entry's name (default ``repr(sig)``, as in Celery).
        args, kwargs: prepended to / merged into the signature's own.
        **options: ``apply_async`` options, merged over the signature's.

    Returns:
        The entry's name.

    Raises:
        ConfigurationError: the entry is invalid.
    """
    if not isinstance(sig, Signature):
        raise ConfigurationError(
            f"add_periodic_task takes a signature (task.s(...)), not {type(sig).__name__}"
        )
    key = name or repr(sig)
    full = sig.clone(tuple(args), kwargs)  # as Celery: args are prepended unless immutable
    spec: dict[str, Any] = {
        "task": full.task,
        "schedule": schedule,
        "args": full.args,
        "kwargs": full.kwargs,
        "options": {**full.options, **options},
    }
    parse_entry(app, key, spec)
    app.conf.beat_schedule[key] = spec
    return key
