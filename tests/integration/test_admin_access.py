"""Per-app access in admin, for each kind of page: a staff user sees and
changes only the apps where their role grants the page's capability."""

import pytest
from django.urls import reverse

from deadletters.models import DeadLetter
from picloud.domain import tokens
from picloud.domain.authz import Role
from picloud.models import ApiToken, AppMembership, Script
from tests.factories import MembershipFactory, UserFactory
from triggers.models import Trigger

pytestmark = pytest.mark.django_db


def login(client, user):
    client.force_login(user)
    return client


PAGES = [
    ("triggers", "trigger", "trigger"),
    ("deadletters", "deadletter", "dead_letter"),
    ("outbox", "outboxentry", "outbox"),
    ("deadletters", "abandonedexecution", "abandoned"),
    ("picloud", "script", "script"),
    ("picloud", "inboundemail", "inbound_email"),
    ("picloud", "kventry", "kv_entry"),
]


@pytest.mark.parametrize(("app_label", "model", "key"), PAGES)
def test_lists_show_only_reachable_apps(client, world, app_label, model, key):
    login(client, world["alice"])
    response = client.get(reverse(f"admin:{app_label}_{model}_changelist"))
    assert response.status_code == 200
    ids = {str(o.pk) for o in response.context["cl"].result_list}
    assert str(world["a"][key].pk) in ids
    assert str(world["b"][key].pk) not in ids, "another app's row is listed"
    assert "app-b-secret" not in response.content.decode(), "another app's name leaks"


@pytest.mark.parametrize(("app_label", "model", "key"), PAGES)
def test_direct_urls_to_another_apps_objects_are_404(client, world, app_label, model, key):
    login(client, world["alice"])
    other = world["b"][key].pk
    for view in ("change", "delete", "history"):
        response = client.get(reverse(f"admin:{app_label}_{model}_{view}", args=[other]))
        assert response.status_code in (403, 404), f"{view} of app B's {model}"
        assert "app-b-secret" not in response.content.decode()
    own = client.get(reverse(f"admin:{app_label}_{model}_change", args=[world["a"][key].pk]))
    assert own.status_code == 200


def test_an_unknown_id_and_another_apps_id_look_the_same(client, world):
    login(client, world["alice"])
    import uuid

    unknown = client.get(reverse("admin:triggers_trigger_change", args=[uuid.uuid4()]))
    other = client.get(reverse("admin:triggers_trigger_change", args=[world["b"]["trigger"].pk]))
    assert unknown.status_code == other.status_code == 404


def test_filters_offer_only_reachable_apps_and_triggers(client, world):
    login(client, world["alice"])
    response = client.get(reverse("admin:deadletters_deadletter_changelist"))
    filters = {
        f.title: [c["display"] for c in f.choices(response.context["cl"])]
        for f in response.context["cl"].filter_specs
    }
    assert "app-b-secret" not in filters["app"]
    assert world["a"]["app"].slug in filters["app"]
    assert not any("trigger-b" in str(c) for c in filters["trigger"])
    # Asking for app B's rows through the filter's parameter shows nothing.
    forged = client.get(
        reverse("admin:deadletters_deadletter_changelist"), {"app": str(world["b"]["app"].pk)}
    )
    assert list(forged.context["cl"].result_list) == []


def test_actions_touch_only_reachable_rows(client, world):
    login(client, world["alice"])
    url = reverse("admin:triggers_trigger_changelist")
    both = [world["a"]["trigger"].pk, world["b"]["trigger"].pk]
    client.post(url, {"action": "disable", "_selected_action": both})
    assert Trigger.objects.get(pk=world["a"]["trigger"].pk).enabled is False
    assert Trigger.objects.get(pk=world["b"]["trigger"].pk).enabled is True, "app B's changed"
    # The same through "select all matching" (select_across).
    client.post(url, {"action": "enable", "_selected_action": both[:1], "select_across": "1"})
    assert Trigger.objects.get(pk=world["a"]["trigger"].pk).enabled is True


def test_foreign_key_choices_and_autocomplete_are_scoped(client, world):
    login(client, world["alice"])
    response = client.get(reverse("admin:triggers_trigger_add"))
    form = response.context["adminform"].form
    assert set(form.fields["app"].queryset) == {world["a"]["app"]}
    assert set(form.fields["script"].queryset) == {world["a"]["script"]}
    auto = client.get(
        reverse("admin:autocomplete"),
        {"app_label": "triggers", "model_name": "trigger", "field_name": "app", "term": ""},
    )
    # Autocomplete searches the target admin's scoped queryset.
    assert auto.status_code == 200
    assert [r["text"] for r in auto.json()["results"]] == [world["a"]["app"].slug]
    scripts = client.get(
        reverse("admin:autocomplete"),
        {
            "app_label": "triggers",
            "model_name": "trigger",
            "field_name": "script",
            "term": "script",
        },
    )
    assert [r["text"] for r in scripts.json()["results"]] == [str(world["a"]["script"])]


def test_dead_letter_pages_need_the_admin_role(client, world):
    developer = MembershipFactory(app=world["a"]["app"], role=Role.Developer.value)
    login(client, developer.principal.user)
    assert client.get(reverse("admin:deadletters_deadletter_changelist")).status_code == 403
    assert client.get(reverse("admin:triggers_trigger_changelist")).status_code == 403
    # Developers manage scripts, though.
    scripts = client.get(reverse("admin:picloud_script_changelist"))
    assert scripts.status_code == 200


