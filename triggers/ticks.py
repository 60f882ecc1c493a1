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
policy; they are counted up to MAX_COUNTED, and a long stretch within the
window by the schedule's pace). A tick at most LATE_GRACE
behind is not "missed": the host was merely slow, and it fires late under
every policy.

Pure: the clock is the caller's, so the golden tests can move it.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta

from triggers.schedule import Schedule

LOOKAHEAD = timedelta(seconds=30)  # ticks are written this far ahead of their time
LATE_GRACE = timedelta(seconds=60)  # a tick this late still fires under every policy
MAX_CATCHUP_TICKS = 100  # `all` fires at most this many missed ticks
MAX_COUNTED = 10_000  # missed ticks before the window are counted up to this many
# Ticks walked in the window at most before a jump (the rest are counted by
# the schedule's pace): a pass's work per trigger stays bounded.
MAX_WALK = 10_000
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
    caught_up: int = 0  # how many of `fire`, from the start, are missed ticks caught up


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
    # Missed by more than the grace, within the window: only the most recent
    # MAX_CATCHUP_TICKS can fire, so only those are kept.
    behind: deque[datetime] = deque(maxlen=MAX_CATCHUP_TICKS)
    behind_count = 0
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
    while True:
        jumped, walked, previous = False, 0, None
        for tick in schedule.fires(start, now + lookahead):
            latest, walked = tick, walked + 1
            if tick >= on_time_from:
                fire.append(tick)
                continue
            behind.append(tick)
            behind_count += 1
            if walked >= MAX_WALK and previous is not None:
                # A long stretch behind (a 1-second schedule, hours down):
                # jump to just before the ticks that can still fire, and
                # count the stretch skipped at the schedule's recent pace.
                pace = tick - previous
                resume = on_time_from - pace * (MAX_CATCHUP_TICKS + 1)
                if pace and resume > tick:
                    behind_count += int((resume - tick) / pace)
                    start, jumped = resume, True
                    break
            previous = tick
        if not jumped:
            break
    if catchup is Catchup.ALL:
        keep = list(behind)
    elif catchup is Catchup.LATEST:
        keep = list(behind)[-1:]
    else:
        keep = []
    missed += behind_count - len(keep)
    return Plan(fire=keep + fire, missed=missed, watermark=latest, caught_up=len(keep))
