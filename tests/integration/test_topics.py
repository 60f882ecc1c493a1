"""Topics: publish fans out to subscribed pubsub triggers, exactly and
transactionally; scripts publish at depth + 1 under the cascade limit."""

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from deadletters.models import DeadLetter
from outbox.models import OutboxEntry
from picloud.config import TriggerConfig
from picloud.domain.authz import Role
from picloud.domain.scripts import handler
from picloud.messaging import topics
from picloud.messaging.names import MessageTooLarge
from tests.factories import AppFactory, MembershipFactory, ScriptFactory
from tests.helpers import drain_outbox
from triggers.pg_repository import PgTriggerRepo
from triggers.repository import NewTrigger, PubsubSpec


def pubsub_trigger(app, script, principal, pattern, name=None, enabled=True):
    return PgTriggerRepo().create(
        NewTrigger(
            app_id=app.id,
            kind="pubsub",
            script_id=script.id,
            name=name or f"sub-{pattern}",
            registered_by_principal=principal.id,
            enabled=enabled,
            pubsub=PubsubSpec(pattern),
        )
    )


@pytest.fixture
def setup(db):
    app = AppFactory()
    admin = MembershipFactory(app=app, role=Role.AppAdmin.value).principal
    script = ScriptFactory(app=app, handler="picloud.noop")
    for name in ("orders:new", "orders:old", "audit"):
        topics.create_topic(app, name, principal=admin)
    return app, admin, script


def test_publish_enqueues_one_row_per_matching_enabled_trigger(setup):
    app, admin, script = setup
    other_app = AppFactory()
    other_admin = MembershipFactory(app=other_app, role=Role.AppAdmin.value).principal
    topics.create_topic(other_app, "orders:new", principal=other_admin)
    pubsub_trigger(other_app, ScriptFactory(app=other_app), other_admin, "*")
    all_ = pubsub_trigger(app, script, admin, "*")
    orders = pubsub_trigger(app, script, admin, "orders:*")
    exact = pubsub_trigger(app, script, admin, "orders:new")
    pubsub_trigger(app, script, admin, "audit")
    pubsub_trigger(app, script, admin, "orders:*", name="off", enabled=False)

    result = topics.publish(app, "orders:new", {"id": 7}, principal=admin)

    rows = list(OutboxEntry.objects.all())
    assert result.deliveries == 3
    assert sorted(r.trigger_id for r in rows) == sorted([exact.id, all_.id, orders.id])
    for row in rows:
        assert row.source_kind == "pubsub" and row.app_id == app.id and row.depth == 0
        assert row.run_as_principal_id == admin.id
        assert row.payload["message"] == {"id": 7} and row.payload["topic"] == "orders:new"
        assert row.payload["message_id"] == str(result.message_id)
        assert row.payload["trigger_id"] == str(row.trigger_id)


def test_a_rolled_back_publish_publishes_nothing(setup):
    app, admin, script = setup
    pubsub_trigger(app, script, admin, "*")
    with pytest.raises(RuntimeError), transaction.atomic():
        topics.publish(app, "audit", "x", principal=admin)
        assert OutboxEntry.objects.count() == 1
        raise RuntimeError("the publisher's transaction fails")
    assert OutboxEntry.objects.count() == 0


def test_publish_refuses_unknown_topics_bad_messages_and_outsiders(setup):
    app, admin, script = setup
    pubsub_trigger(app, script, admin, "*")
    with pytest.raises(topics.TopicNotFound, match="no topic 'nope' in app"):
        topics.publish(app, "nope", 1, principal=admin)
    with pytest.raises(ValidationError, match="cannot be stored"):
        topics.publish(app, "audit", {"x": float("nan")}, principal=admin)
    with pytest.raises(MessageTooLarge, match="at most"):
        topics.publish(app, "audit", "x" * 300_000, principal=admin)
    viewer = MembershipFactory(app=app, role=Role.Viewer.value).principal
    with pytest.raises(PermissionDenied, match="TopicPublish"):
        topics.publish(app, "audit", 1, principal=viewer)
    with pytest.raises(PermissionDenied):
        topics.create_topic(
            app,
            "t2",
            principal=MembershipFactory(app=app, role=Role.Developer.value).principal,
        )
    assert OutboxEntry.objects.count() == 0


def test_topic_names_are_checked(setup):
    app, admin, _ = setup
    for bad in ("", "a b", "a/b", "*", "x" * 201, ":lead"):
        with pytest.raises(ValidationError, match="allowed: 1 to 200 characters"):
            topics.create_topic(app, bad, principal=admin)
    with pytest.raises(topics.NameTaken, match="already has a topic named 'audit'"):
        topics.create_topic(app, "audit", principal=admin)
    # Names no topic can have are looked up as none, never sent to SQL.
    for impossible in ("a\x00", "a\ud800", "x" * 300, 7):
        with pytest.raises(topics.TopicNotFound):
            topics.publish(app, impossible, 1, principal=admin)
        assert topics.delete_topic(app, impossible, principal=admin) is False


@handler("tests.publish_again")
def _publish_again(event, ctx):
    ctx.topics.publish("audit", {"hop": event["message"]["hop"] + 1})


@pytest.mark.django_db(transaction=True)  # handlers run on a thread of their own
def test_scripts_publish_at_depth_plus_one_and_the_cascade_stops(setup, override_config):
    app, admin, _ = setup
    override_config(TriggerConfig(max_trigger_depth=3))
    script = ScriptFactory(app=app, handler="tests.publish_again")
    trigger = pubsub_trigger(app, script, admin, "audit")
    topics.publish(app, "audit", {"hop": 0}, principal=admin)
    ran = drain_outbox(max_rows=20)
    assert [row.depth for row, _ in ran] == [0, 1, 2, 3]
    assert all(outcome.ok for _, outcome in ran)
    letter = DeadLetter.objects.get()
    assert letter.source_kind == "pubsub" and letter.trigger_id == trigger.id
    assert "depth limit stopped a cascade: a publish to topic audit at depth 4" in (
        letter.last_error
    )
    assert letter.payload["message"] == {"hop": 4}
