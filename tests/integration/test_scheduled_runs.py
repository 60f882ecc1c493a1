"""One-off scheduled runs: the Python API, the HTTP API and admin."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied, ValidationError
from django.urls import reverse

from outbox import scheduled
from outbox.models import OutboxEntry, ScheduledRun
from outbox.storage.pg_repository import PgOutboxRepo
from outbox.sync.invoke import close_default_invoker
from picloud.domain import tokens
from picloud.domain.authz import Role
from picloud.runtime.execution import Success, execute_row
from tests.factories import AppFactory, MembershipFactory, ScriptFactory

pytestmark = pytest.mark.django_db(transaction=True)

IN_AN_HOUR = datetime.now(UTC) + timedelta(hours=1)


@pytest.fixture(autouse=True)
def _close_invoker():
    yield
    close_default_invoker()


@pytest.fixture
def developer():
    return MembershipFactory(app=AppFactory(slug="shop"), role=Role.Developer.value)


@pytest.fixture
def script(developer):
    return ScriptFactory(app=developer.app, name="report", handler="picloud.echo")


class TestPythonApi:
    def test_schedule_writes_a_row_due_then_run_as_the_caller(self, developer, script):
        run_id = scheduled.schedule(
            developer.app, script, IN_AN_HOUR, {"n": 1}, principal=developer.principal
        )
        row = OutboxEntry.objects.get(pk=run_id)
        assert (row.source_kind, row.reply_to, row.due_at) == ("invoke", None, IN_AN_HOUR)
        assert row.run_as_principal_id == developer.principal.pk
        assert row.payload == {"n": 1}
        assert [r.id for r in scheduled.pending(developer.app, principal=developer.principal)] == [
            run_id
        ]
        assert PgOutboxRepo().claim_due(limit=10, lease=60) == [], "not before its time"

    def test_a_run_in_the_past_runs_at_once_with_its_payload(self, developer, script):
        scheduled.schedule(
            developer.app,
            script,
            datetime.now(UTC) - timedelta(minutes=1),
            {"n": 2},
            principal=developer.principal,
        )
        (row,) = PgOutboxRepo().claim_due(limit=10, lease=60)
        assert execute_row(row) == Success({"n": 2})

    def test_cancel_while_pending_and_not_after(self, developer, script):
        run_id = scheduled.schedule(
            developer.app, script, IN_AN_HOUR, principal=developer.principal
        )
        scheduled.cancel(run_id, principal=developer.principal)
        assert not OutboxEntry.objects.filter(pk=run_id).exists()
        with pytest.raises(scheduled.ScheduledRunNotFound):
            scheduled.cancel(run_id, principal=developer.principal)
        started = scheduled.schedule(
            developer.app, script, datetime.now(UTC), principal=developer.principal
        )
        PgOutboxRepo().claim_due(limit=10, lease=60)
        with pytest.raises(scheduled.ScheduledRunNotFound):
            scheduled.cancel(started, principal=developer.principal)

    def test_nobody_outside_the_app_schedules_or_cancels(self, developer, script):
        viewer = MembershipFactory(app=developer.app, role=Role.Viewer.value).principal
        stranger = MembershipFactory(role=Role.AppAdmin.value).principal
        for who in (viewer, stranger):
            with pytest.raises(PermissionDenied):
                scheduled.schedule(developer.app, script, IN_AN_HOUR, principal=who)
        run_id = scheduled.schedule(
            developer.app, script, IN_AN_HOUR, principal=developer.principal
        )
        for who in (viewer, stranger):
            with pytest.raises(scheduled.ScheduledRunNotFound):
                scheduled.cancel(run_id, principal=who)
        with pytest.raises(PermissionDenied):
            scheduled.pending(developer.app, principal=stranger)
        assert OutboxEntry.objects.filter(pk=run_id).exists()

    @pytest.mark.parametrize(
        ("change", "field", "says"),
        [
            ({"run_at": datetime(2026, 12, 1, 9)}, "run_at", "timezone"),
            ({"run_at": datetime.now(UTC) + timedelta(days=400)}, "run_at", "366 days"),
            ({"payload": {"x": "a\x00b"}}, "payload", "cannot be stored"),
            ({"payload": {"x": "y" * 2_000_000}}, "payload", "PICLOUD_SANDBOX_MAX_PAYLOAD_BYTES"),
        ],
    )
    def test_bad_input_is_refused_by_field(self, developer, script, change, field, says):
        args = {"run_at": IN_AN_HOUR, "payload": {}, **change}
        with pytest.raises(ValidationError) as caught:
            scheduled.schedule(
                developer.app,
                script,
                args["run_at"],
                args["payload"],
                principal=developer.principal,
            )
        assert says in " ".join(caught.value.message_dict[field])
        assert not OutboxEntry.objects.exists()

    def test_a_script_of_another_app_or_disabled_is_refused(self, developer, script):
        other = ScriptFactory()
        with pytest.raises(ValidationError, match="no script"):
            scheduled.schedule(developer.app, other, IN_AN_HOUR, principal=developer.principal)
        script.enabled = False
        script.save()
        with pytest.raises(ValidationError, match="disabled"):
            scheduled.schedule(developer.app, script, IN_AN_HOUR, principal=developer.principal)


def api(client, method, path, token, body=None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    return getattr(client, method)(
        path,
        data=json.dumps(body) if body is not None else None,
        content_type="application/json",
        **headers,
    )


class TestHttpApi:
    @pytest.fixture
    def token(self, developer):
        return tokens.create_token(developer.principal, name="t", scopes=["script:invoke"])[1]

    def test_schedule_then_cancel(self, client, developer, script, token):
        created = api(
            client,
            "post",
            "/api/apps/shop/scripts/report/schedule",
            token,
            {"run_at": IN_AN_HOUR.isoformat(), "payload": {"n": 1}},
        )
        assert created.status_code == 201, created.content
        run_id = created.json()["id"]
        assert OutboxEntry.objects.get(pk=run_id).payload == {"n": 1}
        path = f"/api/apps/shop/scheduled/{run_id}"
        assert api(client, "delete", path, token).status_code == 204
        gone = api(client, "delete", path, token)
        assert gone.status_code == 404 and gone.json()["error"] == "not_found"

    @pytest.mark.parametrize(
        ("body", "status", "error"),
        [
            ({"run_at": "tomorrow"}, 400, "invalid_run_at"),
            ({"run_at": "2026-12-01T09:00:00"}, 400, "invalid_run_at"),
            ({"payload": {}}, 400, "invalid_run_at"),
            ({"run_at": "2026-12-01T09:00:00Z", "extra": 1}, 400, "invalid_request"),
            ([1, 2], 400, "invalid_request"),
            ({"run_at": "2099-12-01T09:00:00Z"}, 400, "invalid_run_at"),
        ],
    )
    def test_bad_requests_say_what_is_allowed(self, client, script, token, body, status, error):
        response = api(client, "post", "/api/apps/shop/scripts/report/schedule", token, body)
        assert (response.status_code, response.json()["error"]) == (status, error)
        assert response.json()["message"]
        assert not OutboxEntry.objects.exists()

    def test_a_time_before_year_one_in_utc_is_due_now_not_a_broken_row(self, client, script, token):
        response = api(
            client,
            "post",
            "/api/apps/shop/scripts/report/schedule",
            token,
            {"run_at": "0001-01-01T00:00:00+00:01"},
        )
        assert response.status_code == 201, response.content
        row = OutboxEntry.objects.get(pk=response.json()["id"])
        assert row.due_at <= datetime.now(UTC)
        assert PgOutboxRepo().next_due_at() == row.due_at  # readers still work

    def test_an_offset_with_seconds_is_refused(self, client, script, token):
        body = {"run_at": "2026-12-01T09:00:00+05:30:15.5"}
        response = api(client, "post", "/api/apps/shop/scripts/report/schedule", token, body)
        assert (response.status_code, response.json()["error"]) == (400, "invalid_run_at")

    def test_tokens_scopes_and_apps_are_checked(self, client, developer, script, token):
        body = {"run_at": IN_AN_HOUR.isoformat()}
        path = "/api/apps/shop/scripts/report/schedule"
        assert api(client, "post", path, None, body).status_code == 401
        read_only = tokens.create_token(developer.principal, name="r", scopes=["app:read"])[1]
        assert api(client, "post", path, read_only, body).status_code == 403
        run_id = scheduled.schedule(
            developer.app, script, IN_AN_HOUR, principal=developer.principal
        )
        stranger = MembershipFactory(app=AppFactory(slug="other"), role=Role.AppAdmin.value)
        theirs = tokens.create_token(stranger.principal, name="s", scopes=["script:invoke"])[1]
        for app in ("shop", "other"):
            response = api(client, "delete", f"/api/apps/{app}/scheduled/{run_id}", theirs)
            assert response.status_code == 404
        assert (
            api(client, "delete", f"/api/apps/other/scheduled/{run_id}", token).status_code == 404
        )
        assert OutboxEntry.objects.filter(pk=run_id).exists()


class TestAdmin:
    LIST = "admin:outbox_scheduledrun_changelist"

    def test_pending_runs_are_listed_and_cancelled(self, client, developer, script):
        run_id = scheduled.schedule(
            developer.app, script, IN_AN_HOUR, principal=developer.principal
        )
        client.force_login(developer.principal.user)
        assert "report" in client.get(reverse(self.LIST)).content.decode()
        client.post(reverse(self.LIST), {"action": "cancel", ACTION_CHECKBOX_NAME: [str(run_id)]})
        assert not ScheduledRun.objects.exists()

    def test_another_apps_members_see_none(self, client, developer, script):
        run_id = scheduled.schedule(
            developer.app, script, IN_AN_HOUR, principal=developer.principal
        )
        stranger = MembershipFactory(role=Role.AppAdmin.value).principal.user
        client.force_login(stranger)
        assert "report" not in client.get(reverse(self.LIST)).content.decode()
        client.post(reverse(self.LIST), {"action": "cancel", ACTION_CHECKBOX_NAME: [str(run_id)]})
        assert ScheduledRun.objects.filter(pk=run_id).exists()
