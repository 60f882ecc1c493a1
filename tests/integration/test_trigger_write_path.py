"""Admin writes triggers through the repository, as the Python API and the
demo do: one write path, so one set of rules and one behaviour."""

from datetime import UTC, datetime

import pytest
from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.core.exceptions import ValidationError
from django.urls import reverse

from picloud.domain.authz import Role
from tests.factories import MembershipFactory, ScriptFactory, kv_trigger
from tests.helpers import trigger_inlines
from triggers.models import DeadLetterTriggerDetails, KvTriggerDetails, Trigger
from triggers.pg_repository import PgTriggerRepo
from triggers.repository import DeadLetterSpec, KvSpec, NewTrigger
from triggers.rules import DuplicateTriggerName

pytestmark = pytest.mark.django_db

INLINES = trigger_inlines()
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


@pytest.fixture
def member(client):
    member = MembershipFactory(role=Role.AppAdmin.value)
    client.force_login(member.principal.user)
    return member


@pytest.fixture
def calls(monkeypatch):
    """Every call admin makes to PgTriggerRepo's writes, passed through."""
    seen = []
    for name in ("create", "update", "delete"):
        original = getattr(PgTriggerRepo, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            seen.append((_name, args, kwargs))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(PgTriggerRepo, name, spy)
    return seen


def change_form(trigger: Trigger, **fields) -> dict:
    """The change page's POST for a kv trigger, its details unchanged."""
    details = trigger.kv_details
    return {
        **INLINES,
        "kv_details-INITIAL_FORMS": "1",
        "kv_details-0-trigger": trigger.pk,
        "kv_details-0-collection": details.collection,
        "kv_details-0-ops": details.ops,
        "dead_letter_details-TOTAL_FORMS": "0",
        "name": trigger.name,
        "script": trigger.script_id,
        "enabled": "on",
        **fields,
    }


def test_admin_creates_and_edits_through_the_repository(client, member, calls):
    script = ScriptFactory(app=member.app)
    added = client.post(
        reverse("admin:triggers_trigger_add"),
        {
            **INLINES,
            "app": member.app.pk,
            "name": "orders",
            "kind": "kv",
            "script": script.pk,
            "enabled": "on",
            "kv_details-0-collection": "orders:*",
            "kv_details-0-ops": ["insert"],
        },
    )
    assert added.status_code == 302
    [(name, (new,), _)] = calls
    assert name == "create"
    assert (new.name, new.kv, new.registered_by_principal) == (
        "orders",
        KvSpec("orders:*", ("insert",)),
        member.principal.pk,
    )
    trigger = Trigger.objects.get(name="orders")
    history = LogEntry.objects.get(action_flag=ADDITION)
    assert (history.object_id, history.object_repr) == (str(trigger.pk), str(trigger))

    calls.clear()
    url = reverse("admin:triggers_trigger_change", args=[trigger.pk])
    changed = client.post(
        url,
        {**change_form(trigger, name="orders-eu"), "kv_details-0-collection": "orders:eu"},
    )
    assert changed.status_code == 302
    [(name, (trigger_id,), changes)] = calls
    assert (name, trigger_id) == ("update", trigger.pk)
    assert (changes["name"], changes["kv"]) == ("orders-eu", KvSpec("orders:eu", ("insert",)))
    assert KvTriggerDetails.objects.get(trigger=trigger).collection == "orders:eu"
    history = LogEntry.objects.get(action_flag=CHANGE)
    assert "Name" in history.get_change_message(), history.get_change_message()


def test_a_new_dead_letter_trigger_gets_its_any_filter_from_the_repository(client, member, calls):
    script = ScriptFactory(app=member.app)
    client.post(
        reverse("admin:triggers_trigger_add"),
        {
            **INLINES,
            "app": member.app.pk,
            "name": "alert",
            "kind": "dead_letter",
            "script": script.pk,
        },
    )
    [(name, (new,), _)] = calls
    assert (name, new.dead_letter) == ("create", None)
    details = DeadLetterTriggerDetails.objects.get(trigger__name="alert")
    assert (details.source_kind, details.source_trigger_id) == (None, None)


def test_enable_and_disable_go_through_the_repository(client, member, calls):
    script = ScriptFactory(app=member.app)
    record = kv_trigger(member.app, script, member.principal)
    Trigger.objects.filter(pk=record.id).update(updated_at=LONG_AGO)
    calls.clear()
    changelist = reverse("admin:triggers_trigger_changelist")
    client.post(changelist, {"action": "disable", "_selected_action": [record.id]})
    assert calls == [("update", (record.id,), {"enabled": False})]
    trigger = Trigger.objects.get(pk=record.id)
    assert trigger.enabled is False
    assert trigger.updated_at > LONG_AGO, "the repository stamps every change"


def test_deleting_goes_through_the_repository(client, member, calls):
    script = ScriptFactory(app=member.app)
    one = kv_trigger(member.app, script, member.principal, name="one")
    two = kv_trigger(member.app, script, member.principal, name="two")
    calls.clear()
    client.post(reverse("admin:triggers_trigger_delete", args=[one.id]), {"post": "yes"})
    client.post(
        reverse("admin:triggers_trigger_changelist"),
        {"action": "delete_selected", "_selected_action": [two.id], "post": "yes"},
    )
    assert calls == [("delete", (one.id,), {}), ("delete", (two.id,), {})]
    assert not Trigger.objects.exists()


def test_renaming_to_a_taken_name_in_admin_says_so(client, member):
    """The app is read-only on the change page, so Django's own unique check
    (it needs every field of the constraint on the form) never ran: the
    rename reached the database and failed there."""
    script = ScriptFactory(app=member.app)
    kv_trigger(member.app, script, member.principal, name="taken")
    record = kv_trigger(member.app, script, member.principal, name="mine")
    trigger = Trigger.objects.get(pk=record.id)
    response = client.post(
        reverse("admin:triggers_trigger_change", args=[trigger.pk]),
        change_form(trigger, name="taken"),
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert errors["name"] == DuplicateTriggerName("taken").message_dict["name"]
    assert Trigger.objects.get(pk=trigger.pk).name == "mine"


def test_an_update_checks_only_the_rules_of_what_it_changes(member):
    """A trigger stored before a rule existed (here: a blank name and a
    filter on a dead-letter trigger, which the SQL allows) can still be
    disabled; changing what breaks a rule is refused."""
    script = ScriptFactory(app=member.app)
    repo = PgTriggerRepo()
    other = repo.create(
        NewTrigger(member.app.pk, "dead_letter", script.pk, "o", member.principal.pk)
    )
    old = repo.create(NewTrigger(member.app.pk, "dead_letter", script.pk, "x", member.principal.pk))
    Trigger.objects.filter(pk=old.id).update(name="   ")
    DeadLetterTriggerDetails.objects.filter(trigger_id=old.id).update(source_trigger_id=other.id)

    assert repo.update(old.id, enabled=False).enabled is False
    with pytest.raises(ValidationError, match="needs a name"):
        repo.update(old.id, name="  ")
    with pytest.raises(ValidationError, match="is a dead-letter trigger"):
        repo.update(old.id, dead_letter=DeadLetterSpec("kv", other.id))
    assert repo.update(old.id, dead_letter=DeadLetterSpec("kv")).dead_letter == DeadLetterSpec("kv")


def test_editing_a_trigger_refuses_the_other_kinds_details(client, member, calls):
    """On the change page a details form knows its trigger and refuses
    itself (the models' rules); a POST without the inline's trigger field
    is refused by the formset instead. Either way once, and nothing is
    written."""
    script = ScriptFactory(app=member.app)
    record = PgTriggerRepo().create(
        NewTrigger(member.app.pk, "dead_letter", script.pk, "alert", member.principal.pk)
    )
    calls.clear()
    url = reverse("admin:triggers_trigger_change", args=[record.id])
    post = {
        **INLINES,
        "dead_letter_details-INITIAL_FORMS": "1",
        "dead_letter_details-0-trigger": record.id,
        "name": "alert",
        "script": script.pk,
        "kv_details-0-collection": "*",
        "kv_details-0-ops": ["insert"],
    }
    message = (
        "Only KV write triggers have these details (kind 'kv'); clear them or choose that kind."
    )
    for data in ({**post, "kv_details-0-trigger": record.id}, post):
        response = client.post(url, data)
        assert response.status_code == 200 and calls == []
        [kv_inline, *_] = response.context["inline_admin_formsets"]
        formset = kv_inline.formset
        said = [
            *formset.non_form_errors(),
            *(e for f in formset.forms for e in f.non_field_errors()),
        ]
        assert said == [message]
    assert not KvTriggerDetails.objects.exists()


def test_the_log_switch_is_saved_beside_the_repositorys_write(client, member, calls):
    """Log failures only is the delivery log's business, not a rule of the
    trigger: admin writes it itself, and the repository's update never sees it."""
    script = ScriptFactory(app=member.app)
    trigger = kv_trigger(member.app, script, member.principal, collection="orders")
    trigger = Trigger.objects.get(pk=trigger.id)
    url = reverse("admin:triggers_trigger_change", args=[trigger.pk])
    changed = client.post(url, change_form(trigger, log_failures_only="on"))
    assert changed.status_code == 302
    assert Trigger.objects.get(pk=trigger.pk).log_failures_only
    assert all("log_failures_only" not in changes for _, _, changes in calls)
    client.post(url, change_form(trigger))  # unticked
    assert not Trigger.objects.get(pk=trigger.pk).log_failures_only
