"""HTTP: ``POST /api/apps/<app>/scripts/<script>/invoke`` (docs/api.md).

The view turns a request into a checked invocation and the reply into a
response; every refusal is JSON with a stable ``error`` code. Checks run in
this order, so an outsider learns nothing about apps it cannot see:

    401 no valid token  ->  403 token lacks script:invoke  ->
    404 app or script unknown, or the app is out of the token's / principal's
    reach  ->  403 role lacks script:invoke  ->  409 script disabled  ->
    413 body over the payload cap  ->  400 invalid JSON or timeout_ms

The request thread itself never opens a database connection: lookups and
the invocation's queries run on the invoker's database threads.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from django.db import DatabaseError, InterfaceError
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from outbox.invoke import default_invoker
from picloud import tokens
from picloud.authz import Capability, Scope, has_capability
from picloud.config import SandboxCeiling
from picloud.models import Principal, Script

logger = logging.getLogger("picloud.api")


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
    found = tokens.lookup(raw_token, app_slug=app_slug, script_name=script_name)
    if found is None:
        raise ApiError(401, "unauthenticated", "the API token is unknown, expired or revoked")
    grant, row = found
    principal = grant.principal
    if Scope.ScriptInvoke.value not in grant.scopes:
        raise ApiError(403, "forbidden", f"the API token lacks the {Scope.ScriptInvoke} scope")
    app_id = row["app_id"]

    def may(capability) -> bool:
        return has_capability(principal, capability, role_lookup=lambda _p, _a: row["role"])

    if app_id is None or not grant.reaches(app_id) or not may(Capability.AppRead(app_id)):
        # The same answer whether the app exists or not.
        raise ApiError(404, "not_found", f"no script {script_name!r} in app {app_slug!r}")
    if row["script_id"] is None:
        raise ApiError(404, "not_found", f"no script {script_name!r} in app {app_slug!r}")
    if not may(Capability.ScriptInvoke(app_id)):
        raise ApiError(
            403,
            "forbidden",
            f"your role in app {app_slug!r} does not allow {Scope.ScriptInvoke} "
            "(developer or admin needed)",
        )
    if not row["script_enabled"]:
        raise ApiError(409, "script_disabled", f"script {script_name!r} is disabled")
    return principal, Script(id=row["script_id"], app_id=app_id, name=script_name)


def read_payload(request: HttpRequest, max_bytes: int):
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    body = request.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise _too_large(max_bytes)
    if not body.strip():
        return {}
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


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
    if not raw.isdigit() or not 1 <= int(raw) <= max_wait_ms:
        raise ApiError(
            400,
            "invalid_timeout",
            f"timeout_ms={raw!r} is not valid: allowed is an integer from 1 to {max_wait_ms}",
        )
    return int(raw)


@csrf_exempt
def invoke_view(request: HttpRequest, app_slug: str, script_name: str) -> JsonResponse:
    if request.method != "POST":
        response = ApiError(405, "method_not_allowed", "use POST").response()
        response["Allow"] = "POST"
        return response
    invoker = default_invoker()
    try:
        raw_token = bearer_token(request)
        principal, script = invoker.run_db(authorize, raw_token, app_slug, script_name)
        # Authorized first: nobody gets to make us read a large body for free.
        payload = read_payload(request, SandboxCeiling.from_env().max_payload_bytes)
        wait_ms = read_wait_ms(request, invoker.max_wait_ms)
        result = invoker.invoke(principal, script, payload, wait_ms=wait_ms, authorized=True)
    except ApiError as error:
        return error.response()
    except (DatabaseError, InterfaceError):
        logger.exception("invocation of %s/%s failed on the database", app_slug, script_name)
        return ApiError(503, "unavailable", "the database is unavailable; try again").response()
    response = JsonResponse(result.reply.body, status=result.reply.status, safe=False)
    response["X-PiCloud-Outbox-Id"] = str(result.outbox_id)
    return response
