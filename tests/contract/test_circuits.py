"""CircuitRepo contract, and the claim reading it: PostgreSQL and in-memory alike.

A script's circuit opens after PICLOUD_CIRCUIT_FAILURE_THRESHOLD consecutive
retryable failures; while open the claim takes none of its rows; once the
cool-down passes one row probes; a success closes it, a failed probe opens
it for twice as long, up to the max.
"""

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from outbox.storage.circuits import CLOSED, OPEN, PROBING, ScriptOutcomes
from outbox.storage.memory_circuits import MemoryCircuitRepo
from outbox.storage.memory_repository import MemoryOutboxRepo
from outbox.storage.pg_circuits import PgCircuitRepo
from outbox.storage.pg_repository import PgOutboxRepo
from outbox.storage.repository import NewOutboxRow
from picloud.config import CircuitConfig
from picloud.models import App
from tests.factories import ScriptFactory
from tests.helpers import wait_for

CONFIG = CircuitConfig(failure_threshold=3, cooldown_ms=200, max_cooldown_ms=500)
LEASE = 60.0


class Clock:
    """The memory repositories' clock, moved by hand; PostgreSQL's moves by itself."""

    def __init__(self):
        self.now = timezone.now()

    def __call__(self):
        return self.now


@pytest.fixture(params=["memory", "postgres"])
def repos(request, world):
    """(circuits, outbox, wait): `wait(seconds)` lets that much time pass."""
    if request.param == "memory":
        clock = Clock()
        circuits, outbox = MemoryCircuitRepo(clock), MemoryOutboxRepo(clock)
        outbox.circuits = circuits

        def wait(seconds):
            clock.now += timedelta(seconds=seconds)

        return circuits, outbox, wait

    def wait(seconds):
        deadline = timezone.now() + timedelta(seconds=seconds)
        wait_for(lambda: timezone.now() >= deadline, timeout=seconds + 5, what="time to pass")

    return PgCircuitRepo(), PgOutboxRepo(), wait


def failed(world, n=1, *, succeeded=False, error="boom"):
    return [ScriptOutcomes(world.script_id, world.app_id, succeeded, n, error)]


def state(circuits, world, now=None):
    c = circuits.get(world.script_id)
    return CLOSED if c is None else c.state(now or _now(circuits))


def _now(circuits):
    return circuits.clock() if isinstance(circuits, MemoryCircuitRepo) else timezone.now()


def test_a_script_that_never_failed_has_no_circuit(repos, world):
    circuits, _, _ = repos
    circuits.record([ScriptOutcomes(world.script_id, world.app_id, True, 0)], CONFIG)
    assert circuits.get(world.script_id) is None


def test_failures_below_the_threshold_keep_it_closed_and_a_success_forgets_them(repos, world):
    circuits, _, _ = repos
    circuits.record(failed(world, 2), CONFIG)
    assert (circuits.get(world.script_id).failures, state(circuits, world)) == (2, CLOSED)
    circuits.record(failed(world, 0, succeeded=True), CONFIG)
    circuits.record(failed(world, 2), CONFIG)
    assert (circuits.get(world.script_id).failures, state(circuits, world)) == (2, CLOSED)


def test_the_threshold_opens_it_and_keeps_the_last_error(repos, world):
    circuits, _, _ = repos
    circuits.record(failed(world, 2), CONFIG)
    circuits.record(failed(world, 1, error="503 busy"), CONFIG)
    c = circuits.get(world.script_id)
    assert (state(circuits, world), c.opened, c.last_error) == (OPEN, 1, "503 busy")
    assert c.open_until - _now(circuits) <= timedelta(milliseconds=CONFIG.cooldown_ms)


def test_after_the_cool_down_it_probes_a_failed_probe_doubles_it_a_success_closes(repos, world):
    circuits, _, wait = repos
    circuits.record(failed(world, 3), CONFIG)
    first = circuits.get(world.script_id).open_until
    wait(0.25)
    assert state(circuits, world) == PROBING
    circuits.record(failed(world, 1), CONFIG)  # the probe failed
    c = circuits.get(world.script_id)
    assert (state(circuits, world), c.opened) == (OPEN, 2)
    assert c.open_until - first >= timedelta(milliseconds=2 * CONFIG.cooldown_ms)
    wait(0.45)
    circuits.record(failed(world, 1), CONFIG)  # and again: capped at the max
    c = circuits.get(world.script_id)
    assert c.opened == 3
    assert c.open_until - _now(circuits) <= timedelta(milliseconds=CONFIG.max_cooldown_ms)
    wait(0.55)
    circuits.record(failed(world, 0, succeeded=True), CONFIG)  # the probe succeeded
    c = circuits.get(world.script_id)
    assert (state(circuits, world), c.failures, c.opened) == (CLOSED, 0, 0)


def test_close_now_closes_and_forgets(repos, world):
    circuits, _, _ = repos
    circuits.record(failed(world, 3), CONFIG)
    assert circuits.counts() == {OPEN: 1, PROBING: 0}
    assert circuits.close([world.script_id]) == 1
    assert (state(circuits, world), circuits.get(world.script_id).failures) == (CLOSED, 0)
    assert circuits.counts() == {OPEN: 0, PROBING: 0}
    assert circuits.close([world.script_id]) == 0, "already closed"


def _enqueue(outbox, world, n, script_id=None):
    return [
        outbox.insert(
            NewOutboxRow(world.app_id, "kv", script_id or world.script_id, world.principal_id)
        )
        for _ in range(n)
    ]


def test_an_open_circuit_holds_its_rows_without_counting_attempts(repos, world):
    circuits, outbox, _ = repos
    held = _enqueue(outbox, world, 3)
    sibling = ScriptFactory(app=App.objects.get(pk=world.app_id))  # the same app's
    other = _enqueue(outbox, world, 2, script_id=sibling.id)
    circuits.record(failed(world, 3), CONFIG)
    claimed = outbox.claim_due(10, LEASE)
    assert {r.id for r in claimed} == {r.id for r in other}
    assert all(outbox.get(r.id).attempts == 0 for r in held), "no attempt consumed"


def test_a_probing_circuit_lets_one_row_run_at_a_time(repos, world):
    circuits, outbox, wait = repos
    rows = _enqueue(outbox, world, 3)
    circuits.record(failed(world, 3), CONFIG)
    wait(0.25)
    (probe,) = outbox.claim_due(10, LEASE)
    assert probe.id in {r.id for r in rows}
    assert outbox.claim_due(10, LEASE) == [], "one probe in flight at most"
    circuits.record(failed(world, 0, succeeded=True), CONFIG)
    outbox.delete([probe.id])
    assert len(outbox.claim_due(10, LEASE)) == 2, "closed: the rest run"


def test_a_deleted_script_does_not_lose_the_rest_of_the_batch(repos, world):
    circuits, _, _ = repos
    gone = ScriptOutcomes(uuid.uuid4(), world.app_id, False, 3, "503")
    circuits.record([gone, *failed(world, 3)], CONFIG)
    assert state(circuits, world) == OPEN
