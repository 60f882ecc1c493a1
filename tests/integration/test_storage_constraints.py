"""The database itself refuses bad rows and cascades app deletion."""

import uuid

import pytest
from django.db import IntegrityError, connection, transaction

from deadletters.models import AbandonedExecution, DeadLetter
from outbox.models import OutboxEntry
from picloud.models import ApiToken, EmailSendCount, InboundEmail
from tests.factories import AppFactory, ScriptFactory, UserFactory
from triggers.models import DeadLetterTriggerDetails, KvTriggerDetails, Trigger

pytestmark = pytest.mark.django_db


def _sql(statement, params=None):
    with connection.cursor() as cur:
        cur.execute(statement, params)


def _refused(statement, params=None, *, constraint=None):
    with pytest.raises(IntegrityError) as excinfo, transaction.atomic():
        _sql(statement, params)
    if constraint:
        assert constraint in str(excinfo.value), str(excinfo.value)


@pytest.fixture
def ctx(app):
    script = ScriptFactory(app=app)
    principal = UserFactory().principal
    return {"app": app.id, "script": script.id, "principal": principal.id}


def _insert_trigger(ctx, kind="kv", **over):
    params = {**ctx, "kind": kind, "name": over.pop("name", f"t-{uuid.uuid4()}"), **over}
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO triggers (app_id, kind, script_id, name, registered_by_principal) "
            "VALUES (%(app)s, %(kind)s, %(script)s, %(name)s, %(principal)s) RETURNING id",
            params,
        )
        return cur.fetchone()[0]


def test_unknown_trigger_kind_is_refused(ctx):
    with pytest.raises(IntegrityError, match="triggers_kind_check"), transaction.atomic():
        _insert_trigger(ctx, kind="webhook")


def _check_deferred_constraints_now():
    # Deferred constraints are checked at commit, which a test transaction never
    # reaches; this runs the same checks at once.
    _sql("SET CONSTRAINTS ALL IMMEDIATE")


def test_trigger_script_must_belong_to_the_same_app(ctx):
    foreign_script = ScriptFactory().id
    with pytest.raises(IntegrityError, match="triggers_script_same_app_fkey"), transaction.atomic():
        _insert_trigger(ctx, script=foreign_script)
        _check_deferred_constraints_now()


def _insert_dead_letter_details(trigger_id, app_id, source_trigger_id=None):
    _sql(
        "INSERT INTO dead_letter_trigger_details (trigger_id, app_id, source_trigger_id) "
        "VALUES (%s, %s, %s)",
        [trigger_id, app_id, source_trigger_id],
    )


def test_deleting_a_trigger_that_a_dead_letter_filter_names_is_refused(ctx):
    source = _insert_trigger(ctx)
    handler = _insert_trigger(ctx, kind="dead_letter")
    _insert_dead_letter_details(handler, ctx["app"], source)
    with (
        pytest.raises(IntegrityError, match="source_same_app_fkey"),
        transaction.atomic(),
    ):
        _sql("DELETE FROM triggers WHERE id = %s", [source])
        _check_deferred_constraints_now()


def test_a_dead_letter_filter_names_only_a_trigger_of_its_own_app(ctx):
    other_app = AppFactory()
    other = {**ctx, "app": other_app.id, "script": ScriptFactory(app=other_app).id}
    foreign_source = _insert_trigger(other)
    handler = _insert_trigger(ctx, kind="dead_letter")
    # The row saying it is of the other app is refused too: app_id is the trigger's.
    for claimed_app, constraint in (
        (ctx["app"], "source_same_app_fkey"),
        (other_app.id, "trigger_app_fkey"),
    ):
        with pytest.raises(IntegrityError, match=constraint), transaction.atomic():
            _insert_dead_letter_details(handler, claimed_app, foreign_source)
            _check_deferred_constraints_now()
    # Pointing an existing filter at it later is refused the same way.
    _insert_dead_letter_details(handler, ctx["app"])
    with (
        pytest.raises(IntegrityError, match="source_same_app_fkey"),
        transaction.atomic(),
    ):
        _sql(
            "UPDATE dead_letter_trigger_details SET source_trigger_id = %s WHERE trigger_id = %s",
            [foreign_source, handler],
        )
        _check_deferred_constraints_now()


