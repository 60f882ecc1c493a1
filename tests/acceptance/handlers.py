"""Handlers for the acceptance tests; the qcluster under test imports them
(tests.acceptance is installed through PICLOUD_EXTRA_APPS)."""

import os
import time

from picloud.domain.scripts import handler


def _record(event, ctx, **extra):
    ctx.kv.put(
        "runs",
        f"{ctx.outbox_id}:{ctx.attempt}",
        {"pid": os.getpid(), "at": time.time(), "attempt": ctx.attempt, "event": event, **extra},
    )


@handler("acc.record")
def record(event, ctx):
    _record(event, ctx)
    return {"ok": True}


@handler("acc.fail")
def fail(event, ctx):
    _record(event, ctx)
    raise RuntimeError(f"acc.fail attempt {ctx.attempt}")


@handler("acc.slow_first_attempt")
def slow_first_attempt(event, ctx):
    """Sleeps on its first attempt (long enough to be killed), returns on later ones."""
    _record(event, ctx)
    if ctx.attempt == 1:
        time.sleep(float(event.get("seconds", 30)))
    return {"attempt": ctx.attempt}


@handler("acc.dead_letter_handler")
def dead_letter_handler(event, ctx):
    _record(event, ctx)
    if (event["payload"].get("new") or {}).get("handler_should_fail"):
        raise RuntimeError("dead-letter handler fails on purpose")
    return {"handled": event["dead_letter_id"]}


@handler("acc.cron_tick")
def cron_tick(event, ctx):
    """One record per execution of a tick: its key names the tick and the
    attempt; a second execution of the same attempt bumps the version."""
    ctx.kv.put(
        "ticks",
        f"{event['trigger_id']}|{event['scheduled_at']}|{ctx.attempt}",
        {"pid": os.getpid(), "fired_at": event["fired_at"]},
    )
    return {"ok": True}


@handler("acc.queue_batch")
def queue_batch(event, ctx):
    """Consume a queue batch: take a little time (so batches overlap), then
    record which messages it held, in which process, from when to when. A
    slow batch says so first (committed), so a test can kill it mid-run."""
    started = time.time()
    seconds = max(float(m["body"].get("seconds", 0.005)) for m in event["messages"])
    if seconds >= 0.5:
        ctx.kv.put("slow", f"{ctx.outbox_id}:{ctx.attempt}", {"pid": os.getpid()})
    time.sleep(seconds)
    ctx.kv.put(
        "batches",
        f"{ctx.outbox_id}:{ctx.attempt}",
        {
            "pid": os.getpid(),
            "ids": [m["id"] for m in event["messages"]],
            "started": started,
            "ended": time.time(),
        },
    )
    return {"failed": []}


@handler("acc.fail_until_fixed")
def fail_until_fixed(event, ctx):
    """Fails until the app's KV entry config/fixed exists: an operator's fix,
    after which a replay succeeds."""
    if ctx.kv.get("config", "fixed") is None:
        raise RuntimeError("acc.fail_until_fixed: config/fixed is not set yet")
    _record(event, ctx)
    return {"fixed": True}
