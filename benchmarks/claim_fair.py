"""Claim time at scale: the fair claim (outbox_claim) beside the old FIFO claim.

    make bench   (= .venv/bin/python benchmarks/claim_fair.py [--apps 1000] [--rows-per-app 1000])

Loads 1,000,000 due rows across 1,000 apps (one script each) into a scratch
database of its own, `bench_claim` (on DATABASE_URL's server), then times
claims of 100 rows on one connection, each acknowledging the batch before
(the dispatcher's steady state): first the FIFO claim the outbox used before
fair claiming, then the fair claim, on the same data. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from benchmarks.run import machine, scratch_database, write_report  # noqa: E402
from outbox.storage.repository import CLAIM_QUANTUM  # noqa: E402
from picloud.config import ConcurrencyConfig  # noqa: E402
from picloud.db.pgconn import database_url  # noqa: E402

BENCH_DB = "bench_claim"
BEGIN, END = "<!-- claim-benchmark:begin -->", "<!-- claim-benchmark:end -->"
LIMIT = 100
LEASE = 300.0

# The claim before fair claiming (outbox/sql/queries.sql at the time), acks included.
FIFO_CLAIM = """
WITH acked AS (
    DELETE FROM outbox WHERE id = ANY (%(ack)s::uuid[])
),
due AS (
    SELECT id FROM outbox WHERE due_at <= NOW() ORDER BY due_at LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE outbox AS o
SET attempts = o.attempts + 1, due_at = NOW() + make_interval(secs => %(lease)s)
WHERE o.id = ANY (ARRAY(SELECT id FROM due))
RETURNING o.id, o.app_id
"""
# As PgOutboxRepo.claim_due calls it: the default app cap and the quantum.
FAIR_CLAIM = (
    "SELECT id, app_id FROM outbox_claim(%(limit)s, %(lease)s, %(ack)s::uuid[], "
    f"%(after)s::uuid, {ConcurrencyConfig().app_max_concurrency}, {CLAIM_QUANTUM})"
)


def prepare(apps: int, rows_per_app: int) -> str:
    admin, info = scratch_database(BENCH_DB)
    env = {**os.environ, "DATABASE_URL": database_url(admin, BENCH_DB)}
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=PROJECT, env=env, check=True
    )
    started = time.perf_counter()
    with psycopg.connect(info, autocommit=True) as c:
        c.execute("SET synchronous_commit = off")
        c.execute(
            "INSERT INTO auth_user (username, password, is_superuser, is_staff, is_active, "
            "first_name, last_name, email, date_joined) "
            "VALUES ('bench', '', false, false, true, '', '', '', now())"
        )
        c.execute("INSERT INTO principals (user_id) SELECT id FROM auth_user")
        c.execute(
            "INSERT INTO apps (slug, name) SELECT 'bench-' || g, 'Bench ' || g "
            "FROM generate_series(1, %s) g",
            [apps],
        )
        c.execute(
            "INSERT INTO scripts (app_id, name, handler) SELECT id, 'noop', 'picloud.noop' FROM apps"
        )
        # Rows of all apps interleaved in due order, as many tenants writing at once.
        c.execute(
            """
            INSERT INTO outbox (app_id, source_kind, script_id, run_as_principal, payload, due_at)
            SELECT s.app_id, 'kv', s.id, p.id, jsonb_build_object('n', g),
                   now() - interval '1 hour' + make_interval(secs => g * 0.001 + random())
            FROM generate_series(1, %s) g
            CROSS JOIN scripts s CROSS JOIN principals p
            """,
            [rows_per_app],
        )
        c.execute("VACUUM ANALYZE outbox")
        c.execute("VACUUM ANALYZE apps")
        c.execute("VACUUM ANALYZE scripts")
        (count,) = c.execute("SELECT count(*) FROM outbox").fetchone()
    print(f"loaded {count} rows in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return info


def time_claims(info: str, query: str, claims: int) -> tuple[list[float], int]:
    """Seconds per claim (after 5 warm-up claims), and the apps served."""
    seconds, apps = [], set()
    ack: list[str] = []
    after = None
    with psycopg.connect(info, autocommit=True) as c:
        for n in range(claims + 5):
            params = {"limit": LIMIT, "lease": LEASE, "ack": ack, "after": after}
            started = time.perf_counter()
            rows = c.execute(query, params).fetchall()
            elapsed = time.perf_counter() - started
            assert len(rows) == LIMIT, f"claimed {len(rows)} rows"
            ack = [str(r[0]) for r in rows]
            after = rows[-1][1]
            if n >= 5:
                seconds.append(elapsed)
                apps.update(r[1] for r in rows)
    return seconds, len(apps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", type=int, default=1000)
    parser.add_argument("--rows-per-app", type=int, default=1000)
    parser.add_argument("--claims", type=int, default=200)
    parser.add_argument("--no-write", action="store_true", help="print, do not touch docs/")
    args = parser.parse_args()
    info = prepare(args.apps, args.rows_per_app)
    results = {}
    for name, query in (("FIFO (before)", FIFO_CLAIM), ("fair (outbox_claim)", FAIR_CLAIM)):
        results[name] = time_claims(info, query, args.claims)
    with psycopg.connect(info) as c:
        (version,) = c.execute("SHOW server_version").fetchone()
    command = (
        "make bench"
        if len(sys.argv) == 1
        else "python benchmarks/claim_fair.py " + " ".join(sys.argv[1:])
    )
    total = args.apps * args.rows_per_app
    lines = [
        BEGIN,
        f"## The claim at {total:,} due rows across {args.apps:,} apps",
        "",
        f"- Command: `{command}`",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {machine()}",
        f"- PostgreSQL {version}; a scratch database `{BENCH_DB}`, one connection, claims of "
        f"{LIMIT} rows each acknowledging the batch before (the dispatcher's steady state).",
        "",
        "| claim | claims | median ms | p95 ms | distinct apps served |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, (seconds, apps) in results.items():
        ms = sorted(s * 1000 for s in seconds)
        p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
        lines.append(f"| {name} | {len(ms)} | {statistics.median(ms):.2f} | {p95:.2f} | {apps} |")
    lines += [
        "",
        "The fair claim visits apps in turn (a skip scan, one index descent per app), "
        "counts each app's rows in flight under its lock, and leases what it took in one "
        "statement; the FIFO claim it replaced takes the oldest due rows of any app. "
        "Target: a few milliseconds at this size.",
        END,
    ]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_report(section, BEGIN, END)


if __name__ == "__main__":
    main()
