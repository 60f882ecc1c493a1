"""KV writes fan out to the outbox in the same transaction."""

import uuid

import pytest
from django.db import transaction

from deadletters.models import DeadLetter
from outbox.models import OutboxEntry
from picloud import kv
from picloud.config import TriggerConfig
from picloud.domain.authz import Role
from picloud.domain.scripts import handler
from picloud.models import KvEntry
from tests.factories import AppFactory, MembershipFactory, ScriptFactory, kv_trigger
from tests.helpers import drain_outbox


@pytest.fixture
def setup(db):
    app = AppFactory()
    admin = MembershipFactory(app=app, role=Role.AppAdmin.value).principal
    script = ScriptFactory(app=app, handler="picloud.noop")
    return app, admin, script


@pytest.mark.django_db
class TestFanOut:
    def test_a_write_enqueues_one_row_per_matching_trigger(self, setup):
        app, admin, script = setup
        t1 = kv_trigger(app, script, admin, name="all", collection="*")
        t2 = kv_trigger(app, script, admin, name="orders", collection="orders:*")
        kv_trigger(app, script, admin, name="users", collection="users")
        kv.put(app, "orders:eu", "o1", {"total": 3}, principal=admin)
        rows = OutboxEntry.objects.order_by("trigger__name")
        assert [r.trigger_id for r in rows] == [t1.id, t2.id]
        row = rows[0]
        assert row.source_kind == "kv" and row.script_id == script.id and row.depth == 0
        assert row.run_as_principal_id == admin.id, "runs as the trigger's registrant"
        assert row.payload == {
            "app": app.slug,
            "app_id": str(app.id),
            "collection": "orders:eu",
            "key": "o1",
            "op": "insert",
            "old": None,
            "new": {"total": 3},
            "version": 1,
        }

    def test_update_and_delete_carry_old_and_new_values(self, setup):
        app, admin, script = setup
        kv.put(app, "c", "k", 1, principal=admin)
        kv_trigger(app, script, admin, collection="c")
        kv.put(app, "c", "k", 2, principal=admin)
        kv.delete(app, "c", "k", principal=admin)
        payloads = [r.payload for r in OutboxEntry.objects.order_by("created_at", "payload__op")]
        ops = sorted((p["op"], p["old"], p["new"], p["version"]) for p in payloads)
        assert ops == [("delete", 2, None, 2), ("update", 1, 2, 2)]

    def test_the_runner_principal_is_the_registrant_not_the_writer(self, setup):
        app, admin, script = setup
        kv_trigger(app, script, admin)
        writer = MembershipFactory(app=app, role=Role.Developer.value).principal
        kv.put(app, "c", "k", 1, principal=writer)
        assert OutboxEntry.objects.get().run_as_principal_id == admin.id

    def test_ops_filter(self, setup):
        app, admin, script = setup
        kv_trigger(app, script, admin, ops=("delete",))
        kv.put(app, "c", "k", 1, principal=admin)
        kv.put(app, "c", "k", 2, principal=admin)
        assert OutboxEntry.objects.count() == 0
        kv.delete(app, "c", "k", principal=admin)
        assert OutboxEntry.objects.get().payload["op"] == "delete"

    def test_disabled_triggers_fire_nothing(self, setup):
        app, admin, script = setup
        kv_trigger(app, script, admin, enabled=False)
        kv.put(app, "c", "k", 1, principal=admin)
        assert not OutboxEntry.objects.exists()

    def test_deleting_a_missing_key_fires_nothing(self, setup):
        app, admin, script = setup
        kv_trigger(app, script, admin)
        kv.delete(app, "c", "missing", principal=admin)
        assert not OutboxEntry.objects.exists()

    def test_apps_with_the_same_collections_never_see_each_others_triggers(self, setup):
        app, admin, script = setup
        other = AppFactory()
        other_admin = MembershipFactory(app=other, role=Role.AppAdmin.value).principal
        other_trigger = kv_trigger(
            other, ScriptFactory(app=other), other_admin, collection="orders:*"
        )
        mine = kv_trigger(app, script, admin, collection="orders:*")
        kv.put(app, "orders:1", "k", 1, principal=admin)
        kv.put(other, "orders:1", "k", 1, principal=other_admin)
        assert set(OutboxEntry.objects.filter(app=app).values_list("trigger_id", flat=True)) == {
            mine.id
        }
        assert set(OutboxEntry.objects.filter(app=other).values_list("trigger_id", flat=True)) == {
            other_trigger.id
        }

    def test_rollback_leaves_neither_the_entry_nor_the_rows(self, setup):
        app, admin, script = setup
        kv_trigger(app, script, admin)

        class Abort(Exception):
            pass

        with pytest.raises(Abort), transaction.atomic():
            kv.put(app, "c", "k", 1, principal=admin)
            assert OutboxEntry.objects.count() == 1
            raise Abort
        assert not KvEntry.objects.exists()
        assert not OutboxEntry.objects.exists()

    def test_a_write_past_the_depth_limit_is_a_dead_letter_once_per_cascade(
        self, setup, override_config
    ):
        override_config(TriggerConfig(max_trigger_depth=2))
        app, admin, script = setup
        trigger = kv_trigger(app, script, admin, name="loop")
        cause = uuid.uuid4()
        kv.put(app, "c", "k", 1, principal=admin, depth=2, cause=cause)
        assert OutboxEntry.objects.count() == 1, "depth 2 is still within the limit"
        for n in range(5):
            kv.put(app, "c", "k", n, principal=admin, depth=3, cause=cause)
        assert OutboxEntry.objects.count() == 1, "nothing past the limit is enqueued"
        letter = DeadLetter.objects.get()
        assert letter.outbox_id == cause and letter.depth == 3 and letter.trigger_id == trigger.id
        assert "depth limit stopped a cascade" in letter.last_error
        assert "PICLOUD_MAX_TRIGGER_DEPTH=2" in letter.last_error
        assert KvEntry.objects.get().value == 4, "the write itself still happens"


