"""HTTP: ``POST /api/apps/<app>/scripts/<script>/invoke``, and one-off
scheduled runs: ``POST .../scripts/<script>/schedule``,
``DELETE /api/apps/<app>/scheduled/<id>`` (docs/api.md).

The view turns a request into a checked invocation and the reply into a
response; every refusal is JSON with a stable ``error`` code. Checks run in
this order, so an outsider learns nothing about apps it cannot see:

    401 no valid token  ->  403 token lacks script:invoke  ->
    404 app or script unknown, or the app is out of the token's / principal's
    reach  ->  403 role lacks script:invoke  ->  409 script disabled  ->
    413 body over the payload cap  ->  400 invalid JSON or timeout_ms

The request thread itself never opens a database connection: lookups and
the invocation's queries run on the invoker's database threads.

``authorize_app``, ``read_payload`` and ``api_endpoint`` are the pieces every
endpoint under /api/ shares (the topics' and queues' are in
outbox/messaging_api.py).
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import DatabaseError, InterfaceError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from outbox import scheduled
from outbox.sync.invoke import default_invoker
from picloud.config import SandboxCeiling, parse_int
from picloud.db.storable import Unstorable, check_json, is_storable_text, parse_json
from picloud.domain import tokens
from picloud.domain.authz import ROLE_SCOPES, Capability, Scope, _AppCapability, has_capability
from picloud.models import Principal, Script

logger = logging.getLogger("picloud.api")

MAX_SCRIPT_NAME = Script._meta.get_field("name").max_length


@dataclass
class ApiError(Exception):
    status: int
    code: str
    message: str

    def response(self) -> JsonResponse:
        response = JsonResponse({"error": self.code, "message": self.message}, status=self.status)
        if self.status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="picloud"'
        return response


def bearer_token(request: HttpRequest) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthenticated", "send an API token: Authorization: Bearer <token>")
    return token.strip()


def authorize(raw_token: str, app_slug: str, script_name: str) -> tuple[Principal, Script]:
    """Who is calling and what they may run; ApiError otherwise. Runs on a
    database thread; one query (tokens.lookup)."""
    # A name no script can have (too long, NUL) is looked up as no name at
    # all: the query stays valid and the answer is the usual 404.
    name = script_name if _possible_script_name(script_name) else None
    principal, row = authorize_app(
        raw_token,
        app_slug,
        Capability.ScriptInvoke,
        not_found=f"no script {script_name!r} in app {app_slug!r}",
        exists=lambda row: row["script_id"] is not None,
        script_name=name,
    )
    if not row["script_enabled"]:
        raise ApiError(409, "script_disabled", f"script {script_name!r} is disabled")
    return principal, Script(id=row["script_id"], app_id=row["app_id"], name=script_name)


def authorize_app(
    raw_token: str,
    app_slug: str,
    capability: type[_AppCapability],
    *,
    not_found: str,
    exists: Callable[[dict[str, Any]], bool] = lambda row: True,
    script_name: str | None = None,
) -> tuple[Principal, dict[str, Any]]:
    """The principal behind `raw_token` if it may do `capability` in app
    `app_slug`, with the token's row (``tokens.lookup``: ``app_id``,
    ``role``, the script columns of `script_name`). Otherwise ApiError, in
    the API's order: 401, 403 the token lacks the capability's scope, 404
    `not_found` (the app is unknown or out of reach, or ``exists(row)`` says
    the thing asked for is not there), 403 the role does not grant it.

    Runs on a database thread. `exists` is asked only once the app is in
    reach, so nobody learns what another app holds."""
    grant, row = _grant(raw_token, capability.scope, app_slug=app_slug, script_name=script_name)
    principal, app_id = grant.principal, row["app_id"]

    def may(capability) -> bool:
        return has_capability(principal, capability, role_lookup=lambda _p, _a: row["role"])

    if (
        app_id is None
        or not grant.reaches(app_id)
        or not may(Capability.AppRead(app_id))
        or not exists(row)
    ):
        # The same answer whether the app exists or not.
        raise ApiError(404, "not_found", not_found)
    if not may(capability(app_id)):
        raise ApiError(
            403,
            "forbidden",
            f"your role in app {app_slug!r} does not allow {capability.scope} "
            f"({_roles_granting(capability.scope)} needed)",
        )
    return principal, row


def _grant(raw_token: str, scope: Scope, **lookup) -> tuple[tokens.TokenGrant, dict[str, Any]]:
    """The token's grant and row (401 unless valid now), if it carries
    `scope` (403 otherwise)."""
    found = tokens.lookup(raw_token, **lookup)
    if found is None:
        raise ApiError(401, "unauthenticated", "the API token is unknown, expired or revoked")
    grant, row = found
    if scope.value not in grant.scopes:
        raise ApiError(403, "forbidden", f"the API token lacks the {scope} scope")
    return grant, row


def _roles_granting(scope: Scope) -> str:
    return " or ".join(role.value for role, scopes in ROLE_SCOPES.items() if scope in scopes)


def invalid(exc: ValidationError) -> ApiError:
    """A Python API's ValidationError as 400 ``invalid_<field>``, with the
    field it names and its first message (``invalid_request`` when it names
    no field)."""
    if not hasattr(exc, "error_dict"):
        return ApiError(400, "invalid_request", exc.messages[0])
    field, messages = next(iter(exc.message_dict.items()))
    return ApiError(400, f"invalid_{field}", f"{field}: {messages[0]}")


def _possible_script_name(name: str) -> bool:
    return 0 < len(name) <= MAX_SCRIPT_NAME and is_storable_text(name)


def read_payload(request: HttpRequest, max_bytes: int):
    """The request body as a JSON value PostgreSQL can store, or ApiError
    (413 over `max_bytes`, 411 for a body we cannot read, 400 invalid_json).
    An empty body is ``{}``."""
    body = _read_body(request, max_bytes)
    if not body.strip():
        return {}
    try:
        value = parse_json(body)
        check_json(value)
    except Unstorable as exc:
        raise ApiError(400, "invalid_json", f"the request body cannot be stored: {exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None
    return value


def _read_body(request: HttpRequest, max_bytes: int) -> bytes:
    declared = parse_int(request.META.get("CONTENT_LENGTH") or "")
    if declared is not None and declared >= 0:
        if declared > max_bytes:
            raise _too_large(max_bytes)
        stream = request  # Django reads exactly Content-Length bytes
    elif "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
        # No length: Django would read nothing and the payload would be lost.
        # A server that ends the input at the body's end (gunicorn sets
        # wsgi.input_terminated) lets us read it to the end ourselves.
        if not request.META.get("wsgi.input_terminated"):
            raise ApiError(
                411,
                "length_required",
                "this server cannot read a chunked body: send a Content-Length header",
            )
        stream = request.META["wsgi.input"]
    else:
        return b""
    try:
        body = stream.read(max_bytes + 1)
    except Exception as exc:  # the server's own parse errors (bad chunk framing), or I/O
        raise ApiError(
            400, "invalid_body", f"the request body could not be read: {type(exc).__name__}"
        ) from None
    if len(body) > max_bytes:
        raise _too_large(max_bytes)
    return body


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413,
        "payload_too_large",
        f"the body is over {max_bytes} bytes (PICLOUD_SANDBOX_MAX_PAYLOAD_BYTES)",
    )


def read_wait_ms(request: HttpRequest, max_wait_ms: int) -> int:
    raw = request.GET.get("timeout_ms")
    if raw is None:
        return max_wait_ms
    # ASCII digits only: str.isdigit() also takes '²' and '٣', which int() refuses.
    value = parse_int(raw)
    if value is None or not 1 <= value <= max_wait_ms:
        raise ApiError(
            400,
            "invalid_timeout",
            f"timeout_ms={raw[:40]!r} is not valid: allowed is an integer from 1 to {max_wait_ms}",
        )
    return value


@csrf_exempt
def api_not_found(request: HttpRequest) -> JsonResponse:
    """Any other path under /api/: the API's JSON 404, not Django's HTML page
    (which, with DEBUG on, lists the URL patterns)."""
    return ApiError(404, "not_found", "no such API endpoint; see docs/api.md").response()


def api_endpoint(method: str, what: str):
    """An API view that takes only `method` (405 otherwise), answers its
    ApiErrors as JSON, and a database that fails as 503."""

    def wrap(view):
        @csrf_exempt
        @functools.wraps(view)
        def endpoint(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if request.method != method:
                response = ApiError(405, "method_not_allowed", f"use {method}").response()
                response["Allow"] = method
                return response
            try:
                return view(request, *args, **kwargs)
            except ApiError as error:
                return error.response()
            except (DatabaseError, InterfaceError):
                logger.exception("%s %s failed on the database", what, args or kwargs)
                return ApiError(
                    503, "unavailable", "the database is unavailable; try again"
                ).response()

        return endpoint

    return wrap


@api_endpoint("POST", "invocation")
def invoke_view(request: HttpRequest, app_slug: str, script_name: str) -> JsonResponse:
    invoker = default_invoker()
    raw_token = bearer_token(request)
    principal, script = invoker.run_db(authorize, raw_token, app_slug, script_name)
    # Authorized first: nobody gets to make us read a large body for free.
    payload = read_payload(request, SandboxCeiling.current().max_payload_bytes)
    wait_ms = read_wait_ms(request, invoker.max_wait_ms)
    result = invoker.invoke(principal, script, payload, wait_ms=wait_ms, authorized=True)
    response = JsonResponse(result.reply.body, status=result.reply.status, safe=False)
    response["X-PiCloud-Outbox-Id"] = str(result.outbox_id)
    return response


@api_endpoint("POST", "scheduling")
def schedule_view(request: HttpRequest, app_slug: str, script_name: str) -> JsonResponse:
    """Schedule one run of the script: body ``{"run_at": "<ISO 8601 with
    offset>", "payload": <JSON>}``; 201 with the run's id."""
    invoker = default_invoker()
    raw_token = bearer_token(request)
    principal, script = invoker.run_db(authorize, raw_token, app_slug, script_name)
    # The payload cap, plus room for run_at and the wrapping object.
    body = read_payload(request, SandboxCeiling.current().max_payload_bytes + 1024)
    run_at, payload = _schedule_request(body)
    run_id = invoker.run_db(_schedule, principal, script, run_at, payload)
    return JsonResponse({"id": str(run_id), "run_at": run_at.isoformat()}, status=201)


@api_endpoint("DELETE", "cancelling a scheduled run")
def scheduled_run_view(request: HttpRequest, app_slug: str, run_id: uuid.UUID) -> HttpResponse:
    """Cancel a scheduled run that has not started: 204, or 404."""
    default_invoker().run_db(_cancel, bearer_token(request), app_slug, run_id)
    return HttpResponse(status=204)


def _schedule_request(body) -> tuple[datetime, object]:
    if not isinstance(body, dict) or set(body) - {"run_at", "payload"}:
        raise ApiError(
            400,
            "invalid_request",
            'send a JSON object with "run_at" (ISO 8601 with an offset) and, optionally, "payload"',
        )
    raw = body.get("run_at")
    try:
        run_at = datetime.fromisoformat(raw) if isinstance(raw, str) else None
        # An offset PostgreSQL and the rest cannot use (seconds in it) is refused too.
        if run_at is not None and run_at.utcoffset() % timedelta(minutes=1):
            run_at = None
    except (ValueError, TypeError):
        run_at = None
    if run_at is None or run_at.tzinfo is None:
        raise ApiError(
            400,
            "invalid_run_at",
            f"run_at={str(raw)[:60]!r} is not valid: allowed is an ISO 8601 time with an "
            "offset, e.g. 2026-12-01T09:00:00Z",
        )
    return run_at, body.get("payload", {})


def _schedule(principal: Principal, script: Script, run_at: datetime, payload) -> uuid.UUID:
    """On a database thread: authorize already checked the token and role."""
    try:
        return scheduled.schedule(script.app, script, run_at, payload, principal=principal)
    except scheduled.PayloadTooLarge as exc:
        raise ApiError(413, "payload_too_large", f"payload: {exc.messages[0]}") from None
    except ValidationError as exc:
        raise invalid(exc) from None


def _cancel(raw_token: str, app_slug: str, run_id: uuid.UUID) -> None:
    grant, row = _grant(raw_token, Scope.ScriptInvoke, app_slug=app_slug)
    app_id = row["app_id"]
    not_found = ApiError(404, "not_found", f"no pending scheduled run {run_id} in app {app_slug!r}")
    if app_id is None or not grant.reaches(app_id):
        raise not_found
    try:
        scheduled.cancel(run_id, principal=grant.principal, app_id=app_id)
    except scheduled.ScheduledRunNotFound:
        raise not_found from None
