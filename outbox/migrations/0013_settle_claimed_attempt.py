# A retry rescheduled only by the claim that ran it:
# outbox/sql/0011_settle_claimed_attempt.sql. A new function beside the
# released queries (nodes of the previous release keep running theirs), so
# it runs while those nodes dispatch; no table changes, no model state.

from django.db import migrations

from picloud.db.sqlfiles import sql_migration


class Migration(migrations.Migration):
    dependencies = [("outbox", "0012_admin_at_scale")]

    operations = [
        sql_migration(
            "outbox",
            "0011_settle_claimed_attempt.sql",
            reverse_sql=(
                "DROP FUNCTION outbox_reschedule_claimed(UUID, INTEGER, TIMESTAMPTZ, TEXT, INTEGER)"
            ),
            state_operations=[],
        ),
    ]
