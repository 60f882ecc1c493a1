# Email: the schema is picloud/sql/0006_email.sql; the models mirror it.

import uuid

import django.contrib.postgres.fields
import django.db.models.deletion
from django.db import migrations, models

from picloud.db.sqlfiles import sql_migration


class Migration(migrations.Migration):
    dependencies = [
        ("picloud", "0005_topics_and_queues"),
    ]

    operations = [
        sql_migration(
            "picloud",
            "0006_email.sql",
            reverse_sql=["DROP TABLE email_send_counts", "DROP TABLE inbound_emails"],
            state_operations=[
                migrations.CreateModel(
                    name="InboundEmail",
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
                        ("received_at", models.DateTimeField(auto_now_add=True)),
                        (
                            "mail_from",
                            models.TextField(
                                help_text="the envelope sender (MAIL FROM); empty for a bounce"
                            ),
                        ),
                        (
                            "rcpt_to",
                            django.contrib.postgres.fields.ArrayField(
                                base_field=models.TextField(),
                                help_text="this app's recipients (RCPT TO)",
                                size=None,
                            ),
                        ),
                        ("subject", models.TextField(blank=True, default="")),
                        ("from_header", models.TextField(blank=True, default="")),
                        ("message_id", models.TextField(blank=True, null=True)),
                        ("size", models.IntegerField(help_text="bytes")),
                        (
                            "fired",
                            models.JSONField(
                                default=list, help_text="the triggers it fired, as they were then"
                            ),
                        ),
                        (
                            "peer",
                            models.TextField(
                                blank=True, default="", help_text="the SMTP client's address"
                            ),
                        ),
                        ("raw", models.BinaryField()),
                        (
                            "app",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="inbound_emails",
                                to="picloud.app",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "inbound_emails",
                        "ordering": ["-received_at"],
                    },
                ),
                migrations.CreateModel(
                    name="EmailSendCount",
                    fields=[
                        (
                            "pk",
                            models.CompositePrimaryKey(
                                "app_id",
                                "hour",
                                blank=True,
                                editable=False,
                                primary_key=True,
                                serialize=False,
                            ),
                        ),
                        ("hour", models.DateTimeField()),
                        ("sent", models.IntegerField()),
                        (
                            "app",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="+",
                                to="picloud.app",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "email_send_counts",
                        "indexes": [
                            models.Index(fields=["hour"], name="email_send_counts_hour_idx")
                        ],
                    },
                ),
            ],
        ),
    ]
