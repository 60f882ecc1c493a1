"""Queues on real PostgreSQL: pgmq's semantics for outside consumers, and
queue triggers' batches (fill, partial failure, max_receives, concurrency)."""

import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, connections, transaction
from django.utils import timezone

from deadletters.models import DeadLetter
from deadletters.pg_repository import PgAbandonedRepo, PgDeadLetterRepo
from deadletters.resolve import postgres_resolver
from outbox.dispatch.dispatcher import Dispatcher
from outbox.dispatch.metrics import Counters
from outbox.dispatch.replies import InboxReplySink
from outbox.models import OutboxEntry
from outbox.storage.pg_delivery_log import PgDeliveryLog
from outbox.storage.pg_repository import PgOutboxRepo, PgReplyInbox
from outbox.storage.repository import NewOutboxRow
from picloud.config import RetryPolicy, SandboxCeiling, TriggerConfig
from picloud.db.pgconn import connect
from picloud.db.sqlfiles import load_queries
from picloud.domain.authz import Role
from picloud.domain.scripts import PermanentError, handler
from picloud.messaging import queues
from picloud.messaging.names import message_limit
from picloud.models import QueueMessage
from tests.factories import AppFactory, MembershipFactory, ScriptFactory
from tests.helpers import wait_for
from triggers import queue_batches
from triggers.models import Trigger
from triggers.pg_repository import PgTriggerRepo
from triggers.queue_batches import PgBatchStore
from triggers.repository import NewTrigger, QueueSpec

TRIGGER_Q = load_queries("triggers")


@pytest.fixture
def setup(transactional_db):
    # The delivery log has no model, so the flush between tests leaves it.
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE delivery_log")
    app = AppFactory()
    admin = MembershipFactory(app=app, role=Role.AppAdmin.value).principal
    queue = queues.create_queue(app, "work", principal=admin)
    return app, admin, queue


def _db_now():
    with connection.cursor() as c:
        c.execute("SELECT NOW()")
        return c.fetchone()[0]


