"""The one entry point that runs a script for an outbox row: ``execute_row``.

It loads the script, builds the handler's context, enforces the
SandboxCeiling (payload cap before sending, wall-clock timeout, result cap on
the way back) and returns a typed outcome: ``Success(result)`` or
``Failure(error, retryable, status)``. It never raises for a script's fault.
Authorization of the run-as principal is checked here as well, so no caller
can run a script with rights its principal lost.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import inspect
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from outbox.storage.kinds import SourceKind
from outbox.storage.repository import OutboxRow
from picloud.config import SandboxCeiling, WebhookConfig
from picloud.db.sqlexec import fetch_one, model_from_row
from picloud.db.sqlfiles import load_queries
from picloud.db.storable import bounded_error, clean_json
from picloud.domain.authz import Capability, Role, has_capability
from picloud.domain.scripts import PermanentError, get_handler
from picloud.kv import KvClient
from picloud.messaging.queues import QueueClient
from picloud.messaging.topics import TopicClient
from picloud.models import App, Principal, Runtime, Script
from picloud.runtime import outbound_mail, webhooks
from picloud.runtime.outbound_mail import EmailClient
from picloud.runtime.sandbox import (
    MAX_HUNG_HELPERS,
    SandboxFull,
    SandboxTimeout,
    hung_helpers,
    run_each,
    run_with_timeout,
)
from picloud.text import truncate

logger = logging.getLogger("picloud.execution")
QUERIES = load_queries("picloud")


@dataclass(frozen=True)
class Success:
    result: Any
    # The endpoint's HTTP status, for a webhook (the delivery log shows it).
    status: int | None = None
    ok = True


@dataclass(frozen=True)
class Failure:
    # Storable by construction: errors quote what scripts and endpoints said,
    # and one NUL in one of them must not fail the statement that settles a
    # whole batch (picloud/db/storable.py).
    error: str
    retryable: bool
    # HTTP status to report to a synchronous caller (the webhook's own status
    # when it answered, else 500/504/413...).
    status: int = 500
    # True when the run-as principal may not run this script: nothing ran.
    unauthorized: bool = False
    # True when the sandbox stopped the script at PICLOUD_SANDBOX_TIMEOUT_MS.
    timed_out: bool = False
    # True when the worker running it was lost: nothing is known to have
    # finished (the dispatcher says so for a sync row it finds claimed again).
    lost: bool = False
    # Seconds the endpoint asked to wait before the next attempt (Retry-After
    # on a 429 or 503); the dispatcher waits at least this, up to its max delay.
    retry_after: float | None = None
    ok = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "error", bounded_error(self.error))


Outcome = Success | Failure


@dataclass
class ExecutionContext:
    """What a Python handler receives as ``ctx``.

    ``kv``, ``topics``, ``queues``, ``email`` and ``logger`` are built on first use: most
    handlers touch none, and the dispatcher builds a context per row.
    """

    app: App
    principal: Principal
    depth: int
    attempt: int
    outbox_id: uuid.UUID
    handler: str
    deadline: float  # time.monotonic() by which the handler must return

    # How run_sync runs blocking code: the engine's handler threads (set by
    # the runner); None: a thread of asyncio's own.
    run_blocking: Callable[[Callable[[], Any]], Awaitable[Any]] | None = None
    # The script running, and the event it handles (what ctx.email sends
    # as, and replies to).
    script: Script | None = None
    event: Any = None

    def remaining(self) -> float:
        """Seconds left before the sandbox timeout."""
        return max(0.0, self.deadline - time.monotonic())

    async def run_sync(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """For ``async def`` handlers: run blocking code (``ctx.kv``, the
        Django ORM, a blocking library) on a handler thread and await its
        result; the event loop must not block, and Django refuses database
        calls made on it."""
        call = functools.partial(fn, *args, **kwargs)
        if self.run_blocking is None:
            return await asyncio.to_thread(call)
        return await self.run_blocking(call)

    @cached_property
    def kv(self) -> KvClient:
        """The KV API as the run-as principal; writes run at depth + 1."""
        return KvClient(self.app, self.principal, depth=self.depth + 1, cause=self.outbox_id)

    @cached_property
    def topics(self) -> TopicClient:
        """Publishing as the run-as principal, at depth + 1 (``ctx.topics.publish``)."""
        return TopicClient(self.app, self.principal, depth=self.depth + 1, cause=self.outbox_id)

    @cached_property
    def queues(self) -> QueueClient:
        """The queue API as the run-as principal; sends carry depth + 1."""
        return QueueClient(self.app, self.principal, depth=self.depth + 1)

    @cached_property
    def email(self) -> EmailClient:
        """Mail from the app's domain as the run-as principal (``ctx.email.send``,
        ``ctx.email.reply`` for an email event)."""
        if self.script is None:
            raise RuntimeError("ctx.email needs the running script (set by the dispatcher)")
        return EmailClient(
            self.app, self.principal, self.script, depth=self.depth + 1, event=self.event
        )

    @cached_property
    def logger(self) -> logging.LoggerAdapter:
        return logging.LoggerAdapter(
            # A name operators configure logging by: kept when the module moved.
            logging.getLogger(f"picloud.scripts.{self.handler}"),
            {"outbox_id": str(self.outbox_id), "app": self.app.slug},
        )


def run_capability(app_id: uuid.UUID) -> Capability.ScriptInvoke:
    """What the run-as principal must hold for the dispatcher to run a script."""
    return Capability.ScriptInvoke(app_id)


def _size(value: Any) -> int:
    """Bytes of `value` as compact JSON; TypeError/ValueError if it is not JSON."""
    if value is None or isinstance(value, bool):
        return 5  # at most "false": not worth encoding
    return len(json.dumps(value, separators=(",", ":"), allow_nan=False).encode())


def _error(exc: BaseException) -> str:
    return bounded_error(f"{type(exc).__name__}: {exc}")


class Lookups:
    """Scripts, principals and roles read once and reused.

    One query per (script, run-as principal) reads the script, its app, the
    principal, its user's flags and its role in the app. The dispatcher makes
    one Lookups per batch, so a batch of rows for one trigger costs one query;
    a batch lasts a few dozen milliseconds (outbox/dispatch/worker.py sizes them),
    which bounds how stale a revoked role can be.
    """

    def __init__(self) -> None:
        self._gates: dict[tuple, tuple[Script | None, Principal | None, Failure | None]] = {}

    def gate(
        self, script_id: uuid.UUID, principal_id: uuid.UUID | None
    ) -> tuple[Script | None, Principal | None, Failure | None]:
        """(script, principal, refusal): refusal is why no row of this script
        and principal may run (missing, disabled, unauthorized), else None.
        Decided once per batch, like the context it is decided from."""
        # UUIDs hash in Python; their ints hash in C (one lookup per row).
        key = (script_id.int, principal_id.int if principal_id else None)
        gate = self._gates.get(key)
        if gate is None:
            script, principal, role = _load_context(script_id, principal_id)
            gate = self._gates[key] = (
                script,
                principal,
                _refusal(script_id, script, principal, role),
            )
        return gate


def _refusal(script_id, script, principal, role) -> Failure | None:
    if script is None:
        return Failure(f"script {script_id} no longer exists", retryable=False, status=404)
    if not script.enabled:
        return Failure(f"script {script} is disabled", retryable=False, status=409)
    needed = run_capability(script.app_id)
    if not has_capability(principal, needed, role_lookup=lambda _principal, _app: role):
        who = principal or "a deleted principal"
        return Failure(
            f"unauthorized: {who} may no longer run scripts in app {script.app} "
            f"(needs {needed.scope.value})",
            retryable=False,
            status=403,
            unauthorized=True,
        )
    return None


def _load_context(script_id, principal_id):

    row = fetch_one(QUERIES["run_context"], {"script_id": script_id, "principal_id": principal_id})
    if row is None:
        return None, None, None
    app = model_from_row(
        App,
        {
            "id": row["app_id"],
            "slug": row["app_slug"],
            "name": row["app_name"],
            "created_at": row["app_created_at"],
        },
    )
    script_fields = (
        "id",
        "app_id",
        "name",
        "enabled",
        "runtime",
        "handler",
        "webhook_url",
        "secret",
        "created_at",
        "updated_at",
    )
    script = model_from_row(Script, {f: row[f] for f in script_fields})
    script.app = app
    principal = None
    if row["principal_id"] is not None:
        principal = model_from_row(
            Principal,
            {
                "id": row["principal_id"],
                "user_id": row["user_id"],
                "created_at": row["principal_created_at"],
            },
        )
        principal.user = model_from_row(
            get_user_model(),
            {f: row[f] for f in ("username", "is_active", "is_superuser")} | {"id": row["user_id"]},
        )
    role = Role(row["role"]) if row["role"] in Role._value2member_map_ else None
    return script, principal, role


class RowExecutor:
    """Runs a batch of rows for the dispatcher: ceilings read once, lookups
    shared per batch, the whole batch handed to the handler thread at once.

    `run_row` is what runs one row (``execute_row``); tests put their own
    there, so the batching, time limits and hand-off they exercise are the
    ones production uses."""

    def __init__(
        self,
        ceiling: SandboxCeiling | None = None,
        webhook_config: WebhookConfig | None = None,
        *,
        run_row: Callable[..., Outcome] | None = None,
    ) -> None:
        self.ceiling = ceiling or SandboxCeiling.current()
        self.webhook_config = webhook_config or WebhookConfig.current()
        self.run_row = run_row or execute_row

    def run_batch(self, rows: list[OutboxRow]) -> OutcomeRun:
        """Outcomes of `rows` in order, all executed in one hand-off to the
        handler thread (see OutcomeRun). SandboxFull, before any row starts,
        while too many handlers hang in this process."""
        lookups = Lookups()  # per batch: bounds how stale a revoked role can be

        def job(row: OutboxRow):
            return lambda: self.run_row(
                row,
                ceiling=self.ceiling,
                webhook_config=self.webhook_config,
                lookups=lookups,
                in_sandbox=True,
            )

        return OutcomeRun(
            run_each([job(r) for r in rows], self.ceiling.timeout_ms / 1000), self.ceiling
        )

    def saturated(self) -> bool:
        """True while too many handlers hang past their timeout in this
        process to start another (run_batch would raise SandboxFull)."""
        return hung_helpers() >= MAX_HUNG_HELPERS


class OutcomeRun:
    """Iterate for each row's Outcome. After a row overruns the timeout, its
    outcome is the timeout failure and iteration ends (the rest never run).
    ``cancel()`` runs no further row; rows already run still yield."""

    def __init__(self, run, ceiling: SandboxCeiling) -> None:
        self.run, self.ceiling, self.ended = run, ceiling, False

    def __iter__(self) -> OutcomeRun:
        return self

    def __next__(self) -> Outcome:
        if self.ended:
            raise StopIteration
        try:
            ok, value = next(self.run)
        except SandboxTimeout:
            self.ended = True
            return timed_out(self.ceiling)
        return value if ok else Failure(f"dispatcher error: {_error(value)}", retryable=True)

    def cancel(self) -> None:
        self.run.cancel()

    def close(self) -> None:
        self.run.close()


@dataclass(frozen=True)
class Prepared:
    """A row cleared to run: its script, and the principal it runs as."""

    row: OutboxRow
    script: Script
    principal: Principal | None


def prepare(row: OutboxRow, *, ceiling: SandboxCeiling, lookups: Lookups) -> Prepared | Failure:
    """What every execution checks before anything runs (database reads
    only): the script exists and is enabled, the run-as principal may still
    run it, the payload is under its cap. A Failure says why not."""
    script, principal, refusal = lookups.gate(row.script_id, row.run_as_principal)
    if refusal is not None:
        return refusal
    payload_bytes = row.payload_bytes or _size(row.payload)
    if payload_bytes > ceiling.max_payload_bytes:
        return Failure(
            f"payload is {payload_bytes} bytes, over PICLOUD_SANDBOX_MAX_PAYLOAD_BYTES="
            f"{ceiling.max_payload_bytes}",
            retryable=False,
            status=413,
        )
    if row.source_kind == SourceKind.CRON and isinstance(row.payload, dict):
        # A tick's event says when it actually fired: this run's start (a
        # retry carries its own). The row in the outbox stays as written.
        fired_at = timezone.now().isoformat(timespec="microseconds").replace("+00:00", "Z")
        row = replace(row, payload={**row.payload, "fired_at": fired_at})
    return Prepared(row, script, principal)  # type: ignore[arg-type]


def execute_row(
    row: OutboxRow,
    *,
    ceiling: SandboxCeiling | None = None,
    webhook_config: WebhookConfig | None = None,
    lookups: Lookups | None = None,
    in_sandbox: bool = False,
) -> Outcome:
    """Run `row`'s script in this thread (the synchronous path; worker
    processes run rows on the event loop, picloud/runtime/async_execution.py).
    `in_sandbox`: the caller already runs this in a timed helper thread
    (RowExecutor.run_batch), so the handler runs inline."""
    ceiling = ceiling or SandboxCeiling.current()
    prepared = prepare(row, ceiling=ceiling, lookups=lookups or Lookups())
    if isinstance(prepared, Failure):
        return prepared
    timeout = ceiling.timeout_ms / 1000
    if posts_webhook(prepared):
        return _run_webhook(prepared.script, row, ceiling, timeout, webhook_config)
    return _run_python(prepared, ceiling, timeout, in_sandbox)


def timed_out(ceiling: SandboxCeiling) -> Failure:
    return Failure(
        f"timed out after {ceiling.timeout_ms} ms (PICLOUD_SANDBOX_TIMEOUT_MS)",
        retryable=True,
        status=504,
        timed_out=True,
    )


def delivers_mail(row: OutboxRow) -> bool:
    """Whether the row is mail a script sent: delivered, no script runs."""
    return row.source_kind == SourceKind.EMAIL_SEND


def posts_webhook(prepared: Prepared) -> bool:
    """Whether running the row is a POST to its script's webhook (else a
    handler_of call: a Python handler, or the delivery of mail the script
    sent, whatever runtime the script has since)."""
    return prepared.script.runtime == Runtime.WEBHOOK and not delivers_mail(prepared.row)


def handler_of(prepared: Prepared) -> Callable | Failure:
    """What runs for the row: the registered handler its script names (or
    the mail delivery of an email_send row), or why it cannot run."""
    if delivers_mail(prepared.row):
        return outbound_mail.deliver_row
    script = prepared.script
    fn = get_handler(script.handler)
    if fn is None:
        return Failure(
            f"handler {script.handler!r} is not registered in this process",
            retryable=True,
            status=500,
        )
    return fn


def context_for(prepared: Prepared, timeout: float) -> ExecutionContext:
    """The handler's ctx; its deadline counts from now."""
    script, row = prepared.script, prepared.row
    return ExecutionContext(
        app=script.app,
        principal=prepared.principal,  # type: ignore[arg-type]
        depth=row.depth,
        attempt=row.attempts,
        outbox_id=row.id,
        handler=script.handler,
        deadline=time.monotonic() + timeout,
        script=script,
        event=row.payload,
    )


