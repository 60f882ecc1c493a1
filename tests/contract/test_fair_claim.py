"""OutboxRepo contract, fair claiming and caps: PostgreSQL and in-memory alike.

Apps with due rows take turns in app_id order, from after `after_app`,
CLAIM_QUANTUM rows per visit; an app (a script) never has more rows in
flight than its cap.
"""

from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID

import pytest
from django.utils import timezone

from outbox.storage.memory_repository import MemoryOutboxRepo
from outbox.storage.repository import CLAIM_QUANTUM, NewOutboxRow
from picloud.config import ConcurrencyConfig
from picloud.models import App, PlatformSettings, Script
from tests.factories import AppFactory, ScriptFactory, UserFactory
from tests.helpers import wait_for

LEASE = 60.0  # seconds: long enough that no test outlives it


@dataclass(frozen=True)
class Tenant:
    app_id: UUID
    script_id: UUID
    other_script_id: UUID


@pytest.fixture
def principal_id(transactional_db):
    return UserFactory().principal.id


@pytest.fixture
def tenants(transactional_db):
    """Four apps, two scripts each, in app_id order (the order of turns)."""
    made = []
    for _ in range(4):
        app = AppFactory()
        made.append(Tenant(app.id, ScriptFactory(app=app).id, ScriptFactory(app=app).id))
    return sorted(made, key=lambda t: t.app_id)


class Caps:
    """Set caps where the repository under test reads them."""

    def __init__(self, repo):
        self.repo = repo
        self.memory = isinstance(repo, MemoryOutboxRepo)

    def app(self, app_id, cap):
        if self.memory:
            self.repo.app_caps[app_id] = cap
        else:
            App.objects.filter(pk=app_id).update(max_concurrency=cap)

    def script(self, script_id, cap):
        if self.memory:
            self.repo.script_caps[script_id] = cap
        else:
            Script.objects.filter(pk=script_id).update(max_concurrency=cap)

    def platform(self, cap):
        if self.memory:
            self.repo.platform_cap = cap
        else:
            PlatformSettings.objects.update_or_create(pk=1, defaults={"app_max_concurrency": cap})


@pytest.fixture
def caps(outbox_repo):
    return Caps(outbox_repo)


@pytest.fixture
def add(outbox_repo, principal_id):
    """add(tenant, n, age=...) inserts n due rows, the first oldest; returns their ids."""
    base = timezone.now() - timedelta(minutes=10)
    counter = iter(range(1_000_000))

    def insert(tenant, n=1, *, script_id=None, reply_to=None):
        ids = []
        for _ in range(n):
            # Distinct due times in insertion order, so "oldest first" is one order.
            due_at = base + timedelta(milliseconds=next(counter))
            row = NewOutboxRow(
                app_id=tenant.app_id,
                source_kind="invoke" if reply_to else "kv",
                script_id=script_id or tenant.script_id,
                run_as_principal=principal_id,
                reply_to=reply_to,
                due_at=due_at,
            )
            ids.append(outbox_repo.insert(row).id)
        return ids

    return insert


def _apps(rows):
    return [r.app_id for r in rows]


Q = CLAIM_QUANTUM


def test_apps_take_turns_a_quantum_each_in_app_id_order(outbox_repo, tenants, add):
    a, b, c, _ = tenants
    half = Q // 2
    rows = {t.app_id: add(t, Q + half) for t in (c, a, b)}  # c's rows are the oldest
    first = outbox_repo.claim_due(limit=3 * Q, lease=LEASE)
    assert _apps(first) == [a.app_id] * Q + [b.app_id] * Q + [c.app_id] * Q
    assert [r.id for r in first[:Q]] == rows[a.app_id][:Q], "oldest due first within an app"
    second = outbox_repo.claim_due(limit=100, lease=LEASE, after_app=first[-1].app_id)
    assert _apps(second) == [a.app_id] * half + [b.app_id] * half + [c.app_id] * half
    assert [r.id for r in second[:half]] == rows[a.app_id][Q:]


