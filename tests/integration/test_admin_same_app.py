"""A trigger's references come from its own app: a dead-letter trigger's
source-trigger filter in admin, in full_clean, and the deletion it blocks.

The scenario of the issue: a user administering apps A and B pointed A's
dead-letter trigger at B's trigger; after losing B, B's admin could not
delete their own trigger, nor see what blocked it.
"""

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, models
from django.urls import reverse

from picloud.domain.authz import Role
from picloud.models import AppMembership
from tests.factories import AppFactory, MembershipFactory, ScriptFactory, kv_trigger
from tests.helpers import trigger_inlines
from triggers.models import DeadLetterTriggerDetails, Trigger

pytestmark = pytest.mark.django_db

INLINES = trigger_inlines(kv_forms=0)


@pytest.fixture
def two_apps():
    """Uma administers apps A and B; Bob administers B only. Each app has a
    script and a kv trigger; A has a dead-letter trigger with no filter."""
    uma_a = MembershipFactory(app=AppFactory(slug="app-a"), role=Role.AppAdmin.value)
    app_b = AppFactory(slug="app-b")
    uma_b = MembershipFactory(app=app_b, principal=uma_a.principal, role=Role.AppAdmin.value)
    bob = MembershipFactory(app=app_b, role=Role.AppAdmin.value)
    world = {"uma": uma_a.principal, "uma_in_b": uma_b, "bob": bob.principal}
    for key, app, member in (("a", uma_a.app, uma_a), ("b", app_b, bob)):
        script = ScriptFactory(app=app, name=f"script-{key}")
        source = kv_trigger(app, script, member.principal, name=f"source-{key}")
        world[key] = {"app": app, "script": script, "source": Trigger.objects.get(pk=source.id)}
    handler = Trigger.objects.create(
        app=uma_a.app,
        kind="dead_letter",
        script=world["a"]["script"],
        name="alert-a",
        registered_by_principal=uma_a.principal,
    )
    DeadLetterTriggerDetails.objects.create(trigger=handler)
    world["a"]["handler"] = handler
    return world


def check_deferred_constraints_now():
    # Deferred foreign keys are checked at commit, which a test never reaches.
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def dead_letter_form(app, script, source, **extra):
    return {
        **INLINES,
        "app": app.pk,
        "name": "alert",
        "kind": "dead_letter",
        "script": script.pk,
        "enabled": "on",
        "dead_letter_details-0-source_kind": "",
        "dead_letter_details-0-source_trigger": source.pk,
        **extra,
    }


def inline_errors(response) -> str:
    assert response.status_code == 200, "the form should come back with errors"
    return " ".join(
        str(i.formset.errors) + str(i.formset.non_form_errors())
        for i in response.context["inline_admin_formsets"]
    )


def test_a_new_dead_letter_trigger_cannot_filter_on_another_apps_trigger(client, two_apps):
    client.force_login(two_apps["uma"].user)
    a, b = two_apps["a"], two_apps["b"]
    forged = client.post(
        reverse("admin:triggers_trigger_add"), dead_letter_form(a["app"], a["script"], b["source"])
    )
    assert "belongs to another app" in inline_errors(forged)
    assert "choose a trigger of app &#x27;app-a&#x27;" in forged.content.decode()
    assert not Trigger.objects.filter(name="alert").exists()
    # Its own app's trigger is accepted.
    own = client.post(
        reverse("admin:triggers_trigger_add"), dead_letter_form(a["app"], a["script"], a["source"])
    )
    assert own.status_code == 302, own.context and inline_errors(own)
    details = DeadLetterTriggerDetails.objects.get(trigger__name="alert")
    assert (details.source_trigger_id, details.app_id) == (a["source"].pk, a["app"].pk)


def test_an_existing_trigger_offers_and_takes_only_its_apps_triggers(client, two_apps):
    client.force_login(two_apps["uma"].user)
    a, b = two_apps["a"], two_apps["b"]
    url = reverse("admin:triggers_trigger_change", args=[a["handler"].pk])
    page = client.get(url)
    [dead_letter_inline] = [
        i.formset
        for i in page.context["inline_admin_formsets"]
        if i.formset.model is DeadLetterTriggerDetails
    ]
    offered = set(dead_letter_inline.forms[0].fields["source_trigger"].queryset)
    assert offered == {a["source"]}, "another app's triggers are offered"

    forged = client.post(
        url,
        {
            **INLINES,
            "dead_letter_details-INITIAL_FORMS": "1",
            "dead_letter_details-0-trigger": a["handler"].pk,
            "name": "alert-a",
            "script": a["script"].pk,
            "enabled": "on",
            "dead_letter_details-0-source_trigger": b["source"].pk,
        },
    )
    assert "Select a valid choice" in inline_errors(forged)
    assert DeadLetterTriggerDetails.objects.get(trigger=a["handler"]).source_trigger_id is None


