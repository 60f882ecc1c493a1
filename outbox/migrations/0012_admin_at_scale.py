# Indexes only: Django's model state does not change. outbox/sql/0010_admin_at_scale.sql.

from django.db import migrations

from picloud.db.sqlfiles import read_sql


class Migration(migrations.Migration):
    dependencies = [("outbox", "0011_delivery_pages"), ("picloud", "0007_search_words")]

    operations = [
        migrations.RunSQL(
            read_sql("outbox", "0010_admin_at_scale.sql"),
            reverse_sql=(
                "DROP INDEX outbox_error_words_idx, outbox_pubsub_topic_idx, "
                "outbox_scheduled_runs_idx"
            ),
        ),
    ]
