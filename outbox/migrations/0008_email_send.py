# The 'email_send' source kind: outbox/sql/0007_email_send.sql.

from django.db import migrations, models

from picloud.db.sqlfiles import sql_migration


class Migration(migrations.Migration):
    dependencies = [
        ("outbox", "0007_scheduled_run"),
    ]

    operations = [
        sql_migration(
            "outbox",
            "0007_email_send.sql",
            reverse_sql=(
                "ALTER TABLE outbox DROP CONSTRAINT outbox_source_kind_check, "
                "ADD CONSTRAINT outbox_source_kind_check CHECK (source_kind IN "
                "('kv', 'cron', 'pubsub', 'queue', 'email', 'dead_letter', 'invoke'))"
            ),
            state_operations=[
                migrations.AlterField(
                    model_name="outboxentry",
                    name="source_kind",
                    field=models.CharField(
                        choices=[
                            ("kv", "KV write"),
                            ("cron", "Cron"),
                            ("pubsub", "Pub/sub"),
                            ("queue", "Queue"),
                            ("email", "Email"),
                            ("dead_letter", "Dead letter"),
                            ("invoke", "HTTP invocation"),
                            ("email_send", "Email (outbound)"),
                        ],
                        max_length=20,
                    ),
                ),
            ],
        ),
    ]
