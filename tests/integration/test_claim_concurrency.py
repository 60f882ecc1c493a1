"""claim_due from real connections at once never hands out a row twice, and
never puts more rows of an app (or a script) in flight than its cap."""

import contextlib
import threading
from collections import Counter

import pytest
from django.db import connection, connections

from outbox.storage.pg_repository import PgOutboxRepo
from tests.factories import AppFactory, ScriptFactory, UserFactory
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

ROWS = 3_000
DUP_APPS = 10  # claimers serialise per app: spread the rows so they interleave
BATCH = 7  # small and odd, so the claimers interleave many times
LEASE = 300.0  # seconds; nothing comes back during the test
CLAIMERS = 2


def test_concurrent_claimers_never_receive_the_same_row():
    principal = UserFactory().principal
    for _ in range(DUP_APPS):
        app = AppFactory(max_concurrency=ROWS)  # no cap in the way: this is about duplicates
        script = ScriptFactory(app=app)
        with connection.cursor() as cur:
            cur.execute(
                "INSERT INTO outbox (app_id, source_kind, script_id, run_as_principal, payload) "
                "SELECT %s, 'kv', %s, %s, jsonb_build_object('n', g) "
                "FROM generate_series(1, %s) g",
                [app.id, script.id, principal.id, ROWS // DUP_APPS],
            )
    repo = PgOutboxRepo()
    start = threading.Barrier(CLAIMERS)
    claimed: list[list] = [[] for _ in range(CLAIMERS)]
    rounds = [0] * CLAIMERS
    errors: list[BaseException] = []

    def claimer(i: int) -> None:
        try:
            start.wait(timeout=10)
            while batch := repo.claim_due(limit=BATCH, lease=LEASE):
                claimed[i].extend(r.id for r in batch)
                rounds[i] += 1
        except BaseException as exc:  # surfaced below with the thread's index
            errors.append(exc)
        finally:
            connections.close_all()  # this thread's own connection

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(CLAIMERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors

    every = [row_id for ids in claimed for row_id in ids]
    duplicates = [row_id for row_id, n in Counter(every).items() if n > 1]
    assert not duplicates, f"{len(duplicates)} rows were claimed twice"
    assert len(every) == ROWS, f"claimed {len(every)} of {ROWS} rows"
    assert all(rounds), f"each claimer should have taken batches, rounds={rounds}"


APPS = 5
APP_CAP = 3
SCRIPT_CAP = 2  # the last app's first script; that app's own cap is higher
ROWS_PER_SCRIPT = 60
CAP_CLAIMERS = 4


def _in_flight(cur, column):
    cur.execute(
        f"SELECT {column}, count(*) FROM outbox WHERE leased_until > now() GROUP BY {column}"
    )
    return dict(cur.fetchall())


def test_concurrent_claimers_never_exceed_a_cap():
    principal = UserFactory().principal
    apps = [AppFactory(max_concurrency=APP_CAP) for _ in range(APPS - 1)]
    apps.append(AppFactory(max_concurrency=10))
    scripts = {a.id: ScriptFactory(app=a) for a in apps}
    capped = ScriptFactory(app=apps[-1], max_concurrency=SCRIPT_CAP)
    caps = {a.id: a.max_concurrency for a in apps}
    every_script = [scripts[a.id] for a in apps] + [capped]
    with connection.cursor() as cur:
        for script in every_script:
            cur.execute(
                "INSERT INTO outbox (app_id, source_kind, script_id, run_as_principal) "
                "SELECT %s, 'kv', %s, %s FROM generate_series(1, %s)",
                [script.app_id, script.id, principal.id, ROWS_PER_SCRIPT],
            )
    total = len(every_script) * ROWS_PER_SCRIPT
    repo = PgOutboxRepo()
    start = threading.Barrier(CAP_CLAIMERS + 1)
    done = threading.Event()
    claimed: list[list] = [[] for _ in range(CAP_CLAIMERS)]
    seen_apps: dict = {}
    seen_script = [0]
    errors: list[BaseException] = []

    def claimer(i: int) -> None:
        try:
            start.wait(timeout=10)
            ack: list = []
            after = None
            idle = 0
            while idle < 200 and sum(map(len, claimed)) < total:
                # Acknowledge the last batch with this claim: rows come and go.
                batch = repo.claim_due(limit=BATCH, lease=LEASE, ack=ack, after_app=after)
                ack = [r.id for r in batch]
                if batch:
                    claimed[i].extend(ack)
                    after = batch[-1].app_id
                    idle = 0
                else:
                    idle += 1
            repo.delete(ack)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    def monitor() -> None:
        # Reads committed data only: what every claimer sees.
        try:
            start.wait(timeout=10)
            with connection.cursor() as cur:
                while not done.is_set():
                    for app_id, n in _in_flight(cur, "app_id").items():
                        seen_apps[app_id] = max(seen_apps.get(app_id, 0), n)
                    n = _in_flight(cur, "script_id").get(capped.id, 0)
                    seen_script[0] = max(seen_script[0], n)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(CAP_CLAIMERS)]
    watcher = threading.Thread(target=monitor)
    for t in [*threads, watcher]:
        t.start()
    for t in threads:
        t.join(timeout=120)
    done.set()
    watcher.join(timeout=10)
    assert not errors, errors

    every = [row_id for ids in claimed for row_id in ids]
    assert len(every) == len(set(every)) == total, f"claimed {len(every)} of {total} rows"
    assert seen_apps, "the monitor saw rows in flight"
    over = {app_id: n for app_id, n in seen_apps.items() if n > caps[app_id]}
    assert not over, f"apps over their cap: {over} (caps {caps})"
    assert seen_script[0] <= SCRIPT_CAP, f"{seen_script[0]} rows of a script capped at {SCRIPT_CAP}"


# -- waiting for an app another claimer holds ------------------------------


def _seed(app, n, principal):
    script = ScriptFactory(app=app)
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO outbox (app_id, source_kind, script_id, run_as_principal) "
            "SELECT %s, 'kv', %s, %s FROM generate_series(1, %s)",
            [app.id, script.id, principal.id, n],
        )