class TestPullConsumers:
    def test_a_received_message_is_invisible_until_its_timeout_then_visible_again(self, setup):
        app, admin, _ = setup
        [sent] = [queues.send(app, "work", {"n": 1}, principal=admin)]
        [got] = queues.receive(app, "work", principal=admin, visibility_timeout=1)
        assert (got.id, got.body, got.receive_count) == (sent, {"n": 1}, 1)
        assert queues.receive(app, "work", principal=admin) == []
        again = wait_for(
            lambda: queues.receive(app, "work", principal=admin, visibility_timeout=30),
            timeout=10,
            what="the message to become visible again",
        )
        assert [(m.id, m.receive_count) for m in again] == [(sent, 2)]
        assert again[0].visible_at >= got.visible_at + timedelta(seconds=29)

    def test_delayed_messages_are_not_received_early(self, setup):
        app, admin, _ = setup
        before = _db_now()
        queues.send_batch(app, "work", ["a", "b"], principal=admin, delay=1.5)
        assert queues.receive(app, "work", principal=admin, count=10) == []
        got = wait_for(
            lambda: queues.receive(app, "work", principal=admin, count=10),
            timeout=10,
            what="the delayed messages",
        )
        assert sorted(m.body for m in got) == ["a", "b"]
        assert _db_now() >= before + timedelta(seconds=1.5)

    def test_ack_deletes_and_nack_gives_back(self, setup):
        app, admin, _ = setup
        ids = queues.send_batch(app, "work", [1, 2, 3], principal=admin)
        got = queues.receive(app, "work", principal=admin, count=3, visibility_timeout=60)
        assert [m.id for m in got] == ids
        assert queues.ack(app, "work", [ids[0], 999_999_999], principal=admin) == [ids[0]]
        assert queues.nack(app, "work", [ids[1]], principal=admin) == [ids[1]]
        [back] = queues.receive(app, "work", principal=admin, count=3)
        assert (back.id, back.receive_count) == (ids[1], 2)
        stats = queues.stats(app, "work", principal=admin)
        assert (stats.depth, stats.visible, stats.in_flight) == (2, 0, 2)

    def test_two_consumers_never_receive_the_same_visible_message(self, setup):
        app, admin, _ = setup
        sent = queues.send_batch(app, "work", list(range(400)), principal=admin)
        got: dict[str, list[int]] = {"a": [], "b": []}
        start = threading.Barrier(2)

        def consume(name):
            try:
                start.wait()
                while batch := queues.receive(
                    app, "work", principal=admin, count=7, visibility_timeout=300
                ):
                    got[name] += [m.id for m in batch]
            finally:
                connections.close_all()

        threads = [threading.Thread(target=consume, args=(n,)) for n in got]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not set(got["a"]) & set(got["b"])
        assert sorted(got["a"] + got["b"]) == sent
        assert got["a"] and got["b"], "both consumers took part"

    def test_inputs_are_checked_and_capabilities_required(self, setup):
        app, admin, _ = setup
        with pytest.raises(queues.QueueNotFound, match="no queue 'nope'"):
            queues.send(app, "nope", 1, principal=admin)
        for impossible in ("a\x00", "a\ud800", "x" * 300):
            with pytest.raises(queues.QueueNotFound):
                queues.receive(app, impossible, principal=admin)
            assert queues.delete_queue(app, impossible, principal=admin) is False
        with pytest.raises(ValidationError, match="visibility_timeout"):
            queues.receive(app, "work", principal=admin, visibility_timeout=-1)
        with pytest.raises(ValidationError, match="count"):
            queues.receive(app, "work", principal=admin, count=0)
        with pytest.raises(ValidationError, match="message 1: The message cannot be stored"):
            queues.send_batch(app, "work", [1, "\x00"], principal=admin)
        with pytest.raises(ValidationError, match="positive integer"):
            queues.ack(app, "work", ["1"], principal=admin)
        viewer = MembershipFactory(app=app, role=Role.Viewer.value).principal
        developer = MembershipFactory(app=app, role=Role.Developer.value).principal
        with pytest.raises(PermissionDenied, match="QueueSend"):
            queues.send(app, "work", 1, principal=viewer)
        with pytest.raises(PermissionDenied, match="QueueConsume"):
            queues.receive(app, "work", principal=viewer)
        with pytest.raises(PermissionDenied, match="AppManageMessaging"):
            queues.purge(app, "work", principal=developer)
        assert queues.stats(app, "work", principal=viewer).depth == 0
        outsider = MembershipFactory(role=Role.AppAdmin.value).principal
        with pytest.raises(PermissionDenied):
            queues.send(app, "work", 1, principal=outsider)
        assert QueueMessage.objects.count() == 0

    def test_retention_sweeps_old_unconsumed_messages(self, setup):
        app, admin, _ = setup
        old, new = queues.send_batch(app, "work", ["old", "new"], principal=admin)
        QueueMessage.objects.filter(pk=old).update(sent_at=timezone.now() - timedelta(days=5))
        assert queues.gc(retention_days=4) == 1
        assert list(QueueMessage.objects.values_list("id", flat=True)) == [new]

    def test_purge_deletes_every_message(self, setup):
        app, admin, _ = setup
        queues.send_batch(app, "work", list(range(5)), principal=admin)
        assert queues.purge(app, "work", principal=admin) == 5
        assert queues.stats(app, "work", principal=admin).depth == 0


@handler("tests.delete_own_trigger_then_fail")
def _delete_own_trigger(event, ctx):
    # What an admin deleting the trigger while this batch runs does.
    PgTriggerRepo().delete(uuid.UUID(event["trigger_id"]))
    raise PermanentError("fails after its trigger is gone")


@handler("tests.forward_deeper")
def _forward(event, ctx):
    ctx.queues.send_batch("next", [m["body"] for m in event["messages"]])


# What the handlers below report, set by each test.
REPORT: dict = {"failed": [], "raise": False, "seen": []}


@handler("tests.queue_consumer")
def _consume(event, ctx):
    REPORT["seen"].append([m["id"] for m in event["messages"]])
    if REPORT["raise"]:
        raise RuntimeError("the consumer failed")
    return {"failed": REPORT["failed"]}


