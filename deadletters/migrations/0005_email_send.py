# The 'email_send' source kind: deadletters/sql/0005_email_send.sql.

from django.db import migrations, models

from picloud.db.sqlfiles import sql_migration


class Migration(migrations.Migration):
    dependencies = [
        ("deadletters", "0004_cause_outbox_id"),
    ]

    operations = [
        sql_migration(
            "deadletters",
            "0005_email_send.sql",
            reverse_sql=(
                "ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_source_kind_check, "
                "ADD CONSTRAINT dead_letters_source_kind_check CHECK (source_kind IN "
                "('kv', 'cron', 'pubsub', 'queue', 'email', 'dead_letter', 'invoke'))"
            ),
            state_operations=[
                migrations.AlterField(
                    model_name="deadletter",
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
