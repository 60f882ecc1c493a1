"""Every migration runs backwards and forwards again (DDL is transactional in PostgreSQL)."""

import json
import uuid
from unittest import mock

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection

from deadletters.pg_repository import PgDeadLetterRepo
from deadletters.repository import NewDeadLetter
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


def _old_depth_letter(app, trigger_id, script, principal, cause, stopped, key="k", **cols):
    """A depth-limit dead letter as written before deadletters 0004."""
    payload = {"collection": "loop", "key": key, "op": "insert", "new": 1, "version": 1}
    columns = {
        "app_id": app.id,
        "source_kind": "kv",
        "trigger_id": trigger_id,
        "script_id": script.id,
        "run_as_principal": principal.id,
        "outbox_id": cause,
        "payload": json.dumps({**payload, "stopped_trigger_ids": [str(t) for t in stopped]}),
        "last_error": "depth limit stopped a cascade: a write to loop/k at depth 2 ...",
        "attempts": 0,
        "depth": 2,
        **cols,
    }
    [(letter_id,)] = _sql(
        f"INSERT INTO dead_letters ({', '.join(columns)}) "
        f"VALUES ({', '.join(['%s'] * len(columns))}) RETURNING id",
        list(columns.values()),
    )
    return letter_id, payload


def _in_order(letters):
    # The payload too: two letters of one trigger and cause differ only by
    # their event's key, and the database returns them in any order.
    return sorted(
        letters,
        key=lambda d: (
            str(d[5]),
            str(d[2]),
            str(d[0]),
            str(d[3]),
            str(d[4].get("key")) if isinstance(d[4], dict) else "",
        ),
    )


def _letters():
    rows = _sql(
        "SELECT trigger_id, script_id, outbox_id, cause_outbox_id, payload, resolution "
        "FROM dead_letters"
    )
    return _in_order((*row[:4], json.loads(row[4]), row[5]) for row in rows)


def test_dead_letter_causes_migrate_forward_and_back_on_a_populated_database():
    """Older depth-limit letters (one per cascade, causing row in outbox_id)
    become one letter per stopped trigger with the causing row in
    cause_outbox_id; backwards they take the older shape, and forwards again
    they come back the same."""
    call_command("migrate", "deadletters", "0003", verbosity=0)
    principal = UserFactory().principal
    app = AppFactory()
    scripts = [ScriptFactory(app=app) for _ in range(3)]
    t = [_old_trigger(app, s, principal, f"t{n}") for n, s in enumerate(scripts)]
    deleted_trigger = uuid.uuid4()
    cause, resolved_cause, failed_row = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    stopped = [t[0], t[1], t[2], deleted_trigger]
    _, event = _old_depth_letter(app, t[0], scripts[0], principal, cause, stopped)
    # The older code checked, then inserted: a race could record a cascade twice.
    _old_depth_letter(app, t[0], scripts[0], principal, cause, stopped)
    _old_depth_letter(
        app,
        t[1],
        scripts[1],
        principal,
        resolved_cause,
        [t[1], t[2]],
        resolution="ignored",
        resolved_at="2026-01-01T00:00:00Z",
    )
    _sql(
        "INSERT INTO dead_letters (app_id, source_kind, trigger_id, script_id, outbox_id, "
        "payload, last_error, attempts, depth) "
        "VALUES (%s, 'kv', %s, %s, %s, '{\"x\": 1}', 'boom', 5, 0)",
        [app.id, t[2], scripts[2].id, failed_row],
    )

    call_command("migrate", "deadletters", verbosity=0)
    split = [(t[n], scripts[n].id, None, cause, event, None) for n in range(3)]
    resolved = (t[1], scripts[1].id, None, resolved_cause, mock.ANY, "ignored")
    failed = (t[2], scripts[2].id, failed_row, None, {"x": 1}, None)
    raced = (t[0], scripts[0].id, None, None, event, None)  # neither split nor caused
    migrated = _letters()
    assert migrated == _in_order([*split, raced, failed, resolved])
    assert migrated[-1][4]["stopped_trigger_ids"] == [str(t[1]), str(t[2])], (
        "a resolved letter keeps its payload"
    )
    stopped_again = NewDeadLetter(
        app_id=app.id,
        source_kind="kv",
        script_id=scripts[1].id,
        trigger_id=t[1],
        run_as_principal=principal.id,
        outbox_id=None,
        cause_outbox_id=cause,
        payload=event,
        last_error="depth limit stopped a cascade: again",
    )
    assert PgDeadLetterRepo().insert(stopped_again) is None, "the unique index is in place"

    call_command("migrate", "deadletters", "0003", verbosity=0)
    assert ("cause_outbox_id",) not in _sql(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'dead_letters'"
    )
    rows = _sql(
        "SELECT trigger_id, outbox_id, payload FROM dead_letters WHERE outbox_id = %s", [cause]
    )
    assert sorted((r[0], json.loads(r[2])["stopped_trigger_ids"]) for r in rows) == sorted(
        (t[n], [str(t[n])]) for n in range(3)
    ), "backwards, each letter names its causing row and its own trigger, as before"
    assert _sql("SELECT 1 FROM pg_indexes WHERE indexname = 'dead_letters_outbox_idx'")

    call_command("migrate", "deadletters", verbosity=0)
    assert _letters() == migrated, "forwards again, the same letters"


def test_raced_dead_letter_causes_migrate_to_one_letter_per_stopped_event():
    """Two executions of one row racing past the older check-then-insert could
    record its cascade twice: for another first trigger (the triggers changed
    in between) or another first write. Forwards, each stopped event (trigger,
    collection, key) of the row keeps one letter with the cause; backwards and
    forwards again, the same letters."""
    call_command("migrate", "deadletters", "0003", verbosity=0)
    principal = UserFactory().principal
    app = AppFactory()
    scripts = [ScriptFactory(app=app) for _ in range(2)]
    t = [_old_trigger(app, s, principal, f"t{n}") for n, s in enumerate(scripts)]
    cause = uuid.uuid4()
    _, event = _old_depth_letter(app, t[0], scripts[0], principal, cause, [t[0], t[1]])
    _old_depth_letter(app, t[1], scripts[1], principal, cause, [t[1], t[0]])
    _, other_event = _old_depth_letter(
        app, t[0], scripts[0], principal, cause, [t[0], t[1]], key="k2"
    )

    call_command("migrate", "deadletters", verbosity=0)
    migrated = _letters()
    assert migrated == _in_order(
        (t[n], scripts[n].id, None, cause, e, None) for n in range(2) for e in (event, other_event)
    ), "one letter per (trigger, key) of the row, each with its cause"

    call_command("migrate", "deadletters", "0003", verbosity=0)
    call_command("migrate", "deadletters", verbosity=0)
    assert _letters() == migrated, "backwards and forwards again, the same letters"
