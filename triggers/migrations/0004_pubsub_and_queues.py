# Pub/sub and queue triggers: the schema is triggers/sql/0004_pubsub_and_queues.sql; the models mirror it.

import django.db.models.deletion
from django.db import migrations, models

from picloud.db.sqlfiles import read_sql, sql_migration

# Reverting restores the view as 0003_cron.sql left it, then drops what 0004 added.
_VIEW_0003 = read_sql("triggers", "0003_cron.sql")
_VIEW_0003 = _VIEW_0003[_VIEW_0003.index("CREATE OR REPLACE VIEW triggers_with_details") :]
REVERSE_SQL = [
    "DROP FUNCTION queue_settle_batch",
    "DROP FUNCTION queue_fill_trigger",
    "DROP VIEW triggers_with_details",
    _VIEW_0003,
    "DROP TABLE queue_trigger_details",
    "DROP TABLE pubsub_trigger_details",
]


class Migration(migrations.Migration):
    dependencies = [
        ("picloud", "0005_topics_and_queues"),
        ("triggers", "0003_cron"),
    ]

    operations = [
        sql_migration(
            "triggers",
            "0004_pubsub_and_queues.sql",
            reverse_sql=REVERSE_SQL,
            state_operations=[
                migrations.CreateModel(
                    name="PubsubTriggerDetails",
                    fields=[
                        (
                            "trigger",
                            models.OneToOneField(
                                on_delete=django.db.models.deletion.CASCADE,
                                primary_key=True,
                                related_name="pubsub_details",
                                serialize=False,
                                to="triggers.trigger",
                            ),
                        ),
                        (
                            "topic",
                            models.TextField(
                                help_text="'*', 'prefix:*' (e.g. orders:*) or an exact topic name",
                                max_length=255,
                            ),
                        ),
                    ],
                    options={
                        "verbose_name_plural": "pub/sub trigger details",
                        "db_table": "pubsub_trigger_details",
                    },
                ),
                migrations.CreateModel(
                    name="QueueTriggerDetails",
                    fields=[
                        (
                            "trigger",
                            models.OneToOneField(
                                on_delete=django.db.models.deletion.CASCADE,
                                primary_key=True,
                                related_name="queue_details",
                                serialize=False,
                                to="triggers.trigger",
                            ),
                        ),
                        (
                            "batch_size",
                            models.IntegerField(
                                default=10, help_text="messages per batch, 1 to 100"
                            ),
                        ),
                        (
                            "max_batch_wait_ms",
                            models.IntegerField(
                                default=0,
                                help_text="ms a partial batch waits for more messages, 0 to 60000",
                            ),
                        ),
                        (
                            "max_concurrency",
                            models.IntegerField(
                                default=5, help_text="batches waiting or running at once, 1 to 100"
                            ),
                        ),
                        (
                            "max_receives",
                            models.IntegerField(
                                default=5,
                                help_text="receives of a message before it becomes a dead letter, 1 to 100",
                            ),
                        ),
                        (
                            "app",
                            models.ForeignKey(
                                blank=True,
                                db_constraint=False,
                                editable=False,
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="+",
                                to="picloud.app",
                            ),
                        ),
                        (
                            "queue",
                            models.OneToOneField(
                                help_text="the queue this trigger consumes (a queue has one consumer trigger)",
                                on_delete=django.db.models.deletion.RESTRICT,
                                related_name="consumer",
                                to="picloud.queue",
                            ),
                        ),
                    ],
                    options={
                        "verbose_name_plural": "queue trigger details",
                        "db_table": "queue_trigger_details",
                    },
                ),
            ],
        ),
    ]
