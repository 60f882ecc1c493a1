"""A queue trigger under two real `qcluster`s: 10,000 messages consumed,
never more batches at once than max_concurrency, and nothing lost while
workers are killed with -9 mid-batch."""

import os
import signal

import pytest
from django.db import connection

from deadletters.models import DeadLetter
from outbox.models import OutboxEntry
from picloud.domain.authz import Role
from picloud.messaging import queues
from picloud.models import KvEntry, QueueMessage, Script
from tests.acceptance import handlers  # noqa: F401 - registers the acc.* handlers here too
from tests.acceptance.cluster import Cluster
from tests.factories import AppFactory, MembershipFactory
from tests.helpers import wait_for
from triggers.pg_repository import PgTriggerRepo
from triggers.repository import NewTrigger, QueueSpec

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]

MESSAGES = 10_000
BATCH = 10
MAX_CONCURRENCY = 3
SLOW_EVERY = 2_500  # every this many messages, one makes its batch take SLOW seconds
SLOW = 2.0  # seconds: long enough to be killed mid-batch


def _batches(app):
    """Completed executions: [(pid, ids, started, ended)]."""
    return [
        (e.value["pid"], e.value["ids"], e.value["started"], e.value["ended"])
        for e in KvEntry.objects.filter(app=app, collection="batches")
    ]


def _peak_overlap(intervals):
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, step in edges:  # an end sorts before a start at the same instant
        running += step
        peak = max(peak, running)
    return peak


def test_a_queue_trigger_consumes_10000_messages_within_its_concurrency_while_workers_die(
    tmp_path,
):
    app = AppFactory(max_concurrency=1000)
    admin = MembershipFactory(app=app, role=Role.AppAdmin.value).principal
    script = Script.objects.create(app=app, name="consume", handler="acc.queue_batch")
    queue = queues.create_queue(app, "work", principal=admin)
    sent = []
    for start in range(0, MESSAGES, 1000):
        bodies = [
            {"n": n, "seconds": SLOW} if n % SLOW_EVERY == SLOW_EVERY // 2 else {"n": n}
            for n in range(start, start + 1000)
        ]
        sent += queues.send_batch(app, "work", bodies, principal=admin)
    clusters = [Cluster(connection.settings_dict, tmp_path / f"c{i}.log").start() for i in range(2)]
    killed: set[int] = set()
    killed_runs: set[str] = set()  # "outbox id:attempt" of batches killed mid-run
    slow_batches = MESSAGES // SLOW_EVERY
    try:
        PgTriggerRepo().create(
            NewTrigger(
                app_id=app.id,
                kind="queue",
                script_id=script.id,
                name="consumer",
                registered_by_principal=admin.id,
                queue=QueueSpec(
                    queue.id, batch_size=BATCH, max_concurrency=MAX_CONCURRENCY, max_receives=10
                ),
            )
        )

        # Kill each worker that starts a slow batch (first attempts only:
        # the batch then comes back after its lease and must run again).
        def kill_slow_batches():
            for entry in KvEntry.objects.filter(app=app, collection="slow"):
                if entry.key.endswith(":1") and entry.key not in killed_runs:
                    os.kill(entry.value["pid"], signal.SIGKILL)
                    killed.add(entry.value["pid"])
                    killed_runs.add(entry.key)
            return len(killed_runs) == slow_batches

        wait_for(kill_slow_batches, timeout=120, what="every slow batch killed mid-run")
        wait_for(
            lambda: (
                not QueueMessage.objects.filter(queue_id=queue.id).exists()
                and not OutboxEntry.objects.filter(app=app).exists()
            ),
            timeout=180,
            what="every message consumed and every batch settled",
        )
    finally:
        for c in clusters:
            c.stop(timeout=5, may_hang=True)  # killed workers may leave it stuck (cluster.py)

    batches = _batches(app)
    consumed = [i for _, ids, _, _ in batches for i in ids]
    assert set(consumed) == set(sent), "every message was consumed"
    assert not DeadLetter.objects.filter(app=app).exists()
    peak = _peak_overlap([(s, e) for _, _, s, e in batches])
    assert peak <= MAX_CONCURRENCY, f"{peak} batches ran at once; max_concurrency is 3"
    assert peak == MAX_CONCURRENCY, "the consumer used its concurrency"
    # A message consumed twice was in a batch a killed worker had finished
    # but not settled: the batch came back after its lease (at-least-once).
    seen: dict[int, list[int]] = {}
    for pid, ids, _, _ in batches:
        for i in ids:
            seen.setdefault(i, []).append(pid)
    twice = {i: pids for i, pids in seen.items() if len(pids) > 1}
    for i, pids in twice.items():
        assert any(p in killed for p in pids), f"message {i} ran twice with no kill: {pids}"
    # Each batch killed mid-run never finished there, and ran again to the end.
    done = {e.key for e in KvEntry.objects.filter(app=app, collection="batches")}
    for run in killed_runs:
        batch, _ = run.split(":")
        assert run not in done, f"batch {run} was killed before it finished"
        assert any(d.startswith(f"{batch}:") for d in done), f"batch {batch} never ran again"
    print(
        f"\n{len(sent)} messages in {len(batches)} batch executions, peak {peak} at once, "
        f"{len(killed_runs)} batches killed mid-run, {len(twice)} messages delivered twice"
    )
