"""The hot queries use their indexes at realistic sizes (plans, not timings)."""

import json

import pytest
from django.db import connection

from deadletters.pg_repository import Q as DEAD_LETTER_QUERIES
from tests.factories import UserFactory
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
