"""Cron schedules: read one, refuse a bad one by name, list the instants it fires at.

Our small interface over croniter (pinned in requirements.txt); nothing else
in the project imports croniter, so another library could take its place here.

A schedule is one of
  - five fields, ``minute hour day-of-month month day-of-week`` (``*/15 * * * *``);
  - six fields, seconds first (``*/5 * * * * *``: every five seconds);
  - an alias: ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``,
    ``@daily`` (``@midnight``), ``@hourly``;
read as wall-clock time in an IANA timezone (default UTC). Names of months
and weekdays (``JAN``, ``MON``) are accepted; croniter's extensions (a year
field, ``H`` hashing, ``L``/``#`` day forms) are not, so a schedule means
the same thing in any cron a user knows.

Daylight saving time (docs/triggers.md, "Cron triggers"):
  - a local time skipped when clocks go forward fires at the first instant
    after the gap (02:30 on a night that jumps from 02:00 to 03:00 fires at
    03:00); several skipped times collapse into that one fire;
  - a local time that happens twice when clocks go back fires once, at its
    first occurrence.
Both follow from one rule: a schedule names wall-clock times, each fires at
most once, never before its time. A schedule that must keep a steady pace
through transitions (every 15 minutes, even at 01:45 twice) uses UTC.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import CroniterError, croniter

MAX_EXPRESSION_LENGTH = 200
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# Per field: digits, names, '*', ranges, steps and lists; nothing else.
_FIELD = re.compile(r"^[0-9A-Za-z*/,\-]+$")
_NAMES_OK = {3: "months (JAN-DEC)", 4: "weekdays (SUN-SAT)"}  # field index among the five
_FIELD_NAMES = ("minute", "hour", "day of month", "month", "day of week")
# Looking for the next fire stops this far ahead: "30 2 30 2 *" (February
# 30th) never fires, and must not loop forever.
HORIZON_YEARS = 5


class ScheduleError(ValueError):
    """A schedule or timezone that cannot be used; `field` names which."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


@dataclass(frozen=True)
class Schedule:
    expression: str  # as the user wrote it (trimmed)
    timezone: str
    _croniter_expression: str
    _zone: ZoneInfo

    @classmethod
    def parse(cls, expression: str, timezone: str = "UTC") -> Schedule:
        """Read and check a schedule; ScheduleError names the field that is wrong."""
        zone = parse_timezone(timezone)
        text = " ".join(str(expression).split())
        if not text:
            raise ScheduleError("schedule", "is empty; write five cron fields, e.g. */5 * * * *")
        if len(text) > MAX_EXPRESSION_LENGTH:
            raise ScheduleError("schedule", f"is longer than {MAX_EXPRESSION_LENGTH} characters")
        if text.startswith("@"):
            if text.lower() not in ALIASES:
                raise ScheduleError(
                    "schedule",
                    f"unknown alias {text!r}; allowed: {', '.join(sorted(ALIASES))}",
                )
            fields = ALIASES[text.lower()].split()
        else:
            fields = text.split()
        if len(fields) not in (5, 6):
            raise ScheduleError(
                "schedule",
                f"has {len(fields)} fields; write 5 (minute hour day-of-month month "
                "day-of-week) or 6 (seconds first)",
            )
        seconds = fields[0] if len(fields) == 6 else "0"
        five = fields[-5:]
        for i, field in enumerate(five):
            _check_field(_FIELD_NAMES[i], field, names=i in _NAMES_OK)
        _check_field("seconds", seconds, names=False)
        # croniter puts seconds last.
        internal = " ".join([*five, seconds])
        try:
            if not croniter.is_valid(internal, strict=True):
                raise CroniterError(internal)
            croniter(internal, datetime(2000, 1, 1))
        except (CroniterError, ValueError, KeyError):
            raise ScheduleError(
                "schedule",
                f"{text!r} is not a valid cron expression: a value is out of range "
                "(second and minute 0-59, hour 0-23, day 1-31, month 1-12 or JAN-DEC, "
                "weekday 0-7 or SUN-SAT) or the date never comes; e.g. '0 9 * * MON-FRI' "
                "is 09:00 on weekdays",
            ) from None
        return cls(text, timezone, internal, zone)

    @property
    def zone(self) -> ZoneInfo:
        return self._zone

    @property
    def has_seconds(self) -> bool:
        return len(self.expression.split()) == 6

    def fires(self, after: datetime, until: datetime) -> Iterator[datetime]:
        """The instants (UTC) this schedule fires at, `after` < t <= `until`, in order."""
        after, until = _aware(after), _aware(until)
        # Wall times go up one by one; their instants never go down (a gap's
        # walls all map to its end, a repeated hour's to its first pass), so
        # the first instant past `until` ends the walk. In a repeated hour
        # `after`'s wall reading is ambiguous: start from the earlier one and
        # drop what comes before `after`.
        wall = after.astimezone(self._zone).replace(tzinfo=None, fold=0)
        walls = croniter(
            self._croniter_expression,
            wall - timedelta(seconds=1),
            ret_type=datetime,
            max_years_between_matches=HORIZON_YEARS,
        )
        last = None
        while True:
            try:
                wall = walls.get_next(datetime)
            except CroniterError:  # never fires again within HORIZON_YEARS
                return
            instant = wall_to_instant(wall, self._zone)
            if instant > until:
                return
            if instant > after and instant != last:
                last = instant
                yield instant

    def next_fires(self, after: datetime, n: int) -> list[datetime]:
        """The next `n` fires after `after` (fewer if it never fires again within years)."""
        out: list[datetime] = []
        until = _aware(after) + timedelta(days=366 * HORIZON_YEARS)
        for instant in self.fires(after, until):
            out.append(instant)
            if len(out) >= n:
                break
        return out


