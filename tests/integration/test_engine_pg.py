"""The engine in this process on PostgreSQL: a hundred executions in flight
on a handful of connections (committed data, real LISTEN/NOTIFY)."""

import asyncio
import threading
import time

import pytest
from django.db import connection

from deadletters.models import DeadLetter
from outbox.dispatch.worker import postgres_host
from outbox.models import OutboxEntry
from outbox.storage.pg_repository import PgOutboxRepo
from outbox.storage.repository import NewOutboxRow
from picloud import kv
from picloud.config import DispatcherConfig
from picloud.domain.authz import Role
from picloud.domain.scripts import handler
from tests.factories import MembershipFactory, ScriptFactory
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

IN_FLIGHT = 100


class Crowd:
    """How many handlers are inside at once. Each waits until IN_FLIGHT are
    inside together (or a deadline), so reaching that count proves they ran
    side by side, not one after the other."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.inside = self.most = self.done = 0
        self.full = False

    def enter(self):
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
            self.full = self.full or self.inside >= IN_FLIGHT

    def leave(self):
        with self.lock:
            self.inside -= 1
            self.done += 1


CROWD = Crowd()


@handler("tests.engine.crowd")
async def crowd(event, ctx):
    CROWD.enter()
    try:
        deadline = time.monotonic() + 10
        while not CROWD.full and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        CROWD.leave()
    return {"n": event["n"]}


@handler("tests.engine.async_write")
async def async_write(event, ctx):
    await asyncio.sleep(0.01)
    await ctx.run_sync(ctx.kv.put, "seen", str(event["n"]), {"by": "async"})
    item = await ctx.run_sync(ctx.kv.get, "seen", str(event["n"]))
    return item.value


@pytest.fixture
def host():
    CROWD.reset()
    host = postgres_host(config=DispatcherConfig(max_in_flight=IN_FLIGHT, shutdown_grace_ms=5_000))
    yield host
    host.stop()


def _connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def test_a_hundred_async_handlers_run_at_once_on_a_few_connections(host):
    member = MembershipFactory(role=Role.Developer.value)
    script = ScriptFactory(app=member.app, handler="tests.engine.crowd")
    repo = PgOutboxRepo()
    for n in range(150):
        repo.insert(NewOutboxRow(member.app_id, "kv", script.id, member.principal_id, {"n": n}))
    before = _connections()
    host.start()
    wait_for(lambda: CROWD.full, timeout=30, what="a hundred handlers inside at once")
    during = _connections() - before
    wait_for(lambda: not OutboxEntry.objects.exists(), timeout=30, what="every row done")
    assert CROWD.most == IN_FLIGHT, "never more than max_in_flight at once"
    assert CROWD.done == 150
    assert during <= 5, f"{during} connections for {IN_FLIGHT} executions in flight"


def test_an_async_handler_uses_the_kv_store_through_run_sync(host):
    member = MembershipFactory(role=Role.Developer.value)
    script = ScriptFactory(app=member.app, handler="tests.engine.async_write")
    PgOutboxRepo().insert(
        NewOutboxRow(member.app_id, "kv", script.id, member.principal_id, {"n": 7})
    )
    host.start()
    wait_for(lambda: not OutboxEntry.objects.exists(), timeout=30, what="the row done")
    assert kv.get(member.app, "seen", "7", principal=member.principal).value == {"by": "async"}
    assert not DeadLetter.objects.exists()
