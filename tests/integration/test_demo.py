"""`make run`'s demo data: usable credentials and dead letters on their own."""

import pytest

from outbox.models import OutboxEntry
from picloud.config import EmailConfig
from picloud.demo import DEMO_ORDERS, load_demo
from picloud.domain import tokens
from picloud.mail import inbound
from picloud.models import ApiToken, App, Queue, Topic
from tests.helpers import drain_outbox
from triggers.models import Trigger

pytestmark = pytest.mark.django_db


def test_demo_data_is_repeatable_and_feeds_a_failing_trigger():
    first = load_demo(password="pw-1")
    second = load_demo(password="pw-2")
    assert App.objects.filter(slug="demo").count() == 1
    assert Trigger.objects.filter(app__slug="demo").count() == 5, "triggers are not duplicated"
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


@pytest.mark.django_db(transaction=True)  # handlers run on a thread of their own
def test_demo_mail_to_orders_is_acknowledged_by_its_email_trigger(override_config):
    override_config(EmailConfig(domain="mail.test"))
    load_demo(password="pw")
    assert inbound.accepts("orders@demo.mail.test") is not None
    assert inbound.accepts("sales@demo.mail.test") is None
    raw = b"From: you@example.com\r\nSubject: hello\r\nMessage-ID: <q@example.com>\r\n\r\nHi!\r\n"
    [stored] = inbound.receive("you@example.com", ["orders@demo.mail.test"], raw)
    assert [f["name"] for f in stored.fired] == ["orders-mail"]
    ran = drain_outbox()
    [(_row, outcome)] = [(r, o) for r, o in ran if r.source_kind == "email"]
    assert outcome.ok and outcome.result["replied"], outcome
    [(send, delivered)] = [(r, o) for r, o in ran if r.source_kind == "email_send"]
    assert delivered.ok, "printed by the demo's console backend"
    reply = send.payload["email"]
    assert (reply["to"], reply["from"]) == (["you@example.com"], "orders@demo.mail.test")
    assert reply["in_reply_to"] == "<q@example.com>" and reply["subject"] == "Re: hello"


@pytest.mark.django_db(transaction=True)
def test_the_demo_acknowledgement_never_answers_a_robot(override_config):
    override_config(EmailConfig(domain="mail.test"))
    load_demo(password="pw")
    raw = b"From: bot@example.com\r\nAuto-Submitted: auto-replied\r\nSubject: Re: x\r\n\r\nok\r\n"
    inbound.receive("bot@example.com", ["orders@demo.mail.test"], raw)
    [(_row, outcome)] = [(r, o) for r, o in drain_outbox() if r.source_kind == "email"]
    assert outcome.ok and outcome.result["replied"] is False
    assert not OutboxEntry.objects.filter(source_kind="email_send").exists()
