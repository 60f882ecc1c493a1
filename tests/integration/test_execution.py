"""execute_row with the python runtime: outcomes, context, ceilings, authorization."""

import time

import pytest

from outbox.storage.pg_repository import PgOutboxRepo
from outbox.storage.repository import NewOutboxRow
from picloud import kv
from picloud.config import SandboxCeiling
from picloud.domain.authz import Role
from picloud.domain.scripts import PermanentError, handler
from picloud.models import AppMembership, KvEntry, Script
from picloud.runtime.execution import Failure, Success, execute_row
from tests.factories import AppFactory, MembershipFactory, ScriptFactory

seen = {}


@handler("tests.exec.context")
def _context(event, ctx):
    seen["ctx"] = ctx
    return {"event": event, "remaining_positive": ctx.remaining() > 0}


@handler("tests.exec.boom")
def _boom(event, ctx):
    raise ValueError("bad input")


@handler("tests.exec.permanent")
def _permanent(event, ctx):
    raise PermanentError("never")


@handler("tests.exec.big_result")
def _big_result(event, ctx):
    return "x" * 5_000


@handler("tests.exec.not_json")
def _not_json(event, ctx):
    return object()


@handler("tests.exec.slow")
def _slow(event, ctx):
    time.sleep(2)
    return "late"


@handler("tests.exec.write")
def _write(event, ctx):
    ctx.kv.put("out", "k", event)
    return "written"


@handler("tests.exec.demote_then_write")
def _demote_then_write(event, ctx):
    # The role is taken away while the script runs: the write must re-check.
    AppMembership.objects.filter(app=ctx.app, principal=ctx.principal).update(role="viewer")
    ctx.kv.put("out", "k", 1)


@handler("tests.exec.email")
def _email(event, ctx):
    # The run-as user is read with a few columns; the rest load on first access.
    return ctx.principal.user.email


@handler("tests.exec.write_other_app")
def _write_other_app(event, ctx):
    kv.put(event["other_app"], "out", "k", 1, principal=ctx.principal)


def _row(app, principal, handler_name, payload=None, **kw):
    script = ScriptFactory(app=app, handler=handler_name)
    repo = PgOutboxRepo()
    repo.insert(
        NewOutboxRow(
            app_id=app.id,
            source_kind="kv",
            script_id=script.id,
            run_as_principal=principal.id if principal else None,
            payload=payload if payload is not None else {"key": "k1"},
            **kw,
        )
    )
    (claimed,) = repo.claim_due(limit=1, lease=60)
    return claimed


@pytest.fixture
def member(app):
    return MembershipFactory(app=app, role=Role.Developer.value).principal


@pytest.mark.django_db
class TestPythonRuntime:
    def test_success_carries_the_result_and_the_context(self, app, member):
        row = _row(app, member, "tests.exec.context", depth=2)
        outcome = execute_row(row)
        assert outcome == Success({"event": {"key": "k1"}, "remaining_positive": True})
        ctx = seen["ctx"]
        assert (ctx.app, ctx.principal, ctx.depth, ctx.attempt, ctx.outbox_id) == (
            app,
            member,
            2,
            1,
            row.id,
        )
        assert (ctx.kv.depth, ctx.kv.cause, ctx.kv.principal) == (3, row.id, member)
        assert ctx.logger.extra["outbox_id"] == str(row.id)

    def test_an_exception_is_a_retryable_failure(self, app, member):
        outcome = execute_row(_row(app, member, "tests.exec.boom"))
        assert outcome == Failure("ValueError: bad input", retryable=True, status=500)

    def test_permanent_error_is_not_retryable(self, app, member):
        outcome = execute_row(_row(app, member, "tests.exec.permanent"))
        assert isinstance(outcome, Failure) and not outcome.retryable

    def test_timeout_names_the_ceiling(self, app, member):
        started = time.monotonic()
        outcome = execute_row(
            _row(app, member, "tests.exec.slow"), ceiling=SandboxCeiling(timeout_ms=200)
        )
        assert time.monotonic() - started < 1.5, "the caller must not wait for the handler"
        assert isinstance(outcome, Failure) and outcome.retryable and outcome.status == 504
        assert "PICLOUD_SANDBOX_TIMEOUT_MS" in outcome.error

    def test_payload_over_the_ceiling_is_refused_before_running(self, app, member):
        seen.clear()
        row = _row(app, member, "tests.exec.context", payload={"blob": "x" * 500})
        outcome = execute_row(row, ceiling=SandboxCeiling(max_payload_bytes=100))
        assert isinstance(outcome, Failure) and not outcome.retryable and outcome.status == 413
        assert "PICLOUD_SANDBOX_MAX_PAYLOAD_BYTES=100" in outcome.error
        assert "ctx" not in seen, "the handler must not run"

    def test_result_over_the_ceiling_is_a_failure(self, app, member):
        outcome = execute_row(
            _row(app, member, "tests.exec.big_result"),
            ceiling=SandboxCeiling(max_result_bytes=1000),
        )
        assert (
            isinstance(outcome, Failure)
            and "PICLOUD_SANDBOX_MAX_RESULT_BYTES=1000" in outcome.error
        )

    def test_a_result_that_is_not_json_is_a_failure(self, app, member):
        outcome = execute_row(_row(app, member, "tests.exec.not_json"))
        assert isinstance(outcome, Failure) and "not JSON" in outcome.error

    def test_a_principal_without_a_role_is_unauthorized_and_nothing_runs(self, app, member):
        seen.clear()
        row = _row(app, member, "tests.exec.context")
        AppMembership.objects.filter(principal=member).delete()
        outcome = execute_row(row)
        assert isinstance(outcome, Failure) and outcome.unauthorized and not outcome.retryable
        assert "unauthorized" in outcome.error and "script:invoke" in outcome.error
        assert "ctx" not in seen

    def test_a_deleted_principal_is_unauthorized(self, app):
        outcome = execute_row(_row(app, None, "tests.exec.context"))
        assert isinstance(outcome, Failure) and outcome.unauthorized

    def test_a_disabled_or_deleted_script_fails_without_retry(self, app, member):
        row = _row(app, member, "tests.exec.context")
        Script.objects.filter(pk=row.script_id).update(enabled=False)
        outcome = execute_row(row)
        assert isinstance(outcome, Failure) and "is disabled" in outcome.error
        assert not outcome.retryable
        Script.objects.filter(pk=row.script_id).delete()
        outcome = execute_row(row)
        assert isinstance(outcome, Failure) and "no longer exists" in outcome.error