def test_detail_row_for_missing_trigger_is_refused():
    _refused(
        "INSERT INTO kv_trigger_details (trigger_id, collection, ops) VALUES (%s, '*', '{insert}')",
        [uuid.uuid4()],
        constraint="kv_trigger_details_trigger_id_fkey",
    )
    _refused(
        "INSERT INTO dead_letter_trigger_details (trigger_id, app_id) VALUES (%s, %s)",
        [uuid.uuid4(), AppFactory().id],
        constraint="dead_letter_trigger_details_trigger_app_fkey",
    )


@pytest.mark.parametrize("pattern", ["", "a*", "*:*", ":*", "a:*:*", "**"])
def test_invalid_collection_pattern_is_refused(ctx, pattern):
    trigger_id = _insert_trigger(ctx)
    _refused(
        "INSERT INTO kv_trigger_details (trigger_id, collection, ops) VALUES (%s, %s, '{insert}')",
        [trigger_id, pattern],
        constraint="kv_trigger_details_collection_check",
    )


@pytest.mark.parametrize("ops", ["{}", "{upsert}", "{insert,NULL}"])
def test_invalid_ops_are_refused(ctx, ops):
    trigger_id = _insert_trigger(ctx)
    _refused(
        "INSERT INTO kv_trigger_details (trigger_id, collection, ops) VALUES (%s, 'c', %s)",
        [trigger_id, ops],
        constraint="kv_trigger_details_ops_check",
    )


def _insert_dead_letter(ctx, **cols):
    columns = ["app_id", "source_kind", "last_error", "attempts", "depth", *cols]
    values = [ctx["app"], "kv", "boom", 1, 0, *cols.values()]
    placeholders = ", ".join(["%s"] * len(values))
    _sql(f"INSERT INTO dead_letters ({', '.join(columns)}) VALUES ({placeholders})", values)


def test_unknown_resolution_is_refused(ctx):
    with pytest.raises(IntegrityError, match="dead_letters_resolution_check"), transaction.atomic():
        _insert_dead_letter(ctx, resolution="deleted", resolved_at="2026-01-01T00:00:00Z")


def test_resolution_and_resolved_at_go_together(ctx):
    for cols in ({"resolution": "ignored"}, {"resolved_at": "2026-01-01T00:00:00Z"}):
        with (
            pytest.raises(IntegrityError, match="dead_letters_resolution_with_time"),
            transaction.atomic(),
        ):
            _insert_dead_letter(ctx, **cols)
    _insert_dead_letter(ctx, resolution="ignored", resolved_at="2026-01-01T00:00:00Z")


def test_unknown_outbox_source_kind_is_refused(ctx):
    _refused(
        "INSERT INTO outbox (app_id, source_kind, script_id) VALUES (%(app)s, 'sms', %(script)s)",
        ctx,
        constraint="outbox_source_kind_check",
    )


def test_abandoned_executions_columns_are_as_in_the_seed():
    with connection.cursor() as cur:
        cur.execute(
            "SELECT column_name, data_type, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_name = 'abandoned_executions' "
            "ORDER BY ordinal_position"
        )
        columns = cur.fetchall()
        cur.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'abandoned_executions' "
            "AND indexname = 'idx_abandoned_executions_gc'"
        )
        (indexdef,) = cur.fetchone()
    assert columns == [
        ("id", "uuid", "NO", "gen_random_uuid()"),
        ("app_id", "uuid", "NO", None),
        ("outbox_id", "uuid", "NO", None),
        ("script_id", "uuid", "YES", None),
        ("inbox_id", "uuid", "NO", None),
        ("status_code", "integer", "NO", None),
        ("result_summary", "text", "YES", None),
        ("created_at", "timestamp with time zone", "NO", "now()"),
    ]
    assert indexdef.endswith("USING btree (created_at)")


