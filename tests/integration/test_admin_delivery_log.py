"""Admin's delivery log and dashboard: scoped per app like every page (another
app's attempts unreachable by URL, filter or search), paged newest first,
bad filters refused with what is allowed."""

import time
import uuid
from dataclasses import replace
from datetime import timedelta

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from outbox.storage.delivery_log import Attempt, Rollups
from outbox.storage.pg_delivery_log import PgDeliveryLog
from picloud.domain.authz import Role
from tests.factories import AppFactory, MembershipFactory, ScriptFactory, kv_trigger

pytestmark = pytest.mark.django_db

LOG = reverse("admin:outbox_deliveryattempt_changelist")
DASHBOARD = reverse("admin:outbox_deliverydashboard_changelist")


@pytest.fixture(autouse=True)
def _empty_log(db):
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE delivery_log, delivery_minutes, trigger_hours, outbox_samples")


def _tenant(slug):
    app = AppFactory(slug=slug)
    admin = MembershipFactory(app=app, role=Role.AppAdmin.value).principal
    script = ScriptFactory(app=app, name=f"{slug}-script")
    trigger = kv_trigger(app, script, admin, name=f"{slug}-orders", collection="orders")
    return app, admin, trigger


def _attempt(app, trigger, *, outcome="success", key="orders/o-1", at=None, detail=""):
    return Attempt(
        outbox_id=uuid.uuid4(),
        app_id=app.id,
        trigger_id=trigger.id,
        script_id=trigger.script_id,
        source_kind="kv",
        attempt=1,
        started_at=at or timezone.now(),
        duration_ms=12,
        outcome=outcome,
        disposition="done" if outcome == "success" else "dead_letter",
        status_code=None,
        event_key=key,
        detail=detail,
    )


@pytest.fixture
def tenants():
    shop, shop_admin, shop_trigger = _tenant("shop")
    other, _, other_trigger = _tenant("other-secret")
    mine = [_attempt(shop, shop_trigger), _attempt(shop, shop_trigger, outcome="error")]
    theirs = _attempt(other, other_trigger, outcome="error", key="orders/secret", detail="s3cr3t")
    PgDeliveryLog().write([*mine, theirs])
    rollups = Rollups()
    for a in [*mine, theirs]:
        rollups.add(a.app_id, a.trigger_id, time.time(), a.duration_ms, a.failed)
    PgDeliveryLog().add_rollups(rollups)
    return {
        "shop": shop,
        "admin": shop_admin.user,
        "mine": mine,
        "theirs": theirs,
        "shop_trigger": shop_trigger,
        "other": other,
        "other_trigger": other_trigger,
    }


def _ids(response):
    return {r["outbox_id"] for r in response.context["rows"]}


def test_an_app_admin_sees_its_attempts_and_never_another_apps(client, tenants):
    client.force_login(tenants["admin"])
    theirs = tenants["theirs"]
    response = client.get(LOG)
    assert response.status_code == 200
    assert _ids(response) == {a.outbox_id for a in tenants["mine"]}
    assert b"s3cr3t" not in response.content and b"other-secret" not in response.content
    # Not by filter, search or the outbox row's own page either.
    for query in (
        {"app": str(tenants["other"].id)},
        {"trigger": str(tenants["other_trigger"].id)},
        {"q": str(theirs.outbox_id)},
        {"q": "orders/secret"},
    ):
        assert _ids(client.get(LOG, query)) == set(), query
    follow = client.get(reverse("admin:outbox_deliveryattempt_change", args=[theirs.outbox_id]))
    assert _ids(client.get(follow.url)) == set()


def test_filters_and_search(client, tenants):
    client.force_login(tenants["admin"])
    ok, failed = tenants["mine"]
    assert _ids(client.get(LOG, {"result": "failed"})) == {failed.outbox_id}
    assert _ids(client.get(LOG, {"outcome": "success"})) == {ok.outbox_id}
    assert _ids(client.get(LOG, {"q": str(ok.outbox_id)})) == {ok.outbox_id}
    assert _ids(client.get(LOG, {"q": "orders/o-1"})) == {ok.outbox_id, failed.outbox_id}
    trigger = tenants["shop_trigger"]
    assert len(_ids(client.get(LOG, {"trigger": str(trigger.id), "result": "failed"}))) == 1


