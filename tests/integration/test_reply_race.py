"""The reply race on PostgreSQL, forced both ways with real connections.

One party's statement runs in a transaction held open on its own connection;
the other party then runs in a thread and must block on the inbox row; only
then does the first commit. Whatever the order, exactly one of "the caller
got the reply" and "an abandoned execution was recorded" happens.
"""

import threading
import uuid

import pytest
from django.db import connection
from django.utils import timezone

from deadletters.models import AbandonedExecution
from deadletters.pg_repository import PgAbandonedRepo
from outbox.dispatch.metrics import Counters
from outbox.dispatch.replies import InboxReplySink
from outbox.storage.pg_repository import PgReplyInbox, Q
from outbox.storage.repository import OutboxRow, Reply
from picloud.db.pgconn import connect
from picloud.db.sqlexec import to_json
from picloud.runtime.execution import Success
from tests.factories import AppFactory, ScriptFactory
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def opened():
    script = ScriptFactory(app=AppFactory())
    inbox_id = uuid.uuid4()
    PgReplyInbox().open(inbox_id, script.app_id)
    row = OutboxRow(
        id=uuid.uuid4(),
        app_id=script.app_id,
        source_kind="invoke",
        trigger_id=None,
        script_id=script.id,
        run_as_principal=None,
        payload={},
        depth=0,
        attempts=1,
        due_at=timezone.now(),
        reply_to=inbox_id,
        last_error=None,
        errors=(),
        created_at=timezone.now(),
    )
    yield inbox_id, row
    # reply_inboxes has no model, so the flush after a transactional test
    # leaves it alone: a test that does not close its inbox must not leave
    # it to the next (the contract suite's sweep counts every old inbox).
    PgReplyInbox().close(inbox_id)


def in_thread(fn):
    box = {}

    def run():
        try:
            box["value"] = fn()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def blocked_on_a_row_lock(conn) -> bool:
    return conn.execute(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    ).fetchone()[0]


def test_dispatcher_delivers_first_then_the_leaving_waiter_gets_the_reply(opened):
    inbox_id, _row = opened
    with connect() as dispatcher, connect() as observer:
        with dispatcher.transaction():
            delivered = dispatcher.execute(
                Q["inbox_deliver"], {"id": inbox_id, "status": 200, "body": to_json({"n": 1})}
            ).fetchall()
            assert len(delivered) == 1
            # The waiter's deadline passes now: it leaves, and must wait for us.
            waiter, box = in_thread(lambda: PgReplyInbox().close(inbox_id))
            wait_for(
                lambda: blocked_on_a_row_lock(observer), timeout=10, what="the waiter to block"
            )
            assert waiter.is_alive()
        waiter.join(10)
    assert box["value"] == Reply(200, {"n": 1}), "the reply that came first is the caller's"
    assert AbandonedExecution.objects.count() == 0


def test_waiter_leaves_first_then_the_delivery_becomes_abandoned(opened):
    inbox_id, row = opened
    counters = Counters()
    sink = InboxReplySink(PgReplyInbox(), PgAbandonedRepo(), counters)
    with connect() as waiter, connect() as observer:
        with waiter.transaction():
            gone = waiter.execute(Q["inbox_close"], {"id": inbox_id}).fetchall()
            assert gone == [(None, None)], "nothing was delivered yet"
            dispatcher, _box = in_thread(lambda: sink.deliver(row, Success({"n": 2})))
            wait_for(
                lambda: blocked_on_a_row_lock(observer), timeout=10, what="the dispatcher to block"
            )
            assert dispatcher.is_alive()
        dispatcher.join(10)
    (record,) = AbandonedExecution.objects.all()
    assert (record.outbox_id, record.inbox_id, record.status_code) == (row.id, inbox_id, 200)
    assert record.result_summary == '{"n": 2}'
    assert counters.take()["abandoned"] == 1


def test_the_delivery_notifies_the_inbox_id(opened):
    inbox_id, _row = opened
    with connect() as listener:
        listener.execute("LISTEN picloud_reply")
        assert PgReplyInbox().deliver(inbox_id, Reply(200, None))
        notes = list(listener.notifies(timeout=5, stop_after=1))
    assert [n.payload for n in notes] == [str(inbox_id)]
