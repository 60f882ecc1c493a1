"""Handlers of the topology drills; the processes under test load them
because the drills install `topology` through PICLOUD_EXTRA_APPS."""

import os
import time
import uuid

from picloud.domain.scripts import handler

# Seconds each recorded execution works: slower than the drill's writer, so
# a backlog builds and the primary dies mid-drain.
WORK = 0.15


@handler("failover.record")
def record(event, ctx):
    """Record this execution of a KV event: one entry per execution (a new
    key each time), so a second run of an event is counted, not folded into
    the first one's entry."""
    time.sleep(WORK)
    run = f"{event['key']}:{ctx.outbox_id}:{ctx.attempt}:{uuid.uuid4().hex[:8]}"
    ctx.kv.put("runs", run, {"uid": event["key"], "at": time.time(), "pid": os.getpid()})
    return {"ok": True}