def handler_failure(exc: Exception) -> Failure:
    """The outcome of a handler that raised."""
    if isinstance(exc, PermanentError):
        return Failure(_error(exc), retryable=False, status=422)
    if isinstance(exc, PermissionDenied):
        return Failure(_error(exc), retryable=False, status=403)
    return Failure(_error(exc), retryable=True, status=500)


def handler_result(result: Any, ceiling: SandboxCeiling) -> Outcome:
    """A handler's return value, made storable and held to the result cap."""
    try:
        result, _replaced = clean_json(result)
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


def _run_python(
    prepared: Prepared, ceiling: SandboxCeiling, timeout: float, in_sandbox: bool
) -> Outcome:
    fn = handler_of(prepared)
    if isinstance(fn, Failure):
        return fn
    ctx = context_for(prepared, timeout)
    payload = prepared.row.payload
    if inspect.iscoroutinefunction(fn):
        # An async handler outside the engine: its own loop, the same limit.
        call = lambda: asyncio.run(asyncio.wait_for(fn(payload, ctx), timeout))  # noqa: E731
    else:
        call = lambda: fn(payload, ctx)  # noqa: E731
    try:
        result = call() if in_sandbox else run_with_timeout(call, timeout)
    except (SandboxTimeout, TimeoutError):
        return timed_out(ceiling)
    except SandboxFull as full:
        return Failure(str(full), retryable=True, status=503)
    except Exception as exc:
        return handler_failure(exc)
    return handler_result(result, ceiling)


