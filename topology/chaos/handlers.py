"""The chaos run's handlers: each execution appends one row per event it
handled to ``chaos_executions`` (committed before the handler returns), so
the ledger counts executions, not outcomes the dispatcher recorded."""

from __future__ import annotations

import os

from django.db import Error as DatabaseError
from django.db import connection

from picloud.domain.scripts import handler


def _record(ctx, uids: list[str]) -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO chaos_executions (uid, script, outbox_id, attempt, pid)"
                " SELECT unnest(%s::text[]), %s, %s, %s, %s",
                [uids, ctx.script.name, ctx.outbox_id, ctx.attempt, os.getpid()],
            )
    except DatabaseError:
        # The session died with the database (a restart, a terminated
        # backend): drop it so the next execution on this thread reconnects,
        # and fail this one, which the dispatcher retries.
        connection.close()
        raise


def uids_of(event: dict) -> list[str]:
    """The run's identifiers of the events one execution handles."""
    source = event.get("source")
    if "messages" in event:  # a queue batch
        return [m["body"]["uid"] for m in event["messages"]]
    if "dead_letter_id" in event:
        return [event["payload"]["key"]]
    if "scheduled_at" in event:  # a cron tick
        return [f"{event['trigger_id']}|{event['scheduled_at']}"]
    if source == "pubsub":
        return [event["message"]["uid"]]
    if source == "email":
        return [event["message"]["subject"]]
    if "collection" in event:  # a KV write
        return [event["key"]]
    return [event["uid"]]  # a synchronous invocation's body


@handler("chaos.record")
def record(event, ctx):
    _record(ctx, uids_of(event))
    return {"ok": True}


@handler("chaos.queue_batch")
def queue_batch(event, ctx):
    _record(ctx, uids_of(event))
    return {"failed": []}


@handler("chaos.fail")
def fail(event, ctx):
    """The designed failure: every attempt fails, so the event becomes a dead letter."""
    raise RuntimeError(f"chaos.fail: {event['key']} fails on purpose")
