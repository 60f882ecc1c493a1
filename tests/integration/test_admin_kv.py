"""The KV browser in admin: scoped per app like every page, writes through
picloud.kv (so triggers fire), and a write over a newer version refused."""

import json

import pytest
from django.urls import reverse

from outbox.models import OutboxEntry
from picloud import kv
from picloud.domain.authz import Role
from picloud.models import KvEntry
from tests.factories import AppFactory, MembershipFactory, ScriptFactory, kv_trigger

pytestmark = pytest.mark.django_db


@pytest.fixture
def shop():
    app = AppFactory(slug="shop")
    developer = MembershipFactory(app=app, role=Role.Developer.value).principal
    viewer = MembershipFactory(app=app, role=Role.Viewer.value).principal
    kv_trigger(app, ScriptFactory(app=app), developer, name="on-orders", collection="orders")
    kv.put(app, "orders", "o-1", {"total": 12, "items": ["pi"]}, principal=developer)
    OutboxEntry.objects.all().delete()
    other = AppFactory(slug="other-secret")
    outsider = MembershipFactory(app=other, role=Role.AppAdmin.value).principal
    kv.put(other, "orders", "o-9", {"total": 99}, principal=outsider)
    return {
        "app": app,
        "developer": developer.user,
        "viewer": viewer.user,
        "outsider": outsider.user,
        "entry": KvEntry.objects.get(app=app, key="o-1"),
        "other_entry": KvEntry.objects.get(app=other, key="o-9"),
    }


def url(view, *args):
    return reverse(f"admin:picloud_kventry_{view}", args=args)


def change(client, entry, value, read_version):
    return client.post(
        url("change", entry.pk),
        {"value": json.dumps(value), "read_version": str(read_version)},
    )


def test_a_viewer_reads_pretty_json_and_changes_nothing(client, shop):
    client.force_login(shop["viewer"])
    listed = client.get(url("changelist")).content.decode()
    assert "o-1" in listed and "o-9" not in listed and "other-secret" not in listed
    page = client.get(url("change", shop["entry"].pk)).content.decode()
    assert "&quot;total&quot;: 12" in page, "indented JSON"
    assert change(client, shop["entry"], {"total": 0}, 1).status_code == 403
    assert client.post(url("delete", shop["entry"].pk), {"post": "yes"}).status_code == 403
    assert kv.get(shop["app"], "orders", "o-1", principal=shop["viewer"]).value["total"] == 12


def test_an_edit_goes_through_the_kv_api_and_fires_the_trigger(client, shop):
    client.force_login(shop["developer"])
    response = change(client, shop["entry"], {"total": 13}, 1)
    assert response.status_code == 302, response.content.decode()[:2000]
    item = kv.get(shop["app"], "orders", "o-1", principal=shop["developer"])
    assert (item.value, item.version) == ({"total": 13}, 2)
    (row,) = OutboxEntry.objects.all()
    assert row.payload["op"] == "update" and row.payload["new"] == {"total": 13}
    assert row.run_as_principal_id is not None


def test_an_edit_over_a_newer_version_is_refused_not_overwritten(client, shop):
    client.force_login(shop["developer"])
    kv.put(
        shop["app"], "orders", "o-1", {"total": 50}, principal=shop["developer"]
    )  # a script, say
    OutboxEntry.objects.all().delete()
    response = change(client, shop["entry"], {"total": 13}, 1)
    assert response.status_code == 302
    shown = [str(m) for m in response.wsgi_request._messages]
    assert any("is at version 2, expected to be at version 1" in m for m in shown), shown
    item = kv.get(shop["app"], "orders", "o-1", principal=shop["developer"])
    assert item.value == {"total": 50}, "the newer write stands"
    assert not OutboxEntry.objects.exists(), "nothing fired"


def test_an_entry_is_added_and_deleted_through_the_api(client, shop):
    client.force_login(shop["developer"])
    response = client.post(
        url("add"),
        {"app": shop["app"].pk, "collection": "orders", "key": "o-2", "value": '{"total": 1}'},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert kv.get(shop["app"], "orders", "o-2", principal=shop["developer"]).version == 1
    added = KvEntry.objects.get(key="o-2")
    response = client.post(url("delete", added.pk), {"post": "yes"})
    assert response.status_code == 302
    assert not KvEntry.objects.filter(key="o-2").exists()
    assert [r.payload["op"] for r in OutboxEntry.objects.order_by("created_at")] == [
        "insert",
        "delete",
    ]


def test_bad_json_is_refused_on_the_field(client, shop):
    client.force_login(shop["developer"])
    response = client.post(url("change", shop["entry"].pk), {"value": "{nope", "read_version": "1"})
    assert response.status_code == 200
    assert "Enter a valid JSON" in response.content.decode()


def test_another_apps_entries_are_unreachable(client, shop):
    client.force_login(shop["developer"])
    other = shop["other_entry"]
    for view in ("change", "delete", "history"):
        assert client.get(url(view, other.pk)).status_code in (403, 404)
    assert change(client, other, {"total": 0}, 1).status_code in (403, 404)
    add = client.post(
        url("add"),
        {"app": other.app_id, "collection": "orders", "key": "x", "value": "1"},
    )
    assert add.status_code == 200, "the app is not a choice"
    assert not KvEntry.objects.filter(key="x").exists()
    found = client.get(url("changelist"), {"q": "orders/o-"}).content.decode()
    assert "o-1" in found and "o-9" not in found


def test_search_by_collection_and_key_prefix(client, shop):
    kv.put(shop["app"], "orders", "p-1", 1, principal=shop["developer"])
    kv.put(shop["app"], "users", "o-3", 1, principal=shop["developer"])
    client.force_login(shop["viewer"])

    def keys(term):
        response = client.get(url("changelist"), {"q": term})
        return sorted(e.key for e in response.context["cl"].result_list)

    assert keys("orders/o-") == ["o-1"]
    assert keys("orders/") == ["o-1", "p-1"]
    assert keys("user") == ["o-3"]
    assert keys("o-") == ["o-1", "o-3"]
