"""The outbox's gauges for /metrics, read from PostgreSQL at scrape time."""

from __future__ import annotations

from dataclasses import dataclass

from picloud.db.sqlexec import fetch_all, fetch_one
from picloud.db.sqlfiles import load_queries

Q = load_queries("outbox", "gauges.sql")

# Per-app series are for the busiest apps only, so a scrape carries at most
# TOP_APPS app labels however many tenants there are; the rest are summed.
TOP_APPS = 10
# An app's rows are counted up to this many: it bounds a scrape's reads at
# apps x this, however large one app's backlog grows (docs/dispatcher.md).
APP_COUNT_CAP = 10_000


@dataclass(frozen=True)
class AppLoad:
    slug: str
    due: int  # due rows, counted up to APP_COUNT_CAP
    in_flight: int  # rows whose lease runs, counted up to APP_COUNT_CAP


@dataclass(frozen=True)
class BusiestApps:
    top: list[AppLoad]  # by due rows, most first (then rows in flight, then app id)
    other_due: int  # summed over every app not in `top`
    other_in_flight: int


class PgOutboxGauges:
    def in_flight(self) -> int:
        """Rows in flight on every process of every cluster."""
        return fetch_one(Q["in_flight"])["in_flight"]  # type: ignore[index]

    def busiest_apps(self, top: int = TOP_APPS, count_cap: int = APP_COUNT_CAP) -> BusiestApps:
        if top < 1 or count_cap < 1:
            raise ValueError(f"top={top} and count_cap={count_cap} must both be at least 1")
        rows = fetch_all(Q["busiest_apps"], {"top": top, "count_cap": count_cap})
        ranked = sorted((r for r in rows if r["rank"] is not None), key=lambda r: r["rank"])
        [other] = [r for r in rows if r["rank"] is None]
        return BusiestApps(
            top=[AppLoad(r["slug"], r["due"], r["in_flight"]) for r in ranked],
            other_due=int(other["due"]),
            other_in_flight=int(other["in_flight"]),
        )
