"""The delivery log on PostgreSQL: every attempt logged once, with what it
did and what the dispatcher did with it; the day partitions made ahead and
dropped by retention (failures kept longer); the rollups the health columns
and the dashboard read."""

import time
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from django.db import connection
from django.utils import timezone

from deadletters.models import DeadLetter
from outbox.dispatch.dispatcher import iter_batches
from outbox.dispatch.metrics import EXECUTION_SECONDS, START_LATENCY_SECONDS, Counters
from outbox.dispatch.worker import postgres_dispatcher, postgres_host
from outbox.models import ScriptCircuit
from outbox.storage.pg_delivery_log import PgDeliveryLog
from picloud import kv
from picloud.config import (
    DeliveryLogConfig,
    DispatcherConfig,
    RetryPolicy,
    SandboxCeiling,
    TriggerConfig,
)
from picloud.domain.authz import Role
from picloud.domain.scripts import handler
from picloud.models import AppMembership
from tests.factories import MembershipFactory, ScriptFactory, kv_trigger
from tests.helpers import wait_for
from triggers.models import Trigger

pytestmark = pytest.mark.django_db(transaction=True)

TWO_ATTEMPTS = TriggerConfig(retry=RetryPolicy(max_attempts=2, base_delay_ms=1, max_delay_ms=1))


@handler("tests.log.sleep")
def sleep(event, ctx):
    time.sleep(float(event.get("seconds", 1.0)))


@pytest.fixture(autouse=True)
def _empty_log(db):
    # These tables have no model, so the test database's flush leaves them
    # alone: every test starts from none (other tests' dispatchers log too).
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE delivery_log, delivery_minutes, trigger_hours, outbox_samples")


@pytest.fixture
def member(db):
    return MembershipFactory(role=Role.Developer.value)


def _trigger(member, handler_name, collection):
    script = ScriptFactory(app=member.app, name=collection, handler=handler_name)
    return kv_trigger(member.app, script, member.principal, collection=collection)


