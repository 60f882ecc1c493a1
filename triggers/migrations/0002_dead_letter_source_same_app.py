# A dead-letter trigger filters only on a trigger of its own app; the schema
# change is triggers/sql/0002_dead_letter_source_same_app.sql.

import django.db.models.deletion
from django.db import migrations, models

from picloud.db.sqlfiles import sql_migration

REVERSE_SQL = """
ALTER TABLE dead_letter_trigger_details
    DROP CONSTRAINT dead_letter_trigger_details_source_same_app_fkey,
    DROP CONSTRAINT dead_letter_trigger_details_trigger_app_fkey,
    ADD CONSTRAINT dead_letter_trigger_details_trigger_id_fkey
        FOREIGN KEY (trigger_id) REFERENCES triggers (id) ON DELETE CASCADE,
    ADD CONSTRAINT dead_letter_trigger_details_source_trigger_id_fkey
        FOREIGN KEY (source_trigger_id) REFERENCES triggers (id) DEFERRABLE INITIALLY DEFERRED,
    DROP COLUMN app_id;
ALTER TABLE triggers DROP CONSTRAINT triggers_id_app_key;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("picloud", "0003_api_tokens"),
        ("triggers", "0001_initial"),
    ]

    operations = [
        sql_migration(
            "triggers",
            "0002_dead_letter_source_same_app.sql",
            reverse_sql=REVERSE_SQL,
            state_operations=[
                migrations.AddField(
                    model_name="deadlettertriggerdetails",
                    name="app",
                    field=models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        default=None,
                        editable=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="picloud.app",
                    ),
                    preserve_default=False,
                ),
                migrations.AlterField(
                    model_name="deadlettertriggerdetails",
                    name="source_trigger",
                    field=models.ForeignKey(
                        blank=True,
                        help_text="only dead letters of this trigger (of the same app); "
                        "empty for any",
                        null=True,
                        on_delete=django.db.models.deletion.RESTRICT,
                        related_name="+",
                        to="triggers.trigger",
                    ),
                ),
            ],
        ),
    ]
