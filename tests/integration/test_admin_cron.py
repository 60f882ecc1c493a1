"""Cron triggers in admin: the details inline with its preview, validation by
field, pause / resume / run now, and the last fire on the list."""

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse

from outbox.models import OutboxEntry
from picloud.domain.authz import Role
from tests.factories import AppFactory, MembershipFactory, ScriptFactory
from tests.helpers import trigger_inlines
from triggers.cron import CronTicker
from triggers.models import CronTriggerDetails, Trigger

pytestmark = pytest.mark.django_db

LIST = "admin:triggers_trigger_changelist"


@pytest.fixture
def admin_member(client):
    member = MembershipFactory(app=AppFactory(slug="shop"), role=Role.AppAdmin.value)
    client.force_login(member.principal.user)
    return member


def cron_fields(**fields):
    return {
        "cron_details-0-schedule": "30 2 * * *",
        "cron_details-0-timezone": "America/New_York",
        "cron_details-0-catchup": "latest",
        "cron_details-0-catchup_window_s": "21600",
        "cron_details-0-overlap": "skip",
        "cron_details-0-payload": '{"report": "daily"}',
        **{f"cron_details-0-{k}": v for k, v in fields.items()},
    }


def add_cron(client, member, **fields):
    return client.post(
        reverse("admin:triggers_trigger_add"),
        {
            **trigger_inlines(kv_forms=0, cron_forms=1, dead_letter_forms=0),
            "app": member.app.pk,
            "name": "nightly",
            "kind": "cron",
            "script": ScriptFactory(app=member.app).pk,
            "enabled": "on",
            **cron_fields(**fields),
        },
    )


def inline_errors(response) -> str:
    assert response.status_code == 200, "the form should come back with errors"
    return " ".join(
        str(i.formset.errors) + str(i.formset.non_form_errors())
        for i in response.context["inline_admin_formsets"]
    )


def test_create_a_cron_trigger_and_see_its_next_fires(client, admin_member):
    response = add_cron(client, admin_member)
    assert response.status_code == 302, response.context and inline_errors(response)
    trigger = Trigger.objects.get(name="nightly")
    details = CronTriggerDetails.objects.get(trigger=trigger)
    assert (details.schedule, details.timezone, details.payload) == (
        "30 2 * * *",
        "America/New_York",
        {"report": "daily"},
    )
    page = client.get(reverse("admin:triggers_trigger_change", args=[trigger.pk]))
    html = page.content.decode()
    assert html.count("(America/New_York) — ") == 5
    assert "02:30:00 (America/New_York)" in html
    assert " UTC</div>" in html


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"schedule": "61 * * * *"}, "out of range"),
        ({"schedule": "0 0 30 2 *"}, "never comes"),
        ({"timezone": "Mars/Base"}, "unknown timezone"),
        ({"catchup_window_s": "999999999"}, "0 to 604800"),
        ({"payload": "[1, 2]"}, "JSON object"),
    ],
)
def test_bad_details_come_back_saying_what_is_allowed(client, admin_member, fields, says):
    response = add_cron(client, admin_member, **fields)
    assert says in inline_errors(response)
    assert not Trigger.objects.filter(name="nightly").exists()


def test_a_cron_trigger_needs_its_schedule(client, admin_member):
    response = client.post(
        reverse("admin:triggers_trigger_add"),
        {
            **trigger_inlines(kv_forms=0, cron_forms=0, dead_letter_forms=0),
            "app": admin_member.app.pk,
            "name": "nightly",
            "kind": "cron",
            "script": ScriptFactory(app=admin_member.app).pk,
        },
    )
    assert "needs its details" in inline_errors(response)


def act(client, action, trigger):
    return client.post(reverse(LIST), {"action": action, ACTION_CHECKBOX_NAME: [str(trigger.pk)]})


def test_pause_resume_and_run_now(client, admin_member):
    add_cron(client, admin_member, schedule="* * * * * *")
    trigger = Trigger.objects.get(name="nightly")
    CronTicker().run_once()
    assert OutboxEntry.objects.filter(trigger=trigger).exists()

    act(client, "pause", trigger)
    assert CronTriggerDetails.objects.get(trigger=trigger).paused
    assert not OutboxEntry.objects.filter(trigger=trigger).exists()
    assert "paused" in client.get(reverse(LIST)).content.decode()

    act(client, "run_now", trigger)
    (row,) = OutboxEntry.objects.filter(trigger=trigger)
    assert row.payload["run_now"] is True

    act(client, "resume", trigger)
    assert not CronTriggerDetails.objects.get(trigger=trigger).paused
    page = client.get(reverse(LIST)).content.decode()
    assert "running or retrying" in page or "due" in page


def test_another_apps_admin_cannot_run_it(client, admin_member):
    add_cron(client, admin_member)
    trigger = Trigger.objects.get(name="nightly")
    stranger = MembershipFactory(role=Role.AppAdmin.value).principal.user
    client.force_login(stranger)
    act(client, "run_now", trigger)
    act(client, "pause", trigger)
    assert not OutboxEntry.objects.filter(trigger=trigger).exists()
    assert not CronTriggerDetails.objects.get(trigger=trigger).paused
