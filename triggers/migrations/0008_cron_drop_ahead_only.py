# A cron trigger's edit drops only the ticks scheduled ahead:
# triggers/sql/0008_cron_drop_ahead_only.sql. The same function replaced,
# its signature and callers unchanged; no table changes, no model state.

from django.db import migrations

from picloud.db.sqlfiles import sql_migration

# 0003_cron.sql's version, restored going back.
PREVIOUS = """
CREATE OR REPLACE FUNCTION cron_drop_pending_ticks(p_trigger UUID) RETURNS VOID
LANGUAGE sql AS $$
    WITH dropped AS (
        DELETE FROM outbox o
        WHERE o.trigger_id = p_trigger AND o.source_kind = 'cron'
          AND o.leased_until IS NULL AND o.attempts = 0 AND o.due_at > NOW()
        RETURNING o.id
    )
    DELETE FROM cron_ticks k USING dropped d
    WHERE k.trigger_id = p_trigger AND k.outbox_id = d.id;
$$;
"""


class Migration(migrations.Migration):
    dependencies = [("triggers", "0007_queue_settle_claimed")]

    operations = [
        sql_migration(
            "triggers",
            "0008_cron_drop_ahead_only.sql",
            reverse_sql=PREVIOUS,
            state_operations=[],
        ),
    ]
