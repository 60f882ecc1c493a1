"""The hot queries use their indexes at realistic sizes (plans, not timings)."""

import json
import re

import pytest
from django.db import DatabaseError, connection, transaction

from deadletters.pg_repository import Q as DEAD_LETTER_QUERIES
from outbox.storage.pg_gauges import Q as GAUGE_QUERIES
from outbox.storage.pg_repository import PgOutboxRepo
from tests.factories import ScriptFactory, UserFactory
from triggers.pg_repository import Q as TRIGGER_QUERIES

pytestmark = pytest.mark.django_db


def _plan(sql, params):
    with connection.cursor() as cur:
        cur.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        raw = cur.fetchone()[0]
    return json.loads(raw) if isinstance(raw, str) else raw


def _nodes(plan_node):
    yield plan_node
    for child in plan_node.get("Plans", []):
        yield from _nodes(child)


def _scans(sql, params):
    plan = _plan(sql, params)[0]["Plan"]
    return [(n["Node Type"], n.get("Relation Name"), n.get("Index Name")) for n in _nodes(plan)]


def _sql(statement, params=None):
    with connection.cursor() as cur:
        cur.execute(statement, params)


def test_list_matching_kv_uses_an_index_with_10000_triggers_in_100_apps():
    principal = UserFactory().principal
    _sql(
        "INSERT INTO apps (slug, name) SELECT 'plan-' || g, 'Plan ' || g FROM generate_series(1, 100) g"
    )
    _sql(
        "INSERT INTO scripts (app_id, name, handler) SELECT id, 'handler', 'picloud.noop' FROM apps WHERE slug LIKE 'plan-%%'"
    )
    _sql(
        """
        INSERT INTO triggers (app_id, kind, script_id, name, registered_by_principal, enabled)
        SELECT s.app_id, CASE WHEN g %% 10 = 0 THEN 'dead_letter' ELSE 'kv' END, s.id,
               'trigger-' || g, %s, g %% 7 <> 0
        FROM scripts s CROSS JOIN generate_series(1, 100) g
        WHERE s.name = 'handler'
        """,
        [principal.id],
    )
    _sql(
        """
        INSERT INTO kv_trigger_details (trigger_id, collection, ops)
        SELECT id, CASE WHEN random() < 0.5 THEN 'orders:*' ELSE 'c-' || name END, '{insert,update}'
        FROM triggers WHERE kind = 'kv'
        """
    )
    _sql("ANALYZE triggers; ANALYZE kv_trigger_details; ANALYZE dead_letter_trigger_details")
    with connection.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT app_id) FROM triggers")
        assert cur.fetchone() == (10_000, 100)
        cur.execute("SELECT app_id FROM triggers LIMIT 1")
        app_id = cur.fetchone()[0]

    scans = _scans(
        TRIGGER_QUERIES["list_matching_kv"],
        {"app_id": app_id, "collection": "orders:1", "op": "insert"},
    )
    indexes = {index for _, _, index in scans if index}
    assert "triggers_enabled_app_kind_idx" in indexes, (
        f"the app's triggers not read by index: {scans}"
    )
    assert "kv_trigger_details_pkey" in indexes, f"details not read by primary key: {scans}"
    assert not any(node == "Seq Scan" for node, _, _ in scans), f"a sequential scan: {scans}"


def test_unresolved_count_uses_the_partial_index_with_100000_resolved_rows(app):
    _sql(
        """
        INSERT INTO dead_letters (app_id, source_kind, last_error, attempts, depth,
                                  resolution, resolved_at, created_at)
        SELECT %s, 'kv', 'boom', 5, 0,
               CASE WHEN g <= 100 THEN NULL ELSE 'ignored' END,
               CASE WHEN g <= 100 THEN NULL ELSE now() END,
               now() - make_interval(secs => g)
        FROM generate_series(1, 100100) g
        """,
        [app.id],
    )
    _sql("ANALYZE dead_letters")
    for params in ({"app_ids": None}, {"app_ids": [app.id]}):
        scans = _scans(DEAD_LETTER_QUERIES["unresolved_count"], params)
        indexes = {index for _, _, index in scans if index}
        assert indexes == {"dead_letters_unresolved_idx"}, f"{params}: {scans}"
        assert not any(node == "Seq Scan" for node, _, _ in scans), scans
    with connection.cursor() as cur:
        cur.execute(DEAD_LETTER_QUERIES["unresolved_count"], {"app_ids": [app.id]})
        assert cur.fetchone()[0] == 100


