"""Hot paths use the configs built once per process: no KV write, request,
script save or execution parses PICLOUD_* variables again."""

import json

import pytest

from outbox.models import OutboxEntry
from outbox.sync.invoke import close_default_invoker
from picloud import kv
from picloud.config import SandboxCeiling, TriggerConfig, WebhookConfig
from picloud.domain import tokens
from picloud.domain.authz import Role
from picloud.models import Script
from tests.factories import AppFactory, MembershipFactory, ScriptFactory, kv_trigger
from tests.helpers import drain_outbox
from tests.unit.test_config import count_builds

TIMES = 50  # uses of a hot path; each used to build its config anew


@pytest.fixture
def writer(db):
    app = AppFactory()
    admin = MembershipFactory(app=app, role=Role.AppAdmin.value).principal
    kv_trigger(app, ScriptFactory(app=app, handler="picloud.noop"), admin, collection="c")
    return app, admin


def test_kv_writes_that_fan_out_build_the_trigger_config_once(writer, monkeypatch):
    app, admin = writer
    calls = count_builds(monkeypatch, TriggerConfig)
    for n in range(TIMES):
        kv.put(app, "c", f"k{n}", n, principal=admin)
    assert OutboxEntry.objects.count() == TIMES, "every write fanned out"
    assert len(calls) <= 1


def test_executions_build_the_sandbox_ceiling_once(writer, monkeypatch):
    app, admin = writer
    for n in range(TIMES):
        kv.put(app, "c", f"k{n}", n, principal=admin)
    calls = count_builds(monkeypatch, SandboxCeiling)
    ran = drain_outbox()
    assert len(ran) == TIMES and all(outcome.ok for _, outcome in ran)
    assert len(calls) <= 1


def test_script_saves_build_the_webhook_config_once(app, monkeypatch):
    calls = count_builds(monkeypatch, WebhookConfig)
    for n in range(TIMES):
        Script.objects.create(
            app=app, name=f"hook-{n}", runtime="webhook", webhook_url="https://hooks.example/in"
        )
    assert len(calls) <= 1


@pytest.mark.django_db(transaction=True)
def test_requests_build_the_sandbox_ceiling_once(client, monkeypatch):
    monkeypatch.setenv("PICLOUD_SANDBOX_MAX_PAYLOAD_BYTES", "100")
    member = MembershipFactory(role=Role.Developer.value)
    script = ScriptFactory(app=member.app, handler="picloud.echo")
    _, token = tokens.create_token(member.principal, name="t", scopes=["script:invoke"])
    calls = count_builds(monkeypatch, SandboxCeiling)
    body = json.dumps({"data": "x" * 200})
    try:
        for _ in range(TIMES):
            response = client.post(
                f"/api/apps/{member.app.slug}/scripts/{script.name}/invoke",
                data=body,
                content_type="application/json",
                HTTP_AUTHORIZATION=f"Bearer {token}",
            )
            assert response.status_code == 413, response.content
    finally:
        close_default_invoker()
    assert "over 100 bytes" in response.json()["message"], "the variable is read"
    assert len(calls) <= 1
