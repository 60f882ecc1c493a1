# The delivery log's per-trigger switch: triggers/sql/0006_log_failures_only.sql.

from django.db import migrations, models

from picloud.db.sqlfiles import sql_migration


class Migration(migrations.Migration):
    dependencies = [("triggers", "0005_email")]

    operations = [
        sql_migration(
            "triggers",
            "0006_log_failures_only.sql",
            reverse_sql="ALTER TABLE triggers DROP COLUMN log_failures_only",
            state_operations=[
                migrations.AddField(
                    model_name="trigger",
                    name="log_failures_only",
                    field=models.BooleanField(
                        default=False,
                        help_text=(
                            "Keep only failed attempts in the delivery log (for very hot "
                            "triggers); successes are still counted in its health figures."
                        ),
                    ),
                ),
            ],
        ),
    ]
