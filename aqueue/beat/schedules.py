"""Schedules: when a periodic entry is due - fixed intervals, and ``crontab`` with Celery's fields.

A schedule is a fixed set of *ticks*: instants, in seconds since the Unix epoch. Every beat
process derives the same ticks from the same entry, on any host, which is what lets several
beats agree on which tick they are claiming (see :mod:`aqueue.beat.scheduler`).

- :class:`Interval` (a ``timedelta`` or a number of seconds in ``beat_schedule``): ticks at
  whole multiples of the period since the epoch, ``1970-01-01T00:00:00Z``. ``timedelta(seconds=30)``
  ticks at :00 and :30 of every minute, ``timedelta(hours=1)`` on every UTC hour. Elapsed time has
  no time zone, so daylight saving does not move them. Celery counts an interval from the last
  run instead; a count from a shared origin is what lets beats on several hosts agree.
- :class:`crontab`: Celery's fields, read as wall-clock times in the app's ``timezone`` and
  evaluated with croniter. As in Celery, ``day_of_month`` *and* ``day_of_week`` must both match
  (Unix cron runs when either matches).

Daylight saving (the rule, for ``crontab`` only):

- A wall time that does not exist (spring forward, e.g. 02:30 on the night clocks jump from
  02:00 to 03:00) runs once, at the first instant after the gap (03:00 in the new offset).
  Several such times of one entry are one tick, which is also the 03:00 tick if it has one.
- A wall time that happens twice (fall back, e.g. 01:30 when clocks go from 02:00 back to
  01:00) runs once, at its first occurrence - unless the ``hour`` field is ``*``: an hourly or
  more frequent schedule keeps its rhythm in elapsed time and runs in both occurrences.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Iterable, Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Protocol, TypeAlias, runtime_checkable

from aqueue.exceptions import ConfigurationError

__all__ = ["Interval", "Schedule", "crontab", "schedule_from_dict", "to_schedule"]

#: What a crontab field accepts: ``5``, ``"*/15"``, ``"mon-fri"``, ``{0, 30}``, ``range(9, 18)``.
Field: TypeAlias = int | str | Iterable[int]

# The largest change of UTC offset a zone makes at once (DST is 1 h, a few zones 2 h). Around a
# change, wall times this far from an instant may map to either side of it.
_SLACK = timedelta(hours=3)
_DAY = timedelta(days=1)


def _croniter() -> Any:
    """The croniter module, imported on first use: ``import aqueue`` need not pay for it."""
    import croniter

    return croniter


@runtime_checkable
class Schedule(Protocol):
    """A fixed set of ticks (epoch seconds). ``tz`` is the app's ``timezone``."""

    def next_tick(self, after: float, tz: tzinfo) -> float:
        """The first tick strictly after ``after``.

        Raises:
            ConfigurationError: the schedule has no tick after ``after`` (an impossible date).
        """
        ...

    def prev_tick(self, at: float, tz: tzinfo) -> float | None:
        """The last tick at or before ``at``, or ``None`` if there is none."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe form, read back by :func:`schedule_from_dict`."""
        ...


class _SameWhenEqual:
    """Schedules of one type are equal (and hash alike) when they fire at the same times."""

    __slots__ = ()

    def _identity(self) -> Hashable:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        # An interval's identity is an int and a crontab's a tuple: never equal to each other.
        return isinstance(other, _SameWhenEqual) and other._identity() == self._identity()

    def __hash__(self) -> int:
        return hash(self._identity())