@pytest.mark.parametrize(
    "query, says",
    [
        ({"result": "maybe"}, "result 'maybe' is not one of: succeeded, failed"),
        ({"trigger": "12"}, "trigger takes an id"),
        ({"app": "x\u0660"}, "app takes an id"),
        ({"before": "yesterday"}, "before takes the link"),
        ({"kind": "sms"}, "kind 'sms' is not one of: kv, cron"),
        ({"q": "a\x00b"}, "NUL"),
    ],
)
def test_a_bad_filter_is_refused_saying_what_is_allowed(client, tenants, query, says):
    client.force_login(tenants["admin"])
    response = client.get(LOG, query)
    assert response.status_code == 302 and response.url == LOG
    [message] = [str(m) for m in get_messages(response.wsgi_request)]
    assert says in message


def test_pages_go_back_in_time_without_counting(client, tenants):
    app, trigger = tenants["shop"], tenants["shop_trigger"]
    base = timezone.now() - timedelta(hours=1)
    PgDeliveryLog().write(
        [_attempt(app, trigger, at=base - timedelta(seconds=i)) for i in range(60)]
    )
    client.force_login(tenants["admin"])
    first = client.get(LOG)
    assert len(first.context["rows"]) == 50 and first.context["older"]
    second = client.get(LOG + first.context["older"])
    assert len(second.context["rows"]) == 12 and second.context["older"] is None
    assert not _ids(first) & _ids(second)
    times = [r["started_at"] for r in first.context["rows"] + second.context["rows"]]
    assert times == sorted(times, reverse=True)


def test_who_may_not_see_the_outbox_sees_no_log(client, tenants):
    developer = MembershipFactory(app=tenants["shop"], role=Role.Developer.value).principal.user
    client.force_login(developer)
    assert client.get(LOG).status_code == 403
    assert client.get(DASHBOARD).status_code == 403


def test_the_dashboard_charts_only_the_users_apps(client, tenants):
    client.force_login(tenants["admin"])
    response = client.get(DASHBOARD)
    assert response.status_code == 200
    body = response.content.decode()
    assert body.count('class="picloud-chart"') == 4, "totals, backlog, oldest age, one app"
    assert "Attempts per minute of shop" in body and "other-secret" not in body
    [failing] = response.context["failing"]
    assert failing["trigger_name"] == "shop-orders" and failing["failed"] == 1
    assert client.get(DASHBOARD, {"app": str(tenants["other"].id)}).context["failing"] == []


def test_a_superuser_sees_every_app(admin_client, tenants):
    rows = admin_client.get(LOG).context["rows"]
    assert {r["app_slug"] for r in rows} == {"shop", "other-secret"}
    assert len(admin_client.get(DASHBOARD).context["failing"]) == 2


def test_the_trigger_list_shows_each_triggers_health(client, tenants):
    client.force_login(tenants["admin"])
    response = client.get(reverse("admin:triggers_trigger_changelist"))
    body = response.content.decode()
    assert "50.0% of 2" in body, "one success and one failure in 24 hours"
    assert "≤ 25 ms" in body, "both took 12 ms: the bucket ending at 25 ms"
    failed = f"?trigger={tenants['shop_trigger'].id}&amp;result=failed"
    assert failed in body, "the last failure links to the failed attempts"
    assert "other-secret" not in body


def test_a_triggers_page_lists_its_recent_attempts(client, tenants):
    client.force_login(tenants["admin"])
    url = reverse("admin:triggers_trigger_change", args=[tenants["shop_trigger"].id])
    page = client.get(url).content.decode()
    table = page[page.index("recent-attempts") :]
    assert table.count("<tr><td>") == 2 and "dead_letter" in table
    assert 'id="trigger-attempts"' in page and 'id="trigger-failed-attempts"' in page


