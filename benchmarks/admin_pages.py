"""Admin pages at 1,000,000 outbox rows and dead letters; writes docs/benchmarks.md.

Every list, change page and common filter, timed on a big outbox and
dead-letter table; the section written is its own.

    make bench-admin     (= .venv/bin/python benchmarks/admin_pages.py)

One PostgreSQL (DATABASE_URL, or the embedded one), a scratch database
`picloud_bench_admin`, migrated, then filled in SQL (INSERT ... SELECT over
generate_series): APPS apps with their scripts, a few hundred triggers of
every kind, topics, queues, KV entries, OUTBOX_ROWS waiting outbox rows
spread unevenly over the apps and their triggers (most due in the past or
future, some leased, retried ones with errors) and DEAD_LETTERS dead
letters, UNRESOLVED of them unresolved; then VACUUM ANALYZE. Each page of
PAGES is requested with Django's test client in this process, logged in
as a superuser and as an app admin of three of the apps (per-app scoping
changes the queries), three times: the best is the page's server time (a
fourth request counts its queries). Target (issue: admin that stays fast at
scale): every page <= 300 ms.

The fill is a list of steps (FILL) and the pages a list (PAGES): a table
another feature adds is one more step, its pages more entries. `--reuse`
times the pages again on the database a previous run filled, migrated to
the code at hand, which is quicker while working on a page.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from benchmarks.run import (  # noqa: E402
    admin_settings,
    conninfo,
    machine,
    scratch_database,
    section_main,
    start_django,
)
from picloud.db.pgconn import database_url  # noqa: E402

BENCH_DB = "picloud_bench_admin"
BEGIN, END = "<!-- admin-benchmark:begin -->", "<!-- admin-benchmark:end -->"
TARGET_MS = 300.0
RUNS = 3  # requests per page and user; the best counts

APPS = 12
MEMBER_APPS = ("app-01", "app-05", "app-09")  # the member's: the busiest app and two others
SCRIPTS_PER_APP = 20
TRIGGERS_PER_APP = 25
TOPICS = ("orders:created", "orders:paid", "users:signup", "billing:invoice", "audit:event")
QUEUES = ("work-1", "work-2", "work-3")
OUTBOX_ROWS = 1_000_000
DEAD_LETTERS = 1_000_000
UNRESOLVED = 100_000
SEARCH_COMMON = "timeout"  # one message of eight: half the dead letters (they keep four)
SEARCH_RARE = "o-424242"  # one order number (and the few longer ones it starts)

# Failure messages the fill cycles through; each row appends its order number.
ERRORS = (
    "TimeoutError: the webhook did not answer within 10 s",
    "HTTP 503 Service Unavailable from https://hooks.example.com/orders",
    "ConnectionRefusedError: [Errno 111] Connection refused",
    "KeyError: 'customer_id'",
    "ValueError: invalid literal for int() with base 10: 'n/a'",
    "HTTP 429 Too Many Requests: retry after 30 s",
    "PermissionDenied: the principal lacks script:invoke in this app",
    "RuntimeError: the payment provider declined the order",
)


@dataclass
class World:
    """What the fill made that the pages refer to."""

    conninfo: str
    root: object = None  # the superuser
    member: object = None  # an app admin of MEMBER_APPS
    root_principal: str = ""
    member_principal: str = ""
    samples: dict[str, str] = field(default_factory=dict)  # SAMPLES' names -> ids
    fill_seconds: dict[str, float] = field(default_factory=dict)

    def sql(self, statement: str, params=None):
        with psycopg.connect(self.conninfo, autocommit=True) as c:
            c.execute("SET synchronous_commit = off")
            cur = c.execute(statement, params)
            return cur.fetchall() if cur.description else None


# --- The fill: steps in order, each one function of the World. ---------------


def fill_people(w: World) -> None:
    from django.contrib.auth import get_user_model

    from picloud.models import principal_for

    users = get_user_model()
    w.root = users.objects.create_superuser("root", "root@example.com", None)
    w.member = users.objects.create_user("operator", is_staff=True)
    w.root_principal = str(principal_for(w.root).pk)
    w.member_principal = str(principal_for(w.member).pk)


def fill_apps(w: World) -> None:
    w.sql(
        "INSERT INTO apps (slug, name) "
        "SELECT 'app-' || lpad(g::text, 2, '0'), 'App ' || g FROM generate_series(1, %s) g",
        [APPS],
    )
    w.sql(
        "INSERT INTO app_memberships (app_id, principal_id, role) "
        "SELECT id, %s, 'admin' FROM apps WHERE slug = ANY(%s)",
        [w.member_principal, list(MEMBER_APPS)],
    )
    w.sql(
        "INSERT INTO scripts (app_id, name, handler) "
        "SELECT a.id, 'script-' || lpad(g::text, 2, '0'), 'picloud.noop' "
        "FROM apps a CROSS JOIN generate_series(1, %s) g",
        [SCRIPTS_PER_APP],
    )
    w.sql(
        "INSERT INTO topics (app_id, name) SELECT a.id, t FROM apps a CROSS JOIN unnest(%s::text[]) t",
        [list(TOPICS)],
    )
    w.sql(
        "INSERT INTO queues (app_id, name) SELECT a.id, q FROM apps a CROSS JOIN unnest(%s::text[]) q",
        [list(QUEUES)],
    )
    w.sql(
        "INSERT INTO queue_messages (queue_id, body, sent_at, vt) "
        "SELECT q.id, jsonb_build_object('n', g), now() - make_interval(secs => g), "
        "now() - make_interval(secs => g) FROM queues q CROSS JOIN generate_series(1, 1000) g"
    )
    w.sql(
        "INSERT INTO kv_entries (app_id, collection, key, value) "
        "SELECT a.id, 'orders', 'o-' || g, jsonb_build_object('total', g, 'items', jsonb_build_array(g)) "
        "FROM apps a CROSS JOIN generate_series(1, 2000) g"
    )


def fill_triggers(w: World) -> None:
    # Per app: 12 kv, 4 cron, 4 pub/sub, 2 queue, 1 email and 2 dead-letter
    # triggers, one in ten disabled, spread over the app's scripts.
    w.sql(
        """
        INSERT INTO triggers (app_id, kind, script_id, name, registered_by_principal, enabled)
        SELECT s.app_id,
               CASE WHEN g <= 12 THEN 'kv' WHEN g <= 16 THEN 'cron' WHEN g <= 20 THEN 'pubsub'
                    WHEN g <= 22 THEN 'queue' WHEN g = 23 THEN 'email' ELSE 'dead_letter' END,
               s.id, 'trigger-' || lpad(g::text, 2, '0'), %s, g %% 10 <> 7
        FROM generate_series(1, %s) g
        JOIN scripts s ON s.name = 'script-' || lpad(((g - 1) %% %s + 1)::text, 2, '0')
        """,
        [w.root_principal, TRIGGERS_PER_APP, SCRIPTS_PER_APP],
    )
    w.sql(
        "INSERT INTO kv_trigger_details (trigger_id, collection, ops) "
        "SELECT id, CASE WHEN name < 'trigger-07' THEN 'orders:*' ELSE 'c-' || name END, "
        "'{insert,update}' FROM triggers WHERE kind = 'kv'"
    )
    w.sql(
        "INSERT INTO cron_trigger_details (trigger_id, schedule, timezone) "
        "SELECT id, '*/5 * * * *', 'Europe/Paris' FROM triggers WHERE kind = 'cron'"
    )
    w.sql(
        "INSERT INTO pubsub_trigger_details (trigger_id, topic) "
        "SELECT id, CASE WHEN name = 'trigger-17' THEN '*' ELSE 'orders:*' END "
        "FROM triggers WHERE kind = 'pubsub'"
    )
    w.sql(
        "INSERT INTO queue_trigger_details (trigger_id, app_id, queue_id) "
        "SELECT t.id, t.app_id, q.id FROM triggers t JOIN queues q ON q.app_id = t.app_id "
        "AND q.name = CASE t.name WHEN 'trigger-21' THEN 'work-1' ELSE 'work-2' END "
        "WHERE t.kind = 'queue'"
    )
    w.sql(
        "INSERT INTO email_trigger_details (trigger_id, local_part) "
        "SELECT id, 'orders' FROM triggers WHERE kind = 'email'"
    )
    w.sql(
        "INSERT INTO dead_letter_trigger_details (trigger_id, app_id) "
        "SELECT id, app_id FROM triggers WHERE kind = 'dead_letter'"
    )
    # A day of ticks every five minutes per cron trigger: the list's "last fire".
    w.sql(
        "INSERT INTO cron_ticks (trigger_id, scheduled_at) "
        "SELECT t.id, date_trunc('hour', now()) - make_interval(mins => 5 * g) "
        "FROM triggers t CROSS JOIN generate_series(0, 287) g WHERE t.kind = 'cron'"
    )
    # What the outbox and dead-letter rows are spread over: every trigger, and
    # per app the scripts invoked over HTTP (or scheduled) and outbound mail,
    # numbered app by app so that a skewed draw of n favours the first apps.
    w.sql(
        """
        CREATE UNLOGGED TABLE bench_targets AS
        SELECT row_number() OVER (ORDER BY a.slug, x.name)::int AS n, x.*
        FROM (
            SELECT t.app_id, t.id AS trigger_id, t.script_id, t.kind AS source_kind, t.name,
                   q.queue_id
            FROM triggers t LEFT JOIN queue_trigger_details q ON q.trigger_id = t.id
            UNION ALL
            SELECT s.app_id, NULL, s.id,
                   CASE WHEN s.name = 'script-04' THEN 'email_send' ELSE 'invoke' END, s.name,
                   NULL
            FROM scripts s WHERE s.name <= 'script-04'
        ) x JOIN apps a ON a.id = x.app_id
        """
    )


def _payload_sql(g: str) -> str:
    """A row's payload by its source, as the event sources write them: a
    topic's publish names the topic, a queue's batch its queue."""
    return f"""CASE t.source_kind
        WHEN 'pubsub' THEN jsonb_build_object('topic', (%(topics)s::text[])[1 + {g} %% 5],
                                              'message', jsonb_build_object('n', {g}))
        WHEN 'queue' THEN jsonb_build_object('queue_id', t.queue_id,
                                             'messages', jsonb_build_array({g}))
        WHEN 'kv' THEN jsonb_build_object('collection', 'orders', 'key', 'o-' || {g},
                                          'op', 'insert')
        ELSE jsonb_build_object('n', {g})
    END"""


def _errors_sql(n: str) -> str:
    """A failure message chosen by the integer expression `n`, with its order number."""
    array = "ARRAY[" + ", ".join("'" + e.replace("'", "''") + "'" for e in ERRORS) + "]"
    # (%% is a literal % in a statement with parameters.)
    return f"({array})[1 + ({n}) %% {len(ERRORS)}] || ' (order o-' || ({n}) || ')'"


def fill_outbox(w: World) -> None:
    # u decides the row's state: 60 % due and never tried, 8 % due again after
    # failed attempts, 31.8 % waiting (retry backoff, cron ticks written
    # ahead, scheduled runs), 0.2 % leased (running now, within the caps).
    w.sql(
        f"""
        INSERT INTO outbox (app_id, source_kind, trigger_id, script_id, run_as_principal,
                            payload, attempts, due_at, leased_until, last_error, errors, created_at)
        SELECT t.app_id, t.source_kind, t.trigger_id, t.script_id, %(root)s, {_payload_sql("g")},
               CASE WHEN u < 0.60 THEN 0 WHEN u < 0.68 THEN 1 + g %% 4
                    WHEN u < 0.84 THEN 0 WHEN u < 0.998 THEN 1 + g %% 4 ELSE 1 END,
               CASE WHEN u < 0.68 THEN now() - make_interval(secs => random() * 7200)
                    WHEN u < 0.998 THEN now() + make_interval(secs => random() * 36000)
                    ELSE now() + interval '5 minutes' END,
               CASE WHEN u >= 0.998 THEN now() + interval '5 minutes' END,
               CASE WHEN (u >= 0.60 AND u < 0.68) OR u >= 0.84 THEN {_errors_sql("g")} END,
               CASE WHEN (u >= 0.60 AND u < 0.68) OR u >= 0.84
                    THEN jsonb_build_array({_errors_sql("g")}) ELSE '[]'::jsonb END,
               now() - make_interval(secs => 7200 + random() * 3600)
        FROM (
            SELECT g, random() AS u,
                   1 + floor(random() ^ 2 * (SELECT count(*) FROM bench_targets))::int AS n
            FROM generate_series(1, %(rows)s) g
        ) x
        JOIN bench_targets t USING (n)
        """,
        {"root": w.root_principal, "topics": list(TOPICS), "rows": OUTBOX_ROWS},
    )


def fill_dead_letters(w: World) -> None:
    # The first UNRESOLVED letters are unresolved and from the last week;
    # the rest, over 30 days, were replayed, ignored or handled by scripts.
    w.sql(
        f"""
        INSERT INTO dead_letters (app_id, source_kind, trigger_id, script_id, run_as_principal,
                                  outbox_id, payload, last_error, errors, attempts, depth,
                                  created_at, resolution, resolved_at, resolved_by, note)
        SELECT t.app_id, t.source_kind, t.trigger_id, t.script_id, %(root)s,
               gen_random_uuid(), {_payload_sql("g")}, {_errors_sql("g")},
               jsonb_build_array({_errors_sql("g + 1")}, {_errors_sql("g + 2")},
                                 {_errors_sql("g + 3")}, {_errors_sql("g")}),
               4, 0, created, r,
               CASE WHEN r IS NOT NULL THEN created + make_interval(secs => u * 86400) END,
               CASE WHEN r IN ('replayed', 'ignored') THEN %(root)s::uuid END,
               CASE WHEN r = 'ignored' THEN 'known flake, see the provider''s status page'
                    ELSE '' END
        FROM (
            SELECT g, u, 1 + floor(random() ^ 2 * (SELECT count(*) FROM bench_targets))::int AS n,
                   CASE WHEN g <= %(unresolved)s THEN NULL WHEN u < 0.5 THEN 'replayed'
                        WHEN u < 0.8 THEN 'ignored' WHEN u < 0.95 THEN 'handled_by_script'
                        ELSE 'handler_failed' END AS r,
                   now() - make_interval(secs => CASE WHEN g <= %(unresolved)s
                                                      THEN u * 7 * 86400
                                                      ELSE u * 30 * 86400 END) AS created
            FROM (SELECT g, random() AS u FROM generate_series(1, %(rows)s) g) y
        ) x
        JOIN bench_targets t USING (n)
        """,
        {
            "root": w.root_principal,
            "topics": list(TOPICS),
            "rows": DEAD_LETTERS,
            "unresolved": UNRESOLVED,
        },
    )


LOG_ROWS = 10_000_000
LOG_DAYS = 7  # the log's rows spread over the last week, as the default retention keeps


def fill_delivery_log(w: World) -> None:
    # The days before yesterday have no partition yet (the migration makes
    # today's and the days ahead): made here, as a week of running would have.
    for back in range(2, LOG_DAYS + 1):
        for half in ("ok", "failed"):
            w.sql(
                f"""
                DO $$ DECLARE d DATE := (now() AT TIME ZONE 'UTC')::date - {back}; BEGIN
                EXECUTE format('CREATE TABLE %I PARTITION OF delivery_log_{half} FOR VALUES FROM (%L) TO (%L)',
                               delivery_log_partition({half == "failed"}, d),
                               d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
                END $$
                """
            )
    # One attempt in ten failed (the error of its dead letter or its retry);
    # a KV attempt carries its entry's key, as the dispatcher logs it.
    w.sql(
        f"""
        INSERT INTO delivery_log (outbox_id, app_id, trigger_id, script_id, source_kind, attempt,
                                  started_at, duration_ms, outcome, disposition, failed,
                                  status_code, event_key, detail)
        SELECT gen_random_uuid(), t.app_id, t.trigger_id, t.script_id, t.source_kind,
               CASE WHEN f THEN 1 + g %% 4 ELSE 1 END,
               now() - make_interval(secs => random() * %(days)s * 86400),
               (random() ^ 3 * 2000)::int,
               CASE WHEN NOT f THEN 'success' WHEN g %% 7 = 0 THEN 'timeout' ELSE 'error' END,
               CASE WHEN NOT f THEN 'done' WHEN g %% 4 = 3 THEN 'dead_letter' ELSE 'retry' END,
               f, CASE WHEN f THEN 503 ELSE 200 END,
               CASE t.source_kind WHEN 'kv' THEN 'orders/o-' || g
                                  WHEN 'pubsub' THEN (%(topics)s::text[])[1 + g %% 5] END,
               CASE WHEN f THEN {_errors_sql("g")} ELSE '' END
        FROM (
            SELECT g, random() < 0.1 AS f,
                   1 + floor(random() ^ 2 * (SELECT count(*) FROM bench_targets))::int AS n
            FROM generate_series(1, %(rows)s) g
        ) x
        JOIN bench_targets t USING (n)
        """,
        {"rows": LOG_ROWS, "days": LOG_DAYS, "topics": list(TOPICS)},
    )
    # What the dispatchers' rollups would hold: per app and minute for a day,
    # per trigger and hour for the failures' 30 days, a backlog sample a minute.
    w.sql(
        "INSERT INTO delivery_minutes (app_id, minute, succeeded, failed) "
        "SELECT a.id, date_trunc('minute', now()) - make_interval(mins => m), "
        "(random() * 600)::int, (random() * 30)::int "
        "FROM apps a CROSS JOIN generate_series(0, 1439) m"
    )
    w.sql(
        "INSERT INTO trigger_hours (trigger_id, hour, app_id, succeeded, failed, "
        "last_success_at, last_failure_at, durations) "
        "SELECT t.id, date_trunc('hour', now()) - make_interval(hours => h), t.app_id, "
        "(random() * 2000)::int, (random() * 100)::int, "
        "date_trunc('hour', now()) - make_interval(hours => h, secs => -1800), "
        "date_trunc('hour', now()) - make_interval(hours => h, secs => -900), "
        "ARRAY(SELECT (random() * 200)::int FROM generate_series(1, 13)) "
        "FROM triggers t CROSS JOIN generate_series(0, 719) h"
    )
    w.sql(
        "INSERT INTO outbox_samples (app_id, minute, due, oldest_due_at) "
        "SELECT a.id, date_trunc('minute', now()) - make_interval(mins => m), "
        "(random() * 80000)::int, now() - make_interval(mins => m + 120) "
        "FROM apps a CROSS JOIN generate_series(0, 1439) m"
    )


def fill_the_rest(w: World) -> None:
    w.sql(
        "INSERT INTO abandoned_executions (app_id, outbox_id, script_id, inbox_id, status_code, "
        "result_summary, created_at) "
        "SELECT t.app_id, gen_random_uuid(), t.script_id, gen_random_uuid(), 200, "
        "'{\"ok\": true}', now() - make_interval(secs => g * 60) "
        "FROM generate_series(1, 1000) g JOIN bench_targets t ON t.n = 1 + g % 300"
    )
    w.sql(
        "INSERT INTO script_circuits (script_id, app_id, failures, opened, open_until, last_error) "
        "SELECT id, app_id, 5, 1, now() + interval '1 minute', 'HTTP 503' "
        "FROM scripts WHERE name = 'script-07'"
    )
    w.sql(
        "INSERT INTO inbound_emails (app_id, received_at, mail_from, rcpt_to, subject, "
        "from_header, size, raw) "
        "SELECT a.id, now() - make_interval(mins => g), 'c' || g || '@example.com', "
        "ARRAY['orders@' || a.slug || '.example.com'], 'Order ' || g, 'c' || g || '@example.com', "
        "20, convert_to('Subject: Order ' || g || E'\\r\\n\\r\\nHi', 'UTF8') "
        "FROM apps a CROSS JOIN generate_series(1, 100) g"
    )
    w.sql("DROP TABLE bench_targets")


def analyze(w: World) -> None:
    w.sql("VACUUM ANALYZE")


# Steps in order. A table another feature adds (the delivery log's
# 10,000,000 rows, say) is one more step here, before analyze.
FILL: list[Callable[[World], None]] = [
    fill_people,
    fill_apps,
    fill_triggers,
    fill_outbox,
    fill_dead_letters,
    fill_delivery_log,
    fill_the_rest,
    analyze,
]

# Objects whose change pages are timed, and the filters' ids: one query
# each, in the member's busiest app (%(app)s) so that both users may open them.
SAMPLES = {
    "app": "SELECT id FROM apps WHERE id = %(app)s",
    "script": "SELECT id FROM scripts WHERE app_id = %(app)s ORDER BY name LIMIT 1",
    "trigger": "SELECT id FROM triggers WHERE app_id = %(app)s ORDER BY name LIMIT 1",
    "cron_trigger": "SELECT id FROM triggers WHERE app_id = %(app)s AND kind = 'cron' "
    "ORDER BY name LIMIT 1",
    "outbox": "SELECT id FROM outbox WHERE app_id = %(app)s AND attempts > 0 LIMIT 1",
    "scheduled_run": "SELECT id FROM outbox WHERE app_id = %(app)s AND source_kind = 'invoke' "
    "AND attempts = 0 AND leased_until IS NULL AND reply_to IS NULL AND due_at > now() LIMIT 1",
    "dead_letter": "SELECT id FROM dead_letters WHERE app_id = %(app)s AND resolution IS NULL "
    "LIMIT 1",
    "resolved_dead_letter": "SELECT id FROM dead_letters WHERE app_id = %(app)s "
    "AND resolution = 'replayed' LIMIT 1",
    "abandoned": "SELECT id FROM abandoned_executions WHERE app_id = %(app)s LIMIT 1",
    "circuit": "SELECT script_id FROM script_circuits WHERE app_id = %(app)s LIMIT 1",
    "topic": "SELECT id FROM topics WHERE app_id = %(app)s ORDER BY name LIMIT 1",
    "queue": "SELECT id FROM queues WHERE app_id = %(app)s ORDER BY name LIMIT 1",
    "kv_entry": "SELECT id FROM kv_entries WHERE app_id = %(app)s LIMIT 1",
    "inbound_email": "SELECT id FROM inbound_emails WHERE app_id = %(app)s LIMIT 1",
    "membership": "SELECT id FROM app_memberships WHERE app_id = %(app)s LIMIT 1",
    "log_outbox": "SELECT outbox_id FROM delivery_log WHERE app_id = %(app)s "
    "AND started_at > now() - interval '1 hour' LIMIT 1",
    # The "older" link of a page an hour back.
    "log_cursor": "SELECT to_char(started_at AT TIME ZONE 'UTC', "
    "'YYYY-MM-DD\"T\"HH24:MI:SS.US') || '+00:00~' || outbox_id || '~' || attempt "
    "FROM delivery_log WHERE app_id = %(app)s AND started_at < now() - interval '1 hour' "
    "AND started_at > now() - interval '2 hours' LIMIT 1",
}


def find_samples(w: World) -> None:
    (app,) = w.sql("SELECT id FROM apps WHERE slug = %s", [MEMBER_APPS[0]])[0]
    for name, query in SAMPLES.items():
        rows = w.sql(query, {"app": app})
        assert rows, f"the fill made no {name} in {MEMBER_APPS[0]}"
        w.samples[name] = str(rows[0][0])


# --- The pages. ----------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    label: str
    url_name: str  # an admin URL name
    params: dict[str, str] = field(default_factory=dict)  # "{trigger}": a sample's id
    sample: str | None = None  # the SAMPLES object a change page shows

    def url(self, samples: dict[str, str]) -> tuple[str, dict[str, str]]:
        from django.urls import reverse

        args = [samples[self.sample]] if self.sample else []
        params = {k: v.format(**samples) for k, v in self.params.items()}
        return reverse(self.url_name, args=args), params

    def query(self) -> str:
        """The query as the report shows it: a sample's id as <name>."""
        return "&".join(
            f"{k}={'<' + v[1:-1] + '>' if v.startswith('{') else v}" for k, v in self.params.items()
        )


def _list(label: str, model: str, **params: str) -> Page:
    return Page(label, f"admin:{model}_changelist", params)


def _change(label: str, model: str, sample: str) -> Page:
    return Page(label, f"admin:{model}_change", sample=sample)


TRIGGERS, OUTBOX, LETTERS = "triggers_trigger", "outbox_outboxentry", "deadletters_deadletter"
LOG = "outbox_deliveryattempt"
SEARCH_RARE_KEY = "orders/o-424242"  # one KV entry's attempts

# Timed in this order. A page another feature adds (the delivery log, the
# dashboard) is one more entry here: its admin URL name, its query, and for
# a change page the SAMPLES object it shows.
PAGES: list[Page] = [
    Page("admin index (dead-letter badge)", "admin:index"),
    _list("triggers", TRIGGERS),
    _list("triggers by app", TRIGGERS, app="{app}"),
    _list("triggers by kind", TRIGGERS, kind__exact="cron"),
    _list("triggers enabled", TRIGGERS, enabled__exact="1"),
    _list("triggers search", TRIGGERS, q="orders"),
    _list("triggers page 2", TRIGGERS, p="2"),
    _change("trigger", TRIGGERS, "trigger"),
    _change("cron trigger", TRIGGERS, "cron_trigger"),
    Page("trigger add", f"admin:{TRIGGERS}_add"),
    _list("outbox", OUTBOX),
    _list("outbox by app", OUTBOX, app="{app}"),
    _list("outbox due now", OUTBOX, due="now"),
    _list("outbox waiting", OUTBOX, due="later"),
    _list("outbox by source", OUTBOX, source_kind__exact="email_send"),
    _list("outbox by app and source", OUTBOX, app="{app}", source_kind__exact="pubsub"),
    _list("outbox search (common)", OUTBOX, q=SEARCH_COMMON),
    _list("outbox search (rare)", OUTBOX, q=SEARCH_RARE),
    _list("outbox page 2", OUTBOX, p="2"),
    _list("outbox page 50", OUTBOX, p="50"),
    _change("outbox row", OUTBOX, "outbox"),
    _list("dead letters", LETTERS),
    _list("dead letters unresolved", LETTERS, resolution="unresolved"),
    _list("dead letters replayed", LETTERS, resolution="replayed"),
    _list("dead letters by app", LETTERS, app="{app}"),
    _list("dead letters unresolved by app", LETTERS, resolution="unresolved", app="{app}"),
    _list("dead letters by source", LETTERS, source_kind__exact="queue"),
    _list("dead letters by trigger", LETTERS, trigger="{trigger}"),
    _list("dead letters by age", LETTERS, age="1d"),
    _list("dead letters search (common)", LETTERS, q=SEARCH_COMMON),
    _list("dead letters search (rare)", LETTERS, q=SEARCH_RARE),
    _list("dead letters page 2", LETTERS, p="2"),
    _list("dead letters page 50", LETTERS, p="50"),
    _change("dead letter (unresolved)", LETTERS, "dead_letter"),
    _change("dead letter (resolved)", LETTERS, "resolved_dead_letter"),
    _list("abandoned executions", "deadletters_abandonedexecution"),
    _change("abandoned execution", "deadletters_abandonedexecution", "abandoned"),
    _list("scheduled runs", "outbox_scheduledrun"),
    _change("scheduled run", "outbox_scheduledrun", "scheduled_run"),
    _list("circuit breakers", "outbox_scriptcircuit"),
    _change("circuit breaker", "outbox_scriptcircuit", "circuit"),
    _list("topics", "picloud_topic"),
    _change("topic", "picloud_topic", "topic"),
    _list("queues", "picloud_queue"),
    _change("queue", "picloud_queue", "queue"),
    _list("apps", "picloud_app"),
    _change("app (in flight, backlog)", "picloud_app", "app"),
    _list("scripts", "picloud_script"),
    _change("script (in flight, backlog)", "picloud_script", "script"),
    _list("memberships", "picloud_appmembership"),
    _change("membership", "picloud_appmembership", "membership"),
    _list("KV entries", "picloud_kventry"),
    _change("KV entry", "picloud_kventry", "kv_entry"),
    _list("inbound emails", "picloud_inboundemail"),
    _change("inbound email", "picloud_inboundemail", "inbound_email"),
    _list("API tokens", "picloud_apitoken"),
    _list("delivery log", LOG),
    _list("delivery log by app", LOG, app="{app}"),
    _list("delivery log failed", LOG, result="failed"),
    _list("delivery log timeouts", LOG, outcome="timeout"),
    _list("delivery log by trigger", LOG, trigger="{trigger}"),
    _list("delivery log by trigger, failed", LOG, trigger="{trigger}", result="failed"),
    _list("delivery log by source", LOG, kind="pubsub"),
    _list("delivery log search (outbox id)", LOG, q="{log_outbox}"),
    _list("delivery log search (key)", LOG, q=SEARCH_RARE_KEY),
    _list("delivery log, an hour back", LOG, before="{log_cursor}"),
    _list("dashboard", "outbox_deliverydashboard"),
    _list("dashboard of an app", "outbox_deliverydashboard", app="{app}"),
]


def time_page(client, page: Page, samples: dict[str, str]) -> tuple[float, int]:
    """The best of RUNS requests (ms) and the queries of one."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    url, params = page.url(samples)
    best = float("inf")
    for _ in range(RUNS):
        started = time.perf_counter()
        response = client.get(url, params)
        best = min(best, time.perf_counter() - started)
        assert response.status_code == 200, f"{page.label}: {response.status_code} at {url}"
    with CaptureQueriesContext(connection) as queries:
        client.get(url, params)
    return best * 1000, len(queries)


def run(args) -> tuple[World, dict]:
    if args.reuse:
        admin = admin_settings()
        w = World(conninfo(admin, BENCH_DB))
    else:
        admin, info = scratch_database(BENCH_DB)
        w = World(info)
    start_django(
        {
            "DATABASE_URL": database_url(admin, BENCH_DB),
            "DJANGO_DEBUG": "false",
            "DJANGO_ALLOWED_HOSTS": "testserver",
            "PICLOUD_LOG_LEVEL": "WARNING",
            "PICLOUD_DATABASE_ANNOUNCED": "1",
        }
    )
    if args.reuse:
        from django.contrib.auth import get_user_model

        w.root, w.member = (get_user_model().objects.get(username=n) for n in ("root", "operator"))
        analyze(w)  # what migrating again added
    else:
        for step in FILL:
            started = time.perf_counter()
            step(w)
            w.fill_seconds[step.__name__] = time.perf_counter() - started
            print(f"{step.__name__}: {w.fill_seconds[step.__name__]:.0f} s", flush=True)
    find_samples(w)

    from django.test import Client

    results: dict[str, dict[str, tuple[float, int]]] = {}
    for who, user in (("superuser", w.root), ("member", w.member)):
        client = Client()
        client.force_login(user)
        for page in PAGES:
            if args.only and not any(o in page.label for o in args.only):
                continue
            ms, queries = time_page(client, page, w.samples)
            results.setdefault(page.label, {})[who] = (ms, queries)
            print(f"{who:9} {ms:8.1f} ms {queries:3} queries  {page.label}", flush=True)
    return w, results


def render(w: World, results: dict, command: str) -> str:
    version = w.sql("SHOW server_version")[0][0]
    counts = dict(
        w.sql(
            "SELECT 'outbox', count(*) FROM outbox UNION ALL "
            "SELECT 'dead letters', count(*) FROM dead_letters UNION ALL "
            "SELECT 'unresolved', count(*) FROM dead_letters WHERE resolution IS NULL UNION ALL "
            "SELECT 'triggers', count(*) FROM triggers UNION ALL "
            "SELECT 'log', count(*) FROM delivery_log UNION ALL "
            "SELECT 'scripts', count(*) FROM scripts"
        )
    )
    over = []
    for label, by in results.items():
        slow = [who for who, (ms, _) in by.items() if ms > TARGET_MS]
        if slow:
            over.append(f"{label} ({', '.join(slow)})")
    lines = [
        BEGIN,
        "## Admin pages at scale",
        "",
        f"- Command: `{command}`",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {machine()}",
        f"- PostgreSQL {version}; a scratch database `{BENCH_DB}` holding {APPS} apps, "
        f"{counts['scripts']:,} scripts, {counts['triggers']:,} triggers, "
        f"{counts['outbox']:,} waiting outbox rows and {counts['dead letters']:,} dead letters "
        f"({counts['unresolved']:,} unresolved), {counts['log']:,} delivery log rows over "
        f"{LOG_DAYS} days, after VACUUM ANALYZE"
        + (f"; filled in {sum(w.fill_seconds.values()):.0f} s." if w.fill_seconds else "."),
        f"- Server time: Django's test client in the benchmark's process (middleware, "
        f"queries, templates), best of {RUNS}; the superuser sees every app, the member "
        f"administers {len(MEMBER_APPS)} of them (the busiest among them). Queries: per "
        "request, the member's.",
        "",
        "| page | query | superuser (ms) | member (ms) | queries |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    by_label = {p.label: p for p in PAGES}
    for label, by in results.items():
        query = by_label[label].query()
        root = by.get("superuser", (float("nan"), 0))[0]
        member, queries = by.get("member", (float("nan"), 0))
        shown = f"`?{query}`" if query else ""
        lines.append(f"| {label} | {shown} | {root:.0f} | {member:.0f} | {queries} |")
    lines += [
        "",
        f"Target: every page <= {TARGET_MS:.0f} ms. "
        + (f"Over it: {', '.join(over)}." if over else "Every page is within it."),
        END,
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", action="append", help="time only pages whose label contains this (repeatable)"
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help=f"time the pages on the database `{BENCH_DB}` a previous run filled "
        "(migrated to this code first), not a new one",
    )
    section_main(parser, "bench-admin", run, render, BEGIN, END)


if __name__ == "__main__":
    main()
