"""The delivery log's disk use per million attempts; writes its section of
docs/benchmarks.md.

    make bench-log   (also part of make bench)

A scratch database; attempts written through delivery_log_ack, the
statement the dispatcher acknowledges with, from outbox rows shaped like a
KV trigger's: 90 % successes (no answer), 10 % failures with a 200-character
error; then each partition's heap and index sizes after VACUUM. The mix is
a parameter: an answer logged with every success (--answer-bytes) is what
grows the log most.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.run import machine, scratch_database, section_main, start_django
from picloud.db.pgconn import database_url

BENCH_DB = "picloud_bench_log"
BEGIN, END = "<!-- delivery-log-benchmark:begin -->", "<!-- delivery-log-benchmark:end -->"
BATCH = 10_000


def run(args) -> tuple[dict, dict]:
    admin, conninfo = scratch_database(BENCH_DB)
    start_django({"DATABASE_URL": database_url(admin, BENCH_DB), "DJANGO_DEBUG": "false"})
    from django.contrib.auth import get_user_model

    from picloud.models import App, AppMembership, Script, principal_for
    from triggers.pg_repository import PgTriggerRepo
    from triggers.repository import KvSpec, NewTrigger

    app = App.objects.create(slug="bench", name="bench")
    script = Script.objects.create(app=app, name="s", runtime="python", handler="picloud.noop")
    principal = principal_for(get_user_model().objects.create_user("bench", password=None))
    AppMembership.objects.create(app=app, principal=principal, role="admin")
    trigger = PgTriggerRepo().create(
        NewTrigger(
            app_id=app.id,
            kind="kv",
            script_id=script.id,
            name="t",
            registered_by_principal=principal.id,
            kv=KvSpec("orders", ("insert",)),
        )
    )
    answer = "x" * args.answer_bytes
    error = "webhook answered 503: " + "e" * 178
    written = 0
    started = time.monotonic()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        while written < args.attempts:
            n = min(BATCH, args.attempts - written)
            # Rows as a KV trigger writes them, then acknowledged with their
            # attempts logged, as the dispatcher's claim does.
            ids = [
                r[0]
                for r in conn.execute(
                    "INSERT INTO outbox (app_id, source_kind, trigger_id, script_id, "
                    "run_as_principal, payload, attempts) "
                    "SELECT %s, 'kv', %s, %s, %s, jsonb_build_object('collection', 'orders', "
                    "'key', 'o-' || g, 'op', 'insert', 'new', jsonb_build_object('total', g)), 1 "
                    "FROM generate_series(%s::integer, %s::integer) g RETURNING id",
                    [app.id, trigger.id, script.id, principal.id, written, written + n - 1],
                ).fetchall()
            ]
            now = time.time()
            failed = [i % 10 == 9 for i in range(n)]
            conn.execute(
                "SELECT delivery_log_ack(%s::uuid[], %s::float8[], %s::integer[], %s::text[], "
                "%s::integer[], %s::text[])",
                [
                    ids,
                    [now - i / 1000 for i in range(n)],
                    [3 + i % 40 for i in range(n)],
                    ["error" if f else "success" for f in failed],
                    [503 if f else 200 for f in failed],
                    [error if f else answer for f in failed],
                ],
            )
            written += n
        seconds = time.monotonic() - started
        conn.execute("VACUUM ANALYZE delivery_log")
        sizes = conn.execute(
            "SELECT sum(pg_table_size(c.oid))::bigint, sum(pg_indexes_size(c.oid))::bigint "
            "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent "
            "WHERE p.relname IN ('delivery_log_ok', 'delivery_log_failed')"
        ).fetchone()
        pg_version = conn.execute("SHOW server_version").fetchone()[0]
    per_million = 1_000_000 / args.attempts
    return (
        {"pg": pg_version, "args": args},
        {
            "heap": sizes[0] * per_million,
            "indexes": sizes[1] * per_million,
            "seconds": seconds,
            "n": args.attempts,
        },
    )


def render(setup: dict, results: dict, command: str) -> str:
    mib = 2**20
    total = results["heap"] + results["indexes"]
    args = setup["args"]
    return "\n".join(
        [
            BEGIN,
            "## Delivery log: disk per million attempts",
            "",
            f"- Command: `{command}`",
            f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            f"- Machine: {machine()}",
            f"- PostgreSQL {setup['pg']}; Python {platform.python_version()}",
            "",
            f"{results['n']:,} attempts of a KV trigger (event key `orders/o-<n>`), 90 % "
            f"successes with a {args.answer_bytes}-byte answer, 10 % failures with a "
            "200-character error, written by `delivery_log_ack` in batches of "
            f"{BATCH:,} ({results['n'] / results['seconds']:,.0f} attempts/s with the "
            "outbox rows' own inserts and deletes), sizes after VACUUM, scaled to a million:",
            "",
            "| part | MiB per million attempts |",
            "| --- | ---: |",
            f"| rows (heap, TOAST) | {results['heap'] / mib:,.0f} |",
            f"| the four indexes | {results['indexes'] / mib:,.0f} |",
            f"| **total** | **{total / mib:,.0f}** |",
            "",
            "docs/operations.md turns this into sizing: a day's attempts times the days kept.",
            END,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=1_000_000)
    parser.add_argument("--answer-bytes", type=int, default=0)
    section_main(parser, "bench-log", run, render, BEGIN, END)


if __name__ == "__main__":
    main()
