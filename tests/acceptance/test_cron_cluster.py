"""Cron ticks under three real `qcluster`s while workers are killed with -9:
each tick written once, none lost, and any tick run twice explained by a kill."""

import os
import random
import signal
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from deadletters.models import DeadLetter
from outbox.models import OutboxEntry
from picloud.domain.authz import Role
from picloud.models import KvEntry, Script
from tests.acceptance import handlers  # noqa: F401 - registers the acc.* handlers here too
from tests.acceptance.cluster import Cluster
from tests.factories import AppFactory, MembershipFactory
from tests.helpers import wait_for
from triggers.models import CronTick, CronTriggerDetails
from triggers.pg_repository import PgTriggerRepo
from triggers.repository import CronSpec, NewTrigger

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]

TRIGGERS = 50  # each ticks every second: 50 ticks a second
RUN_FOR = 22.0  # seconds: at least 1,000 ticks
KILL_EVERY = 3.0  # seconds between kill -9 of a random worker


def _ticks_seen(app):
    """{(trigger_id, scheduled_at): [(attempt, pid), ...]}, one entry per execution."""
    seen = defaultdict(list)
    for entry in KvEntry.objects.filter(app=app, collection="ticks"):
        trigger_id, scheduled_at, attempt = entry.key.split("|")
        seen[(trigger_id, scheduled_at)].extend(
            [(int(attempt), entry.value["pid"])] * entry.version
        )
    return seen


def test_ticks_are_written_once_and_none_is_lost_while_workers_die(tmp_path):
    app = AppFactory(max_concurrency=1000)
    admin = MembershipFactory(app=app, role=Role.AppAdmin.value).principal
    script = Script.objects.create(app=app, name="tick", handler="acc.cron_tick")
    repo = PgTriggerRepo()
    triggers = [
        repo.create(
            NewTrigger(
                app_id=app.id,
                kind="cron",
                script_id=script.id,
                name=f"every-second-{i}",
                registered_by_principal=admin.id,
                # Paused until every cluster runs: the ticks start together.
                # Overlap allowed: this is about writing ticks, not the policy.
                cron=CronSpec("* * * * * *", catchup="all", overlap="allow", paused=True),
            )
        )
        for i in range(TRIGGERS)
    ]
    clusters = [Cluster(connection.settings_dict, tmp_path / f"c{i}.log").start() for i in range(3)]
    killed: set[int] = set()
    try:
        # Resuming sets each watermark to now: the ticks start from here.
        CronTriggerDetails.objects.update(paused=False)
        started = CronTriggerDetails.objects.values_list("watermark", flat=True).first()
        deadline = time.monotonic() + RUN_FOR
        rng = random.Random(7)
        while time.monotonic() < deadline:
            time.sleep(KILL_EVERY)
            pids = {pid for runs in _ticks_seen(app).values() for _, pid in runs} - killed
            if pids:
                victim = rng.choice(sorted(pids))
                os.kill(victim, signal.SIGKILL)
                killed.add(victim)
        # Stop the schedules: ticks written ahead and not started are dropped
        # with their keys; every tick left in cron_ticks must run.
        stopped = datetime.now(UTC)
        CronTriggerDetails.objects.update(paused=True)
        wait_for(
            lambda: not OutboxEntry.objects.filter(app=app).exists(),
            timeout=120,
            what="every written tick to run",
        )
    finally:
        for c in clusters:
            c.stop(timeout=5, may_hang=True)  # killed workers may leave it stuck (cluster.py)

    written = defaultdict(set)
    for tick in CronTick.objects.filter(trigger_id__in=[t.id for t in triggers]):
        written[str(tick.trigger_id)].add(tick.scheduled_at)
    total = sum(map(len, written.values()))
    assert total >= 1000, f"only {total} ticks in {RUN_FOR}s"

    # None lost: each trigger has every second from its start to the pause
    # (the last second or two may have been written ahead and dropped).
    for t in triggers:
        got = sorted(written[str(t.id)])
        first = started.replace(microsecond=0) + timedelta(seconds=1)
        expected = [first + timedelta(seconds=s) for s in range(len(got))]
        assert got == expected, f"trigger {t.name}: ticks missing or out of step"
        assert got[-1] >= stopped.replace(microsecond=0) - timedelta(seconds=2), t.name

    # Every tick written ran; none ran that was not written (written once
    # each: cron_ticks' key, and the outbox rows carry those keys' ids).
    seen = _ticks_seen(app)
    iso = {
        (str(t), at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")) for t, ats in written.items() for at in ats
    }
    assert set(seen) == iso
    duplicates = {tick: runs for tick, runs in seen.items() if len(runs) > 1}
    for tick, runs in duplicates.items():
        assert any(pid in killed for _, pid in runs), f"{tick} ran twice with no kill: {runs}"
    assert not DeadLetter.objects.filter(app=app).exists()
    print(
        f"\n{total} ticks, {len(killed)} workers killed, {len(duplicates)} ticks run twice "
        f"(each by a killed worker's attempt)"
    )