@pytest.fixture
def consumer(setup, override_config):
    app, admin, queue = setup
    REPORT.update(failed=[], seen=[])
    REPORT["raise"] = False
    # Backoff of a millisecond: retried messages come back at once.
    override_config(TriggerConfig(retry=RetryPolicy(base_delay_ms=1, max_delay_ms=1)))
    script = ScriptFactory(app=app, handler="tests.queue_consumer")

    def make(handler_name=None, **spec):
        runs = ScriptFactory(app=app, handler=handler_name) if handler_name else script
        return PgTriggerRepo().create(
            NewTrigger(
                app_id=app.id,
                kind="queue",
                script_id=runs.id,
                name="consumer",
                registered_by_principal=admin.id,
                queue=QueueSpec(queue.id, **spec),
            )
        )

    return make


def _dispatcher():
    return Dispatcher(
        outbox=PgOutboxRepo(),
        triggers=PgTriggerRepo(),
        dead_letters=PgDeadLetterRepo(),
        replies=InboxReplySink(PgReplyInbox(), PgAbandonedRepo(), Counters()),
        atomic=transaction.atomic,
        batches=PgBatchStore(),
        delivery_log=PgDeliveryLog(),
    )


def _logged() -> list[tuple[str, str]]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT outcome, disposition FROM delivery_log WHERE source_kind = 'queue'")
        return cursor.fetchall()


def _run_batches(dispatcher):
    """Fill and run until the queue trigger has nothing left to run now."""
    while queue_batches.fill().batches:
        while dispatcher.run_once(limit=100).claimed:
            pass
    dispatcher.flush_acks()


class TestQueueTriggers:
    def test_a_batch_of_100_with_3_reported_failures_redelivers_exactly_those_3(
        self, setup, consumer
    ):
        app, admin, _ = setup
        consumer(batch_size=100)
        ids = queues.send_batch(app, "work", list(range(100)), principal=admin)
        failed = [ids[5], ids[50], ids[99]]
        REPORT["failed"] = [failed[0], str(failed[1]), failed[2]]
        assert queue_batches.fill().batches == 1
        row = OutboxEntry.objects.get()
        assert row.source_kind == "queue" and len(row.payload["messages"]) == 100
        assert _dispatcher().run_once(limit=10).executed == 1
        assert _logged() == [("error", "retry")], "a batch with failed messages is no success"
        assert sorted(QueueMessage.objects.values_list("id", flat=True)) == sorted(failed)
        assert not OutboxEntry.objects.exists(), "the batch's row went with its settle"
        REPORT["failed"] = []
        time.sleep(0.01)  # the 1 ms backoff
        _run_batches(_dispatcher())
        assert REPORT["seen"] == [ids, sorted(failed)]
        assert not QueueMessage.objects.exists()

    def test_max_receives_makes_one_dead_letter_per_message(self, setup, consumer):
        app, admin, queue = setup
        trigger = consumer(batch_size=3, max_receives=2)
        ids = queues.send_batch(app, "work", ["a", "b", "c", "d"], principal=admin)
        REPORT["raise"] = True
        dispatcher = _dispatcher()
        wait_for(
            lambda: _run_batches(dispatcher) or not QueueMessage.objects.exists(),
            timeout=20,
            what="every message to be received twice",
        )
        letters = DeadLetter.objects.order_by("payload__message__id")
        assert [d.payload["message"]["id"] for d in letters] == ids
        for letter in letters:
            assert letter.source_kind == "queue" and letter.trigger_id == trigger.id
            assert letter.attempts == 2 and letter.payload["queue_id"] == str(queue.id)
            assert "RuntimeError: the consumer failed (receive 2 of max_receives=2)" in (
                letter.last_error
            )
        assert sum(len(b) for b in REPORT["seen"]) == 8, "each message delivered twice"
        # Replay puts the message back on its queue, once.
        postgres_resolver().replay(letters[0].pk, by=admin.pk)
        [back] = QueueMessage.objects.all()
        assert (back.body, back.receive_count) == ("a", 0)

    def test_an_unrecoverable_failure_dead_letters_at_once(self, setup, consumer):
        app, admin, _ = setup
        consumer(max_receives=5)
        queues.send_batch(app, "work", [1, 2], principal=admin)
        REPORT["failed"] = "not a list"
        _run_batches(_dispatcher())
        assert DeadLetter.objects.count() == 2
        assert "malformed report" in DeadLetter.objects.first().last_error
        assert not QueueMessage.objects.exists()
        assert _logged() == [("error", "dead_letter")], "logged as what became of its messages"

    def test_max_concurrency_bounds_the_batches_in_the_outbox(self, setup, consumer):
        app, admin, _ = setup
        consumer(batch_size=1, max_concurrency=2)
        queues.send_batch(app, "work", list(range(5)), principal=admin)
        assert queue_batches.fill().batches == 2
        assert queue_batches.fill().batches == 0, "no room until a batch settles"
        assert _dispatcher().run_once(limit=1).executed == 1
        assert queue_batches.fill().batches == 1

    def test_a_partial_batch_waits_for_max_batch_wait(self, setup, consumer):
        app, admin, _ = setup
        consumer(batch_size=10, max_batch_wait_ms=60_000)
        queues.send_batch(app, "work", [1, 2, 3], principal=admin)
        report = queue_batches.fill()
        assert report.batches == 0
        assert report.next_at - _db_now() > timedelta(seconds=55)
        queues.send_batch(app, "work", list(range(7)), principal=admin)
        assert queue_batches.fill().batches == 1, "a full batch goes at once"

    def test_batches_stay_under_the_payload_cap(self, setup, consumer):
        app, admin, _ = setup
        consumer(batch_size=10)
        queues.send_batch(app, "work", ["x" * 1000] * 6, principal=admin)
        assert queue_batches.fill(max_bytes=2500).batches == 3
        sizes = [len(r.payload["messages"]) for r in OutboxEntry.objects.all()]
        assert sorted(sizes) == [2, 2, 2]

    def test_messages_of_a_deleted_trigger_become_visible_again(self, setup, consumer):
        app, admin, _ = setup
        trigger = consumer()
        queues.send(app, "work", 1, principal=admin)
        queue_batches.fill()
        assert queues.receive(app, "work", principal=admin) == []
        PgTriggerRepo().delete(trigger.id)
        assert queue_batches.release_orphans() == 1
        assert len(queues.receive(app, "work", principal=admin)) == 1

    def test_a_queue_a_trigger_consumes_cannot_be_deleted(self, setup, consumer):
        app, admin, _ = setup
        consumer()
        with pytest.raises(queues.QueueInUse, match="has a queue trigger consuming it"):
            queues.delete_queue(app, "work", principal=admin)

    def test_the_refusal_comes_at_once_inside_a_transaction(self, setup, consumer):
        app, admin, _ = setup
        consumer()
        with transaction.atomic():
            with pytest.raises(queues.QueueInUse):
                queues.delete_queue(app, "work", principal=admin)
            assert queues.list_queues(app, principal=admin)


