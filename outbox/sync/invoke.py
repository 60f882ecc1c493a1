"""Synchronous invocation: run a script through the outbox and wait for its reply.

``invoke`` opens a reply inbox and inserts an outbox row naming it (one
transaction), then waits until the dispatcher delivers the outcome or the
wait runs out. Leaving, the waiter closes its inbox; the inbox row decides
whether the reply reached the caller or, arriving too late, becomes an
abandoned execution (outbox/sql/0003_reply_inboxes.sql). The row runs as
the calling principal and gets exactly one attempt.

Database work goes through a small fixed set of threads (picloud/db/dbthreads.py)
and wake-ups through one listening connection (outbox/sync/reply_hub.py), so a
process holds a bounded number of connections whatever the number of waiters.
The invocation commits on its own: it never joins a caller's transaction,
whose uncommitted row no dispatcher could see.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection, transaction

from outbox.storage.kinds import SourceKind
from outbox.storage.pg_repository import PgOutboxRepo, PgReplyInbox
from outbox.storage.repository import NewOutboxRow, OutboxRepo, Reply, ReplyInbox
from outbox.sync.reply_hub import ReplyHub
from picloud.config import PoolerConfig, SandboxCeiling, SyncConfig
from picloud.db.dbthreads import DbThreads
from picloud.db.pgconn import listen_connector
from picloud.db.storable import Unstorable, check_json
from picloud.domain.authz import Capability, require
from picloud.models import Principal, Script


@dataclass(frozen=True)
class InvocationResult:
    outbox_id: uuid.UUID
    reply: Reply
    timed_out: bool  # the wait ran out: reply is our 504, not the script's


class SyncInvoker:
    def __init__(
        self,
        *,
        outbox: OutboxRepo,
        inbox: ReplyInbox,
        hub: ReplyHub,
        run_db: Callable[..., Any] = lambda fn, *args: fn(*args),
        close: Callable[[], None] = lambda: None,
        atomic: Callable[[], AbstractContextManager] = nullcontext,
        max_wait_ms: int | None = None,
    ) -> None:
        self.outbox, self.inbox, self.hub = outbox, inbox, hub
        self.run_db, self.atomic, self._close = run_db, atomic, close
        if max_wait_ms is None:
            max_wait_ms = SyncConfig.current().wait_ms(SandboxCeiling.current())
        self.max_wait_ms = max_wait_ms

    def invoke(
        self,
        principal: Principal,
        script: Script,
        payload: Any,
        *,
        wait_ms: int | None = None,
        authorized: bool = False,
    ) -> InvocationResult:
        """Run `script` as `principal` with `payload`; wait up to `wait_ms`
        (at most, and by default, ``max_wait_ms``). PermissionDenied unless the
        principal may invoke scripts in the script's app (`authorized`: the
        caller has checked already, on a database thread)."""
        if not authorized:
            # The app is the stored script's, never what the caller's object
            # says: a Script built by hand must not pass another app's check.
            script = self.run_db(_stored_script, script)
            self.run_db(require, principal, Capability.ScriptInvoke(script.app_id))
        wait_ms = self.max_wait_ms if wait_ms is None else min(wait_ms, self.max_wait_ms)
        inbox_id = uuid.uuid4()
        woken = self.hub.register(inbox_id)
        try:
            row_id = self.run_db(self._enqueue, principal, script, payload, inbox_id)
            return InvocationResult(row_id, *self._wait(inbox_id, woken, wait_ms))
        finally:
            self.hub.unregister(inbox_id)

    def close(self) -> None:
        """Stop listening and close the database connections."""
        self.hub.stop()
        self._close()

    def _enqueue(self, principal, script, payload, inbox_id) -> uuid.UUID:
        row = NewOutboxRow(
            app_id=script.app_id,
            source_kind=SourceKind.INVOKE,
            script_id=script.pk,
            run_as_principal=principal.pk,
            payload=payload,
            reply_to=inbox_id,
        )
        with self.atomic():
            self.inbox.open(inbox_id, script.app_id)
            return self.outbox.insert(row).id

    def _wait(self, inbox_id, woken: threading.Event, wait_ms: int) -> tuple[Reply, bool]:
        deadline = time.monotonic() + wait_ms / 1000
        while (left := deadline - time.monotonic()) > 0 and woken.wait(left):
            woken.clear()
            reply = self.run_db(self.inbox.collect, inbox_id)
            if reply is not None:
                return reply, False
            # Woken without a reply (the listener reconnected): wait on.
        # Out of time. Leaving settles the race: a reply that made it first is
        # still ours; one that comes later is recorded as abandoned.
        reply = self.run_db(self.inbox.close, inbox_id)
        if reply is not None:
            return reply, False
        return timeout_reply(wait_ms), True


def _stored_script(script: Script) -> Script:
    stored = Script.objects.filter(pk=script.pk).only("id", "app_id", "name").first()
    if stored is None:
        raise ValidationError(f"No script with id {script.pk} exists (save it first).")
    return stored


def timeout_reply(wait_ms: int) -> Reply:
    return Reply(
        504,
        {
            "error": "timeout",
            "message": f"no result within {wait_ms} ms; if the script finishes later, "
            "its outcome is recorded as an abandoned execution",
        },
    )


_default: SyncInvoker | None = None
_default_lock = threading.Lock()


def default_invoker() -> SyncInvoker:
    """This process's invoker on PostgreSQL, started on first use."""
    global _default
    with _default_lock:
        if _default is None:
            hub = ReplyHub(listen_connector())
            hub.start()
            db = DbThreads(SyncConfig.current().db_connections, on_connect=_commit_without_flush)
            _default = SyncInvoker(
                outbox=PgOutboxRepo(),
                inbox=PgReplyInbox(),
                hub=hub,
                run_db=db.run,
                close=db.close,
                atomic=transaction.atomic,
            )
        return _default


def _commit_without_flush() -> None:
    """An invocation's writes need not wait for the WAL flush: if PostgreSQL
    crashes and loses the last few, those callers get an error or a 504 and
    no script ran for them; an inbox that comes back is swept by GC. Not
    through a transaction-mode pooler: the setting would stay with a server
    connection other clients use next (their commits must stay durable)."""
    if not PoolerConfig.current().session_state_kept:
        return

    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit TO off")


def close_default_invoker() -> None:
    """Close this process's invoker, if it was started (tests, shutdown)."""
    global _default
    with _default_lock:
        if _default is not None:
            _default.close()
            _default = None


def invoke(
    principal: Principal, script: Script, payload: Any, *, wait_ms: int | None = None
) -> InvocationResult:
    """The Python API: invoke `script` as `principal` and wait for its reply.

    ValidationError for a payload PostgreSQL cannot store (NaN, NUL, too
    deep...) or a wait that is not a positive integer of milliseconds;
    PermissionDenied when the principal may not invoke scripts in that app."""
    try:
        check_json(payload)
    except Unstorable as exc:
        raise ValidationError(f"The payload cannot be stored: {exc}.") from None
    if wait_ms is not None and (type(wait_ms) is not int or wait_ms < 1):
        raise ValidationError(
            f"wait_ms must be a positive integer (milliseconds) or None, got {wait_ms!r}."
        )
    return default_invoker().invoke(principal, script, payload, wait_ms=wait_ms)
