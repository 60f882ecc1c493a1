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

import logging
from dataclasses import dataclass

from django.db import DatabaseError, InterfaceError
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from outbox.sync.invoke import default_invoker
from picloud.config import SandboxCeiling, parse_int
from picloud.db.storable import Unstorable, check_json, is_storable_text, parse_json
from picloud.domain import tokens
from picloud.domain.authz import Capability, Scope, has_capability
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
    found = tokens.lookup(raw_token, app_slug=app_slug, script_name=name)
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
        payload = read_payload(request, SandboxCeiling.current().max_payload_bytes)
        wait_ms = read_wait_ms(request, invoker.max_wait_ms)
        result = invoker.invoke(principal, script, payload, wait_ms=wait_ms, authorized=True)
    except ApiError as error:
        return error.response()
    except (DatabaseError, InterfaceError):
        logger.exception("invocation of %r/%r failed on the database", app_slug, script_name)
        return ApiError(503, "unavailable", "the database is unavailable; try again").response()
    response = JsonResponse(result.reply.body, status=result.reply.status, safe=False)
    response["X-PiCloud-Outbox-Id"] = str(result.outbox_id)
    return response
