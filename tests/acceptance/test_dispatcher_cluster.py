"""The dispatcher as operators run it: `manage.py qcluster` in a subprocess."""

import itertools
import os
import signal
import time
from collections import Counter

import pytest
from django.db import connection

from deadletters.models import DeadLetter
from outbox.models import OutboxEntry
from picloud import kv
from picloud.config import DispatcherConfig
from picloud.domain.authz import Role
from picloud.models import AppMembership, KvEntry, Script
from tests.acceptance import handlers  # noqa: F401 - registers the acc.* handlers here too
from tests.acceptance.cluster import ACCEPTANCE_ENV, Cluster
from tests.factories import AppFactory, MembershipFactory, kv_trigger
from tests.helpers import wait_for
from triggers.pg_repository import PgTriggerRepo
from triggers.repository import DeadLetterSpec, NewTrigger

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]

# Rows a cluster may have run but not yet acknowledged: each process's
# executions in flight plus the successes it acknowledges with its next claim.
IN_FLIGHT_AT_MOST = int(ACCEPTANCE_ENV["PICLOUD_QCLUSTER_WORKERS"]) * (
    DispatcherConfig().max_in_flight + 2 * DispatcherConfig().max_batch
)


@pytest.fixture
def cluster(tmp_path):
    clusters = []

    def start(name="cluster", **env):
        c = Cluster(connection.settings_dict, tmp_path / f"{name}.log", **env).start()
        clusters.append(c)
        return c

    yield start
    for c in clusters:
        c.stop()


@pytest.fixture
def tenant(db):
    app = AppFactory()
    admin = MembershipFactory(app=app, role=Role.AppAdmin.value).principal
    return app, admin


def _script(app, handler_name):
    return Script.objects.create(app=app, name=handler_name, handler=handler_name)


def _runs(app):
    """{outbox_id: [attempt, ...]}: one entry per execution, counted. Handlers
    write their record under "<outbox id>:<attempt>"; two executions of the
    same attempt write the same key twice, which its version counts."""
    runs: dict[str, list[int]] = {}
    for entry in KvEntry.objects.filter(app=app, collection="runs"):
        outbox_id, attempt = entry.key.rsplit(":", 1)
        runs.setdefault(outbox_id, []).extend([int(attempt)] * entry.version)
    return runs


def test_a_kv_write_runs_its_handler_once(cluster, tenant):
    app, admin = tenant
    kv_trigger(app, _script(app, "acc.record"), admin, collection="orders:*")
    running = cluster()
    kv.put(app, "orders:eu", "o1", {"total": 3}, principal=admin)
    wait_for(
        lambda: not OutboxEntry.objects.exists() and _runs(app), timeout=30, what="the handler"
    )
    # A second run would have to finish before the cluster stops: stopping
    # waits for running rows, so after it every run that happened is recorded.
    running.stop()
    runs = _runs(app)
    assert list(runs.values()) == [[1]], runs
    record = KvEntry.objects.get(app=app, collection="runs").value
    assert record["event"]["key"] == "o1" and record["event"]["op"] == "insert"


def test_a_failing_handler_runs_max_attempts_with_growing_delays_then_one_dead_letter(
    cluster, tenant
):
    app, admin = tenant
    kv_trigger(app, _script(app, "acc.fail"), admin, collection="jobs")
    cluster()
    kv.put(app, "jobs", "j1", 1, principal=admin)
    letter = wait_for(lambda: DeadLetter.objects.first(), timeout=60, what="the dead letter")
    assert DeadLetter.objects.count() == 1
    assert letter.attempts == 3
    assert letter.errors == [f"RuntimeError: acc.fail attempt {n}" for n in (1, 2, 3)]
    starts = sorted(e.value["at"] for e in KvEntry.objects.filter(app=app, collection="runs"))
    assert len(starts) == 3, "exactly MAX_ATTEMPTS executions"
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # base 300 ms doubling, no jitter: due 0.3 s then 0.6 s after each failure;
    # a rescheduled row must run within 1 s of its due time (no polling gap).
    assert 0.3 <= gaps[0] <= 0.3 + 1.0, gaps
    assert 0.6 <= gaps[1] <= 0.6 + 1.0, gaps
    assert gaps[1] > gaps[0], gaps
    assert not OutboxEntry.objects.exists()


def test_a_revoked_membership_fails_the_next_execution_without_running_it(cluster, tenant):
    app, admin = tenant
    kv_trigger(app, _script(app, "acc.record"), admin, collection="c")
    writer = MembershipFactory(app=app, role=Role.Developer.value).principal
    AppMembership.objects.filter(app=app, principal=admin).delete()
    cluster()
    kv.put(app, "c", "k", 1, principal=writer)
    letter = wait_for(lambda: DeadLetter.objects.first(), timeout=30, what="the dead letter")
    assert "unauthorized" in letter.last_error and letter.attempts == 1
    assert _runs(app) == {}, "the handler must not run"


def test_kill_9_mid_handler_loses_nothing(cluster, tenant):
    app, admin = tenant
    kv_trigger(app, _script(app, "acc.slow_first_attempt"), admin, collection="c")
    c = cluster()
    kv.put(app, "c", "k", {"seconds": 30}, principal=admin)
    first = wait_for(
        lambda: KvEntry.objects.filter(app=app, collection="runs").first(),
        timeout=30,
        what="the first attempt",
    )
    os.kill(first.value["pid"], signal.SIGKILL)
    killed_at = time.time()
    wait_for(
        lambda: any(2 in attempts for attempts in _runs(app).values()),
        timeout=30,
        what="the row to run again",
    )
    wait_for(
        lambda: not OutboxEntry.objects.exists(), timeout=30, what="the row to be acknowledged"
    )
    second = KvEntry.objects.get(app=app, collection="runs", key__endswith=":2").value
    assert second["pid"] != first.value["pid"], "a new worker process ran it"
    assert second["at"] - killed_at >= 2.5, "it came back when the lease ran out, not before"
    assert not DeadLetter.objects.exists()
    assert "reincarnated worker" in c.log(), "django-q2 replaced the killed worker"
    c.stop(timeout=15, may_hang=True)
    assert list(_runs(app).values()) == [[1, 2]], "the killed attempt, then exactly one more"


