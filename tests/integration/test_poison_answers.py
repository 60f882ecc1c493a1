"""Answers PostgreSQL cannot store as they are (NUL, unpaired surrogates,
NaN, 1e400, deep nesting) are made storable before they reach SQL, so one
row's bad answer never fails the statement that settles its neighbours."""

import uuid

import pytest
from django.utils import timezone

from deadletters.models import DeadLetter
from deadletters.pg_repository import PgAbandonedRepo, PgDeadLetterRepo
from outbox.dispatch.dispatcher import Dispatcher
from outbox.dispatch.metrics import Counters
from outbox.dispatch.replies import InboxReplySink, reply_for
from outbox.models import OutboxEntry
from outbox.storage.pg_repository import PgOutboxRepo, PgReplyInbox
from outbox.storage.repository import NewOutboxRow
from picloud import kv
from picloud.config import RetryPolicy, SandboxCeiling, TriggerConfig, WebhookConfig
from picloud.domain.authz import Role
from picloud.models import Script
from picloud.runtime.execution import RowExecutor, execute_row
from tests.endpoints import POISON_ANSWERS, PoisonEndpoint, poison_endpoint
from tests.factories import MembershipFactory, kv_trigger
from tests.helpers import wait_for
from triggers.pg_repository import PgTriggerRepo

LOCAL = WebhookConfig(allow_private=True, allow_http=True)


@pytest.fixture
def endpoint(webhook_post):
    """The poison endpoint, sent to by each sender in turn (webhook_post)."""
    with poison_endpoint() as url:
        yield url


@pytest.fixture
def member(db, override_config):
    override_config(WebhookConfig(allow_http=True))  # to save http:// scripts
    return MembershipFactory(role=Role.AppAdmin.value)


def webhook(app, url):
    return Script.objects.create(
        app=app, name=f"hook-{uuid.uuid4().hex[:8]}", runtime="webhook", webhook_url=url
    )


@pytest.mark.django_db
@pytest.mark.parametrize("path", [p for p in POISON_ANSWERS if POISON_ANSWERS[p][0] == 200])
def test_every_2xx_answer_becomes_a_result_postgresql_stores(endpoint, member, path):
    script = webhook(member.app, endpoint + path)
    repo = PgOutboxRepo()
    repo.insert(NewOutboxRow(member.app.id, "invoke", script.id, member.principal.id, {}))
    (row,) = repo.claim_due(limit=1, lease=60)
    outcome = execute_row(row, webhook_config=LOCAL)
    assert outcome.ok, outcome
    inbox = PgReplyInbox()
    inbox_id = uuid.uuid4()
    inbox.open(inbox_id, member.app.id)
    assert inbox.deliver(inbox_id, reply_for(outcome)), "the reply was stored"
    assert inbox.collect(inbox_id).body == outcome.result


@pytest.mark.django_db
def test_text_postgresql_refuses_is_replaced_and_said_so(endpoint, member):
    script = webhook(member.app, endpoint + "/nul-json")
    repo = PgOutboxRepo()
    repo.insert(NewOutboxRow(member.app.id, "invoke", script.id, member.principal.id, {}))
    (row,) = repo.claim_due(limit=1, lease=60)
    assert execute_row(row, webhook_config=LOCAL).result == {
        "a\ufffd": "x\ufffdy",
        "s": "\ufffd",
    }
    failing = webhook(member.app, endpoint + "/nul-500")
    repo.insert(NewOutboxRow(member.app.id, "kv", failing.id, member.principal.id, {}))
    (row,) = repo.claim_due(limit=1, lease=60)
    outcome = execute_row(row, webhook_config=LOCAL)
    assert outcome.error.startswith("webhook answered 500: broken\ufffdanswer")
    assert "1 NUL or unpaired surrogate character(s) replaced with U+FFFD" in outcome.error
    assert repo.reschedule(row.id, timezone.now(), outcome.error)
    assert OutboxEntry.objects.get(pk=row.id).last_error == outcome.error


@pytest.mark.django_db(transaction=True)
def test_poison_and_clean_webhooks_from_the_same_writes(endpoint, member):
    """The issue's measurement, smaller: each write fans out to one clean and
    three poison webhooks, 2 attempts at most."""
    app, principal = member.app, member.principal
    for path in ("/clean", "/nul-500", "/nul-400", "/bytes-500"):
        kv_trigger(app, webhook(app, endpoint + path), principal, name=path.strip("/"))
    writes = 30
    for i in range(writes):
        kv.put(app, "orders", f"o-{i}", {"i": i}, principal=principal)

    ceiling = SandboxCeiling(timeout_ms=5_000)
    dispatcher = Dispatcher(
        outbox=PgOutboxRepo(),
        triggers=PgTriggerRepo(),
        dead_letters=PgDeadLetterRepo(),
        replies=InboxReplySink(PgReplyInbox(), PgAbandonedRepo(), Counters()),
        executor=RowExecutor(ceiling, LOCAL),
        config=TriggerConfig(retry=RetryPolicy(2, 1, 1, 0.0)),
        ceiling=ceiling,
    )

    def drained():
        dispatcher.run_once(limit=25)
        dispatcher.flush_acks()
        return not OutboxEntry.objects.exists()

    wait_for(drained, timeout=60, what="the outbox to drain", interval=0.01)

    keys = [f"o-{i}" for i in range(writes)]
    received = PoisonEndpoint.received
    assert {k: received[("/clean", k)] for k in keys} == dict.fromkeys(keys, 1), (
        "every clean row delivered exactly once"
    )
    assert {k: received[("/nul-500", k)] for k in keys} == dict.fromkeys(keys, 2)
    assert {k: received[("/bytes-500", k)] for k in keys} == dict.fromkeys(keys, 2)
    assert {k: received[("/nul-400", k)] for k in keys} == dict.fromkeys(keys, 1), (
        "a 400 is not retried"
    )
    letters = list(DeadLetter.objects.all())
    assert len(letters) == 3 * writes
    assert all("\x00" not in d.last_error for d in letters)
    assert sum("replaced with U+FFFD" in d.last_error for d in letters) == 2 * writes


@pytest.mark.django_db(transaction=True)
def test_a_synchronous_caller_gets_a_200_whose_json_held_nul(endpoint, member, override_config):
    """Before: the reply could not be stored, so the caller waited its whole
    timeout and got a 504."""
    from outbox.dispatch.worker import postgres_host
    from outbox.sync.invoke import close_default_invoker, invoke
    from picloud.config import DispatcherConfig

    override_config(LOCAL)  # the host's executors use this process's config
    script = webhook(member.app, endpoint + "/nul-json")
    host = postgres_host(config=DispatcherConfig(shutdown_grace_ms=5_000))
    host.start()
    try:
        result = invoke(member.principal, script, {"key": "k"}, wait_ms=10_000)
    finally:
        close_default_invoker()
        host.stop()
    assert (result.reply.status, result.timed_out) == (200, False)
    assert result.reply.body == {"a\ufffd": "x\ufffdy", "s": "\ufffd"}
