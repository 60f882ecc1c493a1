"""Mail a script sends: checked and counted when the script sends it,
delivered later by the dispatcher through Django's email backend.

``ctx.email.send(...)`` writes an outbox row of source ``email_send`` in the
script's own transaction (so a send that rolls back is never delivered)
after counting it against PICLOUD_EMAIL_SEND_PER_HOUR. The dispatcher runs
``deliver`` for that row instead of a script, with the row's retries, its
backoff and its dead letter, like any row. The sender is always an address
of the app's own domain; every message carries a Message-ID fixed when it
was sent (a retry repeats it, so a receiver can drop the duplicate) and an
Auto-Submitted header (RFC 3834), which tells other robots not to answer it.
"""

from __future__ import annotations

import smtplib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from email.headerregistry import Address
from email.utils import getaddresses
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.mail import EmailMultiAlternatives, get_connection
from django.core.validators import validate_email
from django.db import transaction

from outbox.storage.kinds import SourceKind
from outbox.storage.pg_repository import PgOutboxRepo
from outbox.storage.repository import NewOutboxRow
from picloud.config import EmailConfig, SandboxCeiling
from picloud.db.sqlexec import fetch_one
from picloud.db.sqlfiles import load_queries
from picloud.db.storable import is_storable_text
from picloud.domain.authz import Capability, require
from picloud.domain.scripts import PermanentError
from picloud.mail import inbound
from picloud.mail.addresses import app_domain, is_app_address
from picloud.models import App, Principal, Script

Q = load_queries("picloud", "email.sql")

MAX_RECIPIENTS = 50  # to + cc + bcc of one message
MAX_SUBJECT_CHARS = 998  # RFC 5322's line limit
MAX_HEADERS = 20  # extra X- headers of one message
MAX_HEADER_CHARS = 998
ENVELOPE_BYTES = 8_192  # room a message's addresses and headers leave the bodies
DEFAULT_LOCAL_PART = "noreply"


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


def _addresses(field: str, value: object) -> list[str]:
    """A list of plain addresses from one address or a list of them."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Iterable) or isinstance(items, bytes | dict):
        raise ValidationError({field: "Give an address or a list of addresses."})
    found = []
    for item in items:
        if not isinstance(item, str) or not is_storable_text(item) or "\r" in item or "\n" in item:
            raise ValidationError({field: f"{str(item)[:100]!r} is not an email address."})
        try:
            validate_email(item)
        except ValidationError:
            raise ValidationError(
                {field: f"{item[:100]!r} is not an email address (give name@domain only)."}
            ) from None
        found.append(item)
    return found


def _line(field: str, value: object, limit: int) -> str:
    if not isinstance(value, str) or not is_storable_text(value):
        raise ValidationError({field: f"Give text of at most {limit} characters."})
    if "\r" in value or "\n" in value:
        raise ValidationError({field: "Must be one line: no CR or LF."})
    if len(value) > limit:
        raise ValidationError({field: f"Is {len(value)} characters; at most {limit} are allowed."})
    return value


def _sender(app: App, from_: object, config: EmailConfig) -> str:
    """The From: the app's own address, with an optional display name."""
    domain = app_domain(app.slug, config.domain)
    if from_ is None:
        return f"{DEFAULT_LOCAL_PART}@{domain}"
    text = _line("from_", from_, 320)
    parsed = getaddresses([text])
    address = parsed[0][1] if len(parsed) == 1 else ""
    if not is_app_address(address, app.slug, config.domain):
        raise ValidationError(
            {
                "from_": f"{text[:100]!r} is not an address of app {app.slug!r}: send from "
                f"<local part>@{domain}, optionally as 'Name <local part@{domain}>'."
            }
        )
    name = parsed[0][0]
    return str(Address(display_name=name, addr_spec=address)) if name else address


def _extra_headers(headers: object) -> dict[str, str]:
    if headers is None:
        return {}
    if not isinstance(headers, dict) or len(headers) > MAX_HEADERS:
        raise ValidationError({"headers": f"Give a dict of at most {MAX_HEADERS} X- headers."})
    checked = {}
    for name, value in headers.items():
        valid_name = isinstance(name, str) and name[:2].lower() == "x-" and name[2:].isascii()
        if not valid_name or not name[2:].replace("-", "").isalnum():
            raise ValidationError(
                {"headers": f"{str(name)[:60]!r}: only X- headers (letters, digits, '-')."}
            )
        checked[name] = _line("headers", value, MAX_HEADER_CHARS)
    return checked


def outgoing(
    app: App,
    *,
    to: object,
    subject: object,
    text: object = None,
    html: object = None,
    cc: object = None,
    bcc: object = None,
    reply_to: object = None,
    from_: object = None,
    headers: object = None,
    config: EmailConfig,
    ceiling: SandboxCeiling,
) -> dict[str, Any]:
    """A message, checked, as its outbox row holds it. ValidationError
    names the field and what is allowed."""
    recipients = {f: _addresses(f, v) for f, v in (("to", to), ("cc", cc), ("bcc", bcc))}
    count = sum(map(len, recipients.values()))
    if not recipients["to"] or count > MAX_RECIPIENTS:
        raise ValidationError(
            {"to": f"Give 1 to {MAX_RECIPIENTS} recipients in all (to, cc and bcc); got {count}."}
        )
    bodies = {}
    for field, body in (("text", text), ("html", html)):
        if body is not None and (not isinstance(body, str) or not is_storable_text(body)):
            raise ValidationError({field: "Give the body as text (no NUL character)."})
        bodies[field] = body
    if text is None and html is None:
        raise ValidationError({"text": "Give a text body, an HTML body, or both."})
    limit = ceiling.max_payload_bytes - ENVELOPE_BYTES
    size = sum(len(b.encode()) for b in bodies.values() if b)
    if size > limit:
        raise ValidationError(
            {
                "text": f"The bodies are {size} bytes; at most {limit} (under "
                "PICLOUD_SANDBOX_MAX_PAYLOAD_BYTES) are allowed."
            }
        )
    return {
        "from": _sender(app, from_, config),
        **recipients,
        "reply_to": _addresses("reply_to", reply_to),
        "subject": _line("subject", subject, MAX_SUBJECT_CHARS),
        **bodies,
        "headers": _extra_headers(headers),
        "message_id": f"<{uuid.uuid4()}@{app_domain(app.slug, config.domain)}>",
    }


