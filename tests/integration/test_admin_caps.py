"""Concurrency caps in admin: an app's admins set the app's and its scripts'
caps, superusers the platform's; nobody else, forged POSTs included. In
flight and backlog are shown beside them."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from outbox.models import OutboxEntry
from picloud.config import ConcurrencyConfig
from picloud.domain.authz import Role
from picloud.models import App, PlatformSettings, Script
from tests.factories import AppFactory, MembershipFactory, ScriptFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def shop():
    app = AppFactory(slug="shop")
    members = {
        role: MembershipFactory(app=app, role=role.value).principal.user
        for role in (Role.Viewer, Role.Developer, Role.AppAdmin)
    }
    return app, ScriptFactory(app=app, name="deliver"), members


def _app_form(app, **fields):
    return {"name": app.name, "max_concurrency": "", **fields}


def _script_form(script, **fields):
    return {
        "name": script.name,
        "enabled": "on",
        "runtime": "python",
        "handler": "picloud.noop",
        "webhook_url": "",
        "max_concurrency": "",
        **fields,
    }


def test_an_app_admin_sets_the_apps_cap(client, shop):
    app, _, members = shop
    client.force_login(members[Role.AppAdmin])
    url = reverse("admin:picloud_app_change", args=[app.pk])
    response = client.post(url, _app_form(app, max_concurrency="7"))
    assert response.status_code == 302, response.content.decode()[:2000]
    assert App.objects.get(pk=app.pk).max_concurrency == 7
    bad = client.post(url, _app_form(app, max_concurrency="0"))
    assert bad.status_code == 200 and "max_concurrency" in bad.context["adminform"].form.errors
    assert App.objects.get(pk=app.pk).max_concurrency == 7


def test_an_app_admin_may_not_lift_the_cap_past_the_platforms_a_superuser_may(
    client, shop, override_config
):
    override_config(ConcurrencyConfig(app_max_concurrency=40))
    app, _, members = shop
    url = reverse("admin:picloud_app_change", args=[app.pk])
    client.force_login(members[Role.AppAdmin])
    refused = client.post(url, _app_form(app, max_concurrency="41"))
    errors = refused.context["adminform"].form.errors["max_concurrency"]
    assert "allowed is 1 to 40" in errors[0]
    assert App.objects.get(pk=app.pk).max_concurrency is None
    assert client.post(url, _app_form(app, max_concurrency="40")).status_code == 302
    client.force_login(UserFactory(is_superuser=True))
    assert client.post(url, _app_form(app, max_concurrency="500")).status_code == 302
    assert App.objects.get(pk=app.pk).max_concurrency == 500


@pytest.mark.parametrize("role", [Role.Viewer, Role.Developer])
def test_members_without_admin_rights_cannot_change_the_apps_cap(client, shop, role):
    app, _, members = shop
    client.force_login(members[role])
    url = reverse("admin:picloud_app_change", args=[app.pk])
    page = client.get(url)
    assert page.status_code == 200 and 'name="max_concurrency"' not in page.content.decode()
    forged = client.post(url, _app_form(app, max_concurrency="99999"))
    assert forged.status_code == 403
    assert App.objects.get(pk=app.pk).max_concurrency is None


def test_another_apps_admin_cannot_reach_the_cap(client, shop):
    app, _, _ = shop
    stranger = MembershipFactory(role=Role.AppAdmin.value).principal.user
    client.force_login(stranger)
    url = reverse("admin:picloud_app_change", args=[app.pk])
    assert client.post(url, _app_form(app, max_concurrency="5")).status_code == 404
    assert App.objects.get(pk=app.pk).max_concurrency is None


def test_an_app_admin_sets_a_scripts_cap(client, shop):
    _, script, members = shop
    client.force_login(members[Role.AppAdmin])
    url = reverse("admin:picloud_script_change", args=[script.pk])
    response = client.post(url, _script_form(script, max_concurrency="3"))
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Script.objects.get(pk=script.pk).max_concurrency == 3


def test_a_developer_edits_a_script_but_not_its_cap(client, shop):
    _, script, members = shop
    Script.objects.filter(pk=script.pk).update(max_concurrency=4)
    client.force_login(members[Role.Developer])
    url = reverse("admin:picloud_script_change", args=[script.pk])
    page = client.get(url)
    assert page.status_code == 200 and 'name="max_concurrency"' not in page.content.decode()
    forged = client.post(url, _script_form(script, name="renamed", max_concurrency="500"))
    assert forged.status_code == 302
    script.refresh_from_db()
    assert script.name == "renamed", "the developer's own change is saved"
    assert script.max_concurrency == 4, "the posted cap is ignored"


def test_a_developer_cannot_add_a_script_with_a_cap(client, shop):
    app, _, members = shop
    client.force_login(members[Role.Developer])
    fields = {"app": str(app.pk), **_script_form(Script(name="new"), max_concurrency="50")}
    response = client.post(reverse("admin:picloud_script_add"), fields)
    assert response.status_code == 200
    assert "Only an admin of the script&#x27;s app may set its cap." in response.content.decode()
    assert not Script.objects.filter(name="new").exists()
    fields["max_concurrency"] = ""
    assert client.post(reverse("admin:picloud_script_add"), fields).status_code == 302


def test_in_flight_and_backlog_are_shown_beside_the_caps(client, shop):
    app, script, members = shop
    now = timezone.now()
    for leased in (True, True, False):
        OutboxEntry.objects.create(
            app=app,
            source_kind="kv",
            script=script,
            due_at=now + timedelta(minutes=5) if leased else now - timedelta(seconds=1),
            leased_until=now + timedelta(minutes=5) if leased else None,
        )
    # Whoever may see the page sees them: a viewer the app's, a developer the script's.
    for role, url in (
        (Role.Viewer, reverse("admin:picloud_app_change", args=[app.pk])),
        (Role.Developer, reverse("admin:picloud_script_change", args=[script.pk])),
    ):
        client.force_login(members[role])
        readonly = _readonly_values(client.get(url))
        assert readonly["in flight"] == "2" and readonly["backlog (rows due)"] == "1", readonly


def _readonly_values(response):
    values = {}
    for fieldset in response.context["adminform"]:
        for line in fieldset:
            for field in line:
                if field.is_readonly:
                    values[str(field.field["label"]).lower()] = str(field.contents())
    return values


def test_only_superusers_see_and_change_the_platform_cap(client, shop):
    _, _, members = shop
    row, _ = PlatformSettings.objects.get_or_create(pk=1)
    url = reverse("admin:picloud_platformsettings_change", args=[row.pk])
    client.force_login(members[Role.AppAdmin])
    assert client.get(url).status_code == 403
    assert client.post(url, {"app_max_concurrency": "5"}).status_code == 403
    assert client.get(reverse("admin:picloud_platformsettings_changelist")).status_code == 403
    assert PlatformSettings.objects.get(pk=1).app_max_concurrency is None

    client.force_login(UserFactory(is_superuser=True))
    listing = client.get(reverse("admin:picloud_platformsettings_changelist"))
    assert listing.status_code == 302 and listing.url == url
    page = client.get(url).content.decode()
    assert "PICLOUD_APP_MAX_CONCURRENCY" in page and "100" in page
    assert client.post(url, {"app_max_concurrency": "5"}).status_code == 302
    assert PlatformSettings.objects.get(pk=1).app_max_concurrency == 5
    assert client.post(url, {"app_max_concurrency": ""}).status_code == 302
    assert PlatformSettings.objects.get(pk=1).app_max_concurrency is None