def parse_timezone(name: str) -> ZoneInfo:
    """An IANA timezone by name; ScheduleError names the field when unknown."""
    text = str(name)
    if not text or text not in _zones():
        raise ScheduleError(
            "timezone",
            f"unknown timezone {text!r}; use an IANA name such as UTC, Europe/Paris or "
            "America/New_York",
        )
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError("timezone", f"unknown timezone {text!r}") from None


def wall_to_instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of a local wall time: its first occurrence when it
    happens twice; the end of the gap when it does not happen at all."""
    instant = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == wall:
        return instant
    # In a gap, fold=1 reads the wall with the offset after the jump and
    # lands before it; fold=0 lands after it. Find the jump to the second.
    low = int(wall.replace(tzinfo=zone, fold=1).astimezone(UTC).timestamp())
    high = int(instant.timestamp())
    before = datetime.fromtimestamp(low, UTC).astimezone(zone).utcoffset()
    while high - low > 1:
        mid = (low + high) // 2
        if datetime.fromtimestamp(mid, UTC).astimezone(zone).utcoffset() == before:
            low = mid
        else:
            high = mid
    return datetime.fromtimestamp(high, UTC)


_NAMES = {
    "month": {"JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"},
    "day of week": {"SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"},
}


def _check_field(name: str, value: str, *, names: bool) -> None:
    # Letters only as whole names of months or weekdays (croniter would also
    # take forms such as L5, "the last Friday", which other crons do not know).
    for word in re.findall(r"[A-Za-z]+", value):
        if names and word.upper() not in _NAMES.get(name, set()):
            raise ScheduleError(
                "schedule",
                f"the {name} field {value!r}: {word!r} is not a {name} name "
                f"({', '.join(sorted(_NAMES.get(name, ())))})",
            )
    if not _FIELD.match(value):
        raise ScheduleError(
            "schedule",
            f"the {name} field {value!r} may hold only numbers, '*', '-', '/' and ','",
        )
    if any(c.isalpha() for c in value) and not names:
        raise ScheduleError(
            "schedule",
            f"the {name} field {value!r} takes numbers only "
            f"(names are for {' and '.join(_NAMES_OK.values())})",
        )


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("a timezone-aware datetime is needed")
    return moment.astimezone(UTC)


_ZONES: frozenset[str] | None = None


def _zones() -> frozenset[str]:
    global _ZONES
    if _ZONES is None:
        _ZONES = frozenset(available_timezones()) | {"UTC"}
    return _ZONES