def enqueue(
    app: App, principal: Principal | None, script: Script, message: dict[str, Any], *, depth: int
) -> Sent:
    """Count the message against the hourly cap and write its delivery row,
    both in the caller's transaction. Needs EmailSend; SendLimitReached."""
    require(principal, Capability.EmailSend(app.id))
    cap = EmailConfig.current().send_per_hour
    with transaction.atomic():
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
        message = outgoing(
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
            config=EmailConfig.current(),
            ceiling=SandboxCeiling.current(),
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
        """Answer the message this run handles: to its Reply-To (else its
        From), from the address it was sent to, "Re: " its subject, threaded
        by In-Reply-To and References."""
        if self.event is None:
            raise PermissionDenied("ctx.email.reply answers an email event; this run is not one")
        original = self.event.get("message") or {}
        to = [a["address"] for a in original.get("reply_to") or [] if a.get("address")]
        sender = original.get("from") or {}
        to = to or ([sender["address"]] if sender.get("address") else [])
        if not to:
            raise ValidationError({"to": "The message has no From or Reply-To to answer."})
        rcpt = (self.event.get("envelope") or {}).get("rcpt_to") or []
        if subject is None:
            subject = original.get("subject") or ""
            subject = subject if subject.lower().startswith("re:") else f"Re: {subject}"
            subject = " ".join(subject.split())[:MAX_SUBJECT_CHARS]
        message = outgoing(
            self.app,
            to=to,
            subject=subject,
            text=text,
            html=html,
            cc=cc,
            from_=from_ if from_ is not None else (rcpt[0] if rcpt else None),
            config=EmailConfig.current(),
            ceiling=SandboxCeiling.current(),
        )
        if original.get("message_id"):
            references = [*(original.get("references") or []), original["message_id"]]
            message["in_reply_to"] = original["message_id"]
            message["references"] = references[-20:]  # the thread's latest: headers stay short
        message["auto_submitted"] = "auto-replied"
        return enqueue(self.app, self.principal, self.script, message, depth=self.depth)

    def attachment(self, index: int, *, email_id: str | None = None):
        """An attachment (its index in the event's list) of the message
        being handled, or of another of the app's messages. Needs EmailRead."""
        email_id = email_id or (self.event or {}).get("email_id")
        if email_id is None:
            raise inbound.EmailNotFound("no email: give email_id, or handle an email event")
        return inbound.get_attachment(self.app, email_id, index, principal=self.principal)


def deliver(payload: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """Send an ``email_send`` row's message through Django's email backend.

    PermanentError (a dead letter now) for what retrying cannot fix: a row
    that holds no message, or a server that refused it for good (5xx);
    anything else raised (a 4xx, no connection) is retried."""
    message = payload.get("email") if isinstance(payload, dict) else None
    if not isinstance(message, dict) or not message.get("to"):
        raise PermanentError("the row holds no message to send")
    headers = {"Message-ID": message["message_id"], **(message.get("headers") or {})}
    headers["Auto-Submitted"] = message.get("auto_submitted") or "auto-generated"
    if message.get("in_reply_to"):
        headers["In-Reply-To"] = message["in_reply_to"]
        headers["References"] = " ".join(message.get("references") or [])
    email = EmailMultiAlternatives(
        subject=message.get("subject") or "",
        body=message.get("text") or "",
        from_email=message["from"],
        to=message["to"],
        cc=message.get("cc") or None,
        bcc=message.get("bcc") or None,
        reply_to=message.get("reply_to") or None,
        headers=headers,
        connection=get_connection(fail_silently=False, timeout=max(1.0, timeout)),
    )
    if message.get("html") is not None:
        if message.get("text") is None:
            email.body, email.content_subtype = message["html"], "html"
        else:
            email.attach_alternative(message["html"], "text/html")
    try:
        sent = email.send(fail_silently=False)
    except smtplib.SMTPRecipientsRefused as refused:
        codes = [code for code, _ in refused.recipients.values()]
        if codes and all(500 <= code < 600 for code in codes):
            raise PermanentError(f"every recipient was refused: {_refusals(refused)}") from None
        raise RecipientsRefusedForNow(_refusals(refused)) from None
    except smtplib.SMTPResponseException as answer:
        text = _answer(answer)
        if 500 <= answer.smtp_code < 600:
            raise PermanentError(f"the mail server refused the message: {text}") from None
        raise MailServerBusy(f"the mail server refused the message for now: {text}") from None
    return {"sent": sent, "message_id": message["message_id"], "to": len(message["to"])}


class MailServerBusy(Exception):
    """A 4xx answer: worth trying again later."""


class RecipientsRefusedForNow(Exception):
    def __init__(self, refusals: str):
        super().__init__(f"recipients refused for now: {refusals}")


def _answer(answer: smtplib.SMTPResponseException) -> str:
    message = answer.smtp_error
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return f"{answer.smtp_code} {message}"[:500]


def _refusals(refused: smtplib.SMTPRecipientsRefused) -> str:
    parts = []
    for address, (code, message) in list(refused.recipients.items())[:5]:
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
        parts.append(f"{address}: {code} {text}"[:200])
    return "; ".join(parts)
