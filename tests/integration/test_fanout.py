"""KV writes fan out to the outbox in the same transaction."""

import uuid
from collections import Counter

import pytest
from django.db import transaction

from deadletters.models import DeadLetter
from deadletters.resolve import postgres_resolver
from outbox.models import OutboxEntry
from picloud import kv
from picloud.config import TriggerConfig
from picloud.domain.authz import Role
from picloud.domain.scripts import handler
from picloud.models import KvEntry
from picloud.runtime.execution import execute_row
from tests.factories import AppFactory, MembershipFactory, ScriptFactory, kv_trigger
from tests.helpers import drain_outbox
from triggers.pg_repository import PgTriggerRepo
from triggers.repository import DeadLetterSpec, NewTrigger


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

    def test_a_write_past_the_depth_limit_is_a_dead_letter_per_stopped_trigger(
        self, setup, override_config
    ):
        override_config(TriggerConfig(max_trigger_depth=2))
        app, admin, script = setup
        other_script = ScriptFactory(app=app, handler="picloud.noop")
        triggers = {
            kv_trigger(app, script, admin, name="all").id: script.id,
            kv_trigger(app, other_script, admin, name="c-only", collection="c").id: other_script.id,
        }
        cause = uuid.uuid4()
        kv.put(app, "c", "k", 1, principal=admin, depth=2, cause=cause)
        assert OutboxEntry.objects.count() == 2, "depth 2 is still within the limit"
        within = OutboxEntry.objects.first().payload
        for n in range(5):
            kv.put(app, "c", "k", n, principal=admin, depth=3, cause=cause)
        assert OutboxEntry.objects.count() == 2, "nothing past the limit is enqueued"

        letters = DeadLetter.objects.order_by("trigger__name")
        assert len(letters) == 2, "one per stopped trigger and key, not one per write"
        assert {letter.trigger_id: letter.script_id for letter in letters} == triggers
        for letter in letters:
            assert letter.outbox_id is None, "no row of this letter ever existed"
            assert letter.cause_outbox_id == cause and letter.depth == 3
            assert letter.run_as_principal_id == admin.id and letter.source_kind == "kv"
            assert letter.payload == {**within, "old": 1, "new": 0, "op": "update", "version": 2}
            assert "depth limit stopped a cascade" in letter.last_error
            assert "PICLOUD_MAX_TRIGGER_DEPTH=2" in letter.last_error
        assert "'all'" in letters[0].last_error and "'c-only'" in letters[1].last_error
        assert KvEntry.objects.get().value == 4, "the write itself still happens"

    def test_each_stopped_write_of_a_row_records_its_own_triggers(self, setup, override_config):
        override_config(TriggerConfig(max_trigger_depth=0))
        app, admin, script = setup
        orders = kv_trigger(app, script, admin, name="orders", collection="orders")
        users = kv_trigger(app, script, admin, name="users", collection="users")
        cause = uuid.uuid4()
        kv.put(app, "orders", "o1", 1, principal=admin, depth=1, cause=cause)
        kv.put(app, "users", "u1", 1, principal=admin, depth=1, cause=cause)
        stopped = dict(DeadLetter.objects.values_list("trigger_id", "payload__collection"))
        assert stopped == {orders.id: "orders", users.id: "users"}

    def test_each_distinct_key_a_row_writes_past_the_limit_is_a_letter_per_trigger(
        self, setup, override_config
    ):
        override_config(TriggerConfig(max_trigger_depth=0))
        app, admin, script = setup
        first = kv_trigger(app, script, admin, name="first", collection="c")
        second = kv_trigger(app, script, admin, name="second", collection="c")
        cause = uuid.uuid4()
        for key in ["k0", "k1", "k2", "k0", "k1"]:
            kv.put(app, "c", key, 1, principal=admin, depth=1, cause=cause)

        letters = DeadLetter.objects.values_list("trigger_id", "payload__key")
        assert sorted(Counter(letters).items()) == sorted(
            ((trigger.id, key), 1) for trigger in (first, second) for key in ["k0", "k1", "k2"]
        ), "one letter per (trigger, key); a key written again adds none"
        assert not OutboxEntry.objects.exists()

    def test_dead_letter_triggers_hear_of_each_stopped_trigger_once(self, setup, override_config):
        override_config(TriggerConfig(max_trigger_depth=0))
        app, admin, script = setup
        kv_trigger(app, script, admin, name="first", collection="c")
        second = kv_trigger(app, script, admin, name="second", collection="c")
        watcher = PgTriggerRepo().create(
            NewTrigger(
                app_id=app.id,
                kind="dead_letter",
                script_id=script.id,
                name="watch-second",
                registered_by_principal=admin.id,
                dead_letter=DeadLetterSpec(source_trigger_id=second.id),
            )
        )
        cause = uuid.uuid4()
        for n in range(3):
            kv.put(app, "c", "k", n, principal=admin, depth=1, cause=cause)

        (row,) = OutboxEntry.objects.all()
        letter = DeadLetter.objects.get(trigger_id=second.id)
        assert (row.trigger_id, row.source_kind) == (watcher.id, "dead_letter")
        assert row.payload["dead_letter_id"] == str(letter.id)
        assert (row.payload["outbox_id"], row.payload["cause_outbox_id"]) == (None, str(cause))

    def test_a_stopped_write_from_outside_scripts_has_no_cause(self, setup, override_config):
        override_config(TriggerConfig(max_trigger_depth=0))
        app, admin, script = setup
        kv_trigger(app, script, admin)
        kv.put(app, "c", "k", 1, principal=admin, depth=1)
        kv.put(app, "c", "k", 2, principal=admin, depth=1)
        letters = DeadLetter.objects.all()
        assert [(d.outbox_id, d.cause_outbox_id) for d in letters] == [(None, None)] * 2
        assert sorted(d.payload["new"] for d in letters) == [1, 2], "each write is recorded"


