# The delivery log, its rollups and the backlog samples: outbox/sql/0008_delivery_log.sql.

from django.db import migrations

from picloud.db.sqlfiles import sql_migration

REVERSE_SQL = [
    "DROP TABLE outbox_samples",
    "DROP TABLE trigger_hours",
    "DROP TABLE delivery_minutes",
    "DROP FUNCTION delivery_log_expired(INTEGER, INTEGER)",
    "DROP FUNCTION delivery_log_make_partitions(INTEGER)",
    "DROP FUNCTION delivery_log_partition(BOOLEAN, DATE)",
    "DROP FUNCTION delivery_log_ack(UUID[], DOUBLE PRECISION[], INTEGER[], TEXT[], INTEGER[], TEXT[])",
    "DROP FUNCTION delivery_log_write(JSON)",
    "DROP FUNCTION delivery_log_event_key(TEXT, JSONB)",
    "DROP TABLE delivery_log",
]


class Migration(migrations.Migration):
    dependencies = [
        ("outbox", "0008_email_send"),
        # delivery_log_write reads triggers.log_failures_only.
        ("triggers", "0006_log_failures_only"),
    ]

    operations = [
        sql_migration(
            "outbox", "0008_delivery_log.sql", reverse_sql=REVERSE_SQL, state_operations=[]
        ),
    ]
