"""Handlers that record every successful execution in the app's KV store.

One record per event, keyed by the event's own id (``<source>:<id>``): a
second execution of the same event bumps the record's version, so the drill
counts executions instead of only collecting ids. Each record says which
node ran it (DRILL_NODE: "old" or "new") and when.
"""

import os
import time

from picloud.domain.scripts import handler

RUNS = "runs"  # the collection of records; no trigger matches it


def _record(ctx, event_id: str, written_at) -> None:
    ctx.kv.put(
        RUNS,
        event_id,
        {
            "node": os.environ.get("DRILL_NODE", "?"),
            "pid": os.getpid(),
            "at": time.time(),
            "written_at": written_at,
            "attempt": ctx.attempt,
            "outbox_id": str(ctx.outbox_id),
        },
    )


@handler("drill.record")
def record(event, ctx):
    """A KV write or a publish: the event's id is in what the producer wrote."""
    if event.get("source") == "pubsub":
        body = event["message"]
        _record(ctx, f"pubsub:{body['id']}", body.get("written_at"))
    else:
        _record(ctx, f"kv:{event['key']}", (event.get("new") or {}).get("written_at"))
    return {"ok": True}


@handler("drill.flaky")
def flaky(event, ctx):
    """Fails its first attempt: the row is rescheduled by whichever node ran
    it, and its retry may run on a node of the other release."""
    if ctx.attempt == 1:
        raise RuntimeError("drill.flaky fails its first attempt")
    _record(ctx, f"flaky:{event['key']}", (event.get("new") or {}).get("written_at"))
    return {"ok": True}


@handler("drill.batch")
def batch(event, ctx):
    """A queue batch: one record per message."""
    for message in event["messages"]:
        body = message["body"]
        _record(ctx, f"queue:{body['id']}", body.get("written_at"))
    return {"failed": []}