def _claim_plans(claims):
    """The plans of every statement the claim runs inside outbox_claim, as
    auto_explain reports them (with actual row counts) to this client."""
    notices = []
    raw = connection.connection
    raw.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    try:
        _sql(
            "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; "
            "SET auto_explain.log_nested_statements = on; SET auto_explain.log_level = notice; "
            "SET auto_explain.log_format = json; SET auto_explain.log_analyze = on; "
            "SET auto_explain.log_timing = off; SET client_min_messages = notice"
        )
        after, ack = None, []
        for _ in range(claims):
            rows = PgOutboxRepo().claim_due(limit=100, lease=300, ack=ack, after_app=after)
            assert len(rows) == 100
            # Half the batch done by the next claim, half still running.
            after, ack = rows[-1].app_id, [r.id for r in rows[::2]]
    finally:
        _sql("SET auto_explain.log_min_duration = -1; RESET client_min_messages")
        raw.remove_notice_handler(raw._notice_handlers[-1])
    plans = [json.loads(n.split("plan:", 1)[1]) for n in notices if "plan:" in n]
    return [p for p in plans if "outbox_claim" not in p["Query Text"]]


@pytest.fixture
def fair_outbox(db):
    """100,000 due rows across 100 apps (every fifth with a capped script), some in flight."""
    principal = UserFactory().principal
    _sql(
        "INSERT INTO apps (slug, name) SELECT 'fair-' || g, 'Fair ' || g FROM generate_series(1, 100) g"
    )
    _sql(
        "INSERT INTO scripts (app_id, name, handler) "
        "SELECT id, 'handler', 'picloud.noop' FROM apps WHERE slug LIKE 'fair-%%'"
    )
    # Every fifth app has a capped script too (the claim's other path).
    _sql(
        "INSERT INTO scripts (app_id, name, handler, max_concurrency) "
        "SELECT id, 'capped', 'picloud.noop', 2 FROM apps WHERE slug LIKE 'fair-%%' "
        "AND right(slug, 1) IN ('0', '5')"
    )
    _sql(
        """
        INSERT INTO outbox (app_id, source_kind, script_id, run_as_principal, due_at)
        SELECT s.app_id, 'kv', s.id, %s, now() - make_interval(secs => g)
        FROM scripts s CROSS JOIN generate_series(1, 1000) g
        WHERE s.name = 'handler'
           OR (s.name = 'capped' AND g <= 100)
        """,
        [principal.id],
    )
    with connection.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT app_id) FROM outbox")
        assert cur.fetchone() == (102_000, 100)
    # Rows in flight, as in a running system, when the statistics are taken.
    repo = PgOutboxRepo()
    after = None
    for _ in range(10):
        after = repo.claim_due(limit=100, lease=300, after_app=after)[-1].app_id
    _sql("ANALYZE outbox; ANALYZE apps; ANALYZE scripts")


