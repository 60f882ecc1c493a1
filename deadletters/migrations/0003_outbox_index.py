# Index only: Django's model state does not change.

from django.db import migrations

from picloud.db.sqlfiles import read_sql


class Migration(migrations.Migration):
    dependencies = [("deadletters", "0002_abandoned_executions")]

    operations = [
        migrations.RunSQL(
            read_sql("deadletters", "0003_outbox_index.sql"),
            reverse_sql="DROP INDEX dead_letters_outbox_idx",
        ),
    ]
