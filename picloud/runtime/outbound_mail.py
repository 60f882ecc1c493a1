"""Mail a script sends: ``ctx.email``, the rows it writes, and running them.

``ctx.email.send(...)`` checks the message (picloud.mail.compose), counts
it against PICLOUD_EMAIL_SEND_PER_HOUR and writes an outbox row of source
``email_send``, all in the script's transaction: a send that rolls back is
never delivered nor counted. The dispatcher runs ``deliver_row`` for that
row instead of a script, with the row's retries, backoff and dead letter
(picloud.mail.delivery maps the server's answer). Every message carries a
Message-ID fixed when it was sent (a retry repeats it, so a receiver can
drop the duplicate) and an Auto-Submitted header (RFC 3834), which tells
other robots not to answer it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import transaction

from outbox.storage.kinds import SourceKind
from outbox.storage.pg_repository import PgOutboxRepo
from outbox.storage.repository import NewOutboxRow
from picloud.config import EmailConfig, SandboxCeiling
from picloud.db.sqlexec import fetch_one
from picloud.db.sqlfiles import load_queries
from picloud.domain.authz import Capability, require
from picloud.mail import compose, delivery, inbound
from picloud.models import App, Principal, Script

Q = load_queries("picloud", "email.sql")


class SendLimitReached(Exception):
    """The app sent PICLOUD_EMAIL_SEND_PER_HOUR messages this clock hour."""

    def __init__(self, app: App, cap: int):
        super().__init__(
            f"app {app.slug!r} has sent its {cap} message(s) this hour "
            "(PICLOUD_EMAIL_SEND_PER_HOUR); try again next hour"
        )


@dataclass(frozen=True)
class Sent:
    outbox_id: uuid.UUID  # the delivery's row: its retries and dead letter carry it
    message_id: str


def enqueue(
    app: App,
    principal: Principal | None,
    script: Script,
    message: dict[str, Any],
    *,
    depth: int,
    counted: bool = True,
) -> Sent:
    """Write the message's delivery row, counted against the hourly cap
    unless it follows up a message already counted, in the caller's
    transaction. Needs EmailSend; SendLimitReached."""
    require(principal, Capability.EmailSend(app.id))
    with transaction.atomic():
        if counted:
            cap = EmailConfig.current().send_per_hour
            if fetch_one(Q["count_send"], {"app_id": app.id, "cap": cap}) is None:
                raise SendLimitReached(app, cap)
        row = PgOutboxRepo().insert(
            NewOutboxRow(
                app_id=app.id,
                source_kind=SourceKind.EMAIL_SEND,
                script_id=script.id,
                run_as_principal=principal.pk if principal else None,
                payload={"email": message},
                depth=depth,
            )
        )
    return Sent(row.id, message["message_id"])


def _compose(app: App, **fields: Any) -> dict[str, Any]:
    return compose.compose(
        app.slug,
        domain=EmailConfig.current().domain,
        max_bytes=SandboxCeiling.current().max_payload_bytes,
        **fields,
    )


class EmailClient:
    """What a script gets as ``ctx.email``: send mail from the app's domain,
    reply to the message being handled, read its attachments."""

    def __init__(
        self,
        app: App,
        principal: Principal,
        script: Script,
        *,
        depth: int = 0,
        event: dict[str, Any] | None = None,
    ) -> None:
        self.app, self.principal, self.script, self.depth = app, principal, script, depth
        # The inbound email event being handled, if this run is one.
        self.event = event if isinstance(event, dict) and event.get("source") == "email" else None

    def send(
        self,
        to,
        subject: str,
        text: str | None = None,
        html: str | None = None,
        *,
        cc=None,
        bcc=None,
        reply_to=None,
        from_: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Sent:
        """Send a message (delivered by the dispatcher, with retries); `from_`
        defaults to noreply@<app>.<domain>."""
        message = _compose(
            self.app,
            to=to,
            subject=subject,
            text=text,
            html=html,
            cc=cc,
            bcc=bcc,
            reply_to=reply_to,
            from_=from_,
            headers=headers,
        )
        message["auto_submitted"] = "auto-generated"
        return enqueue(self.app, self.principal, self.script, message, depth=self.depth)

    def reply(
        self,
        text: str | None = None,
        html: str | None = None,
        *,
        subject: str | None = None,
        cc=None,
        from_: str | None = None,
    ) -> Sent:
        """Answer the message this run handles: to its first Reply-To address
        (else its From), from the address it was sent to, "Re: " its subject,
        threaded by In-Reply-To and References."""
        if self.event is None:
            raise PermissionDenied("ctx.email.reply answers an email event; this run is not one")
        fields = compose.reply_fields(self.event, subject)
        rcpt = (self.event.get("envelope") or {}).get("rcpt_to") or []
        message = _compose(
            self.app,
            to=fields["to"],
            subject=fields["subject"],
            text=text,
            html=html,
            cc=cc,
            from_=from_ if from_ is not None else (rcpt[0] if rcpt else None),
        )
        message.update({k: v for k, v in fields.items() if k in ("in_reply_to", "references")})
        message["auto_submitted"] = "auto-replied"
        return enqueue(self.app, self.principal, self.script, message, depth=self.depth)

    def attachment(self, index: int, *, email_id: str | None = None):
        """An attachment (its index in the event's list) of the message
        being handled, or of another of the app's messages. Needs EmailRead."""
        email_id = email_id or (self.event or {}).get("email_id")
        if email_id is None:
            raise inbound.EmailNotFound("no email: give email_id, or handle an email event")
        return inbound.get_attachment(self.app, email_id, index, principal=self.principal)


def deliver_row(row_payload: Any, ctx) -> dict[str, Any]:
    """Run an ``email_send`` row (ctx: the row's ExecutionContext): deliver
    its message within the time left; recipients the server refused while
    taking others get a follow-up row of their own (the same Message-ID,
    not counted again), which retries or dead-letters them alone."""
    message = row_payload.get("email") if isinstance(row_payload, dict) else None
    done = delivery.deliver(message, timeout=ctx.remaining())
    result: dict[str, Any] = {"sent": done.sent, "message_id": message["message_id"]}
    if done.refused:
        follow_up = {**message, "envelope_to": sorted(done.refused)}
        row = enqueue(ctx.app, ctx.principal, ctx.script, follow_up, depth=ctx.depth, counted=False)
        result["refused"] = done.refused
        result["follow_up"] = str(row.outbox_id)
    return result
