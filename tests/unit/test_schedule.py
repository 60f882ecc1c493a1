"""Cron schedules: what they accept, and golden cases for daylight saving time."""

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest

from triggers.schedule import Schedule, ScheduleError


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def fires(expression, timezone, after, n):
    return Schedule.parse(expression, timezone).next_fires(after, n)


# -- spring forward: America/New_York jumps from 02:00 EST to 03:00 EDT on
# 2026-03-08 (07:00 UTC); Europe/Paris from 02:00 CET to 03:00 CEST on
# 2026-03-29 (01:00 UTC).


def test_a_local_time_skipped_by_spring_forward_fires_when_the_gap_ends():
    assert fires("30 2 * * *", "America/New_York", utc(2026, 3, 7, 0), 3) == [
        utc(2026, 3, 7, 7, 30),  # 02:30 EST
        utc(2026, 3, 8, 7, 0),  # no 02:30 that night: 03:00 EDT, the end of the gap
        utc(2026, 3, 9, 6, 30),  # 02:30 EDT
    ]


def test_every_skipped_time_of_a_gap_collapses_into_one_fire():
    # Every minute of the 02:00 hour: that night the hour does not exist.
    ticks = fires("* 2 * * *", "America/New_York", utc(2026, 3, 8, 6, 0), 3)
    assert ticks == [utc(2026, 3, 8, 7, 0), utc(2026, 3, 9, 6, 0), utc(2026, 3, 9, 6, 1)]


def test_spring_forward_in_paris():
    assert fires("0 2 * * *", "Europe/Paris", utc(2026, 3, 28, 12), 2) == [
        utc(2026, 3, 29, 1, 0),  # 03:00 CEST, end of the gap
        utc(2026, 3, 30, 0, 0),  # 02:00 CEST
    ]


# -- fall back: America/New_York goes from 02:00 EDT back to 01:00 EST on
# 2026-11-01 (06:00 UTC): 01:00-01:59 happens twice.


def test_a_local_time_that_happens_twice_fires_once_at_its_first_occurrence():
    assert fires("30 1 * * *", "America/New_York", utc(2026, 10, 31, 12), 2) == [
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT; not again at 01:30 EST (06:30 UTC)
        utc(2026, 11, 2, 6, 30),  # 01:30 EST
    ]


def test_the_repeated_hour_does_not_fire_again():
    ticks = fires("*/20 * * * *", "America/New_York", utc(2026, 11, 1, 4, 50), 5)
    assert ticks == [
        utc(2026, 11, 1, 5, 0),  # 01:00 EDT
        utc(2026, 11, 1, 5, 20),
        utc(2026, 11, 1, 5, 40),
        utc(2026, 11, 1, 7, 0),  # 02:00 EST: 01:00-01:40 EST were fired already
        utc(2026, 11, 1, 7, 20),
    ]


def test_starting_inside_the_repeated_hour_waits_for_the_hour_after_it():
    # 01:30 EST, the second pass (06:30 UTC).
    assert fires("*/20 * * * *", "America/New_York", utc(2026, 11, 1, 6, 30), 2) == [
        utc(2026, 11, 1, 7, 0),
        utc(2026, 11, 1, 7, 20),
    ]


def test_utc_keeps_a_steady_pace_through_every_transition():
    ticks = fires("*/20 * * * *", "UTC", utc(2026, 11, 1, 4, 50), 6)
    assert [b - a for a, b in pairwise(ticks)] == [timedelta(minutes=20)] * 5


def test_a_timezone_without_daylight_saving_is_a_fixed_offset():
    assert fires("0 9 * * *", "Asia/Tokyo", utc(2026, 3, 8), 1) == [utc(2026, 3, 9, 0, 0)]


# -- syntax


def test_six_fields_put_seconds_first():
    assert fires("*/5 * * * * *", "UTC", utc(2026, 1, 1), 3) == [
        utc(2026, 1, 1, 0, 0, 5),
        utc(2026, 1, 1, 0, 0, 10),
        utc(2026, 1, 1, 0, 0, 15),
    ]


@pytest.mark.parametrize(
    ("expression", "first"),
    [
        ("@hourly", utc(2026, 1, 1, 1)),
        ("@daily", utc(2026, 1, 2)),
        ("@weekly", utc(2026, 1, 4)),  # a Sunday
        ("@monthly", utc(2026, 2, 1)),
        ("@yearly", utc(2027, 1, 1)),
        ("0 9 * * MON-FRI", utc(2026, 1, 1, 9)),  # a Thursday
        ("0 0 1 JAN *", utc(2027, 1, 1)),
    ],
)
def test_aliases_and_names(expression, first):
    assert fires(expression, "UTC", utc(2026, 1, 1), 1) == [first]


def test_a_fire_is_strictly_after_the_start():
    assert fires("0 * * * *", "UTC", utc(2026, 1, 1, 1), 1) == [utc(2026, 1, 1, 2)]


def test_fires_lists_a_range_inclusive_of_its_end():
    schedule = Schedule.parse("0 * * * *")
    assert list(schedule.fires(utc(2026, 1, 1, 0), utc(2026, 1, 1, 3))) == [
        utc(2026, 1, 1, 1),
        utc(2026, 1, 1, 2),
        utc(2026, 1, 1, 3),
    ]


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        Schedule.parse("* * * * *").next_fires(datetime(2026, 1, 1), 1)


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("", "is empty"),
        ("* * * *", "has 4 fields"),
        ("* * * * * * *", "has 7 fields"),
        ("61 * * * *", "out of range"),
        ("0 0 30 2 *", "never comes"),
        ("H * * * *", "minute field 'H' takes numbers only"),
        ("* MON * * *", "hour field 'MON' takes numbers only"),
        ("0 0 L * *", "day of month field 'L' takes numbers only"),
        ("0 0 * * 5#3", "may hold only numbers"),
        ("0 0 * * L5", "'L' is not a day of week name"),
        ("@reboot", "unknown alias"),
        ("x" * 201, "longer than 200"),
    ],
)
def test_bad_schedules_are_refused_by_name(expression, says):
    with pytest.raises(ScheduleError) as caught:
        Schedule.parse(expression)
    assert caught.value.field == "schedule"
    assert says in str(caught.value)


@pytest.mark.parametrize("zone", ["Mars/Base", "", "EST5EDT ", "utc"])
def test_unknown_timezones_are_refused_by_name(zone):
    with pytest.raises(ScheduleError) as caught:
        Schedule.parse("* * * * *", zone)
    assert caught.value.field == "timezone"
    assert "IANA" in caught.value.message or "unknown" in caught.value.message