def test_the_sweep_command_deletes_messages_past_retention(setup):
    from io import StringIO

    from django.core.management import call_command

    app, admin, _ = setup
    old, _new = queues.send_batch(app, "work", ["old", "new"], principal=admin)
    QueueMessage.objects.filter(pk=old).update(sent_at=timezone.now() - timedelta(days=5))
    out = StringIO()
    call_command("gc_queue_messages", "--dry-run", stdout=out)
    assert "(1 now)" in out.getvalue() and QueueMessage.objects.count() == 2
    call_command("gc_queue_messages", stdout=out)
    assert "Deleted 1 queue message(s) sent more than 4 day(s) ago." in out.getvalue()
    call_command("gc_queue_messages", "--older-than", "1", stdout=out)
    assert QueueMessage.objects.count() == 1


class TestQueueTriggerEdges:
    def test_a_batch_whose_trigger_was_deleted_while_it_ran_releases_its_messages(
        self, setup, consumer
    ):
        app, admin, _ = setup
        consumer(handler_name="tests.delete_own_trigger_then_fail")
        [sent] = queues.send_batch(app, "work", ["m"], principal=admin)
        assert queue_batches.fill().batches == 1
        dispatcher = _dispatcher()
        dispatcher.run_once(limit=10)  # settles without raising: nothing to dead-letter
        assert not DeadLetter.objects.exists()
        assert list(QueueMessage.objects.values_list("id", "batch_id")) == [(sent, None)]
        # The process goes on claiming for everyone.
        other = ScriptFactory(handler="picloud.noop")
        member = MembershipFactory(app=other.app, role=Role.Developer.value).principal
        PgOutboxRepo().insert(NewOutboxRow(other.app_id, "kv", other.id, member.id, {}))
        assert dispatcher.run_once(limit=10).executed == 1

    def test_a_disabled_consumer_script_leaves_the_messages_queued(self, setup, consumer):
        app, admin, _ = setup
        trigger = consumer()
        queues.send_batch(app, "work", [1, 2, 3], principal=admin)
        Trigger.objects.get(pk=trigger.id).script.__class__.objects.filter(
            pk=trigger.script_id
        ).update(enabled=False)
        assert queue_batches.fill().batches == 0
        assert queues.stats(app, "work", principal=admin).visible == 3

    def test_a_batch_holds_messages_of_one_depth(self, setup, consumer, override_config):
        app, admin, _ = setup
        override_config(TriggerConfig(max_trigger_depth=2))
        queues.create_queue(app, "next", principal=admin)
        consumer(handler_name="tests.forward_deeper", batch_size=10, max_receives=1)
        queues.send(app, "work", "deep", principal=admin, depth=2)
        queues.send(app, "work", "fresh", principal=admin, depth=0)
        _run_batches(_dispatcher())
        # The deep one could not be forwarded (past the limit); the fresh one was.
        [letter] = DeadLetter.objects.all()
        assert letter.payload["message"]["body"] == "deep" and "CascadeStopped" in (
            letter.last_error
        )
        assert letter.depth == 2
        [forwarded] = QueueMessage.objects.filter(queue__name="next")
        assert (forwarded.body, forwarded.depth) == ("fresh", 1)
        # A replay keeps the letter's depth: the cascade the limit ended stays ended.
        postgres_resolver().replay(letter.pk, by=admin.pk)
        assert QueueMessage.objects.get(queue__name="work").depth == 2

    def test_a_message_at_the_size_limit_fits_its_batch(self, setup, consumer, override_config):
        app, admin, _ = setup
        override_config(SandboxCeiling(max_payload_bytes=64 * 1024))
        consumer()
        limit = message_limit()
        with pytest.raises(ValidationError, match="at most"):
            queues.send(app, "work", [0] * (limit // 2), principal=admin)
        biggest = [0] * ((limit - 2) // 3)  # "[0, 0, ...]" as PostgreSQL writes it
        queues.send(app, "work", biggest, principal=admin)
        _run_batches(_dispatcher())
        assert not DeadLetter.objects.exists()
        assert len(REPORT["seen"]) == 1

    def test_the_orphan_sweep_never_releases_a_message_a_live_batch_holds(self, setup, consumer):
        app, admin, _ = setup
        trigger = consumer(batch_size=1)
        [sent] = queues.send_batch(app, "work", ["m"], principal=admin)
        assert queue_batches.fill().batches == 1
        OutboxEntry.objects.all().delete()  # the batch's row gone without settling
        first, second = connect(), connect()
        try:
            first.autocommit = second.autocommit = False
            # One sweep releases the message and (standing in for a fill right
            # after it) takes it into a new batch, while a second sweep that
            # started meanwhile waits for the message's row lock.
            first.execute(TRIGGER_Q["release_orphaned_batches"])
            swept = {}

            def sweep():
                with second.cursor() as c:
                    c.execute(TRIGGER_Q["release_orphaned_batches"])
                    swept["rows"] = c.rowcount
                second.commit()

            waiter = threading.Thread(target=sweep)
            waiter.start()
            wait_for(lambda: _blocked_backends() >= 1, timeout=10, what="the second sweep to wait")
            first.execute("SELECT * FROM queue_fill_trigger(%s, 1000000, 10)", (trigger.id,))
            first.commit()
            waiter.join(10)
        finally:
            first.close()
            second.close()
        message = QueueMessage.objects.get(pk=sent)
        assert message.batch_id is not None and swept["rows"] == 0
        assert OutboxEntry.objects.filter(pk=message.batch_id).exists()


def _blocked_backends() -> int:
    with connection.cursor() as c:
        c.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        )
        return c.fetchone()[0]
