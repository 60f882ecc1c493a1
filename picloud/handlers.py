"""Handlers shipped with PiCloud: small building blocks for demos, tests and benchmarks."""

import asyncio

from picloud.domain.scripts import PermanentError, handler


@handler("picloud.noop")
def noop(event, ctx):
    return None


@handler("picloud.echo")
def echo(event, ctx):
    """Return the event: handy to see what a trigger delivers."""
    return event


@handler("picloud.fail")
def fail(event, ctx):
    """Always fail (retryably): exercises retries and dead letters."""
    raise RuntimeError(f"picloud.fail always fails (attempt {ctx.attempt})")


@handler("picloud.reject")
def reject(event, ctx):
    """Fail permanently: no retries."""
    raise PermanentError("picloud.reject refuses every event")


@handler("picloud.sleep")
async def sleep(event, ctx):
    """Sleep event["seconds"] (default 0.1), capped by the time left. An
    async handler: waiting costs no handler thread, like a script waiting on
    the network."""
    seconds = float(event.get("seconds", 0.1)) if isinstance(event, dict) else 0.1
    await asyncio.sleep(max(0.0, min(seconds, ctx.remaining())))
    return {"slept": seconds}


@handler("picloud.email_ack")
def email_ack(event, ctx):
    """Answer an email event with a short acknowledgement, unless the mail
    was sent by a robot (RFC 3834's Auto-Submitted): two auto-responders
    must never answer each other forever."""
    message = event.get("message") or {}
    if message.get("auto_submitted") not in (None, "no"):
        return {"replied": False, "why": f"Auto-Submitted: {message['auto_submitted']}"}
    subject = message.get("subject") or "(no subject)"
    attachments = len(message.get("attachments") or [])
    sent = ctx.email.reply(
        f"Thanks: we got your message {subject!r} with {attachments} attachment(s)."
    )
    return {"replied": True, "message_id": sent.message_id}