def webhook_request(script: Script, row: OutboxRow) -> tuple[bytes, dict[str, str]]:
    """The body and signed headers of a delivery."""
    body = json.dumps(row.payload, separators=(",", ":")).encode()
    return body, webhooks.delivery_headers(script.secret, body, str(row.id))


def webhook_failure(exc: Exception, ceiling: SandboxCeiling) -> Failure | None:
    """The outcome of a delivery that raised, or None for an exception that
    is not the delivery's (the caller re-raises it)."""
    if isinstance(exc, webhooks.WebhookRefused | webhooks.ResponseTooLarge):
        return Failure(str(exc), retryable=False, status=502)
    if isinstance(exc, TimeoutError):
        return Failure(
            f"webhook timed out after {ceiling.timeout_ms} ms (PICLOUD_SANDBOX_TIMEOUT_MS)",
            retryable=True,
            status=504,
            timed_out=True,
        )
    if isinstance(exc, ValidationError):
        # A URL saved before today's checks (bad port, control characters),
        # refused again before sending: retrying cannot fix it.
        why = "; ".join(exc.messages)
        return Failure(f"webhook URL is not usable: {why}", retryable=False, status=502)
    if isinstance(exc, ValueError | http.client.InvalidURL):
        return Failure(f"webhook URL is not usable: {_error(exc)}", retryable=False, status=502)
    if isinstance(exc, OSError):
        return Failure(f"webhook connection failed: {_error(exc)}", retryable=True, status=502)
    return None


