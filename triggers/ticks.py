"""Which ticks of a cron trigger to write now, and which were missed.

The dispatcher host writes each tick as an outbox row ahead of its time
(LOOKAHEAD), so it runs at its second like any due row. Each trigger keeps a
watermark: the latest tick already written or given up. Ticks between the
watermark and now were not written in time (no cluster ran, or the trigger
was just resumed); the trigger's catch-up policy says which of those still
fire:

  skip    none of them;
  latest  the most recent one;
  all     every one, up to MAX_CATCHUP_TICKS (the most recent ones);

and only within its catch-up window (older ones are missed whatever the
policy; they are counted up to MAX_COUNTED). A tick at most LATE_GRACE
behind is not "missed": the host was merely slow, and it fires late under
every policy.

Pure: the clock is the caller's, so the golden tests can move it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from triggers.schedule import Schedule

LOOKAHEAD = timedelta(seconds=30)  # ticks are written this far ahead of their time
LATE_GRACE = timedelta(seconds=60)  # a tick this late still fires under every policy
MAX_CATCHUP_TICKS = 100  # `all` fires at most this many missed ticks
MAX_COUNTED = 100_000  # missed ticks before the window are counted up to this many
DEFAULT_CATCHUP_WINDOW = timedelta(hours=6)
MAX_CATCHUP_WINDOW = timedelta(days=7)


class Catchup(enum.StrEnum):
    SKIP = "skip"
    LATEST = "latest"
    ALL = "all"


class Overlap(enum.StrEnum):
    SKIP = "skip"
    BUFFER_ONE = "buffer_one"
    ALLOW = "allow"


@dataclass(frozen=True)
class Plan:
    """What to write for one trigger now."""

    fire: list[datetime]  # scheduled instants to write as outbox rows, in order
    missed: int  # ticks given up by the catch-up policy (or its window)
    watermark: datetime  # the trigger's new watermark (unchanged when nothing was seen)


def plan_ticks(
    schedule: Schedule,
    *,
    watermark: datetime,
    now: datetime,
    catchup: Catchup,
    window: timedelta = DEFAULT_CATCHUP_WINDOW,
    lookahead: timedelta = LOOKAHEAD,
) -> Plan:
    """The ticks after `watermark` up to `now` + `lookahead`: which to write,
    how many were missed, and the watermark after them."""
    on_time_from = now - LATE_GRACE
    window_from = now - max(window, LATE_GRACE)
    fire: list[datetime] = []
    behind: list[datetime] = []  # missed by more than the grace, within the window
    missed = 0
    latest = start = watermark
    if watermark < window_from:
        # Ticks before the window never fire: they are only counted, up to
        # MAX_COUNTED (a 1-second schedule down for a week has 600,000), and
        # the walk goes on from the window's start.
        start = window_from - timedelta(microseconds=1)
        for _tick in schedule.fires(watermark, start):
            missed += 1
            if missed >= MAX_COUNTED:
                break
        if missed:
            latest = start  # everything before the window is settled
    for tick in schedule.fires(start, now + lookahead):
        latest = tick
        if tick < on_time_from:
            behind.append(tick)
        else:
            fire.append(tick)
    if catchup is Catchup.ALL:
        keep = behind[-MAX_CATCHUP_TICKS:]
    elif catchup is Catchup.LATEST:
        keep = behind[-1:]
    else:
        keep = []
    missed += len(behind) - len(keep)
    return Plan(fire=keep + fire, missed=missed, watermark=latest)
