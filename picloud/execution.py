"""The one entry point that runs a script for an outbox row: ``execute_row``.

It loads the script, builds the handler's context, enforces the
SandboxCeiling (payload cap before sending, wall-clock timeout, result cap on
the way back) and returns a typed outcome: ``Success(result)`` or
``Failure(error, retryable, status)``. It never raises for a script's fault.
Authorization of the run-as principal is checked here as well, so no caller
can run a script with rights its principal lost.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import PermissionDenied

from outbox.repository import OutboxRow
from picloud import webhooks
from picloud.authz import Capability, Role, has_capability, role_in_app
from picloud.config import SandboxCeiling, WebhookConfig
from picloud.kv import KvClient
from picloud.models import App, Principal, Runtime, Script
from picloud.sandbox import SandboxTimeout, run_with_timeout
from picloud.scripts import PermanentError, get_handler

logger = logging.getLogger("picloud.execution")

MAX_ERROR_CHARS = 2_000


@dataclass(frozen=True)
class Success:
    result: Any
    ok = True


@dataclass(frozen=True)
class Failure:
    error: str
    retryable: bool
    # HTTP status to report to a synchronous caller (the webhook's own status
    # when it answered, else 500/504/413...).
    status: int = 500
    # True when the run-as principal may not run this script: nothing ran.
    unauthorized: bool = False
    ok = False


Outcome = Success | Failure


@dataclass
class ExecutionContext:
    """What a Python handler receives as ``ctx``."""

    app: App
    principal: Principal
    depth: int
    attempt: int
    outbox_id: uuid.UUID
    logger: logging.LoggerAdapter
    kv: KvClient
    deadline: float  # time.monotonic() by which the handler must return

    def remaining(self) -> float:
        """Seconds left before the sandbox timeout."""
        return max(0.0, self.deadline - time.monotonic())


def run_capability(app_id: uuid.UUID) -> Capability.ScriptInvoke:
    """What the run-as principal must hold for the dispatcher to run a script."""
    return Capability.ScriptInvoke(app_id)


def _size(value: Any) -> int:
    """Bytes of `value` as compact JSON; TypeError/ValueError if it is not JSON."""
    return len(json.dumps(value, separators=(",", ":"), allow_nan=False).encode())


def _error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


class Lookups:
    """Scripts, principals and roles read once and reused.

    The dispatcher makes one per batch, so a batch of rows for one script
    reads the script, principal and role once instead of once per row; a
    batch lasts a few dozen milliseconds (outbox/worker.py sizes them), which
    bounds how stale a revoked role can be.
    """

    def __init__(self) -> None:
        self._scripts: dict[uuid.UUID, Script | None] = {}
        self._principals: dict[uuid.UUID, Principal | None] = {}
        self._roles: dict[tuple[uuid.UUID, uuid.UUID], Role | None] = {}

    def script(self, script_id: uuid.UUID) -> Script | None:
        if script_id not in self._scripts:
            self._scripts[script_id] = (
                Script.objects.select_related("app").filter(pk=script_id).first()
            )
        return self._scripts[script_id]

    def principal(self, principal_id: uuid.UUID | None) -> Principal | None:
        if principal_id is None:
            return None
        if principal_id not in self._principals:
            self._principals[principal_id] = (
                Principal.objects.select_related("user").filter(pk=principal_id).first()
            )
        return self._principals[principal_id]

    def role(self, principal: Principal, app_id: uuid.UUID) -> Role | None:
        key = (principal.pk, app_id)
        if key not in self._roles:
            self._roles[key] = role_in_app(principal, app_id)
        return self._roles[key]


class RowExecutor:
    """execute_row for the dispatcher: ceilings read once, lookups shared per batch."""

    def __init__(
        self,
        ceiling: SandboxCeiling | None = None,
        webhook_config: WebhookConfig | None = None,
    ) -> None:
        self.ceiling = ceiling or SandboxCeiling.from_env()
        self.webhook_config = webhook_config or WebhookConfig.from_env()
        self.lookups = Lookups()

    def begin_batch(self) -> None:
        self.lookups = Lookups()

    def __call__(self, row: OutboxRow) -> Outcome:
        return execute_row(
            row, ceiling=self.ceiling, webhook_config=self.webhook_config, lookups=self.lookups
        )


def execute_row(
    row: OutboxRow,
    *,
    ceiling: SandboxCeiling | None = None,
    webhook_config: WebhookConfig | None = None,
    lookups: Lookups | None = None,
) -> Outcome:
    ceiling = ceiling or SandboxCeiling.from_env()
    lookups = lookups or Lookups()
    script = lookups.script(row.script_id)
    if script is None:
        return Failure(f"script {row.script_id} no longer exists", retryable=False, status=404)
    if not script.enabled:
        return Failure(f"script {script} is disabled", retryable=False, status=409)
    principal = lookups.principal(row.run_as_principal)
    if not has_capability(principal, run_capability(script.app_id), role_lookup=lookups.role):
        who = principal or "a deleted principal"
        return Failure(
            f"unauthorized: {who} may no longer run scripts in app {script.app} "
            f"(needs {run_capability(script.app_id).scope.value})",
            retryable=False,
            status=403,
            unauthorized=True,
        )
    payload_bytes = _size(row.payload)
    if payload_bytes > ceiling.max_payload_bytes:
        return Failure(
            f"payload is {payload_bytes} bytes, over PICLOUD_SANDBOX_MAX_PAYLOAD_BYTES="
            f"{ceiling.max_payload_bytes}",
            retryable=False,
            status=413,
        )
    timeout = ceiling.timeout_ms / 1000
    if script.runtime == Runtime.WEBHOOK:
        return _run_webhook(script, row, ceiling, timeout, webhook_config)
    return _run_python(script, principal, row, ceiling, timeout)  # type: ignore[arg-type]


def _run_python(
    script: Script, principal: Principal, row: OutboxRow, ceiling: SandboxCeiling, timeout: float
) -> Outcome:
    fn = get_handler(script.handler)
    if fn is None:
        return Failure(
            f"handler {script.handler!r} is not registered in this process",
            retryable=True,
            status=500,
        )
    ctx = ExecutionContext(
        app=script.app,
        principal=principal,
        depth=row.depth,
        attempt=row.attempts,
        outbox_id=row.id,
        logger=logging.LoggerAdapter(
            logging.getLogger(f"picloud.scripts.{script.handler}"),
            {"outbox_id": str(row.id), "app": script.app.slug},
        ),
        kv=KvClient(script.app, principal, depth=row.depth + 1, cause=row.id),
        deadline=time.monotonic() + timeout,
    )
    try:
        result = run_with_timeout(lambda: fn(row.payload, ctx), timeout)
    except SandboxTimeout:
        return Failure(
            f"timed out after {ceiling.timeout_ms} ms (PICLOUD_SANDBOX_TIMEOUT_MS)",
            retryable=True,
            status=504,
        )
    except PermanentError as exc:
        return Failure(_error(exc), retryable=False, status=422)
    except PermissionDenied as exc:
        return Failure(_error(exc), retryable=False, status=403)
    except Exception as exc:
        return Failure(_error(exc), retryable=True, status=500)
    try:
        result_bytes = _size(result)
    except (TypeError, ValueError) as exc:
        return Failure(f"result is not JSON: {exc}", retryable=False, status=500)
    if result_bytes > ceiling.max_result_bytes:
        return Failure(
            f"result is {result_bytes} bytes, over PICLOUD_SANDBOX_MAX_RESULT_BYTES="
            f"{ceiling.max_result_bytes}",
            retryable=False,
            status=500,
        )
    return Success(result)


def _run_webhook(
    script: Script,
    row: OutboxRow,
    ceiling: SandboxCeiling,
    timeout: float,
    config: WebhookConfig | None,
) -> Outcome:
    body = json.dumps(row.payload, separators=(",", ":")).encode()
    headers = webhooks.delivery_headers(script.secret, body, str(row.id))
    try:
        response = webhooks.post(
            script.webhook_url,
            body,
            headers,
            timeout=timeout,
            max_response_bytes=ceiling.max_result_bytes,
            config=config,
        )
    except webhooks.WebhookRefused as exc:
        return Failure(str(exc), retryable=False, status=502)
    except TimeoutError:
        return Failure(
            f"webhook timed out after {ceiling.timeout_ms} ms (PICLOUD_SANDBOX_TIMEOUT_MS)",
            retryable=True,
            status=504,
        )
    except webhooks.ResponseTooLarge as exc:
        return Failure(str(exc), retryable=False, status=502)
    except OSError as exc:
        return Failure(f"webhook connection failed: {_error(exc)}", retryable=True, status=502)
    if 200 <= response.status < 300:
        return Success(webhooks.decode_result(response))
    body_text = webhooks.truncate(response.body.decode("utf-8", errors="replace"))
    # 408, 429 and 5xx may pass; other answers (4xx, 3xx) will not change on retry.
    retryable = response.status in (408, 429) or response.status >= 500
    return Failure(
        f"webhook answered {response.status}: {body_text}",
        retryable=retryable,
        status=response.status,
    )
