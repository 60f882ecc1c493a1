"""Every migration runs backwards and forwards again (DDL is transactional in PostgreSQL)."""

import pytest
from django.core.management import call_command
from django.db import connection

pytestmark = pytest.mark.django_db


def _tables():
    return set(connection.introspection.table_names(include_views=True))


def test_storage_migrations_reverse_and_reapply():
    storage = {
        "triggers",
        "kv_trigger_details",
        "dead_letter_trigger_details",
        "outbox",
        "dead_letters",
        "abandoned_executions",
        "triggers_with_details",
    }
    assert storage <= _tables()
    call_command("migrate", "triggers", "zero", verbosity=0)
    assert not storage & _tables(), "reversing left tables behind"
    call_command("migrate", verbosity=0)
    assert storage <= _tables()
