"""Fixtures shared by the admin tests."""

from datetime import timedelta

import pytest
from django.utils import timezone

from deadletters.models import AbandonedExecution, DeadLetter
from outbox.models import OutboxEntry, ScriptCircuit
from picloud import kv
from picloud.domain.authz import Role
from picloud.messaging import queues, topics
from picloud.models import InboundEmail, KvEntry, Queue, Topic
from tests.factories import AppFactory, MembershipFactory, ScriptFactory, kv_trigger
from triggers.models import Trigger
from triggers.pg_repository import PgTriggerRepo
from triggers.repository import NewTrigger, PubsubSpec, QueueSpec


def _kv_entry(app, collection, principal) -> KvEntry:
    kv.put(app, collection, "k", {"of": app.slug}, principal=principal)
    return KvEntry.objects.get(app=app, collection=collection)


@pytest.fixture
def world():
    """Two apps, each with a trigger, a dead letter, an outbox row, an
    abandoned execution, a script's circuit, a scheduled run, a topic with a
    pub/sub trigger subscribed, a queue with its queue trigger and a received
    email and a KV entry; Alice
    administers app A only."""
    alice = MembershipFactory(role=Role.AppAdmin.value)
    app_a = alice.app
    app_b = AppFactory(slug="app-b-secret")
    bob = MembershipFactory(app=app_b, role=Role.AppAdmin.value)
    objects = {}
    for key, app, member in (("a", app_a, alice), ("b", app_b, bob)):
        script = ScriptFactory(app=app, name=f"script-{key}")
        trigger = kv_trigger(app, script, member.principal, name=f"trigger-{key}")
        letter = DeadLetter.objects.create(
            app=app,
            source_kind="kv",
            trigger_id=trigger.id,
            script=script,
            payload={"k": key},
            last_error=f"error-of-{key}",
            errors=[f"error-of-{key}"],
            attempts=1,
            depth=0,
        )
        row = OutboxEntry.objects.create(
            app=app, source_kind="kv", script=script, trigger_id=trigger.id
        )
        abandoned = AbandonedExecution.objects.create(
            app=app,
            outbox_id=row.id,
            inbox_id=row.id,
            status_code=200,
            result_summary=f"summary-of-{key}",
        )
        scheduled = OutboxEntry.objects.create(
            app=app,
            source_kind="invoke",
            script=script,
            run_as_principal=member.principal,
            due_at=timezone.now() + timedelta(hours=1),
        )
        circuit = ScriptCircuit.objects.create(
            script=script, app=app, failures=5, opened=1, last_error=f"error-of-{key}"
        )
        topic = topics.create_topic(app, f"orders:{key}", principal=member.principal)
        queue = queues.create_queue(app, f"work-{key}", principal=member.principal)
        subscriber, consumer = (
            PgTriggerRepo().create(
                NewTrigger(
                    app_id=app.id,
                    kind=kind,
                    script_id=script.id,
                    name=f"{kind}-{key}",
                    registered_by_principal=member.principal.id,
                    **details,
                )
            )
            for kind, details in (
                ("pubsub", {"pubsub": PubsubSpec("orders:*")}),
                ("queue", {"queue": QueueSpec(queue.id)}),
            )
        )
        objects[key] = {
            "app": app,
            "script": script,
            "trigger": Trigger.objects.get(pk=trigger.id),
            "dead_letter": letter,
            "outbox": row,
            "abandoned": abandoned,
            "circuit": circuit,
            "scheduled": scheduled,
            "topic": Topic.objects.get(pk=topic.id),
            "queue": Queue.objects.get(pk=queue.id),
            "pubsub_trigger": Trigger.objects.get(pk=subscriber.id),
            "queue_trigger": Trigger.objects.get(pk=consumer.id),
            "inbound_email": InboundEmail.objects.create(
                app=app,
                mail_from="ann@example.com",
                rcpt_to=[f"orders@{app.slug}.picloud.localhost"],
                subject=f"subject-of-{key}",
                size=5,
                raw=b"Subject: x\r\n\r\nhi\r\n",
            ),
            "kv_entry": _kv_entry(app, f"notes-{key}", member.principal),
        }
    return {"alice": alice.principal.user, "bob": bob.principal.user, **objects}
