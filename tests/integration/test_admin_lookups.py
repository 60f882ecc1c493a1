"""Bad query parameters in admin lists: a malformed value is an invalid lookup
(Django's redirect to ``?e=1``, with a message naming the filter), never a
500; a well-formed id of nothing or of another app's row shows nothing."""

import uuid

import pytest
from django.contrib import admin
from django.contrib.messages import get_messages
from django.urls import reverse

from picloud.admin_access import IdFilter

pytestmark = pytest.mark.django_db

# Every changelist with a filter taking an id, and those filters' parameters;
# test_the_table_covers_every_id_filter keeps it complete.
ID_FILTERS = {
    "triggers_trigger": ["app"],
    "deadletters_deadletter": ["app", "trigger"],
    "outbox_outboxentry": ["app"],
    "outbox_scriptcircuit": ["app"],
    "outbox_scheduledrun": ["app"],
    "deadletters_abandonedexecution": ["app"],
    "picloud_script": ["app"],
    "picloud_appmembership": ["app"],
    "picloud_topic": ["app"],
    "picloud_queue": ["app"],
    "picloud_inboundemail": ["app"],
    "picloud_kventry": ["app"],
}
CASES = [(page, param) for page, params in ID_FILTERS.items() for param in params]

MALFORMED = [
    "notauuid",
    "",
    "%00",  # the three characters, as a user pasting an encoded URL types them
    "\x00",
    f"{uuid.UUID(int=1)}\x00",
    "x" * 300,
    "\u0661" * 8 + "-0000-0000-0000-000000000000",  # Arabic-Indic digits: int() takes them
    f"{{{uuid.UUID(int=1)}}}",  # braces: uuid.UUID takes them, the filters never write them
    f"{uuid.UUID(int=1)}\n",
    uuid.UUID(int=1).hex,
]

# Choice filters on text columns: a NUL would reach PostgreSQL and fail the query.
TEXT_FILTERS = {
    "triggers_trigger": "kind",
    "deadletters_deadletter": "source_kind",
    "outbox_outboxentry": "source_kind",
    "picloud_script": "runtime",
    "picloud_appmembership": "role",
}


def changelist(page: str) -> str:
    return reverse(f"admin:{page}_changelist")


def assert_refused(client, url, query, what: str) -> None:
    response = client.get(url, query)
    assert response.status_code == 302, f"{what}: {response.status_code}, not a redirect"
    assert response["Location"] == f"{url}?e=1", f"{what}: redirected to {response['Location']}"
    shown = [str(m) for m in get_messages(response.wsgi_request)]
    assert shown, f"{what}: no message says what was wrong"
    again = client.get(response["Location"])
    assert again.status_code == 200, f"{what}: the unfiltered list answers {again.status_code}"


@pytest.mark.parametrize(("page", "param"), CASES)
@pytest.mark.parametrize("value", MALFORMED, ids=repr)
def test_a_malformed_id_is_an_invalid_lookup(client, world, page, param, value):
    client.raise_request_exception = False
    client.force_login(world["alice"])
    assert_refused(client, changelist(page), {param: value}, f"{page}?{param}={value!r}")


@pytest.mark.parametrize(("page", "param"), CASES)
def test_an_encoded_nul_in_the_url_is_an_invalid_lookup(client, world, page, param):
    client.raise_request_exception = False
    client.force_login(world["alice"])
    response = client.get(f"{changelist(page)}?{param}=%00")
    assert response.status_code == 302
    assert response["Location"].endswith("?e=1")


def test_the_message_names_the_filter_and_what_it_takes(client, world):
    client.force_login(world["alice"])
    response = client.get(
        changelist("deadletters_deadletter"), {"trigger": "notauuid"}, follow=True
    )
    shown = " ".join(str(m) for m in response.context["messages"])
    assert "The trigger filter takes an id" in shown, shown
    assert "'notauuid' is not one" in shown, shown


@pytest.mark.parametrize(("page", "param"), CASES)
def test_a_well_formed_id_of_nothing_shows_nothing(client, world, page, param):
    client.force_login(world["alice"])
    for value in (str(uuid.uuid4()), str(uuid.uuid4()).upper()):
        response = client.get(changelist(page), {param: value})
        assert response.status_code == 200, f"{page}?{param}={value}"
        assert list(response.context["cl"].result_list) == []


@pytest.mark.parametrize(("page", "param"), CASES)
def test_another_apps_id_shows_nothing(client, world, page, param):
    """Alice administers app A only: forging app B's id (or its trigger's)
    in the filter shows none of B's rows, nor its name."""
    client.force_login(world["alice"])
    forged = {"app": world["b"]["app"].pk, "trigger": world["b"]["trigger"].pk}[param]
    response = client.get(changelist(page), {param: str(forged)})
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [], "app B's rows are listed"
    assert "app-b-secret" not in response.content.decode()
    # The filter itself works on her own app's ids.
    own = {"app": world["a"]["app"].pk, "trigger": world["a"]["trigger"].pk}[param]
    response = client.get(changelist(page), {param: str(own)})
    assert response.status_code == 200
    assert list(response.context["cl"].result_list), f"{page} filtered on app A shows nothing"


@pytest.mark.parametrize(("page", "param"), TEXT_FILTERS.items())
@pytest.mark.parametrize("value", ["\x00", "kv\x00"], ids=repr)
def test_a_nul_in_a_choice_filter_is_an_invalid_lookup(client, world, page, param, value):
    client.raise_request_exception = False
    client.force_login(world["alice"])
    assert_refused(client, changelist(page), {param: value}, f"{page}?{param}={value!r}")


def test_a_nul_in_the_search_is_an_invalid_lookup(client, world):
    client.raise_request_exception = False
    client.force_login(world["alice"])
    url = changelist("triggers_trigger")
    assert_refused(client, url, {"q": "trig\x00ger"}, "search with a NUL")


def test_the_table_covers_every_id_filter():
    found = {}
    for model, model_admin in admin.site._registry.items():
        params = [
            f.parameter_name
            for f in model_admin.list_filter
            if isinstance(f, type) and issubclass(f, IdFilter)
        ]
        if params:
            found[f"{model._meta.app_label}_{model._meta.model_name}"] = params
    assert found == ID_FILTERS
