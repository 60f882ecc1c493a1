"""POST /api/apps/<app>/scripts/<script>/invoke against a dispatcher running
in this process (real LISTEN/NOTIFY, real connections, committed data)."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from deadletters.models import AbandonedExecution, DeadLetter
from outbox.dispatch.worker import postgres_host
from outbox.models import OutboxEntry
from outbox.sync.invoke import close_default_invoker
from picloud.config import DispatcherConfig, SandboxCeiling
from picloud.domain import tokens
from picloud.domain.authz import Role
from picloud.models import ApiToken
from tests.factories import AppFactory, MembershipFactory, ScriptFactory
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def dispatcher():
    host = postgres_host(config=DispatcherConfig(shutdown_grace_ms=5_000))
    host.start()
    yield host
    host.stop()


@pytest.fixture(autouse=True)
def _close_invoker():
    yield
    close_default_invoker()


@pytest.fixture
def member():
    return MembershipFactory(role=Role.Developer.value)


@pytest.fixture
def token(member):
    return tokens.create_token(member.principal, name="tests", scopes=["script:invoke"])[1]


def post(client, token, app, script, body=b"{}", query="", **headers):
    if token is not None:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client.post(
        f"/api/apps/{app}/scripts/{script}/invoke{query}",
        data=body,
        content_type="application/json",
        **headers,
    )


def script_of(member, handler, **kwargs):
    return ScriptFactory(app=member.app, handler=handler, **kwargs)


def outbox_empty():
    return not OutboxEntry.objects.exists()


def test_200_with_the_handlers_result(client, dispatcher, member, token):
    script = script_of(member, "picloud.echo")
    response = post(client, token, member.app.slug, script.name, b'{"hello": ["world", 1]}')
    assert response.status_code == 200, response.content
    assert response.json() == {"hello": ["world", 1]}
    assert response["X-PiCloud-Outbox-Id"]
    wait_for(outbox_empty, timeout=10, what="the row to be acknowledged")
    assert AbandonedExecution.objects.count() == 0, "a reply that was received is not abandoned"


def test_an_empty_body_is_an_empty_object(client, dispatcher, member, token):
    script = script_of(member, "picloud.echo")
    assert post(client, token, member.app.slug, script.name, b"").json() == {}


def test_a_failing_script_answers_its_status_once_with_no_retry_and_no_dead_letter(
    client, dispatcher, member, token
):
    script = script_of(member, "picloud.fail")  # retryable for triggers
    response = post(client, token, member.app.slug, script.name)
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "script_failed" and "attempt 1" in body["message"]
    wait_for(outbox_empty, timeout=10, what="the failed row to be removed, not rescheduled")
    assert DeadLetter.objects.count() == 0
    assert AbandonedExecution.objects.count() == 0


def test_a_permanent_failure_answers_422(client, dispatcher, member, token):
    script = script_of(member, "picloud.reject")
    response = post(client, token, member.app.slug, script.name)
    assert (response.status_code, response.json()["error"]) == (422, "script_failed")


def test_a_slow_script_gives_504_then_exactly_one_abandoned_execution(
    client, dispatcher, member, token
):
    script = script_of(member, "picloud.sleep")
    response = post(
        client, token, member.app.slug, script.name, b'{"seconds": 1.0}', "?timeout_ms=200"
    )
    assert (response.status_code, response.json()["error"]) == (504, "timeout")
    record = wait_for(AbandonedExecution.objects.first, timeout=10, what="the abandoned execution")
    wait_for(outbox_empty, timeout=10, what="the row to be acknowledged")
    assert AbandonedExecution.objects.count() == 1
    assert (record.status_code, record.script_id, record.app_id) == (200, script.id, script.app_id)
    assert str(record.outbox_id) == response["X-PiCloud-Outbox-Id"]
    assert record.result_summary == '{"slept": 1.0}'


def test_a_fast_script_within_the_timeout_leaves_no_abandoned_execution(
    client, dispatcher, member, token
):
    script = script_of(member, "picloud.noop")
    for _ in range(5):
        response = post(client, token, member.app.slug, script.name, query="?timeout_ms=5000")
        assert (response.status_code, response.json()) == (200, None)
    wait_for(outbox_empty, timeout=10, what="the rows to be acknowledged")
    assert AbandonedExecution.objects.count() == 0


# Refusals: none of these needs a dispatcher, and none enqueues anything.


@pytest.fixture
def script(member):
    return script_of(member, "picloud.echo")


def assert_refused(response, status, code):
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"] == code, response.json()
    assert not OutboxEntry.objects.exists(), "a refused request enqueues nothing"


def test_400_invalid_json(client, member, token, script):
    for body in (b"{not json", b"[1, 2", b'{"x": NaN}', b"\xff\xfe"):
        assert_refused(post(client, token, member.app.slug, script.name, body), 400, "invalid_json")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"[" * 5000 + b"]" * 5000, "nested deeper than 100 levels"),
        (b"[" * 101 + b"]" * 101, "nested deeper than 100 levels"),
        (b"[1e400]", "out of range"),
        (b'{"big": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b'{"a": "x\\u0000y"}', "$.a contains a NUL"),
        (b'{"a\\u0000": 1}', "contains a NUL"),
        (b'["\\ud800"]', "$[0] contains a NUL or unpaired surrogate"),
    ],
)
def test_400_for_json_postgresql_cannot_store(client, member, token, script, body, says):
    response = post(client, token, member.app.slug, script.name, body)
    assert_refused(response, 400, "invalid_json")
    assert says in response.json()["message"]


def test_411_for_a_chunked_body_the_server_does_not_end(member, token, script):
    from django.test import RequestFactory

    from outbox.api import invoke_view

    request = RequestFactory().post(
        "/", data=b"{}", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )
    request.META.pop("CONTENT_LENGTH", None)
    request.META["HTTP_TRANSFER_ENCODING"] = "chunked"
    response = invoke_view(request, member.app.slug, script.name)
    assert response.status_code == 411
    assert json.loads(response.content)["error"] == "length_required"
    assert not OutboxEntry.objects.exists()


def test_a_chunked_body_is_read_whole(dispatcher, member, token, script):
    """gunicorn ends the input of a chunked body (wsgi.input_terminated);
    Django alone would read nothing without a Content-Length."""
    import io

    from django.test import RequestFactory

    from outbox.api import invoke_view

    request = RequestFactory().post(
        "/", data=b"", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )
    request.META.pop("CONTENT_LENGTH", None)
    request.META["HTTP_TRANSFER_ENCODING"] = "chunked"
    request.META["wsgi.input_terminated"] = True
    request.META["wsgi.input"] = io.BytesIO(b'{"sent": "in chunks"}')
    response = invoke_view(request, member.app.slug, script.name)
    assert (response.status_code, json.loads(response.content)) == (200, {"sent": "in chunks"})


def test_404_for_a_script_name_no_script_can_have(client, member, token, script):
    for name in ("a%00b", "x" * 300):
        response = post(client, token, member.app.slug, name)
        assert_refused(response, 404, "not_found")


def test_400_invalid_timeout(client, member, token, script):
    for query in (
        "?timeout_ms=0",
        "?timeout_ms=abc",
        "?timeout_ms=999999999",
        "?timeout_ms=%C2%B2",  # '²': str.isdigit() is true for it
        "?timeout_ms=%D9%A3",  # '٣', an Arabic-Indic digit
        "?timeout_ms=1" + "0" * 400,
    ):
        response = post(client, token, member.app.slug, script.name, query=query)
        assert_refused(response, 400, "invalid_timeout")
        assert "allowed is an integer from 1 to" in response.json()["message"]


def test_401_missing_malformed_unknown_expired_revoked_or_inactive(client, member, token, script):
    slug, name = member.app.slug, script.name
    response = post(client, None, slug, name)
    assert_refused(response, 401, "unauthenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert_refused(
        post(client, None, slug, name, HTTP_AUTHORIZATION="Basic abc"), 401, "unauthenticated"
    )
    assert_refused(post(client, "pct_" + "x" * 43, slug, name), 401, "unauthenticated")
    expired_token, raw = tokens.create_token(member.principal, name="e", scopes=["script:invoke"])
    ApiToken.objects.filter(pk=expired_token.pk).update(expires_at=timezone.now())
    assert_refused(post(client, raw, slug, name), 401, "unauthenticated")
    revoked, raw = tokens.create_token(member.principal, name="r", scopes=["script:invoke"])
    assert tokens.revoke(revoked) and not tokens.revoke(revoked)
    assert_refused(post(client, raw, slug, name), 401, "unauthenticated")
    user = member.principal.user
    user.is_active = False
    user.save()
    assert_refused(post(client, token, slug, name), 401, "unauthenticated")


def test_403_token_without_the_scope(client, member, script):
    _, raw = tokens.create_token(member.principal, name="ro", scopes=["app:read", "kv:read"])
    response = post(client, raw, member.app.slug, script.name)
    assert_refused(response, 403, "forbidden")
    assert "script:invoke" in response.json()["message"]


def test_403_role_without_invoke(client, member, token, script):
    member.role = Role.Viewer.value
    member.save()
    response = post(client, token, member.app.slug, script.name)
    assert_refused(response, 403, "forbidden")
    assert "developer or admin" in response.json()["message"]


def test_404_unknown_app_or_script_and_outsiders_cannot_tell(client, member, token, script):
    outsiders_app = AppFactory()
    ScriptFactory(app=outsiders_app, name="secret-script")
    unknown_app = post(client, token, "no-such-app", "secret-script")
    not_mine = post(client, token, outsiders_app.slug, "secret-script")
    assert_refused(unknown_app, 404, "not_found")
    assert_refused(not_mine, 404, "not_found")
    assert_refused(post(client, token, member.app.slug, "no-such-script"), 404, "not_found")
    assert (
        unknown_app.json()["message"].replace("no-such-app", outsiders_app.slug)
        == (not_mine.json()["message"])
    ), "the answers differ only by the name asked for"


def test_404_for_a_token_limited_to_another_app(client, member, script):
    other = MembershipFactory(principal=member.principal, role=Role.Developer.value).app
    _, raw = tokens.create_token(member.principal, name="x", scopes=["script:invoke"], app=other)
    assert_refused(post(client, raw, member.app.slug, script.name), 404, "not_found")


def test_413_body_over_the_payload_cap(client, member, token, script, override_config):
    override_config(SandboxCeiling(max_payload_bytes=100))
    body = json.dumps({"data": "x" * 200}).encode()
    response = post(client, token, member.app.slug, script.name, body)
    assert_refused(response, 413, "payload_too_large")
    assert "PICLOUD_SANDBOX_MAX_PAYLOAD_BYTES" in response.json()["message"]


def test_405_other_methods(client, member, token, script):
    response = client.get(
        f"/api/apps/{member.app.slug}/scripts/{script.name}/invoke",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert_refused(response, 405, "method_not_allowed")
    assert response["Allow"] == "POST"


def test_409_disabled_script(client, member, token):
    script = script_of(member, "picloud.echo", enabled=False)
    assert_refused(post(client, token, member.app.slug, script.name), 409, "script_disabled")


def test_superuser_tokens_reach_every_app(client, script, dispatcher):
    from tests.factories import UserFactory

    admin = UserFactory(is_superuser=True)
    _, raw = tokens.create_token(admin.principal, name="ops", scopes=["script:invoke"])
    response = post(client, raw, script.app.slug, script.name, b'{"a": 1}')
    assert (response.status_code, response.json()) == (200, {"a": 1})


def test_tokens_are_stored_hashed_and_scopes_checked(member):
    token, raw = tokens.create_token(member.principal, name="t", scopes=["script:invoke"])
    stored = ApiToken.objects.get(pk=token.pk)
    assert raw not in (stored.token_hash, stored.prefix) and raw.startswith(stored.prefix)
    assert stored.token_hash == tokens.hash_token(raw)
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError, match=r"unknown scope.*allowed: app:read"):
        tokens.create_token(member.principal, name="t", scopes=["script:run"])
    with pytest.raises(ValidationError, match="no scope"):
        tokens.create_token(member.principal, name="t", scopes=[])
    with pytest.raises(ValidationError, match="in the past"):
        tokens.create_token(
            member.principal,
            name="t",
            scopes=["kv:read"],
            expires_at=timezone.now() - timedelta(seconds=1),
        )


def test_python_api_invokes_as_the_principal_and_checks_its_role(dispatcher, member, script):
    from django.core.exceptions import PermissionDenied

    from outbox.sync.invoke import invoke

    result = invoke(member.principal, script, {"via": "python"})
    assert (result.reply.status, result.reply.body, result.timed_out) == (
        200,
        {"via": "python"},
        False,
    )
    # The first row is acknowledged with the dispatcher's next claim.
    wait_for(outbox_empty, timeout=10, what="the first row to be acknowledged")
    member.role = Role.Viewer.value
    member.save()
    with pytest.raises(PermissionDenied, match="ScriptInvoke"):
        invoke(member.principal, script, {})
    assert not OutboxEntry.objects.exists(), "a refused invocation enqueues nothing"


@pytest.mark.parametrize(
    ("payload", "wait_ms", "message"),
    [
        ({"n": float("nan")}, None, "payload cannot be stored"),
        ({"s": "a\x00"}, None, "payload cannot be stored"),
        ({}, True, "wait_ms must be a positive integer"),
        ({}, "5", "wait_ms must be a positive integer"),
        ({}, 0, "wait_ms must be a positive integer"),
    ],
)
def test_python_api_refuses_bad_values_before_enqueueing(member, script, payload, wait_ms, message):
    from django.core.exceptions import ValidationError

    from outbox.sync.invoke import invoke

    with pytest.raises(ValidationError, match=message):
        invoke(member.principal, script, payload, wait_ms=wait_ms)
    assert not OutboxEntry.objects.exists()


def test_400_for_a_body_the_server_cannot_read(member, token, script):
    """gunicorn raises its own parse errors from the input stream (a chunk
    size of "zz", a body that breaks off): a 400, not the 500 page."""
    from django.test import RequestFactory

    from outbox.api import invoke_view

    class BadChunks:
        def read(self, size=-1):
            raise ValueError("Invalid chunk size: 'zz'")

    request = RequestFactory().post(
        "/", data=b"", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )
    request.META.pop("CONTENT_LENGTH", None)
    request.META["HTTP_TRANSFER_ENCODING"] = "chunked"
    request.META["wsgi.input_terminated"] = True
    request.META["wsgi.input"] = BadChunks()
    response = invoke_view(request, member.app.slug, script.name)
    assert response.status_code == 400
    assert json.loads(response.content)["error"] == "invalid_body"
    assert not OutboxEntry.objects.exists()


@pytest.mark.parametrize(
    "path",
    [
        "/api/nope",
        "/api/apps/de%00mo/scripts/x/invoke",
        "/api/apps/d%C3%A9mo/scripts/x/invoke",
        "/api/apps/a/scripts/x/invoke/",
        "/api/apps/a/scripts/a%2Fb/invoke",
    ],
)
def test_other_api_paths_are_a_json_404(client, path):
    for response in (
        client.get(path),
        client.post(path, data=b"{}", content_type="application/json"),
    ):
        assert response.status_code == 404, (path, response.status_code)
        assert response["Content-Type"] == "application/json"
        assert response.json()["error"] == "not_found"


def test_python_api_trusts_the_stored_script_not_the_callers_object(member, script):
    """A Script built by hand with this member's app id and another app's
    script id must not pass the check for the other app."""
    from django.core.exceptions import PermissionDenied, ValidationError

    from outbox.sync.invoke import invoke
    from picloud.models import Script

    other = ScriptFactory(handler="picloud.echo")  # another app's script
    forged = Script(id=other.id, app_id=member.app_id, name="forged")
    with pytest.raises(PermissionDenied):
        invoke(member.principal, forged, {})
    unsaved = Script(app_id=member.app_id, name="never-saved")
    with pytest.raises(ValidationError, match="save it first"):
        invoke(member.principal, unsaved, {})
    assert not OutboxEntry.objects.exists()