@pytest.mark.django_db(transaction=True)
class TestScriptsWriteThroughTheirPrincipal:
    def test_the_whole_user_is_reachable_from_ctx(self):
        app = AppFactory()
        member = MembershipFactory(app=app, role=Role.Developer.value).principal
        assert execute_row(_row(app, member, "tests.exec.email")) == Success(member.user.email)

    def test_ctx_kv_writes_as_the_run_as_principal(self):
        app = AppFactory()
        member = MembershipFactory(app=app, role=Role.Developer.value).principal
        assert execute_row(_row(app, member, "tests.exec.write", payload={"v": 1})).ok
        assert KvEntry.objects.get(app=app, collection="out").value == {"v": 1}

    def test_a_write_is_refused_when_the_role_was_lost_during_the_run(self):
        app = AppFactory()
        member = MembershipFactory(app=app, role=Role.Developer.value).principal
        outcome = execute_row(_row(app, member, "tests.exec.demote_then_write"))
        assert isinstance(outcome, Failure) and outcome.status == 403 and not outcome.retryable
        assert "lacks KvWrite" in outcome.error
        assert not KvEntry.objects.filter(app=app).exists()

    def test_a_script_cannot_write_to_an_app_its_principal_has_no_role_in(self):
        app, other = AppFactory(), AppFactory()
        member = MembershipFactory(app=app, role=Role.Developer.value).principal
        outcome = execute_row(
            _row(app, member, "tests.exec.write_other_app", payload={"other_app": str(other.slug)})
        )
        assert isinstance(outcome, Failure) and "lacks KvWrite" in outcome.error
        assert not KvEntry.objects.filter(app=other).exists()


@pytest.mark.django_db(transaction=True)
def test_a_batch_stops_at_the_first_timeout_and_runs_none_after_it():
    from deadletters.pg_repository import PgAbandonedRepo, PgDeadLetterRepo
    from outbox.dispatch.dispatcher import Dispatcher
    from outbox.dispatch.metrics import Counters
    from outbox.dispatch.replies import InboxReplySink
    from outbox.storage.pg_repository import PgOutboxRepo as Repo
    from outbox.storage.pg_repository import PgReplyInbox
    from picloud.runtime.execution import RowExecutor
    from triggers.pg_repository import PgTriggerRepo

    app = AppFactory()
    member = MembershipFactory(app=app, role=Role.Developer.value).principal
    fast, slow = (
        ScriptFactory(app=app, handler="tests.exec.write"),
        ScriptFactory(app=app, handler="tests.exec.slow"),
    )
    repo = Repo()
    now = __import__("django.utils.timezone", fromlist=["now"]).now()
    from datetime import timedelta

    for i, script in enumerate([fast, slow, fast]):
        repo.insert(
            NewOutboxRow(
                app.id, "kv", script.id, member.id, {"i": i}, due_at=now - timedelta(seconds=10 - i)
            )
        )
    ceiling = SandboxCeiling(timeout_ms=300)
    dispatcher = Dispatcher(
        outbox=repo,
        triggers=PgTriggerRepo(),
        dead_letters=PgDeadLetterRepo(),
        replies=InboxReplySink(PgReplyInbox(), PgAbandonedRepo(), Counters()),
        executor=RowExecutor(ceiling),
        ceiling=ceiling,
    )
    report = dispatcher.run_once(limit=10)
    assert (report.claimed, report.executed, report.released) == (3, 2, 1)
    first, second = (o for _, o in report.outcomes)
    assert first.ok and not second.ok and "PICLOUD_SANDBOX_TIMEOUT_MS" in second.error
    assert KvEntry.objects.get(app=app, collection="out").value == {"i": 0}, "the third did not run"
