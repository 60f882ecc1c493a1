"""/metrics: the dispatcher counters and the outbox backlog, for Prometheus.

Counters are the cluster-wide totals every dispatcher process adds to in
PostgreSQL, so one scrape of any web process sees all hosts. Gauges are read
from the outbox at scrape time. Only totals are exposed, no per-app figures.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from outbox.dispatch.metrics import COUNTERS
from outbox.storage.pg_repository import PgCounterStore, PgOutboxRepo

HELP = {
    "dispatched": "Outbox rows the dispatchers started to handle.",
    "succeeded": "Executions that succeeded.",
    "retried": "Failed executions rescheduled for another attempt.",
    "dead_lettered": "Rows that ended as dead letters.",
    "authorization_failures": "Executions refused because the run-as principal lacks the right.",
    "abandoned": "Sync invocations whose result came after the caller had given up.",
}


class PicloudCollector:
    def collect(self):
        totals = PgCounterStore().read()
        for name in COUNTERS:
            yield CounterMetricFamily(
                f"picloud_dispatcher_{name}", HELP[name], value=totals.get(name, 0)
            )
        due, oldest = PgOutboxRepo().stats()
        yield GaugeMetricFamily("picloud_outbox_backlog", "Outbox rows due now.", value=due)
        age = (timezone.now() - oldest).total_seconds() if oldest else 0.0
        yield GaugeMetricFamily(
            "picloud_outbox_oldest_due_age_seconds",
            "How long the oldest due outbox row has been waiting.",
            value=max(age, 0.0),
        )


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PicloudCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
