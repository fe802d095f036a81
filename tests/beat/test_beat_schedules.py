"""Schedules: intervals, crontab fields and strings, time zones and daylight saving - no waiting."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from aqueue import crontab
from aqueue.beat.schedules import Interval, Schedule, schedule_from_dict, to_schedule
from aqueue.exceptions import ConfigurationError

UTC_TZ = ZoneInfo("UTC")
SHANGHAI = ZoneInfo("Asia/Shanghai")
NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")


def at(*args: int, tz: ZoneInfo = UTC_TZ) -> float:
    """Epoch seconds of a wall time in ``tz``."""
    return datetime(*args, tzinfo=tz).timestamp()  # type: ignore[misc]


def utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")


def local(t: float, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(t, tz).strftime("%Y-%m-%d %H:%M %Z")


def ticks(schedule: Schedule, tz: ZoneInfo, start: float, end: float) -> list[float]:
    """Every tick in ``(start, end]``, by repeated ``next_tick``."""
    out: list[float] = []
    t = schedule.next_tick(start, tz)
    while t <= end:
        out.append(t)
        t = schedule.next_tick(t, tz)
    return out


# -- intervals ------------------------------------------------------------------------------


def test_interval_ticks_on_multiples_of_the_period_since_the_epoch() -> None:
    every_30s = Interval(timedelta(seconds=30))
    assert every_30s.next_tick(at(2024, 1, 1, 12, 0, 10), UTC_TZ) == at(2024, 1, 1, 12, 0, 30)
    assert every_30s.next_tick(at(2024, 1, 1, 12, 0, 30), UTC_TZ) == at(2024, 1, 1, 12, 1, 0)
    assert every_30s.prev_tick(at(2024, 1, 1, 12, 0, 30), UTC_TZ) == at(2024, 1, 1, 12, 0, 30)
    assert every_30s.prev_tick(at(2024, 1, 1, 12, 0, 29), UTC_TZ) == at(2024, 1, 1, 12, 0, 0)


def test_interval_is_the_same_in_any_time_zone_and_across_dst() -> None:
    hourly = Interval(3600)
    # The spring-forward night in New York: elapsed hours, not wall-clock hours.
    night = ticks(hourly, NEW_YORK, at(2024, 3, 10, 5), at(2024, 3, 10, 9))
    assert [utc(t) for t in night] == [f"2024-03-10 0{h}:00" for h in (6, 7, 8, 9)]
    assert ticks(hourly, SHANGHAI, at(2024, 3, 10, 5), at(2024, 3, 10, 9)) == night


def test_interval_keeps_milliseconds() -> None:
    half = Interval(0.25)
    assert half.next_tick(1000.1, UTC_TZ) == 1000.25
    assert half.next_tick(1000.25, UTC_TZ) == 1000.5
    assert half.prev_tick(1000.2499, UTC_TZ) == 1000.0


@pytest.mark.parametrize("bad", [0, -1, 0.0001, True, "10", float("nan")])
def test_interval_rejects_bad_periods(bad: object) -> None:
    with pytest.raises(ConfigurationError):
        Interval(bad)  # type: ignore[arg-type]


def test_to_schedule_accepts_celerys_forms_and_hints_for_strings() -> None:
    assert to_schedule(timedelta(minutes=1)) == Interval(60)
    assert to_schedule(5) == Interval(5)
    assert to_schedule(2.5) == Interval(2.5)
    cron = crontab(minute="*/5")
    assert to_schedule(cron) is cron
    with pytest.raises(ConfigurationError, match=r"crontab\.from_string"):
        to_schedule("*/5 * * * *")
    with pytest.raises(ConfigurationError, match="timedelta"):
        to_schedule([1, 2])


def test_schedules_round_trip_through_their_stored_form() -> None:
    for schedule in (Interval(30), Interval(0.5), crontab(30, 7, day_of_week="mon-fri")):
        assert schedule_from_dict(schedule.to_dict()) == schedule
    with pytest.raises(ConfigurationError):
        schedule_from_dict({"bogus": 1})


# -- crontab fields -------------------------------------------------------------------------


def test_crontab_defaults_to_every_minute() -> None:
    every = crontab()
    assert every.expression == "* * * * *"
    assert every.next_tick(at(2024, 1, 1, 12, 0, 1), UTC_TZ) == at(2024, 1, 1, 12, 1)


def test_crontab_monday_morning_as_in_the_tutorial() -> None:
    monday = crontab(hour=7, minute=30, day_of_week=1)
    found = ticks(monday, UTC_TZ, at(2024, 1, 1), at(2024, 1, 31))
    assert [utc(t) for t in found] == [f"2024-01-{d:02d} 07:30" for d in (1, 8, 15, 22, 29)]


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        (crontab(minute="*/15"), ["00:00", "00:15", "00:30", "00:45", "01:00"]),
        (crontab(minute={0, 30}), ["00:00", "00:30", "01:00", "01:30", "02:00"]),
        (crontab(minute=0, hour=range(9, 12)), ["09:00", "10:00", "11:00", "09:00", "10:00"]),
        (crontab(minute=0, hour="0-23/6"), ["00:00", "06:00", "12:00", "18:00", "00:00"]),
        (crontab(minute="5,10", hour=3), ["03:05", "03:10", "03:05", "03:10", "03:05"]),
    ],
)
def test_crontab_minute_and_hour_fields(schedule: crontab, expected: list[str]) -> None:
    t = at(2023, 12, 31, 23, 59)
    found = []
    for _ in expected:
        t = schedule.next_tick(t, UTC_TZ)
        found.append(datetime.fromtimestamp(t, UTC).strftime("%H:%M"))
    assert found == expected


def test_crontab_day_and_month_fields_with_names() -> None:
    weekdays = crontab(0, 9, day_of_week="mon-fri")
    found = ticks(weekdays, UTC_TZ, at(2024, 1, 5, 12), at(2024, 1, 10, 12))  # Fri noon..Wed
    assert [utc(t) for t in found] == ["2024-01-08 09:00", "2024-01-09 09:00", "2024-01-10 09:00"]
    # Full names, any case, as Celery reads them (the first three letters).
    assert crontab(0, 9, day_of_week="Monday-Friday") == weekdays
    assert crontab(0, 9, day_of_week="sun,sat") == crontab(0, 9, day_of_week={0, 6})
    assert crontab(0, 9, day_of_week=7) == crontab(0, 9, day_of_week="7")  # Sunday too
    quarterly = crontab(0, 0, day_of_month=1, month_of_year="jan,apr,jul,oct")
    found = ticks(quarterly, UTC_TZ, at(2024, 1, 1), at(2024, 12, 31))
    assert [utc(t)[:10] for t in found] == ["2024-04-01", "2024-07-01", "2024-10-01"]
    mid_month = crontab(0, 0, day_of_month="1,15", month_of_year=[2])
    found = ticks(mid_month, UTC_TZ, at(2024, 1, 1), at(2024, 3, 31))
    assert [utc(t)[:10] for t in found] == ["2024-02-01", "2024-02-15"]


def test_crontab_day_of_month_and_day_of_week_must_both_match_as_in_celery() -> None:
    # Unix cron would run on every Monday *and* on days 1-7; Celery on Mondays among days 1-7.
    first_monday = crontab(0, 0, day_of_week="mon", day_of_month="1-7")
    found = ticks(first_monday, UTC_TZ, at(2024, 1, 1, 1), at(2024, 4, 30))
    assert [utc(t)[:10] for t in found] == ["2024-02-05", "2024-03-04", "2024-04-01"]


def test_crontab_from_string_is_the_same_as_the_fields() -> None:
    assert crontab.from_string("*/5 * * * *") == crontab(minute="*/5")
    assert crontab.from_string("30 7 * * 1") == crontab(hour=7, minute=30, day_of_week=1)
    assert crontab.from_string("0 0 1,15 2 *") == crontab(
        0, 0, day_of_month="1,15", month_of_year=2
    )
    assert crontab.from_string("  0  12 * * mon-fri ").expression == "0 12 * * mon-fri"
    assert repr(crontab.from_string("*/5 * * * *")) == "<crontab: */5 * * * * (m h dom mon dow)>"


@pytest.mark.parametrize("line", ["*/5 * * *", "* * * * * *", "", "every minute"])
def test_crontab_from_string_needs_five_fields(line: str) -> None:
    with pytest.raises(ConfigurationError, match="five fields"):
        crontab.from_string(line)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"minute": 60}, "minute"),
        ({"hour": 24}, "hour"),
        ({"day_of_week": 8}, "day_of_week"),
        ({"day_of_month": 32}, "day_of_month"),
        ({"month_of_year": 13}, "month_of_year"),
        ({"minute": "*/0"}, "minute"),
        ({"hour": "x"}, "hour"),
        ({"minute": []}, "minute"),
        ({"minute": True}, "minute"),
        ({"minute": 1.5}, "minute"),
    ],
)
def test_crontab_names_the_bad_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError, match=f"crontab\\({field}="):
        crontab(**kwargs)  # type: ignore[arg-type]


def test_crontab_that_never_matches_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="never matches"):
        crontab(0, 0, day_of_month=30, month_of_year=2)


# -- time zones -----------------------------------------------------------------------------


def test_crontab_fields_are_wall_times_in_asia_shanghai() -> None:
    monday = crontab(hour=7, minute=30, day_of_week=1)
    # Monday 2024-01-08 07:30 in Shanghai (UTC+8, no DST) is Sunday 23:30 UTC.
    t = monday.next_tick(at(2024, 1, 1, 12), SHANGHAI)
    assert local(t, SHANGHAI) == "2024-01-08 07:30 CST"
    assert utc(t) == "2024-01-07 23:30"
    assert monday.prev_tick(t + 1, SHANGHAI) == t
    daily = ticks(crontab(0, 0), SHANGHAI, at(2024, 3, 1), at(2024, 12, 1))
    assert {datetime.fromtimestamp(t, UTC).hour for t in daily} == {16}  # always 16:00 UTC


def test_spring_forward_in_new_york_runs_a_0230_job_once_right_after_the_gap() -> None:
    # 2024-03-10: clocks jump from 02:00 EST to 03:00 EDT; 02:30 does not exist.
    daily = crontab(minute=30, hour=2)
    found = ticks(daily, NEW_YORK, at(2024, 3, 8, 12), at(2024, 3, 12, 12))
    assert [local(t, NEW_YORK) for t in found] == [
        "2024-03-09 02:30 EST",
        "2024-03-10 03:00 EDT",
        "2024-03-11 02:30 EDT",
        "2024-03-12 02:30 EDT",
    ]


def test_spring_forward_collapses_the_missing_hour_into_one_tick() -> None:
    quarterly = crontab(minute="*/15")
    found = ticks(quarterly, NEW_YORK, at(2024, 3, 10, 1, 30, tz=NEW_YORK), at(2024, 3, 10, 7, 30))
    assert [local(t, NEW_YORK)[11:] for t in found] == [
        "01:45 EST",
        "03:00 EDT",  # 02:00, 02:15, 02:30, 02:45 never happen: one tick, the 03:00 one
        "03:15 EDT",
        "03:30 EDT",
    ]
    hourly = crontab(minute=0)
    day = ticks(
        hourly, NEW_YORK, at(2024, 3, 10, tz=NEW_YORK) - 1, at(2024, 3, 11, tz=NEW_YORK) - 1
    )
    assert len(day) == 23  # a 23-hour day


def test_fall_back_in_new_york_runs_a_0130_job_once() -> None:
    # 2024-11-03: clocks go from 02:00 EDT back to 01:00 EST; 01:30 happens twice.
    daily = crontab(minute=30, hour=1)
    found = ticks(daily, NEW_YORK, at(2024, 11, 2, 12), at(2024, 11, 4, 12))
    assert [local(t, NEW_YORK) for t in found] == [
        "2024-11-03 01:30 EDT",  # the first occurrence only
        "2024-11-04 01:30 EST",
    ]


def test_fall_back_keeps_hourly_schedules_in_elapsed_time() -> None:
    half_hourly = crontab(minute="*/30")  # hour="*": runs in both occurrences
    found = ticks(
        half_hourly, NEW_YORK, at(2024, 11, 3, 0, 45, tz=NEW_YORK), at(2024, 11, 3, 7, 15)
    )
    assert [local(t, NEW_YORK)[11:] for t in found] == [
        "01:00 EDT",
        "01:30 EDT",
        "01:00 EST",
        "01:30 EST",
        "02:00 EST",
    ]
    assert all(b - a == 1800 for a, b in itertools.pairwise(found))
    day = ticks(
        crontab(minute=0),
        NEW_YORK,
        at(2024, 11, 3, tz=NEW_YORK) - 1,
        at(2024, 11, 4, tz=NEW_YORK) - 1,
    )
    assert len(day) == 25  # a 25-hour day
    # A fixed hour list is not "every hour": 01:00 runs once.
    night = crontab(minute=0, hour="0-3")
    found = ticks(night, NEW_YORK, at(2024, 11, 3, tz=NEW_YORK) - 1, at(2024, 11, 3, 12))
    assert [local(t, NEW_YORK)[11:] for t in found] == [
        "00:00 EDT",
        "01:00 EDT",
        "02:00 EST",
        "03:00 EST",
    ]


def test_europe_berlin_both_transitions() -> None:
    daily = crontab(minute=30, hour=2)
    # 2024-03-31: 02:00 CET -> 03:00 CEST.
    spring = ticks(daily, BERLIN, at(2024, 3, 30, 12), at(2024, 4, 1, 12))
    assert [local(t, BERLIN) for t in spring] == ["2024-03-31 03:00 CEST", "2024-04-01 02:30 CEST"]
    # 2024-10-27: 03:00 CEST -> 02:00 CET; 02:30 happens twice, runs at the first.
    autumn = ticks(daily, BERLIN, at(2024, 10, 26, 12), at(2024, 10, 28, 12))
    assert [local(t, BERLIN) for t in autumn] == ["2024-10-27 02:30 CEST", "2024-10-28 02:30 CET"]
    assert utc(autumn[0]) == "2024-10-27 00:30"


@pytest.mark.parametrize("tz", [NEW_YORK, BERLIN])
@pytest.mark.parametrize(
    "schedule",
    [crontab(minute=30, hour=2), crontab(minute="*/20"), crontab(minute=0, hour="1-3"), crontab(7)],
)
def test_next_and_prev_agree_around_transitions(tz: ZoneInfo, schedule: crontab) -> None:
    """Both directions see the same ticks, however the DST rule maps them."""
    for start in (
        at(2024, 3, 9, 12),
        at(2024, 3, 30, 12),
        at(2024, 10, 26, 12),
        at(2024, 11, 2, 12),
    ):
        for step in range(0, 36 * 60, 71):  # every 71 minutes for the 36 h around a change
            t = start + step * 60 + 11
            n = schedule.next_tick(t, tz)
            p = schedule.prev_tick(t, tz)
            assert n > t
            assert schedule.prev_tick(n, tz) == n
            assert p is not None and p <= t
            assert schedule.next_tick(p, tz) == n
