"""Admin lists at scale (docs/admin.md, "At scale"): a long list shows the
planner's estimate and says so, a short one its exact count; searches find
words by their start through an index; and none of it lets an app's admin
see another app's rows, whatever the filter, search or page."""

import pytest
from django.db import connection
from django.urls import reverse

from deadletters.models import DeadLetter
from outbox.models import OutboxEntry
from picloud import admin_counts
from picloud.admin_counts import Counted, capped_count
from picloud.domain.authz import Role
from tests.factories import AppFactory, MembershipFactory, ScriptFactory, UserFactory, kv_trigger

# Committed and truncated after each test: tens of thousands of rows rolled
# back would stay in the tables and their indexes as dead entries until
# VACUUM, and sway the plans of the tests that follow.
pytestmark = pytest.mark.django_db(transaction=True)

MINE, THEIRS = 150, 20_000  # rows of the member's app, and of another app: past EXACT_UP_TO
LETTERS, OUTBOX = "admin:deadletters_deadletter_changelist", "admin:outbox_outboxentry_changelist"


def _sql(statement, params=None):
    with connection.cursor() as cur:
        cur.execute(statement, params)


@pytest.fixture
def crowd():
    """An app its member administers, with MINE dead letters and outbox
    rows, and another app with THEIRS of each; both searchable for
    "needle", only the other's for "haystack"."""
    member = MembershipFactory(role=Role.AppAdmin.value)
    theirs = AppFactory(slug="theirs-secret")
    apps = {}
    for key, app, n in (("mine", member.app, MINE), ("theirs", theirs, THEIRS)):
        script = ScriptFactory(app=app)
        trigger = kv_trigger(app, script, member.principal, name=f"trigger-{key}")
        params = {"app": app.id, "script": script.id, "trigger": trigger.id, "n": n, "key": key}
        extra = "haystack" if key == "theirs" else "straw"
        _sql(
            "INSERT INTO dead_letters (app_id, source_kind, trigger_id, script_id, last_error, "
            "errors, attempts, depth, created_at) "
            "SELECT %(app)s, 'kv', %(trigger)s, %(script)s, 'needle of ' || %(key)s || ' ' || g, "
            f"jsonb_build_array('TimeoutError: {extra} ' || g), 3, 0, "
            "now() - make_interval(secs => g) FROM generate_series(1, %(n)s) g",
            params,
        )
        _sql(
            "INSERT INTO outbox (app_id, source_kind, trigger_id, script_id, attempts, "
            "last_error, errors, due_at) "
            "SELECT %(app)s, 'kv', %(trigger)s, %(script)s, 1, "
            f"'needle of ' || %(key)s || ' {extra} ' || g, '[]', "
            "now() - make_interval(secs => g) FROM generate_series(1, %(n)s) g",
            params,
        )
        apps[key] = {"app": app, "trigger": trigger}
    _sql("ANALYZE dead_letters; ANALYZE outbox")
    return {"member": member.principal.user, "principal": member.principal, **apps}


def superuser():
    return UserFactory(is_superuser=True)


def test_a_long_list_shows_the_planners_estimate_and_says_so(client, crowd):
    client.force_login(superuser())
    for url, plural in ((LETTERS, "dead letters"), (OUTBOX, "outbox")):
        response = client.get(reverse(url))
        counted = response.context["cl"].paginator.counted
        assert counted.estimated, f"{url}: {counted!r} of {MINE + THEIRS} rows counted one by one"
        # The planner's figure, to two digits: of the right size, not exact.
        assert 15_000 <= counted <= 25_000, counted
        body = response.content.decode()
        assert f"about {counted:,} {plural} (estimated)" in body, "the paginator says estimated"
        assert f"Select all about {counted:,}" in body and "(estimated)</a>" in body


