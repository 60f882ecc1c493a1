"""A rolling upgrade: a later release's migration adds a column to `outbox`
while this release still runs. This release's queries that return every
column must leave it out, not fail: an event written through an old node
after the migration would otherwise raise after its INSERT had run."""

import pytest
from django.db import connection

from outbox.storage.pg_repository import PgOutboxRepo
from outbox.storage.repository import NewOutboxRow
from picloud.models import principal_for
from tests.factories import ScriptFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_rows_read_and_written_beside_a_column_this_release_does_not_know():
    script = ScriptFactory()
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE outbox ADD COLUMN added_by_a_later_release uuid")
    repo = PgOutboxRepo()
    new = NewOutboxRow(
        app_id=script.app_id,
        source_kind="kv",
        script_id=script.id,
        run_as_principal=principal_for(UserFactory()).id,
        payload={"a": 1},
    )
    row = repo.insert(new)
    assert repo.get(row.id) == row
    (claimed,) = repo.claim_due(limit=1, lease=30)
    assert claimed.id == row.id and claimed.payload == {"a": 1}
