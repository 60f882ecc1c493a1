"""The cron ticker on PostgreSQL: ticks written ahead, once each, and dropped
when what they were written for changes."""

import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, connections

from outbox.dispatch.dispatcher import observe_ticks
from outbox.dispatch.metrics import CRON_LATENESS_SECONDS, Counters
from outbox.models import OutboxEntry
from outbox.storage.pg_repository import PgOutboxRepo
from picloud.domain.authz import Role
from picloud.domain.scripts import handler
from picloud.runtime.execution import Success, execute_row
from tests.factories import AppFactory, MembershipFactory, ScriptFactory
from triggers import cron
from triggers.cron import TICKS_KEPT, CronTicker
from triggers.models import CronTick, CronTriggerDetails
from triggers.pg_repository import PgTriggerRepo
from triggers.repository import CronSpec, NewTrigger
from triggers.ticks import LOOKAHEAD

seen: dict = {}


@handler("tests.cron.record")
def _record(event, ctx):
    seen["event"] = event
    return {"ok": True}


def cron_trigger(app, principal, *, name="every-second", schedule="* * * * * *", **spec):
    script = ScriptFactory(app=app, handler="tests.cron.record")
    return PgTriggerRepo().create(
        NewTrigger(
            app_id=app.id,
            kind="cron",
            script_id=script.id,
            name=name,
            registered_by_principal=principal.id,
            cron=CronSpec(schedule, **spec),
        )
    )


@pytest.fixture
def member():
    return MembershipFactory(app=AppFactory(slug="clock"), role=Role.AppAdmin.value)


def set_watermark(trigger, at):
    CronTriggerDetails.objects.filter(trigger_id=trigger.id).update(watermark=at, next_tick_at=None)


def ticks_of(trigger):
    return list(
        OutboxEntry.objects.filter(trigger_id=trigger.id)
        .order_by("due_at")
        .values_list("due_at", flat=True)
    )


def whole_second(moment):
    return moment.replace(microsecond=0)


