# Indexes (and the search's words function) only: Django's model state does
# not change. deadletters/sql/0006_admin_at_scale.sql.

from django.db import migrations

from picloud.db.sqlfiles import read_sql

REVERSE_SQL = """
DROP INDEX dead_letters_words_idx;
DROP FUNCTION dead_letter_words(TEXT, TEXT, JSONB);
DROP INDEX dead_letters_unresolved_queue_idx;
DROP INDEX dead_letters_unresolved_topic_idx;
DROP INDEX dead_letters_outbox_id_idx;
CREATE INDEX dead_letters_trigger_idx ON dead_letters (trigger_id) WHERE trigger_id IS NOT NULL;
DROP INDEX dead_letters_trigger_created_idx;
DROP INDEX dead_letters_created_idx;
"""


class Migration(migrations.Migration):
    dependencies = [("deadletters", "0005_email_send"), ("picloud", "0007_search_words")]

    operations = [
        migrations.RunSQL(read_sql("deadletters", "0006_admin_at_scale.sql"), REVERSE_SQL),
    ]