def test_a_staff_user_with_no_role_gets_nothing(client, world):
    outsider = UserFactory(is_staff=True)
    login(client, outsider)
    index = client.get(reverse("admin:index"))
    assert index.status_code == 200
    body = index.content.decode()
    listed = {m["object_name"] for a in index.context["app_list"] for m in a["models"]}
    app_owned = {"Trigger", "DeadLetter", "OutboxEntry", "AbandonedExecution", "Script"}
    assert not listed & (app_owned | {"App", "AppMembership"}), listed
    for app_label, model, key in PAGES:
        url = reverse(f"admin:{app_label}_{model}_changelist")
        assert client.get(url).status_code == 403, url
        obj_url = reverse(f"admin:{app_label}_{model}_change", args=[world["a"][key].pk])
        assert client.get(obj_url).status_code in (403, 404), obj_url
    assert "dead-letter-badge" not in body


def test_superusers_see_every_app(client, world):
    login(client, UserFactory(is_superuser=True))
    response = client.get(reverse("admin:triggers_trigger_changelist"))
    assert {t.pk for t in response.context["cl"].result_list} >= {
        world["a"]["trigger"].pk,
        world["b"]["trigger"].pk,
    }


def test_the_badge_counts_only_reachable_unresolved_letters(client, world):
    login(client, world["alice"])
    body = client.get(reverse("admin:index")).content.decode()
    assert 'id="dead-letter-count">1<' in body
    DeadLetter.objects.filter(pk=world["a"]["dead_letter"].pk).update(
        resolution="ignored", resolved_at=world["a"]["dead_letter"].created_at
    )
    body = client.get(reverse("admin:index")).content.decode()
    assert 'id="dead-letter-count">0<' in body
    assert "?resolution=unresolved" in body


def test_memberships_and_apps_are_scoped(client, world):
    login(client, world["alice"])
    response = client.get(reverse("admin:picloud_appmembership_changelist"))
    apps = {m.app_id for m in response.context["cl"].result_list}
    assert apps == {world["a"]["app"].pk}
    response = client.get(reverse("admin:picloud_app_changelist"))
    assert {a.pk for a in response.context["cl"].result_list} == {world["a"]["app"].pk}
    assert client.get(reverse("admin:picloud_app_add")).status_code == 403, (
        "only superusers add apps"
    )


def test_tokens_are_private_and_shown_once(client, world):
    login(client, world["alice"])
    _, _ = tokens.create_token(
        AppMembership.objects.get(principal__user=world["bob"]).principal,
        name="bobs",
        scopes=["kv:read"],
    )
    response = client.post(
        reverse("admin:picloud_apitoken_add"),
        {
            "name": "ci deploys",
            "scopes": ["script:invoke"],
            "app": str(world["a"]["app"].pk),
            "expires_at_0": "2027-06-01",
            "expires_at_1": "00:00:00",
        },
        follow=True,
    )
    assert response.status_code == 200
    errors = response.context.get("errors")
    assert not errors, errors
    shown = [str(m) for m in response.context["messages"]]
    token = ApiToken.objects.get(name="ci deploys")
    assert any(token.prefix in m and "shown once" in m for m in shown), shown
    raw = next(m for m in shown if "shown once" in m).rsplit(" ", 1)[-1]
    assert tokens.authenticate(raw) is not None
    listing = client.get(reverse("admin:picloud_apitoken_changelist"))
    names = {t.name for t in listing.context["cl"].result_list}
    assert names == {"ci deploys"}, "only your own tokens"
    assert raw not in listing.content.decode() and token.token_hash not in listing.content.decode()
    # Revoking from the list.
    client.post(
        reverse("admin:picloud_apitoken_changelist"),
        {"action": "revoke", "_selected_action": [token.pk]},
    )
    assert tokens.authenticate(raw) is None


def test_the_token_form_offers_and_accepts_only_scopes_the_user_holds(client, world):
    login(client, world["alice"])
    page = client.get(reverse("admin:picloud_apitoken_add"))
    offered = {value for value, _ in page.context["adminform"].form.fields["scopes"].choices}
    assert "platform:admin" not in offered and "script:invoke" in offered
    response = client.post(  # a forged choice: refused on the form, not a 500
        reverse("admin:picloud_apitoken_add"),
        {
            "name": "escalate",
            "scopes": ["platform:admin"],
            "expires_at_0": "2027-06-01",
            "expires_at_1": "00:00:00",
        },
    )
    assert response.status_code == 200
    assert "platform:admin" in str(response.context["adminform"].form.errors["scopes"])
    assert not ApiToken.objects.filter(name="escalate").exists()


def test_script_handlers_are_chosen_from_the_registry(client, world):
    login(client, world["alice"])
    response = client.post(
        reverse("admin:picloud_script_add"),
        {
            "app": str(world["a"]["app"].pk),
            "name": "evil",
            "enabled": "on",
            "runtime": "python",
            "handler": "os.system",
            "webhook_url": "",
        },
    )
    assert response.status_code == 200, "the form is shown again with an error"
    assert "Select a valid choice" in response.content.decode()
    assert not Script.objects.filter(name="evil").exists()


def test_memberships_name_users_without_listing_everybody(client, world):
    login(client, world["alice"])
    form = client.get(reverse("admin:picloud_appmembership_add"))
    assert world["bob"].username not in form.content.decode(), "other apps' users are listed"
    url = reverse("admin:picloud_appmembership_add")
    app = world["a"]["app"].pk
    unknown = client.post(url, {"app": app, "username": "nobody-here", "role": "viewer"})
    assert "There is no user named &#x27;nobody-here&#x27;" in unknown.content.decode()
    newcomer = UserFactory()
    added = client.post(url, {"app": app, "username": newcomer.username, "role": "developer"})
    assert added.status_code == 302
    assert AppMembership.objects.get(principal__user=newcomer).role == "developer"
    again = client.post(url, {"app": app, "username": newcomer.username, "role": "viewer"})
    assert "already has a role in this app" in again.content.decode()