# Handlers for the cascade tests below: each writes back into the collection
# that triggers it.
@handler("tests.cascade.once")
def _cascade_once(event, ctx):
    ctx.kv.put("loop", "k", {"depth": ctx.depth})
    return ctx.depth


@handler("tests.cascade.five")
def _cascade_five(event, ctx):
    for n in range(5):
        ctx.kv.put("loop", f"k{n}", {"depth": ctx.depth})


@pytest.mark.django_db(transaction=True)
def test_a_script_writing_to_its_own_collection_stops_at_the_depth_limit(override_config):
    override_config(TriggerConfig(max_trigger_depth=3))
    app = AppFactory()
    admin = MembershipFactory(app=app, role=Role.AppAdmin.value).principal
    script = ScriptFactory(app=app, handler="tests.cascade.once")
    kv_trigger(app, script, admin, collection="loop")

    kv.put(app, "loop", "k", "start", principal=admin)
    ran = drain_outbox(max_rows=50)

    assert [row.depth for row, _ in ran] == [0, 1, 2, 3]
    assert all(outcome.ok for _, outcome in ran), [o for _, o in ran]
    letter = DeadLetter.objects.get()
    assert letter.depth == 4 and letter.outbox_id == ran[-1][0].id
    assert "depth limit stopped a cascade" in letter.last_error


@pytest.mark.django_db(transaction=True)
def test_a_script_writing_in_a_loop_records_one_dead_letter_per_stopped_cascade(
    override_config,
):
    override_config(TriggerConfig(max_trigger_depth=1))
    app = AppFactory()
    admin = MembershipFactory(app=app, role=Role.AppAdmin.value).principal
    script = ScriptFactory(app=app, handler="tests.cascade.five")
    kv_trigger(app, script, admin, collection="loop")

    kv.put(app, "loop", "start", 0, principal=admin)
    ran = drain_outbox(max_rows=50)

    depths = [row.depth for row, _ in ran]
    assert depths == [0] + [1] * 5, depths
    causes = sorted(DeadLetter.objects.values_list("outbox_id", flat=True))
    assert causes == sorted(row.id for row, _ in ran if row.depth == 1), (
        "one dead letter for each depth-1 row whose writes were stopped, not one per write"
    )