def test_a_dead_letters_page_links_to_its_rows_attempts(client, tenants):
    from deadletters.models import DeadLetter

    shop, trigger = tenants["shop"], tenants["shop_trigger"]
    failed = tenants["mine"][1]
    letter = DeadLetter.objects.create(
        app=shop,
        source_kind="kv",
        trigger_id=trigger.id,
        script_id=trigger.script_id,
        outbox_id=failed.outbox_id,
        payload={},
        last_error="boom",
        errors=["boom"],
        attempts=1,
        depth=0,
    )
    client.force_login(tenants["admin"])
    page = client.get(reverse("admin:deadletters_deadletter_change", args=[letter.pk]))
    assert f"?q={failed.outbox_id}" in page.content.decode()
    log = client.get(LOG, {"q": str(failed.outbox_id)})
    [row] = log.context["rows"]
    assert row["dead_letter_url"].endswith(f"/{letter.pk}/change/")


def test_filters_no_index_serves_walk_back_a_bounded_window_at_a_time(tenants, monkeypatch):
    """A rare source is found by walking back page after page, each
    looking at a bounded number of attempts; nothing is skipped or repeated."""
    from outbox.storage import delivery_reads as reads

    monkeypatch.setattr(reads, "WINDOW", 40)
    monkeypatch.setattr(reads, "WINDOW_MIN", 10)
    shop, other = tenants["shop"], tenants["other"]
    base = timezone.now() - timedelta(hours=2)
    # The other app's attempts come three times as often: its window spans
    # less time, so a page must not show the shop's older ones yet.
    rows = [
        *(
            _attempt(shop, tenants["shop_trigger"], at=base - timedelta(seconds=i))
            for i in range(150)
        ),
        *(
            _attempt(other, tenants["other_trigger"], at=base - timedelta(seconds=i / 3))
            for i in range(450)
        ),
    ]
    rare = [
        replace(
            _attempt(shop, tenants["shop_trigger"], at=base - timedelta(seconds=s)),
            source_kind="pubsub",
        )
        for s in (30.5, 120.5, 149.5)
    ]
    PgDeliveryLog().write([*rows, *rare])
    seen, cursor, pages = [], None, 0
    while True:
        page = reads.attempts(
            reads.AttemptFilter(apps=None, source_kind="pubsub", before=cursor), limit=2
        )
        pages += 1
        assert page.windowed and all(r["source_kind"] == "pubsub" for r in page.rows)
        seen += [r["outbox_id"] for r in page.rows]
        if page.older is None:
            break
        cursor = page.older
    assert seen == [a.outbox_id for a in rare], "each once, newest first"
    assert pages > 3, "the window bounded each page"


def test_odd_cursors_and_object_pages_are_answers_not_errors(client, tenants):
    client.force_login(tenants["admin"])
    some = uuid.uuid4()
    # Offsets Python reads and PostgreSQL would refuse are read in UTC.
    for at in ("2024-01-01T00:00:00+20:00", "2024-01-01T00:00:00+05:30:15.5"):
        assert client.get(LOG, {"before": f"{at}~{some}~1"}).status_code == 200
    refused = client.get(LOG, {"before": f"0001-01-01T00:00:00+05:00~{some}~1"})
    assert refused.status_code == 302
    letter = tenants["mine"][1].outbox_id
    for view in ("history", "delete"):
        for model in ("deliveryattempt", "deliverydashboard"):
            url = reverse(f"admin:outbox_{model}_{view}", args=[letter])
            assert client.get(url).status_code == 404, url


def test_a_search_within_a_triggers_attempts_searches(client, tenants):
    client.force_login(tenants["admin"])
    trigger = str(tenants["shop_trigger"].id)
    assert _ids(client.get(LOG, {"trigger": trigger, "q": "orders/no-such-key"})) == set()
    assert len(_ids(client.get(LOG, {"trigger": trigger, "q": "orders/o-1"}))) == 2
