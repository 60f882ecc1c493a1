"""Fixtures shared by the admin tests."""

from datetime import timedelta

import pytest
from django.utils import timezone

from deadletters.models import AbandonedExecution, DeadLetter
from outbox.models import OutboxEntry, ScriptCircuit
from picloud.domain.authz import Role
from tests.factories import AppFactory, MembershipFactory, ScriptFactory, kv_trigger
from triggers.models import Trigger


@pytest.fixture
def world():
    """Two apps, each with a trigger, a dead letter, an outbox row, an
    abandoned execution, a script's circuit, a scheduled run; Alice
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
        objects[key] = {
            "app": app,
            "script": script,
            "trigger": Trigger.objects.get(pk=trigger.id),
            "dead_letter": letter,
            "outbox": row,
            "abandoned": abandoned,
            "circuit": circuit,
            "scheduled": scheduled,
        }
    return {"alice": alice.principal.user, "bob": bob.principal.user, **objects}