class Interval(_SameWhenEqual):
    """Every ``seconds`` seconds, at whole multiples of the period since the epoch (UTC).

    Ticks are kept in whole milliseconds, so every process computes exactly the same ones.

    Raises:
        ConfigurationError: ``seconds`` is not a number of at least 0.001.
    """

    __slots__ = ("_ms", "seconds")

    def __init__(self, seconds: float | timedelta) -> None:
        if isinstance(seconds, timedelta):
            seconds = seconds.total_seconds()
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ConfigurationError(f"an interval is a number of seconds, not {seconds!r}")
        if not math.isfinite(seconds) or round(seconds * 1000) < 1:
            raise ConfigurationError(f"an interval must be at least 0.001 s, not {seconds!r}")
        self._ms = round(seconds * 1000)
        self.seconds = self._ms / 1000

    def __repr__(self) -> str:
        return f"<every {self.seconds:g}s>"

    def _identity(self) -> Hashable:
        return self._ms

    def next_tick(self, after: float, tz: tzinfo) -> float:
        """The first multiple of the period after ``after``; ``tz`` plays no part."""
        return (math.floor(after * 1000) // self._ms + 1) * self._ms / 1000

    def prev_tick(self, at: float, tz: tzinfo) -> float | None:
        """The last multiple of the period at or before ``at``."""
        return math.floor(at * 1000) // self._ms * self._ms / 1000

    def to_dict(self) -> dict[str, Any]:
        """``{"every": seconds}``."""
        return {"every": self.seconds}


class crontab(_SameWhenEqual):  # lower case: Celery's name, which users type
    """A cron-like schedule with Celery's fields and syntax, in the app's ``timezone``.

    Each field takes a number, a cron field string (``"*"``, ``"*/15"``, ``"0-5"``, ``"1,15"``,
    ``"mon-fri"``; day and month names, abbreviated or full), or a collection of numbers
    (``{0, 30}``, ``range(9, 18)``). ``day_of_week`` counts from Sunday = 0 (7 is Sunday too).
    ``crontab(hour=7, minute=30, day_of_week=1)`` is every Monday at 07:30.

    Note Celery's defaults: every field is ``"*"``, so ``crontab()`` runs every minute and
    ``crontab(hour=7)`` every minute from 07:00 to 07:59. Both ``day_of_month`` and
    ``day_of_week`` must match, as in Celery. For daylight saving, see the module docstring.

    Raises:
        ConfigurationError: a field is out of range or not cron syntax (the message names it),
            or the fields together never match (``day_of_month=30, month_of_year=2``).
    """

    __slots__ = (
        "_every_hour",
        "_expanded",
        "_expr",
        "day_of_month",
        "day_of_week",
        "hour",
        "minute",
        "month_of_year",
    )

    def __init__(
        self,
        minute: Field = "*",
        hour: Field = "*",
        day_of_week: Field = "*",
        day_of_month: Field = "*",
        month_of_year: Field = "*",
    ) -> None:
        self.minute = _field("minute", minute, 0)
        self.hour = _field("hour", hour, 1)
        self.day_of_month = _field("day_of_month", day_of_month, 2)
        self.month_of_year = _field("month_of_year", month_of_year, 3)
        self.day_of_week = _field("day_of_week", day_of_week, 4)
        fields = (self.minute, self.hour, self.day_of_month, self.month_of_year, self.day_of_week)
        self._expr = " ".join(fields)
        cron = _croniter()
        try:
            probe = cron.croniter(self._expr, datetime(2000, 1, 1), day_or=False)
            probe.get_next(datetime)
        except cron.CroniterBadDateError:
            raise ConfigurationError(f"{self!r} never matches a date") from None
        # The fields as croniter expands them: equal for equal schedules however they are spelled.
        self._expanded = tuple(tuple(map(str, values)) for values in probe.expanded)
        self._every_hour = self._expanded[1] == ("*",)

    @classmethod
    def from_string(cls, expr: str) -> crontab:
        """Parse a Unix cron line, ``"minute hour day_of_month month_of_year day_of_week"``.

        ``crontab.from_string("*/5 * * * *")`` is every five minutes.

        Raises:
            ConfigurationError: not five fields, or a field is invalid.
        """
        parts = expr.split() if isinstance(expr, str) else []
        if len(parts) != 5:
            raise ConfigurationError(
                f"crontab.from_string({expr!r}): expected five fields "
                f"'minute hour day_of_month month_of_year day_of_week', e.g. '*/5 * * * *'"
            )
        minute, hour, dom, month, dow = parts
        return cls(minute, hour, dow, dom, month)

    @property
    def expression(self) -> str:
        """The Unix cron line, ``"minute hour day_of_month month_of_year day_of_week"``."""
        return self._expr

    def __repr__(self) -> str:
        return f"<crontab: {self._expr} (m h dom mon dow)>"

    def _identity(self) -> Hashable:
        return self._expanded

    def to_dict(self) -> dict[str, Any]:
        """``{"cron": "m h dom mon dow"}``."""
        return {"cron": self._expr}

    def next_tick(self, after: float, tz: tzinfo) -> float:
        """The first matching instant strictly after ``after``, by the DST rule above.

        Raises:
            ConfigurationError: no match within croniter's search horizon (50 years).
        """
        t = datetime.fromtimestamp(after, UTC)
        best: float | None = None
        stop: datetime | None = None
        for wall in self._walls(_wall(t, tz) - _slack(t, tz), forward=True):
            if stop is not None and wall > stop:
                break
            for instant in self._instants(wall, tz):
                u = instant.timestamp()
                if u > after and (best is None or u < best):
                    best = u
                    b = datetime.fromtimestamp(u, UTC)
                    # Later wall times can still map to earlier instants near an offset change.
                    stop = _wall(b, tz) + _slack(b, tz)
        if best is None:
            raise ConfigurationError(f"{self!r} has no tick after {t.isoformat()}")
        return best

    def prev_tick(self, at: float, tz: tzinfo) -> float | None:
        """The last matching instant at or before ``at``, by the DST rule above."""
        t = datetime.fromtimestamp(at, UTC)
        best: float | None = None
        stop: datetime | None = None
        # croniter's get_prev is strict: start a second later so a tick at `at` is included.
        start = _wall(t, tz) + _slack(t, tz) + timedelta(seconds=1)
        for wall in self._walls(start, forward=False):
            if stop is not None and wall < stop:
                break
            for instant in self._instants(wall, tz):
                u = instant.timestamp()
                if u <= at and (best is None or u > best):
                    best = u
                    b = datetime.fromtimestamp(u, UTC)
                    stop = _wall(b, tz) - _slack(b, tz)
        return best

    def _walls(self, start: datetime, forward: bool) -> Iterator[datetime]:
        """Matching naive wall times after (or before) ``start``, in order; croniter does the
        calendar arithmetic on naive datetimes, so no offset is involved yet."""
        cron = _croniter()
        it = cron.croniter(self._expr, start, day_or=False)
        step = it.get_next if forward else it.get_prev
        while True:
            try:
                yield step(datetime)
            except cron.CroniterBadDateError:
                return

    def _instants(self, wall: datetime, tz: tzinfo) -> tuple[datetime, ...]:
        """The instants at which the wall time ``wall`` runs, by the DST rule."""
        first = wall.replace(tzinfo=tz, fold=0)
        second = wall.replace(tzinfo=tz, fold=1)
        if first.utcoffset() == second.utcoffset():
            return (first,)
        if _wall(first.astimezone(UTC), tz) != wall:  # in a gap: the wall time never happens
            return (_gap_end(second.astimezone(UTC), first.astimezone(UTC), tz),)
        return (first, second) if self._every_hour else (first,)


def _wall(t: datetime, tz: tzinfo) -> datetime:
    """The naive wall-clock time of instant ``t`` in ``tz``."""
    return t.astimezone(tz).replace(tzinfo=None)


def _slack(t: datetime, tz: tzinfo) -> timedelta:
    """How far wall times around ``t`` may be out of order: zero unless the offset changes
    within a day of ``t`` (zones change it at most a few times a year)."""
    if (t - _DAY).astimezone(tz).utcoffset() == (t + _DAY).astimezone(tz).utcoffset():
        return timedelta(0)
    return _SLACK


def _gap_end(before: datetime, after: datetime, tz: tzinfo) -> datetime:
    """The instant the new offset starts, between ``before`` (old offset) and ``after`` (new);
    found by bisection, since offsets change on a whole second."""
    lo, hi = math.floor(before.timestamp()), math.ceil(after.timestamp())
    new = after.astimezone(tz).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == new:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


# A day or month name in a field, e.g. "monday" in "monday-friday".
_NAMES = re.compile(r"[A-Za-z]+")


def _field(name: str, value: Any, position: int) -> str:
    if isinstance(value, bool):
        raise ConfigurationError(f"crontab({name}={value!r}): expected a number or a cron field")
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, str):
        text = value.strip()
        if position >= 3:  # month and day names: Celery reads the first three letters
            text = _NAMES.sub(lambda m: m.group(0)[:3].lower(), text)
    elif isinstance(value, Iterable):
        items = list(value)
        if not items or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            raise ConfigurationError(
                f"crontab({name}={value!r}): a collection must hold whole numbers"
            )
        text = ",".join(str(v) for v in sorted(set(items)))
    else:
        raise ConfigurationError(f"crontab({name}={value!r}): expected a number or a cron field")
    line = ["*"] * 5
    line[position] = text or "?"
    cron = _croniter()
    try:
        cron.croniter(" ".join(line), datetime(2000, 1, 1))
    except (cron.CroniterError, ValueError) as exc:
        raise ConfigurationError(f"crontab({name}={value!r}) is not valid: {exc}") from None
    return text


