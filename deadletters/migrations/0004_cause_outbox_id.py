# outbox_id is the failed row on every dead letter; a letter of a write stopped
# by the depth limit names its causing row in cause_outbox_id. The schema
# change (and the conversion of older letters) is
# deadletters/sql/0004_cause_outbox_id.sql.

from django.db import migrations, models

from picloud.db.sqlfiles import sql_migration

# Backwards, each letter keeps its own trigger and takes the older shape: the
# causing row in outbox_id (where the older code looks for "a letter for this
# causing row") and its trigger in payload.stopped_trigger_ids, so that
# migrating forward again converts it back unchanged. The older code replays
# any letter as its own trigger's row.
REVERSE_SQL = """
CREATE INDEX dead_letters_outbox_idx ON dead_letters (outbox_id) WHERE outbox_id IS NOT NULL;
DROP INDEX dead_letters_stopped_event_key;
UPDATE dead_letters
SET outbox_id = cause_outbox_id,
    payload = CASE
        WHEN payload ? 'stopped_trigger_ids' THEN payload
        ELSE payload || jsonb_build_object('stopped_trigger_ids', jsonb_build_array(trigger_id))
    END
WHERE cause_outbox_id IS NOT NULL;
ALTER TABLE dead_letters DROP COLUMN cause_outbox_id;
"""


class Migration(migrations.Migration):
    dependencies = [("deadletters", "0003_outbox_index")]

    operations = [
        sql_migration(
            "deadletters",
            "0004_cause_outbox_id.sql",
            reverse_sql=REVERSE_SQL,
            state_operations=[
                migrations.AddField(
                    model_name="deadletter",
                    name="cause_outbox_id",
                    field=models.UUIDField(blank=True, null=True),
                ),
            ],
        ),
    ]
