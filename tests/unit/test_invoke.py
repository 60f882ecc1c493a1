"""Synchronous invocation on the in-memory repositories: waiting, replies,
abandoned executions. The race itself on PostgreSQL: tests/integration/test_reply_race.py."""

import threading
import uuid
from types import SimpleNamespace

import pytest

from deadletters.memory_repository import MemoryAbandonedRepo
from outbox.dispatch.metrics import Counters
from outbox.dispatch.replies import InboxReplySink, reply_for
from outbox.storage.memory_repository import MemoryOutboxRepo, MemoryReplyInbox
from outbox.storage.repository import Reply
from outbox.sync.invoke import SyncInvoker
from outbox.sync.reply_hub import ReplyHub
from picloud.runtime.execution import Failure, Success
from tests.helpers import wait_for

APP = uuid.uuid4()
SCRIPT = SimpleNamespace(pk=uuid.uuid4(), app_id=APP)
PRINCIPAL = SimpleNamespace(pk=uuid.uuid4())


@pytest.fixture
def world():
    hub = ReplyHub(connect=None)  # not started: deliveries call it directly
    inbox = MemoryReplyInbox(on_deliver=lambda inbox_id: hub._notified(str(inbox_id)))
    outbox, abandoned, counters = MemoryOutboxRepo(), MemoryAbandonedRepo(), Counters()
    invoker = SyncInvoker(outbox=outbox, inbox=inbox, hub=hub, max_wait_ms=5_000)
    sink = InboxReplySink(inbox, abandoned, counters)
    return SimpleNamespace(**locals())


def invoke_in_thread(world, **kwargs):
    box = {}

    def run():
        box["result"] = world.invoker.invoke(PRINCIPAL, SCRIPT, {"x": 1}, authorized=True, **kwargs)

    thread = threading.Thread(target=run)
    thread.start()
    row = wait_for(lambda: next(iter(world.outbox.rows.values()), None), timeout=5, what="the row")
    return thread, box, row


def test_the_reply_reaches_the_waiter(world):
    thread, box, row = invoke_in_thread(world)
    assert (row.source_kind, row.reply_to is not None, row.payload) == ("invoke", True, {"x": 1})
    assert row.run_as_principal == PRINCIPAL.pk
    world.sink.deliver(row, Success({"ok": True}))
    thread.join(5)
    result = box["result"]
    assert (result.reply, result.timed_out, result.outbox_id) == (
        Reply(200, {"ok": True}),
        False,
        row.id,
    )
    assert world.abandoned.rows == {} and world.counters.take()["abandoned"] == 0
    assert world.inbox.inboxes == {}, "the waiter removed its inbox"
    assert world.hub.waiting() == 0


def test_a_late_reply_becomes_one_abandoned_execution(world):
    thread, box, row = invoke_in_thread(world, wait_ms=30)
    thread.join(5)
    assert box["result"].timed_out and box["result"].reply.status == 504
    assert box["result"].reply.body["error"] == "timeout"
    world.sink.deliver(row, Success({"late": True}))
    (record,) = world.abandoned.rows.values()
    assert (record.outbox_id, record.inbox_id, record.status_code) == (row.id, row.reply_to, 200)
    assert record.script_id == SCRIPT.pk and record.app_id == APP
    assert '"late": true' in record.result_summary
    assert world.counters.take()["abandoned"] == 1


def test_a_script_timeout_after_the_callers_504_is_not_abandoned(world):
    # The caller heard 504 and the script did time out: nothing to investigate.
    thread, _box, row = invoke_in_thread(world, wait_ms=30)
    thread.join(5)
    world.sink.deliver(row, Failure("timed out", retryable=True, status=504, timed_out=True))
    assert world.abandoned.rows == {} and world.counters.take()["abandoned"] == 0


def test_a_lost_worker_after_the_caller_got_its_reply_is_not_abandoned(world):
    """The reply reached the caller, then the row's acknowledgement was lost
    and the row was claimed again: the dispatcher's "worker lost" outcome
    finds no inbox, and must not be recorded as an abandoned execution."""
    thread, box, row = invoke_in_thread(world)
    world.sink.deliver(row, Success({"ok": True}))
    thread.join(5)
    assert box["result"].reply.status == 200
    lost = Failure("the worker running this invocation was lost", False, 504, lost=True)
    world.sink.deliver(row, lost)
    assert world.abandoned.rows == {} and world.counters.take()["abandoned"] == 0


def test_a_wake_up_without_a_reply_keeps_waiting(world):
    thread, box, row = invoke_in_thread(world)
    world.hub._wake_all()  # what a listener reconnect does
    assert thread.is_alive(), "a spurious wake-up must not end the wait"
    world.sink.deliver(row, Success(1))
    thread.join(5)
    assert box["result"].reply == Reply(200, 1)


def test_the_wait_is_capped(world):
    world.invoker.max_wait_ms = 20
    thread, box, _row = invoke_in_thread(world, wait_ms=60_000)
    thread.join(5)
    assert not thread.is_alive() and box["result"].timed_out
    assert "20 ms" in box["result"].reply.body["message"]


@pytest.mark.parametrize(
    ("outcome", "status", "code"),
    [
        (Failure("boom", retryable=True, status=500), 500, "script_failed"),
        (Failure("no", retryable=False, status=422), 422, "script_failed"),
        (Failure("gone", retryable=False, status=403, unauthorized=True), 403, "forbidden"),
        (Failure("slow", retryable=True, status=504, timed_out=True), 504, "script_timeout"),
    ],
)
def test_failures_become_the_scripts_status_and_a_stable_code(outcome, status, code):
    assert reply_for(outcome) == Reply(status, {"error": code, "message": outcome.error})