def to_schedule(value: Any) -> Schedule:
    """The schedule for a ``beat_schedule`` entry's ``schedule`` value.

    Accepts a ``timedelta``, a number of seconds, a :class:`crontab`, or any :class:`Schedule`.

    Raises:
        ConfigurationError: anything else (a cron string: use ``crontab.from_string``).
    """
    if isinstance(value, Interval | crontab):
        return value
    if isinstance(value, timedelta) or (
        isinstance(value, int | float) and not isinstance(value, bool)
    ):
        return Interval(value)
    if isinstance(value, str):
        raise ConfigurationError(
            f"schedule {value!r} is a string: use crontab.from_string({value!r}) for a cron "
            f"line, or a timedelta / number of seconds for an interval"
        )
    if isinstance(value, Schedule):
        return value
    raise ConfigurationError(
        f"schedule must be a timedelta, a number of seconds or a crontab, not {value!r}"
    )


def schedule_from_dict(data: Any) -> Schedule:
    """Inverse of ``Schedule.to_dict`` (stored dynamic entries).

    Raises:
        ConfigurationError: not ``{"every": seconds}`` or ``{"cron": "m h dom mon dow"}``.
    """
    if isinstance(data, dict) and "every" in data:
        return Interval(data["every"])
    if isinstance(data, dict) and isinstance(data.get("cron"), str):
        return crontab.from_string(data["cron"])
    raise ConfigurationError(f"not a stored schedule: {data!r}")
