# Email triggers: the schema is triggers/sql/0005_email.sql; the models mirror it.

import django.db.models.deletion
from django.db import migrations, models

from picloud.db.sqlfiles import read_sql, sql_migration

# Reverting restores the view as 0004_pubsub_and_queues.sql left it, the
# filter's narrower CHECK, then drops the details.
_VIEW_0004 = read_sql("triggers", "0004_pubsub_and_queues.sql")
_VIEW_0004 = _VIEW_0004[
    _VIEW_0004.index("CREATE OR REPLACE VIEW triggers_with_details") : _VIEW_0004.index(
        "CREATE FUNCTION queue_fill_trigger"
    )
]
REVERSE_SQL = [
    "DROP VIEW triggers_with_details",
    _VIEW_0004,
    "ALTER TABLE dead_letter_trigger_details "
    "DROP CONSTRAINT dead_letter_trigger_details_source_kind_check, "
    "ADD CONSTRAINT dead_letter_trigger_details_source_kind_check CHECK (source_kind IN "
    "('kv', 'cron', 'pubsub', 'queue', 'email', 'invoke'))",
    "DROP TABLE email_trigger_details",
]


class Migration(migrations.Migration):
    dependencies = [
        ("triggers", "0004_pubsub_and_queues"),
        ("outbox", "0008_email_send"),
        ("deadletters", "0005_email_send"),
        ("picloud", "0006_email"),
    ]

    operations = [
        sql_migration(
            "triggers",
            "0005_email.sql",
            reverse_sql=REVERSE_SQL,
            state_operations=[
                migrations.CreateModel(
                    name="EmailTriggerDetails",
                    fields=[
                        (
                            "trigger",
                            models.OneToOneField(
                                on_delete=django.db.models.deletion.CASCADE,
                                primary_key=True,
                                related_name="email_details",
                                serialize=False,
                                to="triggers.trigger",
                            ),
                        ),
                        (
                            "local_part",
                            models.TextField(
                                help_text="'*', 'prefix:*' or an exact local part, e.g. orders for orders@<app>.<domain> (and orders+anything@…)",
                                max_length=64,
                            ),
                        ),
                    ],
                    options={
                        "verbose_name_plural": "email trigger details",
                        "db_table": "email_trigger_details",
                    },
                ),
                migrations.AlterField(
                    model_name="deadlettertriggerdetails",
                    name="source_kind",
                    field=models.CharField(
                        blank=True,
                        choices=[
                            ("kv", "KV write"),
                            ("cron", "Cron"),
                            ("pubsub", "Pub/sub"),
                            ("queue", "Queue"),
                            ("email", "Email"),
                            ("invoke", "HTTP invocation"),
                            ("email_send", "Email (outbound)"),
                        ],
                        help_text="only dead letters from this source; empty for any",
                        max_length=20,
                        null=True,
                    ),
                ),
            ],
        ),
    ]
