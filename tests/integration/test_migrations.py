"""Every migration runs backwards and forwards again (DDL is transactional in PostgreSQL)."""

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection

from tests.factories import AppFactory, ScriptFactory, UserFactory

pytestmark = pytest.mark.django_db


def _tables():
    return set(connection.introspection.table_names(include_views=True))


def test_storage_migrations_reverse_and_reapply():
    storage = {
        "triggers",
        "kv_trigger_details",
        "dead_letter_trigger_details",
        "outbox",
        "dead_letters",
        "abandoned_executions",
        "triggers_with_details",
    }
    assert storage <= _tables()
    call_command("migrate", "triggers", "zero", verbosity=0)
    assert not storage & _tables(), "reversing left tables behind"
    call_command("migrate", verbosity=0)
    assert storage <= _tables()


def _sql(statement, params=None):
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description else None


def _old_trigger(app, script, principal, name, kind="kv"):
    [(trigger_id,)] = _sql(
        "INSERT INTO triggers (app_id, kind, script_id, name, registered_by_principal) "
        "VALUES (%s, %s, %s, %s, %s) RETURNING id",
        [app.id, kind, script.id, name, principal.id],
    )
    return trigger_id


def test_the_same_app_rule_stops_on_existing_cross_app_filters():
    """Filters that point at another app's trigger, left by the old schema,
    stop the migration with their names; once fixed, it runs and keeps the
    same-app filters."""
    call_command("migrate", "triggers", "0001", verbosity=0)
    principal = UserFactory().principal
    apps = {key: AppFactory(slug=f"app-{key}") for key in "ab"}
    scripts = {key: ScriptFactory(app=app) for key, app in apps.items()}
    source = {k: _old_trigger(apps[k], scripts[k], principal, f"source-{k}") for k in "ab"}
    cross, same = (
        _old_trigger(apps["a"], scripts["a"], principal, name, kind="dead_letter")
        for name in ("alert", "local")
    )
    _sql(
        "INSERT INTO dead_letter_trigger_details (trigger_id, source_trigger_id) "
        "VALUES (%s, %s), (%s, %s)",
        [cross, source["b"], same, source["a"]],
    )
    # The old rows' deferred checks run now: ALTER TABLE refuses tables with
    # checks pending in the same transaction.
    _sql("SET CONSTRAINTS ALL IMMEDIATE")

    with pytest.raises(DatabaseError, match="app-a/alert filters on app-b/source-b") as excinfo:
        call_command("migrate", "triggers", verbosity=0)
    assert "app-a/local" not in str(excinfo.value), "a same-app filter is named"
    columns = _sql(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_name = 'dead_letter_trigger_details'"
    )
    assert ("app_id",) not in columns, "the refused migration left a change behind"

    # The repair docs/admin.md gives ("Upgrading").
    _sql(
        "UPDATE triggers SET enabled = FALSE WHERE id IN ("
        " SELECT d.trigger_id FROM dead_letter_trigger_details d"
        " JOIN triggers t ON t.id = d.trigger_id JOIN triggers s ON s.id = d.source_trigger_id"
        " WHERE s.app_id <> t.app_id)"
    )
    _sql(
        "UPDATE dead_letter_trigger_details d SET source_trigger_id = NULL"
        " FROM triggers t, triggers s"
        " WHERE t.id = d.trigger_id AND s.id = d.source_trigger_id AND s.app_id <> t.app_id"
    )
    [(enabled,)] = _sql("SELECT enabled FROM triggers WHERE id = %s", [cross])
    assert enabled is False
    call_command("migrate", "triggers", verbosity=0)
    rows = _sql(
        "SELECT trigger_id, app_id, source_trigger_id FROM dead_letter_trigger_details "
        "ORDER BY source_trigger_id NULLS FIRST"
    )
    assert rows == [(cross, apps["a"].id, None), (same, apps["a"].id, source["a"])]


def _populate():
    """One row in every table PiCloud owns (through the code that writes them)."""
    from datetime import timedelta

    from django.utils import timezone

    from deadletters.models import AbandonedExecution, DeadLetter
    from outbox.models import OutboxEntry
    from outbox.storage.pg_repository import PgReplyInbox
    from picloud import kv
    from picloud.domain import tokens
    from tests.factories import MembershipFactory, kv_trigger

    member = MembershipFactory()
    app, principal = member.app, member.principal
    script = ScriptFactory(app=app)
    kv_trigger(app, script, principal, collection="orders")
    kv.put(app, "orders", "o-1", {"total": 1}, principal=principal)  # + an outbox row
    row = OutboxEntry.objects.get(app=app)
    DeadLetter.objects.create(
        app=app,
        source_kind="kv",
        script=script,
        payload={},
        last_error="x",
        errors=["x"],
        attempts=1,
        depth=0,
    )
    AbandonedExecution.objects.create(
        app=app, outbox_id=row.id, inbox_id=row.id, status_code=200, result_summary="{}"
    )
    tokens.create_token(
        principal, name="t", scopes=["kv:read"], expires_at=timezone.now() + timedelta(days=1)
    )
    PgReplyInbox().open(row.id, app.id)
    # As if committed: deferred foreign-key checks fire now, not at the
    # ALTER TABLEs of the reversal (PostgreSQL refuses those while checks wait).
    _sql("SET CONSTRAINTS ALL IMMEDIATE")


@pytest.mark.parametrize("app_label", ["deadletters", "outbox", "triggers", "picloud"])
def test_every_app_migrates_to_zero_and_back_on_a_populated_database(app_label):
    _populate()
    before = _tables()
    call_command("migrate", app_label, "zero", verbosity=0)
    assert _tables() < before, f"{app_label} zero left every table in place"
    call_command("migrate", verbosity=0)
    assert _tables() == before, "forwards again, every table is back"
