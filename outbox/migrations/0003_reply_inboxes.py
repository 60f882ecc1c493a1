# A table that only repositories read: Django's model state does not change.

from django.db import migrations

from picloud.db.sqlfiles import read_sql


class Migration(migrations.Migration):
    dependencies = [("outbox", "0002_notify"), ("picloud", "0003_api_tokens")]

    operations = [
        migrations.RunSQL(
            read_sql("outbox", "0003_reply_inboxes.sql"), reverse_sql="DROP TABLE reply_inboxes"
        ),
    ]