def test_deleting_an_app_cascades_to_all_its_rows(ctx):
    app_id = ctx["app"]
    survivor = AppFactory()
    survivor_script = ScriptFactory(app=survivor)
    kv_id = _insert_trigger(ctx)
    _sql(
        "INSERT INTO kv_trigger_details (trigger_id, collection, ops) VALUES (%s, '*', '{insert}')",
        [kv_id],
    )
    dl_id = _insert_trigger(ctx, kind="dead_letter")
    _insert_dead_letter_details(dl_id, app_id, kv_id)
    for target_app, script in ((app_id, ctx["script"]), (survivor.id, survivor_script.id)):
        _sql(
            "INSERT INTO outbox (app_id, source_kind, script_id) VALUES (%s, 'kv', %s)",
            [target_app, script],
        )
        _insert_dead_letter({"app": target_app})
        _sql(
            "INSERT INTO abandoned_executions (app_id, outbox_id, inbox_id, status_code) "
            "VALUES (%s, gen_random_uuid(), gen_random_uuid(), 200)",
            [target_app],
        )
        _sql(
            "INSERT INTO api_tokens (principal_id, name, prefix, token_hash, scopes, app_id, "
            "expires_at) VALUES (%s, 't', 'pct_x', md5(random()::text) || md5(random()::text), "
            "'{script:invoke}', %s, NOW() + interval '1 day')",
            [UserFactory().principal.id, target_app],
        )
        _sql(
            "INSERT INTO inbound_emails (app_id, mail_from, rcpt_to, size, raw) "
            "VALUES (%s, 'a@example.com', '{x@y.z}', 1, 'x')",
            [target_app],
        )
        _sql(
            "INSERT INTO email_send_counts (app_id, hour, sent) VALUES (%s, NOW(), 1)",
            [target_app],
        )

    _sql("DELETE FROM apps WHERE id = %s", [app_id])
    _check_deferred_constraints_now()

    for model in (
        Trigger,
        OutboxEntry,
        DeadLetter,
        AbandonedExecution,
        ApiToken,
        InboundEmail,
        EmailSendCount,
    ):
        assert not model.objects.filter(app_id=app_id).exists(), f"{model.__name__} rows remain"
        assert model.objects.filter(app_id=survivor.id).exists() or model is Trigger
    assert not KvTriggerDetails.objects.filter(trigger_id=kv_id).exists()
    assert not DeadLetterTriggerDetails.objects.filter(trigger_id=dl_id).exists()


def test_deleting_an_app_through_the_orm_works_too(ctx):
    kv_id = _insert_trigger(ctx)
    _sql(
        "INSERT INTO kv_trigger_details (trigger_id, collection, ops) VALUES (%s, '*', '{insert}')",
        [kv_id],
    )
    AppFactory._meta.model.objects.get(pk=ctx["app"]).delete()
    assert not Trigger.objects.filter(pk=kv_id).exists()


def test_dead_letters_outlive_their_trigger(ctx):
    trigger_id = _insert_trigger(ctx)
    _insert_dead_letter(ctx, trigger_id=trigger_id)
    _sql("DELETE FROM triggers WHERE id = %s", [trigger_id])
    letter = DeadLetter.objects.get(app_id=ctx["app"])
    assert letter.trigger_id is None


def test_deleting_a_trigger_discards_its_pending_outbox_rows(ctx):
    trigger_id = _insert_trigger(ctx)
    _sql(
        "INSERT INTO outbox (app_id, source_kind, trigger_id, script_id) VALUES (%s, 'kv', %s, %s)",
        [ctx["app"], trigger_id, ctx["script"]],
    )
    _sql("DELETE FROM triggers WHERE id = %s", [trigger_id])
    assert not OutboxEntry.objects.filter(app_id=ctx["app"]).exists()


def test_api_token_scopes_are_checked_by_the_database(ctx):
    principal = UserFactory().principal.id
    for scopes in ("{}", "{script:run}", "{app:read,root}"):
        with pytest.raises(IntegrityError), transaction.atomic():
            _sql(
                "INSERT INTO api_tokens (principal_id, name, prefix, token_hash, scopes, "
                "expires_at) VALUES (%s, 't', 'p', md5(random()::text) || md5(random()::text), "
                "%s, NOW())",
                [principal, scopes],
            )