# Handlers for the cascade tests below: each writes back into the collection
# that triggers it.
@handler("tests.cascade.once")
def _cascade_once(event, ctx):
    ctx.kv.put("loop", "k", {"depth": ctx.depth})
    return ctx.depth


@handler("tests.cascade.three_keys")
def _cascade_three_keys(event, ctx):
    # Three distinct keys, two of them written twice.
    for key in ["k0", "k1", "k2", "k0", "k1"]:
        ctx.kv.put("loop", key, {"depth": ctx.depth})


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
    assert letter.depth == 4 and letter.outbox_id is None
    assert letter.cause_outbox_id == ran[-1][0].id
    assert "depth limit stopped a cascade" in letter.last_error


STOPPED_KEYS = ["k0", "k1", "k2"]  # what tests.cascade.three_keys writes


def _stopped_cascade(override_config, stopped_handlers):
    """A starter script writing three keys (two of them twice), past a limit
    of 0, to a collection with one trigger per handler in `stopped_handlers`;
    returns (app, {trigger id: script id} of the stopped triggers, the
    starter's row)."""
    override_config(TriggerConfig(max_trigger_depth=0))
    app = AppFactory()
    admin = MembershipFactory(app=app, role=Role.AppAdmin.value).principal
    starter = ScriptFactory(app=app, handler="tests.cascade.three_keys")
    kv_trigger(app, starter, admin, name="starter", collection="start")
    stopped = {}
    for n, handler_name in enumerate(stopped_handlers):
        script = ScriptFactory(app=app, handler=handler_name)
        stopped[kv_trigger(app, script, admin, name=f"stopped-{n}", collection="loop").id] = (
            script.id
        )
    kv.put(app, "start", "go", 0, principal=admin)
    [(starter_row, outcome)] = drain_outbox(max_rows=10)
    assert outcome.ok, outcome
    return app, stopped, starter_row


def _stopped_events(letters):
    return Counter((d.trigger_id, d.payload["key"]) for d in letters)


@pytest.mark.django_db(transaction=True)
def test_replaying_each_letter_of_a_stopped_cascade_runs_each_stopped_event_once(override_config):
    _app, stopped, starter_row = _stopped_cascade(override_config, ["picloud.noop"] * 2)

    letters = list(DeadLetter.objects.all())
    assert len(letters) == 6, "three keys, two stopped triggers: one letter per stopped event"
    assert _stopped_events(letters) == Counter((t, key) for t in stopped for key in STOPPED_KEYS)
    assert {d.trigger_id: d.script_id for d in letters} == stopped
    assert {(d.outbox_id, d.cause_outbox_id) for d in letters} == {(None, starter_row.id)}

    resolver = postgres_resolver()
    for letter in letters:
        resolver.replay(letter.id, by=None)
    ran = drain_outbox(max_rows=20)

    assert Counter((row.trigger_id, row.payload["key"]) for row, _ in ran) == _stopped_events(
        letters
    ), "each stopped event ran once, by its own trigger"
    assert Counter(row.script_id for row, _ in ran) == Counter(
        {script_id: len(STOPPED_KEYS) for script_id in stopped.values()}
    )
    assert all(outcome.ok for _, outcome in ran), ran
    by_event = {(d.trigger_id, d.payload["key"]): d for d in letters}
    for row, _ in ran:
        letter = by_event[row.trigger_id, row.payload["key"]]
        assert (row.payload, row.depth) == (letter.payload, letter.depth)
        assert row.payload["collection"] == "loop" and "stopped_trigger_ids" not in row.payload
    assert DeadLetter.objects.filter(resolution="replayed").count() == 6


@pytest.mark.django_db(transaction=True)
def test_executing_the_causing_row_again_records_no_event_twice(override_config):
    """A row runs twice when its acknowledgement is lost: its stopped events
    are already recorded, and stay recorded once."""
    _app, stopped, starter_row = _stopped_cascade(override_config, ["picloud.noop"] * 2)

    def recorded():
        return sorted((str(d.id), d.trigger_id, d.payload["key"]) for d in DeadLetter.objects.all())

    before = recorded()
    assert execute_row(starter_row).ok
    assert recorded() == before, "no letter added or changed"
    assert len(before) == len(stopped) * len(STOPPED_KEYS)
    assert not OutboxEntry.objects.exists(), "and nothing enqueued past the limit"


@pytest.mark.django_db(transaction=True)
def test_a_replayed_letter_runs_at_the_stopped_depth_so_its_writes_stop_again(override_config):
    _app, stopped, _starter_row = _stopped_cascade(override_config, ["tests.cascade.once"])
    letter = DeadLetter.objects.filter(payload__key="k1").get()

    postgres_resolver().replay(letter.id, by=None)
    [(row, outcome)] = drain_outbox(max_rows=10)

    assert outcome.ok and outcome.result == letter.depth == 1, "the script ran at the stopped depth"
    again = DeadLetter.objects.get(cause_outbox_id=row.id)
    assert again.outbox_id is None and again.payload["key"] == "k"
    assert again.depth == 2 and again.trigger_id in stopped
