# Triggers, a function and an unmanaged counters table: Django's model state
# does not change.

from django.db import migrations

from picloud.db.sqlfiles import read_sql


class Migration(migrations.Migration):
    dependencies = [("outbox", "0001_initial")]

    operations = [
        migrations.RunSQL(
            read_sql("outbox", "0002_notify.sql"),
            reverse_sql=(
                "DROP TABLE dispatcher_counters; "
                "DROP TRIGGER outbox_notify_due_now ON outbox; "
                "DROP TRIGGER outbox_notify_insert ON outbox; "
                "DROP FUNCTION outbox_notify()"
            ),
        ),
    ]
