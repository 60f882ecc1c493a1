# Topics and queues: the schema is picloud/sql/0005_topics_and_queues.sql; the models mirror it.

import uuid

import django.db.models.deletion
from django.db import migrations, models

from picloud.db.sqlfiles import sql_migration


class Migration(migrations.Migration):
    dependencies = [
        ("picloud", "0004_concurrency_caps"),
    ]

    operations = [
        sql_migration(
            "picloud",
            "0005_topics_and_queues.sql",
            reverse_sql=[
                "DROP TABLE queue_messages",
                "DROP FUNCTION queue_messages_notify",
                "DROP TABLE queues",
                "DROP TABLE topics",
            ],
            state_operations=[
                migrations.CreateModel(
                    name="Queue",
                    fields=[
                        (
                            "id",
                            models.UUIDField(
                                default=uuid.uuid4,
                                editable=False,
                                primary_key=True,
                                serialize=False,
                            ),
                        ),
                        (
                            "name",
                            models.TextField(
                                help_text="ASCII letters, digits and _ . : - ; e.g. emails",
                                max_length=200,
                            ),
                        ),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        (
                            "app",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="queues",
                                to="picloud.app",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "queues",
                        "ordering": ["app", "name"],
                    },
                ),
                migrations.CreateModel(
                    name="QueueMessage",
                    fields=[
                        ("id", models.BigAutoField(primary_key=True, serialize=False)),
                        ("body", models.JSONField()),
                        ("sent_at", models.DateTimeField(auto_now_add=True)),
                        ("vt", models.DateTimeField(help_text="visible from")),
                        ("receive_count", models.IntegerField(default=0)),
                        ("depth", models.IntegerField(default=0)),
                        (
                            "batch_id",
                            models.UUIDField(
                                blank=True, help_text="the queue trigger's batch", null=True
                            ),
                        ),
                        (
                            "queue",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="messages",
                                to="picloud.queue",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "queue_messages",
                    },
                ),
                migrations.CreateModel(
                    name="Topic",
                    fields=[
                        (
                            "id",
                            models.UUIDField(
                                default=uuid.uuid4,
                                editable=False,
                                primary_key=True,
                                serialize=False,
                            ),
                        ),
                        (
                            "name",
                            models.TextField(
                                help_text="ASCII letters, digits and _ . : - ; e.g. orders:created",
                                max_length=200,
                            ),
                        ),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        (
                            "app",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="topics",
                                to="picloud.app",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "topics",
                        "ordering": ["app", "name"],
                    },
                ),
                migrations.AddConstraint(
                    model_name="queue",
                    constraint=models.UniqueConstraint(
                        fields=("app", "name"), name="queues_app_name_key"
                    ),
                ),
                migrations.AddConstraint(
                    model_name="queue",
                    constraint=models.UniqueConstraint(
                        fields=("id", "app"), name="queues_id_app_key"
                    ),
                ),
                migrations.AddConstraint(
                    model_name="topic",
                    constraint=models.UniqueConstraint(
                        fields=("app", "name"), name="topics_app_name_key"
                    ),
                ),
            ],
        ),
    ]
