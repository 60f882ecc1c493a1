# Cron triggers: the schema is triggers/sql/0003_cron.sql; the models mirror it.

import uuid

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models

from picloud.db.sqlfiles import read_sql, sql_migration

# Reverting restores the view of 0001_triggers.sql (as released), then drops
# what 0003 added.
_VIEW_0001 = read_sql("triggers", "0001_triggers.sql")
_VIEW_0001 = (
    "CREATE OR REPLACE VIEW"
    + _VIEW_0001[_VIEW_0001.index("CREATE VIEW triggers_with_details") + len("CREATE VIEW") :]
)
REVERSE_SQL = [
    "DROP VIEW triggers_with_details",
    _VIEW_0001,
    "DROP TRIGGER cron_trigger_toggled ON triggers",
    "DROP FUNCTION cron_trigger_toggled",
    "DROP TABLE cron_ticks",
    "DROP TABLE cron_trigger_details",
    "DROP FUNCTION cron_details_changed",
    "DROP FUNCTION cron_drop_pending_ticks",
]


class Migration(migrations.Migration):
    dependencies = [
        ("triggers", "0002_dead_letter_source_same_app"),
        # Its SQL functions read the outbox's lease columns. (Left implicit
        # until a later migration reordered the plan and showed it.)
        ("outbox", "0006_claim_waits"),
    ]

    operations = [
        sql_migration(
            "triggers",
            "0003_cron.sql",
            reverse_sql=REVERSE_SQL,
            state_operations=[
                migrations.CreateModel(
                    name="CronTriggerDetails",
                    fields=[
                        (
                            "trigger",
                            models.OneToOneField(
                                on_delete=django.db.models.deletion.CASCADE,
                                primary_key=True,
                                related_name="cron_details",
                                serialize=False,
                                to="triggers.trigger",
                            ),
                        ),
                        (
                            "schedule",
                            models.TextField(
                                help_text="5 cron fields (minute hour day-of-month month day-of-week), 6 with seconds first, or @hourly, @daily, @weekly, @monthly, @yearly",
                                max_length=200,
                            ),
                        ),
                        (
                            "timezone",
                            models.CharField(
                                default="UTC",
                                help_text="IANA name, e.g. Europe/Paris",
                                max_length=64,
                            ),
                        ),
                        (
                            "catchup",
                            models.CharField(
                                choices=[("skip", "skip"), ("latest", "latest"), ("all", "all")],
                                default="latest",
                                help_text="ticks missed while no cluster ran: none (skip), the most recent (latest), or all (at most 100), within the window",
                                max_length=10,
                            ),
                        ),
                        (
                            "catchup_window_s",
                            models.IntegerField(
                                default=21600,
                                help_text="seconds; missed ticks older than this never fire",
                            ),
                        ),
                        (
                            "overlap",
                            models.CharField(
                                choices=[
                                    ("skip", "skip"),
                                    ("buffer_one", "buffer_one"),
                                    ("allow", "allow"),
                                ],
                                default="skip",
                                help_text="when the previous tick still runs or retries: drop this one (skip), run it after (buffer_one), or run both (allow)",
                                max_length=10,
                            ),
                        ),
                        ("paused", models.BooleanField(default=False)),
                        (
                            "payload",
                            models.JSONField(
                                blank=True, default=dict, help_text="merged into every tick's event"
                            ),
                        ),
                        (
                            "watermark",
                            models.DateTimeField(default=django.utils.timezone.now, editable=False),
                        ),
                        (
                            "next_tick_at",
                            models.DateTimeField(blank=True, editable=False, null=True),
                        ),
                        ("missed_ticks", models.BigIntegerField(default=0, editable=False)),
                    ],
                    options={
                        "verbose_name_plural": "cron trigger details",
                        "db_table": "cron_trigger_details",
                    },
                ),
                migrations.CreateModel(
                    name="CronTick",
                    fields=[
                        (
                            "pk",
                            models.CompositePrimaryKey(
                                "trigger_id",
                                "scheduled_at",
                                blank=True,
                                editable=False,
                                primary_key=True,
                                serialize=False,
                            ),
                        ),
                        ("scheduled_at", models.DateTimeField()),
                        ("outbox_id", models.UUIDField(default=uuid.uuid4)),
                        ("run_now", models.BooleanField(default=False)),
                        ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                        (
                            "trigger",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="+",
                                to="triggers.trigger",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "cron_ticks",
                    },
                ),
            ],
        ),
    ]
