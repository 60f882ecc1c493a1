"""The engine on PostgreSQL when a hop fails half way: a claim that committed
but whose answer was lost, and a hand-back that failed, are given back by
the next hop instead of leaving their rows leased (and counted against
their app's cap) until the lease ends."""

import asyncio
import threading

import pytest
from django.db import OperationalError

from outbox.dispatch.engine import Engine
from outbox.dispatch.worker import postgres_dispatcher
from outbox.storage.pg_repository import PgOutboxRepo
from outbox.storage.repository import NewOutboxRow
from picloud.config import DispatcherConfig, SandboxCeiling
from picloud.db.dbthreads import DbThreads
from picloud.runtime.execution import Prepared, Success
from tests.factories import MembershipFactory, ScriptFactory

pytestmark = pytest.mark.django_db(transaction=True)

CEILING = SandboxCeiling(timeout_ms=5_000)  # a lease of 35 s with the default margin
SOON = 5.0  # seconds: well inside the lease, well past the engine's first retry


class FailingOutbox(PgOutboxRepo):
    """The PostgreSQL outbox, failing once where a test asks."""

    def __init__(self):
        self.lose_claim = self.fail_hand_back = False

    def claim_due(self, *args, **kwargs):
        rows = super().claim_due(*args, **kwargs)
        if self.lose_claim:
            # Committed, but the connection broke before the answer came.
            self.lose_claim = False
            raise OperationalError("server closed the connection unexpectedly")
        return rows

    def release_claimed(self, row_ids, claim_tokens):
        if self.fail_hand_back:
            self.fail_hand_back = False
            raise OperationalError("server closed the connection unexpectedly")
        return super().release_claimed(row_ids, claim_tokens)


class Runner:
    """Runs each row at once: a success, except a row in `not_started`,
    which the first time ends without starting (handed back)."""

    def __init__(self):
        self.runs = []  # (row id, its attempts when it ran)
        self.not_started = set()

        class Threads:
            live = 0
            saturated = staticmethod(lambda: False)
            expire = withdraw_all = staticmethod(lambda *now: None)

        self.threads = Threads()

    def start(self, prepared, *, start_by, on_outcome):
        row = prepared.row
        if row.id in self.not_started:
            self.not_started.discard(row.id)
            on_outcome(None)
            return None
        self.runs.append((row.id, row.attempts))
        on_outcome(Success({"ok": True}))
        return None


class Store:
    def add(self, increments):
        pass


@pytest.fixture
def world():
    member = MembershipFactory()
    script = ScriptFactory(app=member.app)
    outbox = FailingOutbox()
    dispatcher = postgres_dispatcher(ceiling=CEILING)
    dispatcher.outbox = outbox
    runner, stopping, db = Runner(), threading.Event(), DbThreads(1)
    engine = Engine(
        dispatcher=dispatcher,
        runner=runner,
        db=db,
        counters=dispatcher.counters,
        counter_store=Store(),
        stopping=stopping,
        config=DispatcherConfig(shutdown_grace_ms=1_000),
        ceiling=CEILING,
        prepare_rows=lambda rows, _ceiling: [Prepared(r, None, None) for r in rows],
    )

    def insert():
        return outbox.insert(NewOutboxRow(member.app_id, "kv", script.id, member.principal_id))

    yield engine, outbox, runner, stopping, insert
    db.close()


def _run_until(engine, stopping, condition):
    """Run the engine until `condition` holds or SOON seconds pass; say which."""

    async def main():
        task = asyncio.create_task(engine.main())
        try:
            async with asyncio.timeout(SOON):
                while not condition():
                    await asyncio.sleep(0.01)
            return True
        except TimeoutError:
            return False
        finally:
            stopping.set()
            engine.wake()
            await task

    return asyncio.run(main())


def test_a_claim_whose_answer_was_lost_is_given_back_by_the_next_hop(world):
    engine, outbox, runner, stopping, insert = world
    row = insert()
    outbox.lose_claim = True
    ran = _run_until(engine, stopping, lambda: runner.runs)
    assert ran, "the row of the lost claim waited for its lease instead of being given back"
    assert runner.runs == [(row.id, 1)], "it runs once, the lost claim's attempt uncounted"
    assert not outbox.lose_claim


def test_a_failed_hops_hand_back_is_retried(world):
    engine, outbox, runner, stopping, insert = world
    row = insert()
    runner.not_started.add(row.id)
    outbox.fail_hand_back = True
    ran = _run_until(engine, stopping, lambda: runner.runs)
    assert ran, "the row whose hand-back failed waited for its lease"
    assert runner.runs == [(row.id, 1)], "handed back uncounted, then run"
    assert not outbox.fail_hand_back