def test_an_app_with_a_backlog_does_not_hold_back_a_later_app(outbox_repo, tenants, add):
    a, b, *_ = tenants
    add(a, 20 * Q)
    late = add(b, 2)
    rows = outbox_repo.claim_due(limit=Q + 2, lease=LEASE)
    assert _apps(rows) == [a.app_id] * Q + [b.app_id] * 2
    assert [r.id for r in rows[Q:]] == late


def test_turns_go_round_again_until_the_limit(outbox_repo, tenants, add):
    a, b, *_ = tenants
    add(a, 2 * Q + 5)
    add(b, 3)
    rows = outbox_repo.claim_due(limit=2 * Q, lease=LEASE)
    assert _apps(rows) == [a.app_id] * Q + [b.app_id] * 3 + [a.app_id] * (Q - 3)
    rest = outbox_repo.claim_due(limit=100, lease=LEASE, after_app=rows[-1].app_id)
    assert _apps(rest) == [a.app_id] * 8
    assert outbox_repo.claim_due(limit=100, lease=LEASE) == []


def test_after_app_starts_after_it_and_wraps_around(outbox_repo, tenants, add):
    a, b, c, d = tenants
    for t in tenants:
        add(t, 2)
    rows = outbox_repo.claim_due(limit=4, lease=LEASE, after_app=b.app_id)
    assert _apps(rows) == [c.app_id, c.app_id, d.app_id, d.app_id]
    rows = outbox_repo.claim_due(limit=4, lease=LEASE, after_app=d.app_id)
    assert _apps(rows) == [a.app_id, a.app_id, b.app_id, b.app_id], "wrapped to the first app"


def test_after_app_need_not_have_rows(outbox_repo, tenants, add):
    a, b, c, _ = tenants
    add(a, 1)
    add(c, 1)
    # b has no rows (any more): the turn still goes to the app after it.
    assert _apps(outbox_repo.claim_due(limit=1, lease=LEASE, after_app=b.app_id)) == [c.app_id]
    past_the_end = UUID(int=2**128 - 1)
    assert _apps(outbox_repo.claim_due(limit=1, lease=LEASE, after_app=past_the_end)) == [a.app_id]


def test_a_small_limit_serves_the_next_app_on_the_next_claim(outbox_repo, tenants, add):
    for t in tenants:
        add(t, 3)
    served, after = [], None
    for _ in range(4):
        (row,) = outbox_repo.claim_due(limit=1, lease=LEASE, after_app=after)
        served.append(row.app_id)
        after = row.app_id
    assert served == [t.app_id for t in tenants], "every app within one rotation"


def test_an_app_never_has_more_rows_in_flight_than_its_cap(outbox_repo, tenants, add, caps):
    a, b, *_ = tenants
    caps.app(a.app_id, 3)
    add(a, 8)
    add(b, 4)
    rows = outbox_repo.claim_due(limit=100, lease=LEASE)
    assert _apps(rows) == [a.app_id] * 3 + [b.app_id] * 4
    assert outbox_repo.claim_due(limit=100, lease=LEASE) == [], "a's rows over its cap wait"
    assert outbox_repo.stats()[0] == 5, "still due, untouched"
    # Acknowledging one frees one slot, in the same call.
    again = outbox_repo.claim_due(limit=100, lease=LEASE, ack=[rows[0].id])
    assert _apps(again) == [a.app_id]
    assert again[0].attempts == 1


def test_slots_free_on_release_and_reschedule(outbox_repo, tenants, add, caps):
    (a, *_) = tenants
    caps.app(a.app_id, 2)
    add(a, 5)
    first, second = outbox_repo.claim_due(limit=10, lease=LEASE)
    assert outbox_repo.claim_due(limit=10, lease=LEASE) == []
    outbox_repo.release([first.id])
    assert len(outbox_repo.claim_due(limit=10, lease=LEASE)) == 1, "a released row is not in flight"
    assert outbox_repo.claim_due(limit=10, lease=LEASE) == []
    outbox_repo.reschedule(second.id, timezone.now() + timedelta(hours=1), "boom")
    assert len(outbox_repo.claim_due(limit=10, lease=LEASE)) == 1, (
        "a rescheduled row is not in flight"
    )
    assert outbox_repo.claim_due(limit=10, lease=LEASE) == []


