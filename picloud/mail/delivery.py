"""Delivering a composed message (picloud.mail.compose) through Django's
email backend, and what its answer means for the row that holds it.

A 4xx answer or a lost connection is worth another attempt (the caller's
retry); a 5xx answer, or a message that cannot be built, is not
(PermanentError). Recipients the server refused while taking others are
returned, not dropped: Django's SMTP backend ignores that part of the
answer, so ``SmtpBackend`` keeps it.
"""

from __future__ import annotations

import smtplib
from dataclasses import dataclass, field
from typing import Any

from django.core.mail import EmailMultiAlternatives, get_connection
from django.core.mail.backends.smtp import EmailBackend

from picloud.domain.scripts import PermanentError
from picloud.mail.compose import MESSAGE_ID, check_headers, check_line

MAX_ANSWER_CHARS = 500  # of a server's answer quoted in an error


class SmtpBackend(EmailBackend):
    """Django's SMTP backend, keeping the recipients each send had refused
    while the server took the others (``refused``: address -> (code, text))."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refused: dict[str, tuple[int, bytes]] = {}

    def open(self) -> bool | None:
        opened = super().open()
        connection = self.connection
        if connection is not None and not getattr(connection, "picloud_keeps_refused", False):
            send = connection.sendmail

            def sendmail(*args: Any, **kwargs: Any) -> dict:
                refused = send(*args, **kwargs) or {}
                self.refused.update(refused)
                return refused

            connection.sendmail = sendmail
            connection.picloud_keeps_refused = True
        return opened


class MailServerBusy(Exception):
    """A 4xx answer, or every recipient refused for now: try again later."""


@dataclass(frozen=True)
class Delivered:
    sent: int
    # Recipients refused while others were taken: address -> "code text".
    refused: dict[str, str] = field(default_factory=dict)


def build(message: dict[str, Any], *, timeout: float) -> EmailMultiAlternatives:
    """The message as Django sends it; PermanentError if the row's message
    cannot be (a row written by hand, or before today's checks)."""
    if not isinstance(message, dict) or not message.get("to") or not message.get("from"):
        raise PermanentError("the row holds no message to send")
    try:
        headers = {"Message-ID": message["message_id"], **check_headers(message.get("headers"))}
        headers["Auto-Submitted"] = message.get("auto_submitted") or "auto-generated"
        if message.get("in_reply_to"):
            ids = [message["in_reply_to"], *(message.get("references") or [])]
            if not all(isinstance(i, str) and MESSAGE_ID.fullmatch(i) for i in ids):
                raise ValueError("a malformed Message-ID to thread by")
            headers["In-Reply-To"] = message["in_reply_to"]
            headers["References"] = " ".join(message.get("references") or [])
        envelope = message.get("envelope_to")
        if envelope:
            # A follow-up for recipients refused for now: the headers name
            # everyone, the envelope only them.
            headers["To"] = ", ".join(message["to"])
            if message.get("cc"):
                headers["Cc"] = ", ".join(message["cc"])
        for value in (message["subject"], message["from"], *headers.values()):
            check_line("message", value, 10_000)
        email = EmailMultiAlternatives(
            subject=message.get("subject") or "",
            body=message.get("text") or "",
            from_email=message["from"],
            to=None if envelope else message["to"],
            cc=None if envelope else message.get("cc") or None,
            bcc=envelope or message.get("bcc") or None,
            reply_to=message.get("reply_to") or None,
            headers=headers,
            connection=get_connection(fail_silently=False, timeout=max(1.0, timeout)),
        )
        if message.get("html") is not None:
            if message.get("text") is None:
                email.body, email.content_subtype = message["html"], "html"
            else:
                email.attach_alternative(message["html"], "text/html")
        email.message()  # builds every header now: a bad one fails here, not mid-send
    except PermanentError:
        raise
    except Exception as exc:
        raise PermanentError(f"the message cannot be built: {type(exc).__name__}: {exc}") from None
    return email


def deliver(message: dict[str, Any], *, timeout: float) -> Delivered:
    """Send `message`; Delivered with what the server took and refused.
    PermanentError for a 5xx answer (or every recipient refused for good);
    MailServerBusy (retry) for a 4xx one; other errors (no connection)
    propagate, to be retried."""
    email = build(message, timeout=timeout)
    try:
        sent = email.send(fail_silently=False)
    except smtplib.SMTPRecipientsRefused as refused:
        codes = [code for code, _ in refused.recipients.values()]
        text = _refusals(refused.recipients)
        if codes and all(500 <= code < 600 for code in codes):
            raise PermanentError(f"every recipient was refused: {text}") from None
        raise MailServerBusy(f"recipients refused for now: {text}") from None
    except smtplib.SMTPResponseException as answer:
        text = _answer(answer.smtp_code, answer.smtp_error)
        if 500 <= answer.smtp_code < 600:
            raise PermanentError(f"the mail server refused the message: {text}") from None
        raise MailServerBusy(f"the mail server refused the message for now: {text}") from None
    refused = getattr(email.connection, "refused", {})
    return Delivered(sent, {a: _answer(code, text) for a, (code, text) in refused.items()})


def _answer(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return f"{code} {text}"[:MAX_ANSWER_CHARS]


def _refusals(recipients: dict) -> str:
    shown = list(recipients.items())[:5]
    return "; ".join(f"{address}: {_answer(code, text)}"[:200] for address, (code, text) in shown)
