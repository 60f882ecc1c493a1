# A queue batch settled only by the claim that ran it:
# triggers/sql/0007_queue_settle_claimed.sql. A new function beside
# queue_settle_batch (nodes of the previous release keep calling that one),
# so it runs while those nodes dispatch; no table changes, no model state.

from django.db import migrations

from picloud.db.sqlfiles import sql_migration


class Migration(migrations.Migration):
    dependencies = [("triggers", "0006_log_failures_only")]

    operations = [
        sql_migration(
            "triggers",
            "0007_queue_settle_claimed.sql",
            reverse_sql=(
                "DROP FUNCTION queue_settle_claimed(UUID, INTEGER, BIGINT[], BIGINT[], "
                "INTEGER[], INTEGER[], BIGINT[])"
            ),
            state_operations=[],
        ),
    ]