@pytest.mark.django_db
class TestWritingTicks:
    def test_ticks_are_written_ahead_with_their_event(self, member):
        t = cron_trigger(member.app, member.principal, payload={"report": "daily"})
        now = whole_second(datetime.now(UTC))
        set_watermark(t, now)
        report = CronTicker(clock=lambda: now).run_once()
        expected = [now + timedelta(seconds=s) for s in range(1, int(LOOKAHEAD.seconds) + 1)]
        assert ticks_of(t) == expected
        assert report.written == len(expected) and report.missed == 0
        row = OutboxEntry.objects.filter(trigger_id=t.id).order_by("due_at").first()
        assert row.source_kind == "cron"
        assert row.run_as_principal_id == member.principal.id
        assert row.payload == {
            "report": "daily",
            "source": "cron",
            "app_id": str(member.app.id),
            "app": "clock",
            "trigger": "every-second",
            "trigger_id": str(t.id),
            "schedule": "* * * * * *",
            "timezone": "UTC",
            "scheduled_at": (now + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
            "run_now": False,
            "catch_up": False,
        }
        details = CronTriggerDetails.objects.get(trigger_id=t.id)
        assert details.watermark == expected[-1]
        assert details.next_tick_at == expected[-1] + timedelta(seconds=1)

    def test_a_tick_is_written_once_whatever_the_watermark_says(self, member):
        t = cron_trigger(member.app, member.principal)
        now = whole_second(datetime.now(UTC))
        set_watermark(t, now)
        CronTicker(clock=lambda: now).run_once()
        before = ticks_of(t)
        set_watermark(t, now)  # as if another cluster still had the old watermark
        assert CronTicker(clock=lambda: now).run_once().written == 0
        assert ticks_of(t) == before
        assert CronTick.objects.filter(trigger_id=t.id).count() == len(before)

    def test_the_ticker_reads_only_triggers_whose_next_tick_is_near(self, member):
        t = cron_trigger(member.app, member.principal, schedule="0 0 1 1 *")
        now = datetime(2026, 6, 1, tzinfo=UTC)
        set_watermark(t, now)
        assert CronTicker(clock=lambda: now).run_once().triggers == 1
        assert ticks_of(t) == []
        assert CronTriggerDetails.objects.get(trigger_id=t.id).next_tick_at == datetime(
            2027, 1, 1, tzinfo=UTC
        )
        assert CronTicker(clock=lambda: now).run_once().triggers == 0

    def test_missed_ticks_follow_the_catchup_policy_and_are_counted(self, member):
        t = cron_trigger(member.app, member.principal, schedule="* * * * *", catchup="skip")
        now = datetime(2026, 6, 1, 12, 0, 30, tzinfo=UTC)
        set_watermark(t, datetime(2026, 6, 1, 9, 0, tzinfo=UTC))
        report = CronTicker(clock=lambda: now).run_once()
        assert report.missed == 179
        assert ticks_of(t) == [
            datetime(2026, 6, 1, 12, 0, tzinfo=UTC),
            datetime(2026, 6, 1, 12, 1, tzinfo=UTC),
        ]
        assert CronTriggerDetails.objects.get(trigger_id=t.id).missed_ticks == 179

    def test_a_paused_or_disabled_trigger_gets_no_ticks(self, member):
        paused = cron_trigger(member.app, member.principal, name="p", paused=True)
        off = cron_trigger(member.app, member.principal, name="off")
        PgTriggerRepo().update(off.id, enabled=False)
        CronTicker().run_once()
        assert ticks_of(paused) == [] and ticks_of(off) == []


@pytest.mark.django_db
class TestChangesDropPendingTicks:
    @pytest.fixture
    def ticking(self, member):
        t = cron_trigger(member.app, member.principal)
        CronTicker().run_once()
        assert ticks_of(t)
        return t

    def assert_dropped(self, t):
        assert ticks_of(t) == []
        assert CronTick.objects.filter(trigger_id=t.id).count() == 0
        details = CronTriggerDetails.objects.get(trigger_id=t.id)
        assert details.next_tick_at is None
        assert datetime.now(UTC) - details.watermark < timedelta(seconds=5)

    def test_a_new_schedule(self, ticking):
        PgTriggerRepo().update(ticking.id, cron=CronSpec("*/2 * * * * *"))
        self.assert_dropped(ticking)

    def test_a_new_timezone_or_payload(self, ticking):
        PgTriggerRepo().update(ticking.id, cron=CronSpec("* * * * * *", payload={"v": 2}))
        self.assert_dropped(ticking)

    def test_a_pause(self, ticking):
        PgTriggerRepo().update(ticking.id, cron=CronSpec("* * * * * *", paused=True))
        self.assert_dropped(ticking)

    def test_disabling_the_trigger(self, ticking):
        PgTriggerRepo().update(ticking.id, enabled=False)
        self.assert_dropped(ticking)

    def test_a_tick_already_running_is_left_to_finish(self, ticking):
        first = OutboxEntry.objects.filter(trigger_id=ticking.id).order_by("due_at").first()
        OutboxEntry.objects.filter(id=first.id).update(
            due_at=datetime.now(UTC) - timedelta(minutes=1)
        )
        (claimed,) = PgOutboxRepo().claim_due(limit=1, lease=60)
        PgTriggerRepo().update(ticking.id, enabled=False)
        left = OutboxEntry.objects.filter(trigger_id=ticking.id).values_list("id", flat=True)
        assert list(left) == [claimed.id]

    def test_a_tick_owed_before_the_change_and_handed_back_is_kept(self, ticking):
        # Due a minute ago, claimed, then handed back unstarted with a delay
        # (as a tick waiting for the one before it is): its row is due in
        # the future with no attempt counted, but its time has passed, so
        # the edit owes it and must not drop it.
        first = OutboxEntry.objects.filter(trigger_id=ticking.id).order_by("due_at").first()
        CronTick.objects.filter(outbox_id=first.id).update(
            scheduled_at=datetime.now(UTC) - timedelta(minutes=1)
        )
        OutboxEntry.objects.filter(id=first.id).update(
            due_at=datetime.now(UTC) - timedelta(minutes=1)
        )
        (claimed,) = PgOutboxRepo().claim_due(limit=1, lease=60)
        PgOutboxRepo().release([claimed.id], delay=30)
        PgTriggerRepo().update(ticking.id, cron=CronSpec("* * * * * *", paused=True))
        left = OutboxEntry.objects.filter(trigger_id=ticking.id).values_list("id", flat=True)
        assert list(left) == [claimed.id]
        assert CronTick.objects.filter(outbox_id=claimed.id).exists()

    def test_changing_only_the_policies_keeps_them(self, ticking):
        before = ticks_of(ticking)
        PgTriggerRepo().update(
            ticking.id, cron=CronSpec("* * * * * *", catchup="all", overlap="allow")
        )
        assert ticks_of(ticking) == before


@pytest.mark.django_db
class TestRunNow:
    def test_run_now_is_an_extra_tick_due_at_once(self, member):
        t = cron_trigger(member.app, member.principal, schedule="0 0 1 1 *", paused=True)
        assert cron.run_now(t.id)
        (row,) = OutboxEntry.objects.filter(trigger_id=t.id)
        assert row.payload["run_now"] is True
        assert row.due_at <= datetime.now(UTC)
        assert CronTick.objects.get(trigger_id=t.id).run_now

    def test_not_for_a_disabled_trigger_nor_another_kind(self, member):
        t = cron_trigger(member.app, member.principal)
        PgTriggerRepo().update(t.id, enabled=False)
        assert not cron.run_now(t.id)
        assert not cron.run_now(member.app.id)


@pytest.mark.django_db
def test_the_script_receives_the_tick_with_its_fire_time(member):
    t = cron_trigger(member.app, member.principal)
    cron.run_now(t.id)
    (row,) = PgOutboxRepo().claim_due(limit=1, lease=60)
    assert execute_row(row) == Success({"ok": True})
    event = seen["event"]
    assert event["trigger_id"] == str(t.id) and event["run_now"] is True
    fired = datetime.fromisoformat(event["fired_at"])
    assert fired >= datetime.fromisoformat(event["scheduled_at"])
    assert "fired_at" not in OutboxEntry.objects.get(id=row.id).payload


@pytest.mark.django_db(transaction=True)
def test_tickers_running_at_once_write_each_tick_once():
    member = MembershipFactory(app=AppFactory(), role=Role.AppAdmin.value)
    triggers = [cron_trigger(member.app, member.principal, name=f"t{i}") for i in range(5)]
    start = threading.Barrier(4)
    errors: list = []

    def run():
        try:
            start.wait(10)
            for _ in range(5):
                CronTicker().run_once()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors
    with connection.cursor() as cur:
        cur.execute(
            "SELECT trigger_id, due_at, count(*) FROM outbox GROUP BY 1, 2 HAVING count(*) > 1"
        )
        assert cur.fetchall() == []
    for t in triggers:
        assert len(ticks_of(t)) >= LOOKAHEAD.seconds - 5


@pytest.mark.django_db
def test_old_tick_keys_are_pruned_but_each_triggers_latest_is_kept(member):
    t = cron_trigger(member.app, member.principal, schedule="0 0 1 1 *", paused=True)
    old = datetime.now(UTC) - TICKS_KEPT - timedelta(days=1)
    for day in range(3):
        CronTick.objects.create(
            trigger_id=t.id, scheduled_at=old + timedelta(hours=day), created_at=old
        )
    CronTick.objects.create(trigger_id=t.id, scheduled_at=datetime.now(UTC))
    assert CronTicker().run_once().pruned == 3
    assert CronTick.objects.filter(trigger_id=t.id).count() == 1
    # A trigger whose only ticks are old keeps its latest.
    CronTick.objects.filter(trigger_id=t.id).update(created_at=old)
    assert CronTicker().run_once().pruned == 0


@pytest.mark.django_db
def test_a_ticks_first_run_counts_its_lateness_and_a_run_now_does_not(member):
    t = cron_trigger(member.app, member.principal)
    now = whole_second(datetime.now(UTC))
    set_watermark(t, now - timedelta(seconds=3))
    CronTicker(clock=lambda: now).run_once()  # ticks of the last 3 s are due now
    cron.run_now(t.id)
    counters = Counters()
    rows = PgOutboxRepo().claim_due(limit=100, lease=60)
    observe_ticks(counters, rows)
    taken = counters.take()
    assert len(rows) >= 4
    assert taken[CRON_LATENESS_SECONDS.count] == len(rows) - 1
    assert taken[CRON_LATENESS_SECONDS.bucket(10.0)] == len(rows) - 1
    # Due 2 s, 1 s and 0 s before `now`, which is a moment ago: 3 s and more in all.
    assert taken[CRON_LATENESS_SECONDS.sum_us] >= 3_000_000


@pytest.mark.django_db
class TestOverlap:
    """Three ticks of one trigger due at once, claimed together: what each
    overlap policy runs, holds back and drops."""

    def claimed(self, member, overlap):
        t = cron_trigger(member.app, member.principal, overlap=overlap)
        now = whole_second(datetime.now(UTC))
        set_watermark(t, now - timedelta(seconds=4))
        CronTicker(clock=lambda: now, lookahead=timedelta(0)).run_once()
        OutboxEntry.objects.filter(trigger_id=t.id).update(
            due_at=datetime.now(UTC) - timedelta(minutes=1)
        )
        rows = sorted(
            PgOutboxRepo().claim_due(limit=10, lease=60), key=lambda r: r.payload["scheduled_at"]
        )
        assert len(rows) == 4
        return rows, cron.overlaps(rows)

    def test_skip_runs_the_earliest_and_drops_the_rest(self, member):
        rows, said = self.claimed(member, "skip")
        assert said.drop == {r.id for r in rows[1:]} and not said.wait

    def test_buffer_one_holds_one_back_and_drops_the_rest(self, member):
        rows, said = self.claimed(member, "buffer_one")
        assert said.wait == {rows[1].id}
        assert said.drop == {r.id for r in rows[2:]}

    def test_allow_runs_them_all(self, member):
        _, said = self.claimed(member, "allow")
        assert not said.drop and not said.wait

    def test_the_held_tick_runs_once_the_earlier_one_is_done(self, member):
        rows, said = self.claimed(member, "buffer_one")
        PgOutboxRepo().delete([rows[0].id, *said.drop])  # the first succeeded
        assert cron.overlaps([rows[1]]).wait == set()

    def test_run_now_and_caught_up_ticks_always_run(self, member):
        rows, _ = self.claimed(member, "skip")
        for row in rows[1:]:
            row.payload["run_now" if row is rows[1] else "catch_up"] = True
        assert cron.overlaps(rows) == cron.Overlaps()

    def test_caught_up_ticks_are_marked_in_their_event(self, member):
        t = cron_trigger(member.app, member.principal, schedule="* * * * *", catchup="all")
        now = datetime(2026, 6, 1, 12, 0, 30, tzinfo=UTC)
        set_watermark(t, datetime(2026, 6, 1, 11, 50, tzinfo=UTC))
        CronTicker(clock=lambda: now).run_once()
        rows = OutboxEntry.objects.filter(trigger_id=t.id).order_by("due_at")
        flags = [r.payload["catch_up"] for r in rows]
        assert flags == [True] * 9 + [False, False]  # 11:51-11:59 caught up; 12:00, 12:01

    def test_other_kinds_are_never_held(self, member):
        assert cron.overlaps([]) == cron.Overlaps()
