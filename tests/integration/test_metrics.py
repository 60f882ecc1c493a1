from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from outbox.storage.pg_repository import PgCounterStore, PgOutboxRepo
from outbox.storage.repository import NewOutboxRow
from tests.factories import ScriptFactory, UserFactory

pytestmark = pytest.mark.django_db


def _scrape(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


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
