"""Catch-up golden cases: after downtime, exactly the fires each policy promises."""

import time
from datetime import UTC, datetime, timedelta

from triggers.schedule import Schedule
from triggers.ticks import LOOKAHEAD, MAX_CATCHUP_TICKS, Catchup, plan_ticks

EVERY_MINUTE = Schedule.parse("* * * * *")
NOW = datetime(2026, 6, 1, 12, 0, 30, tzinfo=UTC)
DOWN_SINCE = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)  # last tick written: 09:00


def minute(h, m):
    return datetime(2026, 6, 1, h, m, tzinfo=UTC)


def plan(catchup, *, schedule=EVERY_MINUTE, watermark=DOWN_SINCE, now=NOW, **kw):
    return plan_ticks(schedule, watermark=watermark, now=now, catchup=Catchup(catchup), **kw)


# Three hours down, a tick a minute: 09:01 ... 11:59 were never written
# (179 ticks); 12:00 is 30 s late, within the grace; 12:01 is ahead.


def test_skip_fires_none_of_the_missed_ticks():
    p = plan("skip")
    assert p.fire == [minute(12, 0), minute(12, 1)]
    assert p.missed == 179
    assert p.watermark == minute(12, 1)


def test_latest_fires_the_most_recent_missed_tick_only():
    p = plan("latest")
    assert p.fire == [minute(11, 59), minute(12, 0), minute(12, 1)]
    assert p.missed == 178


def test_all_fires_the_most_recent_hundred():
    p = plan("all")
    assert len(p.fire) == MAX_CATCHUP_TICKS + 2
    assert p.fire[0] == minute(11, 59) - timedelta(minutes=MAX_CATCHUP_TICKS - 1)
    assert p.fire[-3:] == [minute(11, 59), minute(12, 0), minute(12, 1)]
    assert p.missed == 179 - MAX_CATCHUP_TICKS
    assert p.fire == sorted(p.fire)


def test_all_within_a_short_window():
    # One hour: 09:01 ... 11:00 are older than the window, whatever the policy.
    p = plan("all", window=timedelta(hours=1))
    assert p.fire[0] == minute(11, 1)
    assert len(p.fire) == 59 + 2
    assert p.missed == 120


def test_a_window_of_zero_still_fires_a_tick_within_the_grace():
    p = plan("all", window=timedelta(0))
    assert p.fire == [minute(12, 0), minute(12, 1)]
    assert p.missed == 179


def test_a_host_that_is_merely_slow_misses_nothing():
    p = plan("skip", watermark=NOW - timedelta(seconds=50))
    assert p.fire == [minute(12, 0), minute(12, 1)]
    assert p.missed == 0


def test_ticks_are_written_ahead_by_the_lookahead_only():
    p = plan("latest", watermark=NOW)
    assert p.fire == [t for t in [minute(12, 1)] if t <= NOW + LOOKAHEAD]
    assert plan("latest", watermark=NOW, lookahead=timedelta(minutes=3)).fire == [
        minute(12, 1),
        minute(12, 2),
        minute(12, 3),
    ]


def test_nothing_due_leaves_the_watermark_where_it_was():
    daily = Schedule.parse("0 0 * * *")
    p = plan("all", schedule=daily, watermark=minute(0, 0))
    assert p == p.__class__(fire=[], missed=0, watermark=minute(0, 0))


def test_a_daily_schedule_down_for_three_days():
    daily = Schedule.parse("0 0 * * *")
    watermark = datetime(2026, 5, 29, 0, 0, tzinfo=UTC)
    # Missed: May 30, May 31, June 1 (12 h ago, outside the 6 h window).
    assert plan("all", schedule=daily, watermark=watermark).missed == 3
    p = plan("all", schedule=daily, watermark=watermark, window=timedelta(days=2))
    assert p.fire == [datetime(2026, 5, 31, tzinfo=UTC), datetime(2026, 6, 1, tzinfo=UTC)]
    assert p.missed == 1
    assert p.watermark == datetime(2026, 6, 1, tzinfo=UTC)


def test_hours_of_one_second_ticks():
    every_second = Schedule.parse("* * * * * *")
    p = plan("latest", schedule=every_second, watermark=NOW - timedelta(hours=2))
    # 7,200 ticks were due; 61 are within the grace, one is the latest missed.
    assert p.missed == 2 * 3600 - 61 - 1
    assert len(p.fire) == 1 + 61 + 30


def test_a_long_stretch_behind_is_jumped_not_walked():
    every_second = Schedule.parse("* * * * * *")
    started = time.process_time()
    p = plan("all", schedule=every_second, watermark=NOW - timedelta(hours=5, minutes=59))
    assert time.process_time() - started < 3.0  # 21,540 ticks, not walked one by one
    # The most recent 100 missed fire, then the grace and the look-ahead.
    assert p.fire[0] == NOW - timedelta(seconds=60 + MAX_CATCHUP_TICKS)
    assert p.fire == sorted(p.fire) and len(p.fire) == MAX_CATCHUP_TICKS + 61 + 30
    expected = (5 * 3600 + 59 * 60) - 61 - MAX_CATCHUP_TICKS
    assert abs(p.missed - expected) <= 2, (p.missed, expected)


def test_ticks_before_the_window_are_counted_up_to_a_bound(monkeypatch):
    monkeypatch.setattr("triggers.ticks.MAX_COUNTED", 1000)
    every_second = Schedule.parse("* * * * * *")
    p = plan("skip", schedule=every_second, watermark=NOW - timedelta(days=2))
    # 1,000 counted before the six-hour window (06:00:30 on), then every tick
    # of the window before the grace (11:59:30 on).
    assert p.missed == 1000 + 6 * 3600 - 60
    assert p.fire[0] == NOW - timedelta(seconds=60)