def webhook_outcome(response: webhooks.WebhookResponse) -> Outcome:
    """The outcome of an endpoint's answer."""
    if 200 <= response.status < 300:
        return Success(webhooks.decode_result(response), status=response.status)
    body_text = truncate(
        response.body.decode("utf-8", errors="replace"), webhooks.MAX_ERROR_BODY_CHARS
    )
    # 408, 429 and 5xx may pass; other answers (4xx, 3xx) will not change on retry.
    retryable = response.status in (408, 429) or response.status >= 500
    retry_after = None
    if response.status in webhooks.RETRY_AFTER_STATUSES:
        retry_after = webhooks.retry_after_seconds(response.retry_after, timezone.now())
    return Failure(
        f"webhook answered {response.status}: {body_text}",
        retryable=retryable,
        status=response.status,
        retry_after=retry_after,
    )


def _run_webhook(
    script: Script,
    row: OutboxRow,
    ceiling: SandboxCeiling,
    timeout: float,
    config: WebhookConfig | None,
) -> Outcome:
    body, headers = webhook_request(script, row)
    try:
        response = webhooks.post(
            script.webhook_url,
            body,
            headers,
            timeout=timeout,
            max_response_bytes=ceiling.max_result_bytes,
            config=config,
        )
    except Exception as exc:
        failure = webhook_failure(exc, ceiling)
        if failure is None:
            raise
        return failure
    return webhook_outcome(response)