def test_two_clusters_drain_5000_rows_each_exactly_once(cluster, tenant):
    app, admin = tenant
    script = _script(app, "acc.record")
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO outbox (app_id, source_kind, script_id, run_as_principal, payload) "
            "SELECT %s, 'kv', %s, %s, jsonb_build_object('n', g) FROM generate_series(1, 5000) g",
            [app.id, script.id, admin.id],
        )
    clusters = [cluster("a"), cluster("b")]
    wait_for(
        lambda: not OutboxEntry.objects.exists(),
        timeout=240,
        interval=0.5,
        what="5,000 rows drained",
    )
    for running in clusters:  # every run that happened is recorded once they stopped
        running.stop()
    runs = _runs(app)
    assert len(runs) == 5000, f"{len(runs)} distinct rows ran"
    twice = {k: v for k, v in runs.items() if len(v) > 1}
    assert not twice, f"{len(twice)} rows ran more than once"
    pids = Counter(e.value["pid"] for e in KvEntry.objects.filter(app=app, collection="runs"))
    assert len(pids) >= 3, f"work should spread over the clusters' processes: {pids}"


def test_dead_letter_triggers_resolve_their_dead_letter_both_ways(cluster, tenant):
    app, admin = tenant
    kv_trigger(app, _script(app, "acc.fail"), admin, collection="jobs")
    PgTriggerRepo().create(
        NewTrigger(
            app.id,
            "dead_letter",
            _script(app, "acc.dead_letter_handler").id,
            "on-dead-letter",
            admin.id,
            dead_letter=DeadLetterSpec(source_kind="kv"),
        )
    )
    cluster()
    kv.put(app, "jobs", "good", {"handler_should_fail": False}, principal=admin)
    kv.put(app, "jobs", "bad", {"handler_should_fail": True}, principal=admin)

    def settled():
        letters = list(DeadLetter.objects.all())
        return len(letters) == 2 and all(d.resolution for d in letters) and letters

    letters = wait_for(settled, timeout=90, what="both dead letters resolved")
    by_key = {d.payload["key"]: d for d in letters}
    assert by_key["good"].resolution == "handled_by_script"
    assert by_key["bad"].resolution == "handler_failed"
    assert "fails on purpose" in by_key["bad"].note
    assert DeadLetter.objects.count() == 2, "no dead letter about a dead-letter handler"


def test_sigterm_releases_claimed_rows_and_a_new_cluster_finishes_them(cluster, tenant):
    app, admin = tenant
    script = _script(app, "acc.record")
    first = cluster("first")
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO outbox (app_id, source_kind, script_id, run_as_principal, payload) "
            "SELECT %s, 'kv', %s, %s, jsonb_build_object('n', g) FROM generate_series(1, 2000) g",
            [app.id, script.id, admin.id],
        )
    wait_for(lambda: len(_runs(app)) >= 50, timeout=30, what="draining to start")
    assert first.stop() == 0
    left = OutboxEntry.objects.count()
    leased = OutboxEntry.objects.filter(due_at__gt=time_now()).count()
    assert leased == 0, f"{leased} of {left} rows left leased: claims must be released on SIGTERM"
    cluster("second")
    wait_for(lambda: not OutboxEntry.objects.exists(), timeout=120, what="the rest drained")
    runs = _runs(app)
    assert len(runs) == 2000
    assert all(len(v) == 1 for v in runs.values()), "a graceful stop runs nothing twice"


def test_the_dispatcher_survives_its_connections_being_killed(cluster, tenant):
    """What a PostgreSQL restart looks like from the client: every connection drops."""
    app, admin = tenant
    script = _script(app, "acc.record")
    cluster()
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO outbox (app_id, source_kind, script_id, run_as_principal, payload) "
            "SELECT %s, 'kv', %s, %s, jsonb_build_object('n', g) FROM generate_series(1, 1000) g",
            [app.id, script.id, admin.id],
        )
    wait_for(lambda: len(_runs(app)) >= 50, timeout=30, what="draining to start")
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert cur.fetchone()[0] > 0
    wait_for(
        lambda: not OutboxEntry.objects.exists(),
        timeout=120,
        what="draining to finish after the drop",
    )
    runs = _runs(app)
    assert len(runs) == 1000, "nothing lost"
    # Rows whose acknowledgement the drop lost run again, each on a new
    # attempt (after its lease): never twice on the same claim, and no more
    # than the loops had claimed or waiting to be acknowledged at the drop.
    assert all(len(set(v)) == len(v) for v in runs.values()), "a claim ran twice"
    again = sum(len(v) - 1 for v in runs.values())
    assert again <= IN_FLIGHT_AT_MOST, f"{again} rows ran again, more than a drop explains"
    kv.put(app, "c", "after", 1, principal=admin)  # and new work still flows
    kv_trigger(app, script, admin, collection="late")
    kv.put(app, "late", "k", 1, principal=admin)
    wait_for(lambda: len(_runs(app)) == 1001, timeout=30, what="new work after reconnecting")


def time_now():
    from django.utils import timezone

    return timezone.now()
