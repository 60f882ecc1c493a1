"""`make run`'s demo data: usable credentials and dead letters on their own."""

import pytest

from outbox.models import OutboxEntry
from picloud.demo import DEMO_ORDERS, load_demo
from picloud.domain import tokens
from picloud.models import ApiToken, App, Queue, Topic
from triggers.models import Trigger

pytestmark = pytest.mark.django_db


def test_demo_data_is_repeatable_and_feeds_a_failing_trigger():
    first = load_demo(password="pw-1")
    second = load_demo(password="pw-2")
    assert App.objects.filter(slug="demo").count() == 1
    assert Trigger.objects.filter(app__slug="demo").count() == 4, "triggers are not duplicated"
    assert tokens.authenticate(first.api_token) is None, "the last run's token is replaced"
    grant = tokens.authenticate(second.api_token)
    assert grant is not None and "script:invoke" in grant.scopes
    assert ApiToken.objects.filter(name="make run demo").count() == 1
    flaky = Trigger.objects.get(app__slug="demo", name="orders-audit")
    assert flaky.script.handler == "picloud.fail" and flaky.max_attempts == 2
    rows = OutboxEntry.objects.filter(trigger=flaky)
    assert rows.count() == 2 * DEMO_ORDERS, "each run writes orders the failing trigger picks up"


def test_demo_data_has_a_topic_and_a_queue_with_their_triggers():
    load_demo(password="pw")
    load_demo(password="pw")
    app = App.objects.get(slug="demo")
    assert list(Topic.objects.filter(app=app).values_list("name", flat=True)) == ["orders:created"]
    assert sorted(Queue.objects.filter(app=app).values_list("name", flat=True)) == [
        "emails",
        "jobs",
    ]
    queue = Queue.objects.get(app=app, name="emails")
    assert Trigger.objects.get(app=app, kind="pubsub").pubsub_details.topic == "orders:*"
    assert Trigger.objects.get(app=app, kind="queue").queue_details.queue_id == queue.id
    published = OutboxEntry.objects.filter(source_kind="pubsub")
    assert published.count() == 2 * DEMO_ORDERS, "every order is published to its subscriber"
    assert queue.messages.count() == 2 * DEMO_ORDERS