def test_full_clean_refuses_another_apps_source_trigger(two_apps):
    a, b = two_apps["a"], two_apps["b"]
    details = DeadLetterTriggerDetails.objects.get(trigger=a["handler"])
    details.source_trigger = b["source"]
    with pytest.raises(ValidationError) as excinfo:
        details.full_clean()
    assert "belongs to another app" in excinfo.value.message_dict["source_trigger"][0]
    details.source_trigger = a["source"]
    details.full_clean()
    # A new row (its app still to be copied from the trigger) validates too.
    fresh = Trigger.objects.create(
        app=a["app"],
        kind="dead_letter",
        script=a["script"],
        name="fresh",
        registered_by_principal=two_apps["uma"],
    )
    DeadLetterTriggerDetails(trigger=fresh, source_trigger=a["source"]).full_clean()
    with pytest.raises(ValidationError):
        DeadLetterTriggerDetails(trigger=fresh, source_trigger=b["source"]).full_clean()


def test_the_issues_scenario_no_longer_blocks_bs_admin(client, two_apps):
    """Uma tries every admin way to point A's filter at B's trigger, then
    loses B; Bob, B's admin, deletes B's trigger."""
    a, b = two_apps["a"], two_apps["b"]
    client.force_login(two_apps["uma"].user)
    client.post(
        reverse("admin:triggers_trigger_add"), dead_letter_form(a["app"], a["script"], b["source"])
    )
    assert not DeadLetterTriggerDetails.objects.filter(source_trigger=b["source"]).exists()

    AppMembership.objects.filter(pk=two_apps["uma_in_b"].pk).delete()
    client.force_login(two_apps["bob"].user)
    url = reverse("admin:triggers_trigger_delete", args=[b["source"].pk])
    page = client.get(url)
    assert page.status_code == 200 and not page.context["protected"], page.context["protected"]
    deleted = client.post(url, {"post": "yes"})
    assert deleted.status_code == 302
    check_deferred_constraints_now()
    assert not Trigger.objects.filter(pk=b["source"].pk).exists()


def test_a_same_app_filter_blocks_deletion_and_says_where_to_change_it(client, two_apps):
    a = two_apps["a"]
    DeadLetterTriggerDetails.objects.filter(trigger=a["handler"]).update(source_trigger=a["source"])
    client.force_login(two_apps["uma"].user)
    url = reverse("admin:triggers_trigger_delete", args=[a["source"].pk])
    body = client.get(url).content.decode()
    handler_url = reverse("admin:triggers_trigger_change", args=[a["handler"].pk])
    assert "cannot be deleted while other triggers' dead-letter filters name it" in body, body
    assert f'<a href="{handler_url}">app-a/alert-a</a> filters on app-a/source-a' in body, body
    client.post(url, {"post": "yes"})
    assert Trigger.objects.filter(pk=a["source"].pk).exists(), "deleted despite the filter"

    # The bulk delete page says the same; deleting both together works.
    changelist = reverse("admin:triggers_trigger_changelist")
    bulk = client.post(
        changelist, {"action": "delete_selected", "_selected_action": [a["source"].pk]}
    )
    assert handler_url in bulk.content.decode()
    both = [a["source"].pk, a["handler"].pk]
    client.post(changelist, {"action": "delete_selected", "_selected_action": both, "post": "yes"})
    check_deferred_constraints_now()
    assert not Trigger.objects.filter(pk__in=both).exists()


def test_only_dead_letter_filters_can_block_deleting_a_trigger():
    """TriggerAdmin.get_deleted_objects names the filters in place of
    Django's protected list; that loses nothing only while they are the one
    relation to triggers that refuses deletion."""
    blocking = [
        (rel.related_model, rel.field.name)
        for rel in Trigger._meta.get_fields(include_hidden=True)
        if rel.auto_created
        and not rel.concrete
        and rel.on_delete in (models.PROTECT, models.RESTRICT)
    ]
    assert blocking == [(DeadLetterTriggerDetails, "source_trigger")]