def _drain(dispatcher, *, wait_retries=True):
    """Run batches until the outbox is empty (retries fall due within ms)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for _ in iter_batches(dispatcher, 50):
            pass
        dispatcher.flush_acks()
        if not wait_retries or not _waiting():
            return
        time.sleep(0.01)
    raise AssertionError("the outbox did not drain")


def _waiting() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM outbox")
        return cursor.fetchone()[0]


def _log(**where) -> list[dict]:
    clause = " AND ".join(f"{k} = %({k})s" for k in where) or "TRUE"
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT * FROM delivery_log WHERE {clause} ORDER BY outbox_id, attempt", where
        )
        names = [c.name for c in cursor.description]
        return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]


def test_every_attempt_is_logged_once_with_its_outcome(member, override_config):
    override_config(TWO_ATTEMPTS, SandboxCeiling(timeout_ms=300))
    ok = _trigger(member, "picloud.echo", "ok")
    failing = _trigger(member, "picloud.fail", "failing")
    refusing = _trigger(member, "picloud.reject", "refusing")
    slow = _trigger(member, "tests.log.sleep", "slow")
    for collection in ("ok", "failing", "refusing", "slow"):
        kv.put(member.app, collection, "k1", {"seconds": 1.0}, principal=member.principal)
    counters = Counters()
    dispatcher = postgres_dispatcher(counters=counters)
    _drain(dispatcher)

    rows = _log()
    by_trigger = {}
    for r in rows:
        by_trigger.setdefault(r["trigger_id"], []).append(r)
    # Exactly once per attempt: (outbox id, attempt) never repeats.
    assert len({(r["outbox_id"], r["attempt"]) for r in rows}) == len(rows)

    [success] = by_trigger[ok.id]
    assert (success["outcome"], success["disposition"], success["failed"]) == (
        "success",
        "done",
        False,
    )
    assert success["attempt"] == 1 and success["event_key"] == "ok/k1"
    assert '"key": "k1"' in success["detail"], "the handler's result, as the answer"

    first, last = by_trigger[failing.id]
    assert (first["attempt"], first["outcome"], first["disposition"]) == (1, "error", "retry")
    assert (last["attempt"], last["outcome"], last["disposition"]) == (2, "error", "dead_letter")
    assert "picloud.fail always fails (attempt 2)" in last["detail"]
    assert first["outbox_id"] == last["outbox_id"]
    assert DeadLetter.objects.get(outbox_id=last["outbox_id"]).attempts == 2

    [refused] = by_trigger[refusing.id]
    assert (refused["outcome"], refused["disposition"], refused["status_code"]) == (
        "error",
        "dead_letter",
        422,
    )

    timeouts = by_trigger[slow.id]
    assert [(r["outcome"], r["disposition"]) for r in timeouts] == [
        ("timeout", "retry"),
        ("timeout", "dead_letter"),
    ]
    assert all(250 <= r["duration_ms"] < 1000 for r in timeouts), "stopped at the timeout"

    # The histograms per source kind saw every attempt (4 kv rows, 6 attempts).
    totals = counters.take()
    assert totals[EXECUTION_SECONDS["kv"].count] == 6
    assert totals[START_LATENCY_SECONDS["kv"].count] == 6


def test_an_unauthorized_run_is_logged_and_a_held_circuit_is_not(member, override_config):
    override_config(TWO_ATTEMPTS)
    gone = MembershipFactory(app=member.app, role=Role.Developer.value)
    script = ScriptFactory(app=member.app, name="left", handler="picloud.noop")
    kv_trigger(member.app, script, gone.principal, collection="left")
    held = _trigger(member, "picloud.noop", "held")
    ScriptCircuit.objects.create(
        script_id=held.script_id,
        app=member.app,
        failures=5,
        opened=1,
        open_until=timezone.now() + timedelta(minutes=5),
    )
    AppMembership.objects.filter(pk=gone.pk).delete()  # its principal lost the role
    kv.put(member.app, "left", "k", {}, principal=member.principal)
    kv.put(member.app, "held", "k", {}, principal=member.principal)
    _drain(postgres_dispatcher(), wait_retries=False)

    [refused] = _log(script_id=script.id)
    assert (refused["outcome"], refused["disposition"]) == ("unauthorized", "dead_letter")
    assert _log(script_id=held.script_id) == [], "a row its circuit holds never ran"
    assert _waiting() == 1


def test_a_failures_only_trigger_logs_failures_and_counts_everything(member, override_config):
    override_config(TWO_ATTEMPTS)
    quiet = _trigger(member, "picloud.noop", "quiet")
    Trigger.objects.filter(pk=quiet.id).update(log_failures_only=True)
    failing = _trigger(member, "picloud.fail", "loud")
    Trigger.objects.filter(pk=failing.id).update(log_failures_only=True)
    for n in range(3):
        kv.put(member.app, "quiet", f"k{n}", {}, principal=member.principal)
    kv.put(member.app, "loud", "k", {}, principal=member.principal)
    dispatcher = postgres_dispatcher()
    _drain(dispatcher)
    dispatcher.flush_rollups()

    assert _log(trigger_id=quiet.id) == []
    assert [r["disposition"] for r in _log(trigger_id=failing.id)] == ["retry", "dead_letter"]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT trigger_id, sum(succeeded), sum(failed), max(last_success_at), "
            "max(last_failure_at), array_agg(durations) FROM trigger_hours GROUP BY 1"
        )
        hours = {r[0]: r[1:] for r in cursor.fetchall()}
        cursor.execute("SELECT sum(succeeded), sum(failed) FROM delivery_minutes")
        minutes = cursor.fetchone()
    assert hours[quiet.id][:2] == (3, 0) and hours[quiet.id][2] is not None
    assert hours[failing.id][:2] == (0, 2) and hours[failing.id][3] is not None
    assert sum(hours[quiet.id][4][0]) == 3, "each attempt in one duration bucket"
    assert minutes == (3, 2)


def test_the_log_off_writes_nothing(member, override_config):
    override_config(DeliveryLogConfig(enabled=False))
    _trigger(member, "picloud.noop", "off")
    kv.put(member.app, "off", "k", {}, principal=member.principal)
    dispatcher = postgres_dispatcher()
    _drain(dispatcher)
    dispatcher.flush_rollups()
    assert _log() == [] and _waiting() == 0


def test_the_engine_logs_with_its_acknowledgements(member):
    """The worker's engine: successes logged by the claims that acknowledge them."""
    trigger = _trigger(member, "picloud.noop", "engine")
    for n in range(40):
        kv.put(member.app, "engine", f"k{n}", {}, principal=member.principal)
    host = postgres_host(config=DispatcherConfig(shutdown_grace_ms=2_000))
    host.start()
    try:
        wait_for(lambda: _waiting() == 0, timeout=30, what="the rows to be acknowledged")
    finally:
        host.stop()
    rows = _log(trigger_id=trigger.id)
    assert len(rows) == 40 == len({r["outbox_id"] for r in rows})
    assert all(r["outcome"] == "success" and r["duration_ms"] >= 0 for r in rows)