def test_a_slot_frees_when_a_lease_runs_out(outbox_repo, tenants, add, caps):
    (a, *_) = tenants
    caps.app(a.app_id, 1)
    first, second = add(a, 2)
    (claimed,) = outbox_repo.claim_due(limit=10, lease=0.05)
    assert claimed.id == first
    got = wait_for(
        lambda: outbox_repo.claim_due(limit=10, lease=LEASE), timeout=5, what="the lease to end"
    )
    assert [r.id for r in got] == [second], "the lost row no longer holds the slot"
    assert outbox_repo.claim_due(limit=10, lease=LEASE) == [], "the new lease holds it"
    assert outbox_repo.get(first).attempts == 1, "the lost row waits, due again"


def test_a_script_never_has_more_rows_in_flight_than_its_cap(outbox_repo, tenants, add, caps):
    (a, *_) = tenants
    caps.script(a.script_id, 2)
    capped = add(a, 5)
    free = add(a, 3, script_id=a.other_script_id)
    rows = outbox_repo.claim_due(limit=100, lease=LEASE)
    assert [r.id for r in rows] == capped[:2] + free, "the capped script's others are skipped"
    assert outbox_repo.claim_due(limit=100, lease=LEASE) == []
    again = outbox_repo.claim_due(limit=100, lease=LEASE, ack=[rows[0].id])
    assert [r.id for r in again] == [capped[2]], "claimed once a slot frees"


def test_the_platform_cap_and_its_override(outbox_repo, tenants, add, caps, override_config):
    a, b, c, _ = tenants
    for t in (a, b, c):
        add(t, 10)
    override_config(ConcurrencyConfig(app_max_concurrency=4))
    caps.platform(2)
    caps.app(c.app_id, 3)
    rows = outbox_repo.claim_due(limit=100, lease=LEASE)
    assert _apps(rows) == [a.app_id] * 2 + [b.app_id] * 2 + [c.app_id] * 3
    caps.platform(None)  # back to the environment's default
    rows = outbox_repo.claim_due(limit=100, lease=LEASE)
    assert _apps(rows) == [a.app_id] * 2 + [b.app_id] * 2


def test_synchronous_invocations_count_like_any_other_row(outbox_repo, tenants, add, caps):
    (a, *_) = tenants
    caps.app(a.app_id, 2)
    add(a, 1, reply_to=UUID(int=1))
    add(a, 1, reply_to=UUID(int=2))
    add(a, 1)
    rows = outbox_repo.claim_due(limit=10, lease=LEASE)
    assert [r.reply_to for r in rows] == [UUID(int=1), UUID(int=2)]
    assert outbox_repo.claim_due(limit=10, lease=LEASE) == []


def test_acks_ride_along_with_a_fair_claim(outbox_repo, tenants, add):
    a, b, *_ = tenants
    add(a, 2)
    add(b, 2)
    first = outbox_repo.claim_due(limit=2, lease=LEASE)
    assert _apps(first) == [a.app_id] * 2
    second = outbox_repo.claim_due(
        limit=10, lease=LEASE, ack=[r.id for r in first], after_app=first[-1].app_id
    )
    assert _apps(second) == [b.app_id] * 2
    assert all(outbox_repo.get(r.id) is None for r in first)


def test_load_counts_rows_in_flight_and_rows_due(outbox_repo, tenants, add):
    a, b, *_ = tenants
    add(a, 3)
    add(a, 2, script_id=a.other_script_id)
    add(b, 1)
    assert outbox_repo.load(a.app_id) == (0, 5)
    outbox_repo.claim_due(limit=4, lease=LEASE)  # a: 3 + 1 of the other script
    assert outbox_repo.load(a.app_id) == (4, 1)
    assert outbox_repo.load(a.app_id, a.other_script_id) == (1, 1)
    assert outbox_repo.load(b.app_id) == (0, 1)
