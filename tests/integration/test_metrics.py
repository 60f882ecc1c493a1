from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from outbox.dispatch.metrics import (
    CLAIM_SECONDS,
    CRON_LATENESS_SECONDS,
    CRON_MISSED,
    EXECUTION_SECONDS,
    START_LATENCY_SECONDS,
    Counters,
)
from outbox.models import ScriptCircuit
from outbox.storage.circuits import ScriptOutcomes
from outbox.storage.pg_circuits import PgCircuitRepo
from outbox.storage.pg_gauges import TOP_APPS, PgOutboxGauges
from outbox.storage.pg_repository import PgCounterStore, PgOutboxRepo
from outbox.storage.repository import NewOutboxRow
from picloud.config import CircuitConfig, MetricsConfig
from tests.factories import AppFactory, ScriptFactory, UserFactory

pytestmark = pytest.mark.django_db


def _scrape(client):
    """{name: value}; a labelled sample's name carries its labels: name{le="0.5"}."""
    response = client.get("/metrics")
    assert response.status_code == 200
    return {
        sample.name + _labels(sample.labels): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def _labels(labels):
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""


def test_metrics_expose_counters_backlog_and_oldest_age(client, app):
    before = _scrape(client)
    PgCounterStore().add({"succeeded": 4, "dead_lettered": 1})
    script, principal = ScriptFactory(app=app), UserFactory().principal
    repo = PgOutboxRepo()
    repo.insert(
        NewOutboxRow(
            app.id, "kv", script.id, principal.id, {}, due_at=timezone.now() - timedelta(seconds=90)
        )
    )
    repo.insert(
        NewOutboxRow(
            app.id, "kv", script.id, principal.id, {}, due_at=timezone.now() + timedelta(hours=1)
        )
    )

    after = _scrape(client)

    assert (
        after["picloud_dispatcher_succeeded_total"] - before["picloud_dispatcher_succeeded_total"]
        == 4
    )
    assert (
        after["picloud_dispatcher_dead_lettered_total"]
        - before["picloud_dispatcher_dead_lettered_total"]
        == 1
    )
    for name in ("dispatched", "retried", "authorization_failures", "abandoned"):
        assert f"picloud_dispatcher_{name}_total" in after
    assert after["picloud_outbox_backlog"] == 1, "only due rows count"
    assert 85 <= after["picloud_outbox_oldest_due_age_seconds"] < 300


def _families(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    return {f.name: f for f in text_string_to_metric_families(response.content.decode())}


def _enqueue(repo, script, principal, n, *, due_in=None):
    due_at = timezone.now() + due_in if due_in is not None else None
    return [
        repo.insert(NewOutboxRow(script.app_id, "kv", script.id, principal.id, {}, due_at=due_at))
        for _ in range(n)
    ]


def test_in_flight_counts_rows_whose_lease_runs_on_every_app(client):
    repo, principal = PgOutboxRepo(), UserFactory().principal
    first, second = ScriptFactory(), ScriptFactory()
    _enqueue(repo, first, principal, 4)
    _enqueue(repo, second, principal, 3)
    claimed = repo.claim_due(limit=5, lease=300)
    assert len(claimed) == 5
    assert _scrape(client)["picloud_dispatcher_in_flight"] == 5

    repo.release([claimed[0].id])  # handed back: no longer in flight
    with connection.cursor() as cur:  # a lease that ran out (its worker died)
        cur.execute(
            "UPDATE outbox SET leased_until = now() - interval '1 second' WHERE id = %s",
            [claimed[1].id],
        )
    assert _scrape(client)["picloud_dispatcher_in_flight"] == 3


def test_per_app_series_are_off_by_default_and_name_no_app(client):
    repo, principal = PgOutboxRepo(), UserFactory().principal
    script = ScriptFactory(app=AppFactory(slug="secret-tenant"))
    _enqueue(repo, script, principal, 2)
    text = client.get("/metrics").content.decode()
    assert "secret-tenant" not in text
    assert "picloud_app_" not in text
    assert _scrape(client)["picloud_outbox_backlog"] == 2


def test_per_app_series_show_the_busiest_apps_and_sum_the_rest(client, override_config):
    override_config(MetricsConfig(per_app=True))
    repo, principal = PgOutboxRepo(), UserFactory().principal
    # 13 apps: app-k has k + 1 due rows; app-12's first 3 are claimed (in flight).
    scripts = [ScriptFactory(app=AppFactory(slug=f"busy-{k:02d}")) for k in range(13)]
    for k, script in enumerate(scripts):
        _enqueue(repo, script, principal, k + 1)
        _enqueue(repo, script, principal, 2, due_in=timedelta(hours=1))  # not due: not counted
    in_flight = [
        row for row in repo.claim_due(limit=200, lease=300) if row.app_id == scripts[12].app_id
    ]
    repo.release([r.id for r in repo.claim_due(limit=200, lease=300)])  # nothing left due
    # Every due row got claimed above; hand back all but 3 of app busy-12's.
    with connection.cursor() as cur:
        cur.execute(
            "UPDATE outbox SET due_at = now(), leased_until = NULL, attempts = 0 "
            "WHERE leased_until IS NOT NULL AND NOT (id = ANY (%s))",
            [[r.id for r in in_flight[:3]]],
        )

    families = _families(client)
    backlog = {s.labels["app"]: s.value for s in families["picloud_app_backlog"].samples}
    flying = {s.labels["app"]: s.value for s in families["picloud_app_in_flight"].samples}
    # busy-12 has 10 due (13 - 3 in flight), ranking below busy-11 (12) and busy-10 (11).
    expected = {f"busy-{k:02d}": k + 1 for k in range(3, 12)} | {"busy-12": 10}
    assert backlog == expected
    assert set(flying) == set(expected), "in flight is shown for the same apps"
    assert flying["busy-12"] == 3 and sum(flying.values()) == 3
    scraped = _scrape(client)
    assert scraped["picloud_app_backlog_other"] == 1 + 2 + 3  # busy-00, -01, -02
    assert scraped["picloud_app_in_flight_other"] == 0
    assert scraped["picloud_dispatcher_in_flight"] == 3


def test_per_app_series_never_carry_more_than_the_top_apps(client, override_config):
    override_config(MetricsConfig(per_app=True))
    repo, principal = PgOutboxRepo(), UserFactory().principal
    sizes = [3] * (TOP_APPS + 1) + [1] * 14  # 25 apps, 11 of them tied for busiest
    for size in sizes:
        _enqueue(repo, ScriptFactory(), principal, size)
    families = _families(client)
    assert len(families["picloud_app_backlog"].samples) == TOP_APPS
    assert len(families["picloud_app_in_flight"].samples) == TOP_APPS
    total = sum(s.value for s in families["picloud_app_backlog"].samples)
    assert total + _scrape(client)["picloud_app_backlog_other"] == sum(sizes)
    assert min(s.value for s in families["picloud_app_backlog"].samples) == 3, "the busiest"


def test_an_apps_count_stops_at_the_cap(db):
    repo, principal = PgOutboxRepo(), UserFactory().principal
    big, small = ScriptFactory(), ScriptFactory()
    _enqueue(repo, big, principal, 7)
    _enqueue(repo, small, principal, 2)
    busiest = PgOutboxGauges().busiest_apps(top=1, count_cap=5)
    assert [(a.slug, a.due) for a in busiest.top] == [(big.app.slug, 5)]
    assert busiest.other_due == 2
    with pytest.raises(ValueError, match="at least 1"):
        PgOutboxGauges().busiest_apps(top=0)


def test_claim_durations_are_a_histogram_summed_across_processes(client):
    before = _scrape(client)
    for seconds in (0.0004, 0.003, 0.003, 0.2):  # as if from two processes' flushes
        counters = Counters()
        counters.observe(CLAIM_SECONDS, seconds)
        counters.flush(PgCounterStore())
    after = _scrape(client)

    def delta(name):
        return after[name] - before.get(name, 0)

    assert delta("picloud_dispatcher_claim_seconds_count") == 4
    assert delta("picloud_dispatcher_claim_seconds_sum") == pytest.approx(0.2064)
    buckets = {
        le: delta(f'picloud_dispatcher_claim_seconds_bucket{{le="{le}"}}')
        for le in ("0.001", "0.0025", "0.005", "0.25", "+Inf")
    }
    assert buckets == {"0.001": 1, "0.0025": 1, "0.005": 3, "0.25": 4, "+Inf": 4}


def test_circuits_open_and_probing_are_counted(client):
    circuits = PgCircuitRepo()
    config = CircuitConfig(failure_threshold=1, cooldown_ms=60_000)
    opened, probing = ScriptFactory(), ScriptFactory()
    for script in (opened, probing):
        circuits.record([ScriptOutcomes(script.id, script.app_id, False, 1, "503")], config)
    ScriptCircuit.objects.filter(script=probing).update(
        open_until=timezone.now() - timedelta(seconds=1)
    )
    scraped = _scrape(client)
    assert (scraped["picloud_circuits_open"], scraped["picloud_circuits_probing"]) == (1, 1)


def test_cron_lateness_and_missed_ticks_by_policy(client):
    before = _scrape(client)
    counters = Counters()
    counters.observe(CRON_LATENESS_SECONDS, 0.3)
    counters.add({CRON_MISSED["all"]: 3, CRON_MISSED["skip"]: 1})
    counters.flush(PgCounterStore())
    after = _scrape(client)

    def grew(name):
        return after[name] - before.get(name, 0)

    assert grew("picloud_cron_tick_lateness_seconds_count") == 1
    assert grew('picloud_cron_tick_lateness_seconds_bucket{le="0.5"}') == 1
    assert grew('picloud_cron_tick_lateness_seconds_bucket{le="0.25"}') == 0
    assert grew('picloud_cron_missed_ticks_total{policy="all"}') == 3
    assert grew('picloud_cron_missed_ticks_total{policy="skip"}') == 1
    assert grew('picloud_cron_missed_ticks_total{policy="latest"}') == 0


def test_execution_and_start_latency_are_histograms_per_source_kind(client):
    before = _scrape(client)
    counters = Counters()
    counters.observe(EXECUTION_SECONDS["kv"], 0.02)
    counters.observe(EXECUTION_SECONDS["kv"], 0.3)
    counters.observe(EXECUTION_SECONDS["cron"], 2.0)
    counters.observe(START_LATENCY_SECONDS["email"], 0.007)
    counters.flush(PgCounterStore())
    after = _scrape(client)

    def delta(name):
        return after[name] - before.get(name, 0)

    assert delta('picloud_execution_seconds_count{source_kind="kv"}') == 2
    assert delta('picloud_execution_seconds_sum{source_kind="kv"}') == pytest.approx(0.32)
    assert delta('picloud_execution_seconds_bucket{le="0.025",source_kind="kv"}') == 1
    assert delta('picloud_execution_seconds_bucket{le="0.5",source_kind="kv"}') == 2
    assert delta('picloud_execution_seconds_count{source_kind="cron"}') == 1
    assert delta('picloud_start_latency_seconds_bucket{le="0.01",source_kind="email"}') == 1
    assert delta('picloud_start_latency_seconds_count{source_kind="kv"}') == 0
