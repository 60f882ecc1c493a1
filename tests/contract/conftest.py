"""Fixtures that hand each contract test every implementation of a repository.

The suite runs with committed transactions (transaction=True) so that
PostgreSQL's NOW() moves between statements, as it does in production; with
one wrapping test transaction every row would share one timestamp.
"""

from dataclasses import dataclass
from uuid import UUID

import pytest

from deadletters.memory_repository import MemoryAbandonedRepo, MemoryDeadLetterRepo
from deadletters.pg_repository import PgAbandonedRepo, PgDeadLetterRepo
from outbox.storage.memory_repository import MemoryOutboxRepo, MemoryReplyInbox
from outbox.storage.pg_repository import PgOutboxRepo, PgReplyInbox
from picloud.models import Queue
from tests.factories import AppFactory, ScriptFactory, UserFactory
from triggers.memory_repository import MemoryTriggerRepo
from triggers.pg_repository import PgTriggerRepo
from triggers.repository import NewTrigger

IMPLEMENTATIONS = ["memory", "postgres"]


@dataclass(frozen=True)
class World:
    """Rows the repositories' foreign keys need (harmless for the memory ones)."""

    app_id: UUID
    other_app_id: UUID
    script_id: UUID
    other_script_id: UUID  # belongs to other_app
    principal_id: UUID
    queue_id: UUID
    other_queue_id: UUID  # belongs to other_app


@pytest.fixture
def world(transactional_db) -> World:
    app, other = AppFactory(), AppFactory()
    return World(
        app_id=app.id,
        other_app_id=other.id,
        script_id=ScriptFactory(app=app).id,
        other_script_id=ScriptFactory(app=other).id,
        principal_id=UserFactory().principal.id,
        queue_id=Queue.objects.create(app=app, name="work").id,
        other_queue_id=Queue.objects.create(app=other, name="work").id,
    )


def _pick(request, memory_cls, pg_cls):
    return memory_cls() if request.param == "memory" else pg_cls()


@pytest.fixture(params=IMPLEMENTATIONS)
def trigger_repo(request, world):
    if request.param == "memory":
        # What the scripts table tells PostgreSQL.
        return MemoryTriggerRepo(
            {world.script_id: world.app_id, world.other_script_id: world.other_app_id},
            {world.queue_id: world.app_id, world.other_queue_id: world.other_app_id},
        )
    return PgTriggerRepo()


@pytest.fixture
def new_trigger(world):
    """new_trigger(kind, name="t", **details): a NewTrigger of the world's app,
    script and principal."""

    def make(kind, name="t", **details):
        return NewTrigger(
            app_id=world.app_id,
            kind=kind,
            script_id=world.script_id,
            name=name,
            registered_by_principal=world.principal_id,
            **details,
        )

    return make


@pytest.fixture(params=IMPLEMENTATIONS)
def outbox_repo(request, transactional_db):
    return _pick(request, MemoryOutboxRepo, PgOutboxRepo)


@pytest.fixture(params=IMPLEMENTATIONS)
def dead_letter_repo(request, transactional_db):
    return _pick(request, MemoryDeadLetterRepo, PgDeadLetterRepo)


@pytest.fixture(params=IMPLEMENTATIONS)
def abandoned_repo(request, transactional_db):
    return _pick(request, MemoryAbandonedRepo, PgAbandonedRepo)


@pytest.fixture(params=IMPLEMENTATIONS)
def reply_inbox(request, transactional_db):
    return _pick(request, MemoryReplyInbox, PgReplyInbox)