def test_a_short_list_is_counted_exactly(client, crowd):
    client.force_login(superuser())
    mine = crowd["mine"]["app"].pk
    for url, plural in ((LETTERS, "dead letters"), (OUTBOX, "outbox")):
        response = client.get(reverse(url), {"app": mine})
        counted = response.context["cl"].paginator.counted
        assert (counted, counted.exact) == (MINE, True), f"{url}: {counted!r}"
        body = response.content.decode()
        assert f"{MINE} {plural}" in body and 'class="picloud-estimate"' not in body


# Each query in one test: the crowd takes seconds to make, the queries milliseconds.
LETTER_QUERIES = [
    {},
    {"p": "2"},
    {"q": "needle"},
    {"q": "needle", "p": "2"},
    {"q": "haystack"},
    {"app": "<theirs>"},
    {"trigger": "<theirs trigger>"},
    {"resolution": "unresolved"},
    {"source_kind__exact": "kv"},
    {"age": "1d"},
    {"o": "-1"},
]
OUTBOX_QUERIES = [
    {},
    {"p": "2"},
    {"q": "needle"},
    {"q": "haystack"},
    {"app": "<theirs>"},
    {"due": "now"},
]


def test_a_member_sees_only_their_apps_letters_whatever_the_query(client, crowd):
    client.force_login(crowd["member"])
    theirs = {
        "<theirs>": str(crowd["theirs"]["app"].pk),
        "<theirs trigger>": str(crowd["theirs"]["trigger"].id),
    }
    for params in LETTER_QUERIES:
        query = {k: theirs.get(v, v) for k, v in params.items()}
        response = client.get(reverse(LETTERS), query)
        assert response.status_code == 200, (query, response)
        cl = response.context["cl"]
        apps = {letter.app_id for letter in cl.result_list}
        assert apps <= {crowd["mine"]["app"].pk}, f"{query}: another app's letters listed"
        assert cl.paginator.counted <= MINE and cl.paginator.counted.exact, (
            f"{query}: counted {cl.paginator.counted!r}, beyond the member's {MINE} letters"
        )
        body = response.content.decode()
        assert "theirs-secret" not in body and "needle of theirs" not in body, query


def test_a_member_sees_only_their_apps_outbox_rows_whatever_the_query(client, crowd):
    client.force_login(crowd["member"])
    for params in OUTBOX_QUERIES:
        query = {
            k: str(crowd["theirs"]["app"].pk) if v == "<theirs>" else v for k, v in params.items()
        }
        response = client.get(reverse(OUTBOX), query)
        cl = response.context["cl"]
        assert {row.app_id for row in cl.result_list} <= {crowd["mine"]["app"].pk}, query
        assert cl.paginator.counted <= MINE and cl.paginator.counted.exact, (
            query,
            cl.paginator.counted,
        )
        backlog = [b["app__slug"] for b in response.context["backlog"]]
        assert backlog == [crowd["mine"]["app"].slug], query
        assert "theirs-secret" not in response.content.decode(), query


def test_page_two_holds_the_rest_of_the_members_rows(client, crowd):
    client.force_login(crowd["member"])
    first, second = (client.get(reverse(LETTERS), {"p": p}).context["cl"] for p in ("1", "2"))
    ids = [d.pk for d in (*first.result_list, *second.result_list)]
    assert len(ids) == len(set(ids)) == MINE, "two pages hold each of the member's letters once"


def test_a_search_finds_the_words_that_start_with_each_term(client, crowd):
    client.force_login(superuser())
    mine = str(crowd["mine"]["app"].pk)

    def found(url, term):
        cl = client.get(reverse(url), {"q": term, "app": mine}).context["cl"]
        return len(cl.result_list), cl.paginator.counted

    assert found(LETTERS, "needle") == (100, MINE), "a page of 100, all 150 counted"
    assert found(LETTERS, "need") == (100, MINE), "a word's start finds it"
    assert found(LETTERS, "eedle")[0] == 0, "the middle of a word does not"
    # Every attempt's error is searched, not only the last, and words combine.
    assert found(LETTERS, "timeouterror straw 7") == (11, 11), "7, 70-79 of 150"
    assert found(LETTERS, "straw 149") == (1, 1)
    assert found(OUTBOX, "Needle  OF mine 12") == (11, 11), "12, 120-129: case and spaces aside"
    assert found(OUTBOX, "!!!") == (0, 0), "nothing to search for finds nothing"


