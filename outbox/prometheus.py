"""/metrics: the dispatcher counters and the outbox's gauges, for Prometheus.

Counters (and the claim-duration histogram, which is a set of counters) are
the cluster-wide totals every dispatcher process adds to in PostgreSQL, so
one scrape of any web process sees all hosts. Gauges are read from the
outbox at scrape time. Per-app series (the busiest apps only) appear when
PICLOUD_METRICS_PER_APP is on: they name apps, and the endpoint has no
per-app authorization.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from outbox.dispatch.metrics import (
    CLAIM_SECONDS,
    COUNTERS,
    CRON_LATENESS_SECONDS,
    CRON_MISSED,
    CRON_OVERLAP_DROPPED,
    EXECUTION_SECONDS,
    START_LATENCY_SECONDS,
    Histogram,
)
from outbox.storage.circuits import OPEN, PROBING
from outbox.storage.pg_circuits import PgCircuitRepo
from outbox.storage.pg_gauges import APP_COUNT_CAP, TOP_APPS, PgOutboxGauges
from outbox.storage.pg_repository import PgCounterStore, PgOutboxRepo
from picloud.config import MetricsConfig

HELP = {
    "dispatched": "Outbox rows the dispatchers started to handle.",
    "succeeded": "Executions that succeeded.",
    "retried": "Failed executions rescheduled for another attempt.",
    "dead_lettered": "Rows that ended as dead letters.",
    "authorization_failures": "Executions refused because the run-as principal lacks the right.",
    "abandoned": "Sync invocations whose result came after the caller had given up.",
}


def _buckets(histogram: Histogram, totals: dict[str, int]) -> tuple[list, float]:
    count = totals.get(histogram.count, 0)
    buckets = [(f"{b:g}", totals.get(histogram.bucket(b), 0)) for b in histogram.buckets]
    return [*buckets, ("+Inf", count)], totals.get(histogram.sum_us, 0) / 1_000_000


def histogram_family(
    name: str, documentation: str, histogram: Histogram, totals: dict[str, int]
) -> HistogramMetricFamily:
    """A histogram kept as counters (outbox/dispatch/metrics.py), for Prometheus."""
    buckets, total = _buckets(histogram, totals)
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=total)


def per_kind_family(
    name: str, documentation: str, histograms: dict[str, Histogram], totals: dict[str, int]
) -> HistogramMetricFamily:
    """One histogram per source kind, as one family labelled source_kind."""
    family = HistogramMetricFamily(name, documentation, labels=["source_kind"])
    for kind, histogram in histograms.items():
        buckets, total = _buckets(histogram, totals)
        family.add_metric([kind], buckets, total)
    return family


class PicloudCollector:
    def __init__(self, config: MetricsConfig) -> None:
        self.config = config

    def collect(self):
        totals = PgCounterStore().read()
        for name in COUNTERS:
            yield CounterMetricFamily(
                f"picloud_dispatcher_{name}", HELP[name], value=totals.get(name, 0)
            )
        yield histogram_family(
            "picloud_dispatcher_claim_seconds",
            "How long each claim statement took, in seconds.",
            CLAIM_SECONDS,
            totals,
        )
        yield histogram_family(
            "picloud_cron_tick_lateness_seconds",
            "How late each cron tick's first run started after its scheduled time, in seconds.",
            CRON_LATENESS_SECONDS,
            totals,
        )
        yield per_kind_family(
            "picloud_execution_seconds",
            "How long each execution ran, in seconds, by source kind.",
            EXECUTION_SECONDS,
            totals,
        )
        yield per_kind_family(
            "picloud_start_latency_seconds",
            "How late each execution started after its row was due (a new event's "
            "insert, a retry's backoff, a tick's time), in seconds, by source kind.",
            START_LATENCY_SECONDS,
            totals,
        )
        missed = CounterMetricFamily(
            "picloud_cron_missed_ticks",
            "Cron ticks given up after downtime, by the trigger's catch-up policy.",
            labels=["policy"],
        )
        for policy, name in CRON_MISSED.items():
            missed.add_metric([policy], totals.get(name, 0))
        yield missed
        yield CounterMetricFamily(
            "picloud_cron_overlap_dropped_ticks",
            "Cron ticks not run because the trigger's previous tick was still running "
            "or retrying (overlap skip, or buffer_one with one already waiting).",
            value=totals.get(CRON_OVERLAP_DROPPED, 0),
        )
        due, oldest = PgOutboxRepo().stats()
        yield GaugeMetricFamily("picloud_outbox_backlog", "Outbox rows due now.", value=due)
        age = (timezone.now() - oldest).total_seconds() if oldest else 0.0
        yield GaugeMetricFamily(
            "picloud_outbox_oldest_due_age_seconds",
            "How long the oldest due outbox row has been waiting.",
            value=max(age, 0.0),
        )
        gauges = PgOutboxGauges()
        yield GaugeMetricFamily(
            "picloud_dispatcher_in_flight",
            "Executions in flight on every cluster: outbox rows whose lease runs.",
            value=gauges.in_flight(),
        )
        circuits = PgCircuitRepo().counts()
        yield GaugeMetricFamily(
            "picloud_circuits_open",
            "Scripts whose circuit is open: their rows wait, unclaimed.",
            value=circuits[OPEN],
        )
        yield GaugeMetricFamily(
            "picloud_circuits_probing",
            "Scripts whose circuit's cool-down ended: one row at a time probes.",
            value=circuits[PROBING],
        )
        if self.config.per_app:
            yield from _per_app(gauges)


def _per_app(gauges: PgOutboxGauges):
    busiest = gauges.busiest_apps()
    cap = f"counted up to {APP_COUNT_CAP} per app"
    backlog = GaugeMetricFamily(
        "picloud_app_backlog",
        f"Rows due now, for the {TOP_APPS} apps with the most ({cap}).",
        labels=["app"],
    )
    in_flight = GaugeMetricFamily(
        "picloud_app_in_flight",
        f"Rows in flight, for the apps of picloud_app_backlog ({cap}).",
        labels=["app"],
    )
    for app in busiest.top:
        backlog.add_metric([app.slug], app.due)
        in_flight.add_metric([app.slug], app.in_flight)
    yield backlog
    yield in_flight
    yield GaugeMetricFamily(
        "picloud_app_backlog_other",
        f"Rows due now, summed over the apps not in picloud_app_backlog ({cap}).",
        value=busiest.other_due,
    )
    yield GaugeMetricFamily(
        "picloud_app_in_flight_other",
        f"Rows in flight, summed over the apps not in picloud_app_in_flight ({cap}).",
        value=busiest.other_in_flight,
    )


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PicloudCollector(MetricsConfig.current()))
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