def _partitions() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent "
            "WHERE p.relname IN ('delivery_log_ok', 'delivery_log_failed')"
        )
        return {r[0] for r in cursor.fetchall()}


def _day(days: int) -> date:
    return datetime.now(UTC).date() + timedelta(days=days)


def _insert(started_at: datetime, outcome: str = "success") -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO delivery_log (outbox_id, app_id, script_id, source_kind, attempt, "
            "started_at, duration_ms, outcome, disposition, failed) VALUES "
            "(%s, %s, %s, 'kv', 1, %s, 1, %s, 'done', %s)",
            [uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), started_at, outcome, outcome != "success"],
        )


def _at(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC)


def test_partitions_are_made_ahead_and_a_late_days_rows_move_in():
    log = PgDeliveryLog()
    log.make_partitions(ahead=3)
    names = _partitions()
    for days in range(-1, 4):
        stamp = _day(days).strftime("%Y%m%d")
        assert {f"delivery_log_ok_{stamp}", f"delivery_log_failed_{stamp}"} <= names
    # A day nobody made yet: its row waits in the default partition...
    far = _day(40)
    _insert(_at(far))
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM delivery_log_ok_default")
        assert cursor.fetchone()[0] == 1
    # ...and moves into its day when that is made.
    assert f"delivery_log_ok_{far:%Y%m%d}" in log.make_partitions(ahead=40)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM delivery_log_ok_default")
        assert cursor.fetchone()[0] == 0
        cursor.execute(f"SELECT count(*) FROM delivery_log_ok_{far:%Y%m%d}")
        assert cursor.fetchone()[0] == 1
    assert log.make_partitions(ahead=3) == [], "made once"


def _make_old_day(failed: bool, day: date) -> str:
    name = f"delivery_log_{'failed' if failed else 'ok'}_{day:%Y%m%d}"
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE {name} PARTITION OF delivery_log_{'failed' if failed else 'ok'} "
            "FOR VALUES FROM (%s) TO (%s)",
            [_at(day) - timedelta(hours=12), _at(day) + timedelta(hours=12)],
        )
    return name


def test_retention_drops_whole_days_and_keeps_failures_longer():
    log = PgDeliveryLog()
    log.make_partitions(ahead=1)
    old, older = _day(-10), _day(-40)
    made = [_make_old_day(f, d) for f in (False, True) for d in (old, older)]
    for day in (old, older):
        _insert(_at(day))
        _insert(_at(day), outcome="error")
    # Today's and yesterday's stay whatever the retention.
    _insert(timezone.now())

    dropped = log.drop_expired(ok_days=7, failed_days=30)
    assert sorted(dropped) == sorted([made[0], made[1], made[3]]), (
        "successes of 10 and 40 days ago and failures of 40 days ago go"
    )
    assert made[2] in _partitions(), "failures of 10 days ago are kept (30 days)"
    assert len(_log(failed=True)) == 1 and len(_log(failed=False)) == 1
    assert log.drop_expired(ok_days=7, failed_days=5) == [made[2]]
    assert len(_log()) == 1
