"""The dispatcher's end of a synchronous invocation: reply, or record it as abandoned.

A ``reply_to`` row runs once. Its outcome becomes a ``Reply`` (the HTTP
status and JSON body the caller gets) and goes to the row's inbox. If the
caller has already given up (it got its 504), the inbox refuses the reply and
the execution is recorded in ``abandoned_executions`` for forensics, and the
``abandoned`` counter goes up. The inbox row settles which of the two
happens, whatever the timing (outbox/sql/0003_reply_inboxes.sql).
"""

from __future__ import annotations

import json
import logging

from deadletters.repository import AbandonedRepo, NewAbandonedExecution, cap_summary
from outbox.dispatch.metrics import Counters
from outbox.storage.repository import OutboxRow, Reply, ReplyInbox
from picloud.runtime.execution import Outcome

logger = logging.getLogger("picloud.dispatcher")


def reply_for(outcome: Outcome) -> Reply:
    """The caller's view of an outcome: the result with 200, or the error with
    the script's own status and a stable error code."""
    if outcome.ok:
        return Reply(200, outcome.result)
    if outcome.unauthorized:
        code = "forbidden"
    elif outcome.timed_out:
        code = "script_timeout"
    else:
        code = "script_failed"
    return Reply(outcome.status, {"error": code, "message": outcome.error})


class InboxReplySink:
    def __init__(self, inbox: ReplyInbox, abandoned: AbandonedRepo, counters: Counters) -> None:
        self.inbox, self.abandoned, self.counters = inbox, abandoned, counters

    def deliver(self, row: OutboxRow, outcome: Outcome) -> None:
        assert row.reply_to is not None, "only reply_to rows have a caller to answer"
        reply = reply_for(outcome)
        if self.inbox.deliver(row.reply_to, reply):
            return
        if not outcome.ok and outcome.timed_out:
            # The script ran out of time and the caller was told 504: what it
            # heard is what happened, so there is nothing to investigate.
            return
        if not outcome.ok and outcome.lost:
            # No execution finished: the row was claimed again because its
            # worker died, or because the acknowledgement of a reply the
            # caller already took was lost. Neither is an abandoned execution.
            return
        self.abandoned.insert(
            NewAbandonedExecution(
                app_id=row.app_id,
                outbox_id=row.id,
                script_id=row.script_id,
                inbox_id=row.reply_to,
                status_code=reply.status,
                result_summary=cap_summary(json.dumps(reply.body, default=str)),
            )
        )
        self.counters.inc("abandoned")
        logger.info(
            "abandoned execution: outbox row %s finished with %d after its caller left",
            row.id,
            reply.status,
        )
