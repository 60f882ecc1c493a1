"""DeliveryLog on PostgreSQL: named queries from outbox/sql/delivery_log.sql."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from django.db import DatabaseError, connection, transaction

from outbox.storage.delivery_log import PARTITIONS_AHEAD, Attempt, Rollups, to_json
from picloud.db.sqlexec import execute, fetch_all, fetch_one
from picloud.db.sqlfiles import load_queries

Q = load_queries("outbox", "delivery_log.sql")
logger = logging.getLogger("picloud.delivery_log")

# How long dropping a day waits for its lock: DROP needs the parent's
# exclusive lock, and inserts queue behind a waiting DROP. A day not
# dropped now is dropped by the next round.
DROP_LOCK_TIMEOUT = "200ms"
# How long making a day waits for a lock (attaching it takes the default
# partition's); the hosts' source thread (cron ticks, queue batches) waits with it.
MAKE_LOCK_TIMEOUT = "1s"
# The per-minute rollups and backlog samples feed the dashboard's last day;
# kept a little longer, then deleted (small tables: one row per app and minute).
MINUTES_KEPT_DAYS = 2


def _at(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


class PgDeliveryLog:
    def write(self, attempts: Sequence[Attempt]) -> int:
        if not attempts:
            return 0
        return fetch_one(Q["write"], {"attempts": to_json(attempts)})["written"]  # type: ignore[index]

    def add_rollups(self, rollups: Rollups) -> None:
        if rollups.minutes:
            keys = sorted(rollups.minutes)
            execute(
                Q["add_minutes"],
                {
                    "apps": [app for app, _ in keys],
                    "minutes": [_at(minute * 60) for _, minute in keys],
                    "succeeded": [rollups.minutes[k][0] for k in keys],
                    "failed": [rollups.minutes[k][1] for k in keys],
                },
            )
        if rollups.hours:
            keys = sorted(rollups.hours)
            entries = [rollups.hours[k] for k in keys]
            execute(
                Q["add_hours"],
                {
                    "triggers": [trigger for trigger, _ in keys],
                    "hours": [_at(hour * 3600) for _, hour in keys],
                    "apps": [e[0] for e in entries],
                    "succeeded": [e[1] for e in entries],
                    "failed": [e[2] for e in entries],
                    "last_ok": [_at(e[3]) for e in entries],
                    "last_failed": [_at(e[4]) for e in entries],
                    "durations": [n for e in entries for n in e[5]],
                    "width": len(entries[0][5]),
                },
            )

    def make_partitions(self, ahead: int = PARTITIONS_AHEAD) -> list[str]:
        """(Another host making them meanwhile: this one makes none. A lock
        held past MAKE_LOCK_TIMEOUT — a long read of the default partition,
        a dump — fails the round; the next one makes them: days are made a
        week ahead.)"""
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL lock_timeout = '{MAKE_LOCK_TIMEOUT}'")
            return [r["name"] for r in fetch_all(Q["make_partitions"], {"ahead": ahead})]

    def drop_expired(self, ok_days: int, failed_days: int) -> list[str]:
        days = {"ok_days": ok_days, "failed_days": failed_days}
        dropped = []
        for name in [r["name"] for r in fetch_all(Q["expired"], days)]:
            try:
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute(f"SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'")
                    # The name comes from the catalog (delivery_log_expired), never from input.
                    cursor.execute(f'DROP TABLE "{name}"')
            except DatabaseError as exc:
                logger.warning("delivery log: could not drop %s yet (%s)", name, exc)
                continue
            dropped.append(name)
        execute(Q["drop_default_expired"], days)
        execute(
            Q["drop_rollups"],
            {"days": max(ok_days, failed_days), "minute_days": MINUTES_KEPT_DAYS},
        )
        return dropped

    def sample_backlog(self) -> int:
        """Record each app's backlog for this minute (once per minute cluster-wide)."""
        return execute(Q["sample_backlog"])