@contextlib.contextmanager
def _open_transaction():
    """A cursor in a transaction of a connection of its own, committed at the end."""
    conn = connections.create_connection("default")
    try:
        conn.ensure_connection()
        conn.set_autocommit(False)
        with conn.cursor() as cur:
            yield cur
        conn.commit()
    finally:
        conn.close()


def _claim_in_thread(limit, after_app=None):
    """Claim from a connection of a thread of its own; returns (thread, result)."""
    result: dict = {}

    def run():
        try:
            result["rows"] = PgOutboxRepo().claim_due(limit=limit, lease=LEASE, after_app=after_app)
        except BaseException as exc:
            result["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def _waits_for_advisory_lock(cur) -> bool:
    cur.execute(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE wait_event_type = 'Lock' AND wait_event = 'advisory' AND pid <> pg_backend_pid()"
    )
    return cur.fetchone()[0] > 0


def test_a_claimer_holding_no_app_waits_for_one_another_claimer_holds():
    """Two processes, one busy app: the second claim waits the first one's
    few milliseconds and then takes rows, instead of coming back empty (and
    backing off while the app's rows wait)."""
    principal = UserFactory().principal
    app = AppFactory(max_concurrency=1_000)
    _seed(app, 20, principal)
    watcher = connections.create_connection("default")
    try:
        with _open_transaction() as cur:
            cur.execute("SELECT count(*) FROM outbox_claim(5, %s, '{}', NULL, 100, 25)", [LEASE])
            assert cur.fetchone()[0] == 5
            thread, result = _claim_in_thread(limit=5)
            with watcher.cursor() as wcur:
                wait_for(
                    lambda: _waits_for_advisory_lock(wcur) or not thread.is_alive(),
                    timeout=10,
                    what="the second claim to wait for the app's lock",
                )
            assert thread.is_alive(), f"the second claim did not wait: {result}"
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert "error" not in result, result
        assert len(result["rows"]) == 5
    finally:
        watcher.close()


def test_a_claimer_holding_an_app_passes_a_held_app_by():
    """A claim that holds an app's lock never waits for another's (two such
    claims could wait for each other): it takes what it can elsewhere."""
    principal = UserFactory().principal
    first, second = sorted(
        [AppFactory(max_concurrency=1_000) for _ in range(2)], key=lambda a: a.id
    )
    _seed(first, 10, principal)
    _seed(second, 10, principal)
    with _open_transaction() as cur:
        # Holds the first app (starting there: no app before it).
        cur.execute("SELECT app_id FROM outbox_claim(3, %s, '{}', NULL, 100, 25)", [LEASE])
        assert {r[0] for r in cur.fetchall()} == {first.id}
        # Starts after the first app: takes the second's rows, then comes to
        # the first holding the second's lock.
        thread, result = _claim_in_thread(limit=50, after_app=first.id)
        thread.join(timeout=10)
        assert not thread.is_alive(), "the claim waited while holding an app"
    assert "error" not in result, result
    assert {r.app_id for r in result["rows"]} == {second.id}
    assert len(result["rows"]) == 10