def _outbox_scans() -> tuple[int, int]:
    """(sequential, index) scans of the outbox in this transaction so far,
    nested statements (the claim function's) included."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables WHERE relname = 'outbox'"
        )
        return cur.fetchone()


def test_the_fair_claim_never_scans_the_whole_outbox(fair_outbox):
    # Works on any PostgreSQL (the embedded one has no auto_explain): the
    # transaction's own scan counters see the function's statements too.
    seq_before, idx_before = _outbox_scans()
    after, ack = None, []
    for _ in range(12):  # enough for PL/pgSQL's cached plans to turn generic
        rows = PgOutboxRepo().claim_due(limit=100, lease=300, ack=ack, after_app=after)
        assert len(rows) == 100
        after, ack = rows[-1].app_id, [r.id for r in rows[::2]]
    seq_after, idx_after = _outbox_scans()
    assert seq_after == seq_before, f"{seq_after - seq_before} sequential scans of the outbox"
    assert idx_after > idx_before


def test_the_claim_keeps_to_its_indexes_when_the_statistics_say_the_outbox_is_empty(app):
    """A queue table swings from empty to 100,000 rows between two ANALYZEs.
    Planned on "empty" statistics, the claim's statements once chose
    sequential scans: every claim then read the whole backlog (a drain fell
    from ~6,000 to ~400 rows/s). The claim must not depend on them."""
    principal = UserFactory().principal
    script = ScriptFactory(app=app)
    _sql("DELETE FROM outbox; ANALYZE outbox")
    _sql(
        "INSERT INTO outbox (app_id, source_kind, script_id, run_as_principal) "
        "SELECT %s, 'kv', %s, %s FROM generate_series(1, 20000)",
        [app.id, script.id, principal.id],
    )
    seq_before, _ = _outbox_scans()
    ack: list = []
    for _ in range(8):  # past PL/pgSQL's switch to generic plans
        rows = PgOutboxRepo().claim_due(limit=100, lease=300, ack=ack)
        ack = [r.id for r in rows]
    seq_after, _ = _outbox_scans()
    assert seq_after == seq_before, f"{seq_after - seq_before} sequential scans of the outbox"


def _auto_explain_loads() -> bool:
    try:
        with transaction.atomic():  # a savepoint: the test's transaction survives
            _sql("LOAD 'auto_explain'")
    except DatabaseError:
        return False
    return True


def test_the_fair_claim_reads_indexes_only_with_100000_due_rows_in_100_apps(fair_outbox):
    if not _auto_explain_loads():
        pytest.skip(
            "auto_explain is not built into this PostgreSQL (the embedded one): "
            "the suite's pass on a server PostgreSQL runs this; "
            "test_the_fair_claim_never_scans_the_whole_outbox runs everywhere"
        )
    # Enough claims that PL/pgSQL's cached plans turn generic, a whole turn of the apps.
    plans = _claim_plans(claims=12)
    assert plans, "auto_explain reported nothing"
    indexes, problems = set(), []
    for plan in plans:
        for node in _nodes(plan["Plan"]):
            indexes.add(node.get("Index Name"))
            # (apps and scripts fit in a page or two here: scanning them is right.)
            if node["Node Type"] == "Seq Scan" and node.get("Relation Name") == "outbox":
                problems.append("a sequential scan of the outbox")
            index = node.get("Index Name") or ""
            if index.endswith("_leased_idx") and not re.search(
                r"\b(app_id|script_id) = ", node.get("Index Cond", "")
            ):
                problems.append(f"{index} read for every app: {node.get('Index Cond')}")
            if node["Node Type"] == "Sort" and node["Actual Rows"] > 100:
                problems.append(f"a sort of {node['Actual Rows']} rows")
            if node.get("Relation Name") == "outbox" and node.get("Actual Rows", 0) > 1_000:
                problems.append(f"{node['Actual Rows']} outbox rows read by one node")
        if problems:
            raise AssertionError(f"{problems} in {plan['Query Text']!r}: {plan['Plan']}")
    expected = {
        "outbox_app_due_idx",  # next app, an app's due rows
        "outbox_app_leased_idx",  # an app's rows in flight
        "outbox_script_due_idx",  # a capped script's due rows
    }
    assert expected <= indexes, f"missing {expected - indexes}; used {indexes}"


def _analyzed_nodes(sql, params):
    with connection.cursor() as cur:
        cur.execute("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + sql, params)
        raw = cur.fetchone()[0]
    return list(_nodes((json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]))


def _outbox_reads(nodes):
    """The nodes that read the outbox or one of its indexes."""
    return [
        n
        for n in nodes
        if n.get("Relation Name") == "outbox" or n.get("Index Name", "").startswith("outbox_")
    ]


def test_the_metrics_gauges_read_indexes_only_and_at_most_the_cap_per_app():
    principal = UserFactory().principal
    _sql(
        "INSERT INTO apps (slug, name) SELECT 'gauge-' || g, 'Gauge ' || g "
        "FROM generate_series(1, 100) g"
    )
    _sql(
        "INSERT INTO scripts (app_id, name, handler) "
        "SELECT id, 'handler', 'picloud.noop' FROM apps WHERE slug LIKE 'gauge-%%'"
    )
    _sql(
        """
        INSERT INTO outbox (app_id, source_kind, script_id, run_as_principal, due_at)
        SELECT s.app_id, 'kv', s.id, %s, now() - make_interval(secs => g)
        FROM scripts s CROSS JOIN generate_series(1, 1000) g
        WHERE s.name = 'handler'
        """,
        [principal.id],
    )
    repo = PgOutboxRepo()
    after = None
    for _ in range(5):
        after = repo.claim_due(limit=100, lease=300, after_app=after)[-1].app_id
    _sql("ANALYZE outbox; ANALYZE apps")

    in_flight = _outbox_reads(_analyzed_nodes(GAUGE_QUERIES["in_flight"], {}))
    assert not any(n["Node Type"] == "Seq Scan" for n in in_flight), in_flight
    assert {n["Index Name"] for n in in_flight if "Index Name" in n} <= {
        "outbox_app_leased_idx",
        "outbox_script_leased_idx",
    }, in_flight

    cap = 50
    busiest = _outbox_reads(
        _analyzed_nodes(GAUGE_QUERIES["busiest_apps"], {"top": 10, "count_cap": cap})
    )
    assert not any(n["Node Type"] == "Seq Scan" for n in busiest), busiest
    # Actual Rows is per loop: no app's index range is read past the cap.
    assert max(n["Actual Rows"] for n in busiest) <= cap, busiest
    assert {n.get("Index Name") for n in busiest} >= {
        "outbox_app_due_idx",
        "outbox_app_leased_idx",
    }


# --- Admin pages (docs/admin.md, "At scale") -----------------------------------

BIG_TABLES = {"outbox", "dead_letters"}


@pytest.fixture
def admin_scale(transactional_db):
    """100,000 dead letters (10,000 unresolved) and 100,000 outbox rows over
    20 apps and their triggers, topics and queues; returns an admin of one
    app, a superuser, and ids the filters take."""
    principal = UserFactory().principal
    _sql(
        "INSERT INTO apps (slug, name) SELECT 'scale-' || g, 'Scale ' || g "
        "FROM generate_series(1, 20) g"
    )
    _sql(
        "INSERT INTO scripts (app_id, name, handler) "
        "SELECT id, 'handler', 'picloud.noop' FROM apps WHERE slug LIKE 'scale-%%'"
    )
    _sql(
        "INSERT INTO triggers (app_id, kind, script_id, name, registered_by_principal) "
        "SELECT s.app_id, 'kv', s.id, 'trigger-' || g, %s "
        "FROM scripts s CROSS JOIN generate_series(1, 5) g WHERE s.name = 'handler'",
        [principal.id],
    )
    _sql(
        "INSERT INTO kv_trigger_details (trigger_id, collection, ops) "
        "SELECT id, '*', '{insert}' FROM triggers"
    )
    _sql("INSERT INTO topics (app_id, name) SELECT id, 'orders' FROM apps")
    _sql("INSERT INTO queues (app_id, name) SELECT id, 'work' FROM apps")
    targets = (
        "SELECT row_number() OVER (ORDER BY t.id) - 1 AS n, t.app_id, t.id AS trigger_id, "
        "t.script_id, q.id AS queue_id FROM triggers t JOIN queues q ON q.app_id = t.app_id"
    )
    _sql(
        f"""
        INSERT INTO dead_letters (app_id, source_kind, trigger_id, script_id, payload,
                                  last_error, errors, attempts, depth, created_at,
                                  resolution, resolved_at, outbox_id)
        SELECT t.app_id, k.kind, t.trigger_id, t.script_id,
               jsonb_build_object('topic', 'orders', 'queue_id', t.queue_id),
               'HTTP 503 of order o-' || g, jsonb_build_array('HTTP 503 of order o-' || g), 3, 0,
               now() - make_interval(secs => g * 10),
               CASE WHEN g % 10 = 0 THEN NULL ELSE 'ignored' END,
               CASE WHEN g % 10 = 0 THEN NULL ELSE now() END, gen_random_uuid()
        FROM generate_series(1, 100000) g
        JOIN ({targets}) t ON t.n = g % 100
        CROSS JOIN LATERAL (SELECT (ARRAY['kv', 'kv', 'pubsub', 'queue'])[1 + g % 4] AS kind) k
        """
    )
    _sql(
        f"""
        INSERT INTO outbox (app_id, source_kind, trigger_id, script_id, payload, attempts,
                            last_error, due_at, created_at)
        SELECT t.app_id, k.kind, CASE WHEN k.kind <> 'invoke' THEN t.trigger_id END,
               t.script_id, jsonb_build_object('topic', 'orders'),
               CASE WHEN g % 5 = 0 THEN 2 ELSE 0 END,
               CASE WHEN g % 5 = 0 THEN 'HTTP 503 of order o-' || g END,
               now() + make_interval(secs => (g % 7200) - 3600), now()
        FROM generate_series(1, 100000) g
        JOIN ({targets}) t ON t.n = g % 100
        CROSS JOIN LATERAL (SELECT (ARRAY['kv', 'kv', 'pubsub', 'invoke'])[1 + g % 4] AS kind) k
        """
    )
    _sql("ANALYZE dead_letters; ANALYZE outbox; ANALYZE triggers; ANALYZE apps")
    with connection.cursor() as cur:
        cur.execute("SELECT id FROM apps WHERE slug = 'scale-1'")
        (app_id,) = cur.fetchone()
        cur.execute("SELECT id FROM triggers WHERE app_id = %s LIMIT 1", [app_id])
        (trigger_id,) = cur.fetchone()
    member = UserFactory()
    _sql(
        "INSERT INTO app_memberships (app_id, principal_id, role) VALUES (%s, %s, 'admin')",
        [app_id, member.principal.id],
    )
    return {
        "member": member,
        "superuser": UserFactory(is_superuser=True),
        "app": str(app_id),
        "trigger": str(trigger_id),
    }


ADMIN_PAGES = [
    ("admin:deadletters_deadletter_changelist", {}),
    ("admin:deadletters_deadletter_changelist", {"p": "3"}),
    ("admin:deadletters_deadletter_changelist", {"resolution": "unresolved"}),
    ("admin:deadletters_deadletter_changelist", {"resolution": "ignored"}),
    ("admin:deadletters_deadletter_changelist", {"app": "{app}"}),
    ("admin:deadletters_deadletter_changelist", {"trigger": "{trigger}"}),
    ("admin:deadletters_deadletter_changelist", {"source_kind__exact": "kv"}),
    ("admin:deadletters_deadletter_changelist", {"age": "1d"}),
    ("admin:deadletters_deadletter_changelist", {"q": "o-4242"}),
    ("admin:outbox_outboxentry_changelist", {}),
    ("admin:outbox_outboxentry_changelist", {"p": "3"}),
    ("admin:outbox_outboxentry_changelist", {"due": "now"}),
    ("admin:outbox_outboxentry_changelist", {"app": "{app}"}),
    ("admin:outbox_outboxentry_changelist", {"q": "o-4245"}),
    ("admin:outbox_scheduledrun_changelist", {}),
    ("admin:triggers_trigger_changelist", {}),
    ("admin:picloud_topic_changelist", {}),
    ("admin:picloud_queue_changelist", {}),
]


def _page_queries(client, name, params, ids):
    """The list query of one admin page, and every other SELECT it ran but
    the paginator's own (an EXPLAIN, and a count that stops at its cap)."""
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse

    query = {k: v.format(**ids) for k, v in params.items()}
    with CaptureQueriesContext(connection) as captured:
        response = client.get(reverse(name), query)
    assert response.status_code == 200, (name, query)
    sql, sql_params = response.context["cl"].result_list.query.sql_with_params()
    others = [
        q["sql"]
        for q in captured.captured_queries
        if _statement(q["sql"]).startswith(("SELECT", "WITH"))
        and not q["sql"].startswith("SELECT COUNT(*) FROM (")
    ]
    return [(sql, sql_params), *((s, None) for s in others)]


def _statement(sql: str) -> str:
    """`sql` without its leading comment lines (named queries have them), upper-cased."""
    lines = sql.splitlines()
    while lines and lines[0].lstrip().startswith("--"):
        lines.pop(0)
    return "\n".join(lines).lstrip().upper()


def test_admin_pages_read_the_big_tables_by_index_only(client, admin_scale):
    # One test for every page: the rows are committed (truncated after), as
    # 100,000 rows rolled back per page would bloat the indexes for the next.
    problems = []
    for name, params in ADMIN_PAGES:
        for who in ("superuser", "member"):
            client.force_login(admin_scale[who])
            for sql, sql_params in _page_queries(client, name, params, admin_scale):
                scans = [
                    table
                    for node, table, _ in _scans(sql, sql_params)
                    if node == "Seq Scan" and table in BIG_TABLES
                ]
                if scans:
                    problems.append(f"{name} {params} as {who}: {scans} in {sql[:200]}")
    assert not problems, "sequential scans of a big table:\n" + "\n".join(problems)
