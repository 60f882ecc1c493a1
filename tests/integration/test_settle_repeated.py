"""A settle whose COMMIT answer is lost is settled again, and recorded once.

The server committed, the dispatcher got an error instead of the answer, so
it keeps the outcome and settles it again (outbox/dispatch/dispatcher.py,
settle_backlog). The dead-letter path found the row gone; the retry and the
queue batch paths matched it again and logged the attempt a second time.
They are now conditional on the claimed attempt
(outbox/sql/0011_settle_claimed_attempt.sql,
triggers/sql/0007_queue_settle_claimed.sql).
"""

from contextlib import contextmanager

import pytest
from django.db import OperationalError, connection, transaction

from outbox.dispatch.worker import postgres_dispatcher
from outbox.models import OutboxEntry
from picloud import kv
from picloud.config import RetryPolicy, TriggerConfig
from picloud.domain.authz import Role
from picloud.domain.scripts import handler
from picloud.messaging import queues
from picloud.models import QueueMessage
from tests.factories import AppFactory, MembershipFactory, ScriptFactory, kv_trigger
from triggers import queue_batches
from triggers.pg_repository import PgTriggerRepo
from triggers.repository import NewTrigger, QueueSpec

pytestmark = pytest.mark.django_db(transaction=True)

# Retries fall due at once; enough attempts that the first failure retries.
RETRIES = TriggerConfig(retry=RetryPolicy(max_attempts=3, base_delay_ms=1, max_delay_ms=1))


@handler("tests.settle_repeated.batch_fails")
def batch_fails(event, ctx):
    raise RuntimeError("this batch fails")


class LostCommitAnswer:
    """transaction.atomic whose first COMMIT reaches the server but whose
    answer does not reach the dispatcher (as when the connection breaks
    right after the server committed)."""

    def __init__(self) -> None:
        self.lost = 0

    @contextmanager
    def __call__(self):
        with transaction.atomic():
            yield
        if not self.lost:
            self.lost += 1
            raise OperationalError("server closed the connection unexpectedly")


@pytest.fixture(autouse=True)
def _empty_log(db):
    # No model owns the log, so the flush between tests leaves it.
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE delivery_log")


def _losing(atomic: LostCommitAnswer):
    """The worker's dispatcher, its settling transactions losing `atomic`'s answer."""
    dispatcher = postgres_dispatcher()
    dispatcher.atomic = dispatcher.queue_settler.atomic = atomic
    return dispatcher


def _log() -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT outbox_id, attempt, outcome, disposition FROM delivery_log "
            "ORDER BY outbox_id, attempt"
        )
        return cursor.fetchall()


def test_a_retry_settled_again_after_a_lost_commit_answer_is_logged_once(override_config):
    override_config(RETRIES)
    member = MembershipFactory(role=Role.Developer.value)
    script = ScriptFactory(app=member.app, handler="picloud.fail")
    kv_trigger(member.app, script, member.principal, collection="orders")
    kv.put(member.app, "orders", "k", {}, principal=member.principal)
    atomic = LostCommitAnswer()
    dispatcher = _losing(atomic)

    with pytest.raises(OperationalError):
        dispatcher.run_once(limit=10)
    assert atomic.lost == 1 and len(dispatcher.backlog) == 1, "the outcome kept to settle again"
    dispatcher.settle_backlog()

    row = OutboxEntry.objects.get()
    assert _log() == [(row.id, 1, "error", "retry")], "one attempt, one entry"
    assert len(row.errors) == 1, f"the attempt's error recorded once: {row.errors}"
    assert row.attempts == 1 and row.leased_until is None


def test_a_queue_batch_settled_again_after_a_lost_commit_answer_is_logged_once(override_config):
    override_config(RETRIES)
    app = AppFactory()
    admin = MembershipFactory(app=app, role=Role.AppAdmin.value).principal
    queue = queues.create_queue(app, "work", principal=admin)
    script = ScriptFactory(app=app, handler="tests.settle_repeated.batch_fails")
    PgTriggerRepo().create(
        NewTrigger(
            app_id=app.id,
            kind="queue",
            script_id=script.id,
            name="consumer",
            registered_by_principal=admin.id,
            queue=QueueSpec(queue.id, batch_size=10, max_batch_wait_ms=0),
        )
    )
    sent = queues.send_batch(app, "work", [1, 2, 3], principal=admin)
    assert queue_batches.fill().batches == 1
    batch = OutboxEntry.objects.get()
    atomic = LostCommitAnswer()
    dispatcher = _losing(atomic)

    with pytest.raises(OperationalError):
        dispatcher.run_once(limit=10)
    assert atomic.lost == 1 and len(dispatcher.backlog) == 1, "the outcome kept to settle again"
    dispatcher.settle_backlog()

    assert _log() == [(batch.id, 1, "error", "retry")], "one batch attempt, one entry"
    messages = QueueMessage.objects.order_by("id")
    assert [(m.id, m.receive_count, m.batch_id) for m in messages] == [
        (i, 1, None) for i in sent
    ], "each message back on its queue once, to be retried"
    assert not OutboxEntry.objects.exists(), "the batch's row went with its first settle"
