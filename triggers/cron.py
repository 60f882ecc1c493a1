"""The cron ticker: write cron triggers' ticks as outbox rows, ahead of their time.

The dispatcher host calls ``CronTicker.run_once`` every TICK_EVERY seconds
(outbox/dispatch/worker.py): no process of its own to run, and the
dispatcher, which already sleeps until the next due row, runs each tick at
its second. Any number of hosts may call it at once: one at a time does the
work (an advisory lock; the others return at once), and the key of
``cron_ticks`` (trigger, scheduled time) lets a tick through once whoever
writes it, across clusters and restarts. Which ticks to write, and which a
catch-up policy gives up, is triggers/ticks.py's to say.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import DatabaseError, transaction
from django.utils import timezone

from outbox.storage.kinds import SourceKind
from outbox.storage.repository import OutboxRow
from picloud.db.sqlexec import execute, fetch_all, fetch_one
from picloud.db.sqlfiles import load_queries
from triggers.schedule import Schedule, ScheduleError
from triggers.ticks import LOOKAHEAD, Catchup, Overlap, plan_ticks

logger = logging.getLogger("picloud.cron")

Q = load_queries("triggers")
TICK_EVERY = 5.0  # seconds between runs of the ticker in each dispatcher host
BATCH = 500  # triggers per transaction at most (a run continues with the next batch)
# Advisory lock: one ticker at a time per database (a key space of its own:
# the claim's per-app locks use 1869968482).
LOCK_KEY = (1869968483, 1)
# A trigger whose stored schedule no longer parses is looked at again after this.
BROKEN_RETRY = timedelta(hours=1)
# Tick keys are kept this long (beyond the longest catch-up window), then
# pruned by the ticker, PRUNE_BATCH a pass, each trigger's latest kept.
TICKS_KEPT = timedelta(days=8)
PRUNE_BATCH = 1_000


@dataclass
class TickReport:
    triggers: int = 0  # triggers looked at
    written: int = 0  # ticks written as outbox rows
    missed: int = 0  # ticks given up by catch-up policies
    missed_by: Counter = field(default_factory=Counter)  # the same, by policy
    pruned: int = 0  # old tick keys deleted
    busy: bool = False  # another ticker held the lock: this one did nothing


class CronTicker:
    def __init__(
        self, *, clock: Callable[[], datetime] = timezone.now, lookahead: timedelta = LOOKAHEAD
    ) -> None:
        self.clock, self.lookahead = clock, lookahead

    def run_once(self) -> TickReport:
        """Write every tick due within the look-ahead; returns what it did."""
        report = TickReport()
        while True:
            with transaction.atomic():
                if not fetch_one("SELECT pg_try_advisory_xact_lock(%s, %s) AS got", list(LOCK_KEY))[
                    "got"
                ]:
                    report.busy = True
                    return report
                now = self.clock()
                rows = fetch_all(
                    Q["cron_due_triggers"], {"until": now + self.lookahead, "limit": BATCH}
                )
                for row in rows:
                    try:
                        with transaction.atomic():  # one trigger's failure stays its own
                            self._tick(row, now, report)
                    except DatabaseError:
                        raise  # the connection's, not the trigger's: the pass ends
                    except Exception:
                        logger.exception("cron trigger %s: could not tick it", row["id"])
                        self._advance(row["id"], row["watermark"], now + BROKEN_RETRY, 0)
            report.triggers += len(rows)
            if len(rows) < BATCH:
                report.pruned = execute(
                    Q["prune_cron_ticks"], {"before": now - TICKS_KEPT, "limit": PRUNE_BATCH}
                )
                return report

    def _tick(self, row: dict, now: datetime, report: TickReport) -> None:
        try:
            schedule = Schedule.parse(row["schedule"], row["timezone"])
        except ScheduleError as exc:
            # Stored before a rule tightened, or written by hand: say so, and
            # do not look again every few seconds.
            logger.warning("cron trigger %s: %s; not ticking it", row["id"], exc)
            self._advance(row["id"], row["watermark"], now + BROKEN_RETRY, 0)
            return
        plan = plan_ticks(
            schedule,
            watermark=row["watermark"],
            now=now,
            catchup=Catchup(row["catchup"]),
            window=timedelta(seconds=row["catchup_window_s"]),
            lookahead=self.lookahead,
        )
        if plan.fire:
            report.written += write_ticks(
                row, schedule, plan.fire, catch_up=plan.fire[: plan.caught_up]
            )
        report.missed += plan.missed
        report.missed_by[row["catchup"]] += plan.missed
        following = schedule.next_fires(plan.watermark, 1)
        self._advance(row["id"], plan.watermark, following[0] if following else None, plan.missed)

    @staticmethod
    def _advance(trigger_id, watermark, next_tick_at, missed: int) -> None:
        execute(
            Q["advance_cron_trigger"],
            {
                "trigger_id": trigger_id,
                "watermark": watermark,
                # Never fires again (within years): far ahead, not NULL (NULL
                # means "not computed yet" and is read first).
                "next_tick_at": next_tick_at or watermark + timedelta(days=366),
                "missed": missed,
            },
        )


def write_ticks(
    row: dict,
    schedule: Schedule,
    at: list[datetime],
    *,
    run_now: bool = False,
    catch_up: list[datetime] = (),  # type: ignore[assignment]
) -> int:
    """Write the ticks `at` of the trigger `row` (a cron_due_triggers row) as
    outbox rows, skipping any written before; returns how many were new.
    `catch_up`: those of them that make up for missed ticks (their events
    say so, and overlap policies leave them alone)."""
    return execute(
        Q["write_cron_ticks"],
        {
            "trigger_id": row["id"],
            "app_id": row["app_id"],
            "app_slug": row["app_slug"],
            "script_id": row["script_id"],
            "principal": row["registered_by_principal"],
            "name": row["name"],
            "schedule": schedule.expression,
            "timezone": schedule.timezone,
            "at": at,
            "run_now": run_now,
            "catch_up": list(catch_up),
        },
    )


@dataclass(frozen=True)
class Overlaps:
    """What the overlap policies say of some claimed ticks."""

    drop: frozenset[uuid.UUID] = frozenset()  # not to run at all
    wait: frozenset[uuid.UUID] = frozenset()  # to run once the earlier tick is done


def overlaps(rows: Sequence[OutboxRow]) -> Overlaps:
    """Apply each trigger's overlap policy to claimed cron ticks (the
    dispatcher asks before running them; docs/triggers.md, "Overlap"):
    while an earlier tick of the trigger is still in the outbox, `skip`
    drops the tick; `buffer_one` lets it wait for that one, and drops it when
    another already waits; `allow` runs it. Run-now and caught-up ticks
    always run (and count as earlier ticks for the ones after them)."""
    ticks = [
        r
        for r in rows
        if r.source_kind == SourceKind.CRON
        and r.trigger_id is not None
        and isinstance(r.payload, dict)
        and isinstance(r.payload.get("scheduled_at"), str)
        # Asked for on purpose: a run-now click, a missed tick caught up.
        and not r.payload.get("run_now")
        and not r.payload.get("catch_up")
    ]
    if not ticks:
        return Overlaps()
    found = fetch_all(
        Q["cron_overlaps"],
        {
            "ids": [r.id for r in ticks],
            "triggers": [r.trigger_id for r in ticks],
            "ats": [r.payload["scheduled_at"] for r in ticks],
        },
    )
    drop, wait = set(), set()
    for f in found:
        if f["earlier"] == 0:
            continue
        if f["overlap"] == Overlap.BUFFER_ONE and f["earlier"] == 1:
            wait.add(f["id"])
        else:
            drop.add(f["id"])
    return Overlaps(frozenset(drop), frozenset(wait))


def run_now(trigger_id: uuid.UUID) -> bool:
    """Write one extra tick of a cron trigger, due at once (admin's "run now"):
    not a moved tick, its schedule goes on. False when it is not a cron
    trigger, or is disabled."""
    with transaction.atomic():
        row = fetch_one(Q["cron_trigger_for_run_now"], {"id": trigger_id})
        if row is None:
            return False
        schedule = Schedule.parse(row["schedule"], row["timezone"])
        return write_ticks(row, schedule, [timezone.now()], run_now=True) > 0
