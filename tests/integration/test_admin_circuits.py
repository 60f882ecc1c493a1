"""Circuit breakers in admin: state and last error on the list, and "close
now", for the app's admins (who manage its triggers); nothing for anyone else."""

from datetime import timedelta

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse
from django.utils import timezone

from outbox.models import ScriptCircuit
from picloud.domain.authz import Role
from tests.factories import AppFactory, MembershipFactory, ScriptFactory

pytestmark = pytest.mark.django_db

LIST = "admin:outbox_scriptcircuit_changelist"


@pytest.fixture
def shop():
    app = AppFactory(slug="shop")
    members = {
        role: MembershipFactory(app=app, role=role.value).principal.user
        for role in (Role.Developer, Role.AppAdmin)
    }
    script = ScriptFactory(app=app, name="courier-hook")
    circuit = ScriptCircuit.objects.create(
        script=script,
        app=app,
        failures=5,
        opened=1,
        open_until=timezone.now() + timedelta(minutes=5),
        last_error="webhook answered 503: busy",
    )
    return app, circuit, members


def _close(client, circuit):
    return client.post(
        reverse(LIST), {"action": "close_now", ACTION_CHECKBOX_NAME: [str(circuit.pk)]}
    )


def test_an_app_admin_sees_the_open_circuit_and_closes_it(client, shop):
    _, circuit, members = shop
    client.force_login(members[Role.AppAdmin])
    page = client.get(reverse(LIST)).content.decode()
    assert "open until" in page and "webhook answered 503: busy" in page
    assert _close(client, circuit).status_code == 302
    closed = ScriptCircuit.objects.get(pk=circuit.pk)
    assert (closed.open_until, closed.failures, closed.opened) == (None, 0, 0)


def test_a_developer_neither_sees_nor_closes_it(client, shop):
    _, circuit, members = shop
    client.force_login(members[Role.Developer])
    assert client.get(reverse(LIST)).status_code == 403
    assert _close(client, circuit).status_code == 403
    assert ScriptCircuit.objects.get(pk=circuit.pk).open_until is not None


def test_another_apps_admin_neither_sees_nor_closes_it(client, shop):
    _, circuit, _ = shop
    stranger = MembershipFactory(app=AppFactory(), role=Role.AppAdmin.value).principal.user
    client.force_login(stranger)
    # (A name no page of ours contains: the sidebar lists "Delivery log".)
    assert "courier-hook" not in client.get(reverse(LIST)).content.decode()
    _close(client, circuit)
    assert ScriptCircuit.objects.get(pk=circuit.pk).open_until is not None
