# A function only: Django's model state does not change. picloud/sql/0007_search_words.sql.

from django.db import migrations

from picloud.db.sqlfiles import read_sql


class Migration(migrations.Migration):
    dependencies = [("picloud", "0006_email")]

    operations = [
        migrations.RunSQL(
            read_sql("picloud", "0007_search_words.sql"),
            reverse_sql="DROP FUNCTION search_words(TEXT)",
        ),
    ]
