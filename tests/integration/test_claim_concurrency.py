"""claim_due from two real connections at once never hands out a row twice."""

import threading
from collections import Counter

import pytest
from django.db import connection, connections

from outbox.storage.pg_repository import PgOutboxRepo
from tests.factories import AppFactory, ScriptFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

ROWS = 3_000
BATCH = 7  # small and odd, so the claimers interleave many times
LEASE = 300.0  # seconds; nothing comes back during the test
CLAIMERS = 2


def test_concurrent_claimers_never_receive_the_same_row():
    app = AppFactory()
    script = ScriptFactory(app=app)
    principal = UserFactory().principal
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO outbox (app_id, source_kind, script_id, run_as_principal, payload) "
            "SELECT %s, 'kv', %s, %s, jsonb_build_object('n', g) FROM generate_series(1, %s) g",
            [app.id, script.id, principal.id, ROWS],
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