def test_a_search_of_another_apps_words_finds_nothing_for_a_member(client, crowd):
    client.force_login(crowd["member"])
    for url in (LETTERS, OUTBOX):
        cl = client.get(reverse(url), {"q": "haystack"}).context["cl"]
        assert (len(cl.result_list), cl.paginator.counted) == (0, 0), url


def test_the_trigger_list_counts_pending_rows_up_to_a_figure(client, crowd):
    client.force_login(superuser())
    app = crowd["mine"]["app"]
    few = kv_trigger(app, ScriptFactory(app=app), crowd["principal"], name="few")
    OutboxEntry.objects.create(
        app=app, source_kind="kv", trigger_id=few.id, script_id=few.script_id
    )
    cl = client.get(reverse("admin:triggers_trigger_changelist")).context["cl"]
    pending = {t.name: cl.model_admin.pending(t) for t in cl.result_list}
    assert pending["few"] == 1, pending
    # Past the figure, the planner's estimate (or a bound, where it guesses
    # low), never a count of every row.
    assert pending["trigger-mine"] in ("about 150 (estimated)", "more than 100"), pending
    assert pending["trigger-theirs"] == "about 20,000 (estimated)", pending


def test_a_count_over_its_time_budget_gives_way_and_leaves_the_connection_as_it_was(crowd):
    with connection.cursor() as cur:
        cur.execute("SHOW statement_timeout")
        (before,) = cur.fetchone()
    # Each row costs a millisecond to look at: the count cannot finish in one.
    slow = DeadLetter.objects.extra(where=["pg_sleep(0.001) IS NOT NULL"])
    assert capped_count(slow, 10_001, budget_ms=1) is None
    assert capped_count(DeadLetter.objects.filter(app=crowd["mine"]["app"]), 10_001, 1_000) == MINE
    with connection.cursor() as cur:
        cur.execute("SHOW statement_timeout")
        assert cur.fetchone() == (before,), "the count's time budget outlived it"
        cur.execute("SELECT count(*) FROM dead_letters")
        assert cur.fetchone() == (MINE + THEIRS,), "the transaction is usable after the cancel"


def test_a_figure_past_its_count_is_the_planners_only_when_it_says_more(crowd):
    mine = DeadLetter.objects.filter(app=crowd["mine"]["app"])
    exact = admin_counts.figure(3, mine)
    assert (exact, exact.kind) == (3, Counted.EXACT)
    past = admin_counts.figure(admin_counts.FIGURE_EXACT_UP_TO + 1, mine)
    assert past.estimated and 100 < past <= 200, f"the planner's figure for {MINE}: {past!r}"


def test_abandoned_executions_filter_by_status_class_without_listing_every_code(client, crowd):
    from deadletters.models import AbandonedExecution

    app = crowd["mine"]["app"]
    for code in (200, 503, 504):
        AbandonedExecution.objects.create(
            app=app, outbox_id=app.pk, inbox_id=app.pk, status_code=code
        )
    client.force_login(crowd["member"])
    url = reverse("admin:deadletters_abandonedexecution_changelist")

    def codes(query):
        return sorted(e.status_code for e in client.get(url, query).context["cl"].result_list)

    assert codes({"status_code": "5xx"}) == [503, 504]
    assert codes({"status_code": "200"}) == [200]
    refused = client.get(url, {"status_code": "5"}, follow=True)
    assert refused.redirect_chain[-1][0].endswith("?e=1")
    assert "takes a class (2xx, 3xx, 4xx, 5xx) or a three-digit code" in refused.content.decode()
