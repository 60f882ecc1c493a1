import hashlib
import re

import pytest

from picloud.db.sqlfiles import parse_queries
from tests.helpers import PROJECT_DIR

APPS = ["picloud", "triggers", "outbox", "deadletters"]


def _python_sources():
    for app in APPS:
        for path in (PROJECT_DIR / app).rglob("*.py"):
            yield path.read_text(encoding="utf-8")


def test_every_sql_file_is_used():
    """Each file under <app>/sql/ is named by a migration or loaded as queries.sql."""
    sources = "\n".join(_python_sources())
    unused = []
    for app in APPS:
        for path in sorted((PROJECT_DIR / app / "sql").glob("*.sql")):
            if path.name == "queries.sql":
                used = re.search(rf"load_queries\(\s*[\"']{app}[\"']\s*\)", sources)
            else:
                used = f'"{path.name}"' in sources
            if not used:
                unused.append(f"{app}/sql/{path.name}")
    assert not unused, f"SQL files nothing loads: {unused}"


def test_parse_queries_splits_on_headers():
    text = "-- first --\nSELECT 1;\n\n-- second_one --\n-- a comment\nSELECT 2;\n"
    assert parse_queries(text) == {"first": "SELECT 1;", "second_one": "-- a comment\nSELECT 2;"}


def test_parse_queries_refuses_duplicates():
    with pytest.raises(ValueError, match="defined twice"):
        parse_queries("-- a --\nSELECT 1;\n-- a --\nSELECT 2;")


# The SQL that released migrations run, pinned: a database migrated with the
# old text would differ from one migrated with the new, and nobody would
# know. Change a table with a new migration and a new file; add its hash here
# when it is released.
RELEASED_MIGRATION_SQL = {
    "deadletters/sql/0001_dead_letters.sql": "8fec08ee3b3a275c21fd2912f51cb152b4163c072c18c42530ab19adfe4f86e2",
    "deadletters/sql/0002_abandoned_executions.sql": "05e37c86eec1614c25aec0daf4ac599e7d75a6ed0a8e0b5d5a891b125a8c24bb",
    "deadletters/sql/0003_outbox_index.sql": "00199505e255bbf79f814e5be07d4afbb403b0f6439b5efc5d0477e599d780d5",
    "deadletters/sql/0004_cause_outbox_id.sql": "29ac75827a4e1f3017d42fe2c8dea636d25a3a9b9559f0e477491b252332c09d",
    "deadletters/sql/0005_email_send.sql": "cc9f8558017c72b1c027a6c49b2b3120341d38fa4a67e40f96f3e55d434f8239",
    "deadletters/sql/0006_admin_at_scale.sql": "062a6dc4f0bfdb98e496f57b7d1642c2057d411bd02fee12ea1ac42b702c23a2",
    "outbox/sql/0001_outbox.sql": "aaa634b37c66ca85024f5f1ac1a85608724c38029be19796ac491507c9dea1c8",
    "outbox/sql/0002_notify.sql": "b8ad5e084978305a68077ee126806d225bf78584de450a3c318ee72d65fa25bf",
    "outbox/sql/0003_reply_inboxes.sql": "48163695f3bec1832b259d4ee6b4d33dfa7a4e483e95a5559c0e7894b8c5e23a",
    "outbox/sql/0004_fair_claim.sql": "6bad99fc6915af82d10cb1f336a0382a51f8c33de9512e61d87e3217f0316d1d",
    "outbox/sql/0005_circuit_breaker.sql": "b2d5d4040adbb3adce26dd2ef2aa5a9d69eeece2624afcc058cc2ed630153eff",
    "outbox/sql/0006_claim_waits.sql": "3fe0ff2454ef2011ad0eea004a698fe0021a4a109f75eb9a4f820fba05c9393b",
    "outbox/sql/0007_email_send.sql": "377a3b1058eb4556cce2d19e18f33a186f864775118161395a74df80b5d64380",
    "outbox/sql/0008_delivery_log.sql": "695c34831289f42e371f7018bd87657fb25681c4f5ab03de0092678117bb13eb",
    "outbox/sql/0009_claim_due_at.sql": "116241dfa6a2be9fe7eca7bdf0d1d2b16e12c6975593cf598acd82f7a5b997e4",
    "outbox/sql/0010_admin_at_scale.sql": "eb5b8738945c49844c192217a697a6d70366016776cfde2bf226307697368aaa",
    "outbox/sql/0011_settle_claimed_attempt.sql": "355abae1c2872a59522673cdb4b740620d53b1b44f77d0136464130c9495f209",
    "picloud/sql/0001_core.sql": "dbd30827f9eff6be097e26c580efd6c66d40a1c45860d65a669b12670d6837f3",
    "picloud/sql/0002_kv_and_runtimes.sql": "b0f38c7b32c56779f5fc6ca45b180508191783f6699f49914f255d4b3f66d282",
    "picloud/sql/0003_api_tokens.sql": "d1dbec3c1227f5709f1ef39dde8861fe5cd7fe62fa6c4ef0ca0c011002657829",
    "picloud/sql/0004_concurrency_caps.sql": "2c4bc8ab7849668c03fb053e6f8c912f8974e82169f7861b434de2cdbe34c823",
    "picloud/sql/0005_topics_and_queues.sql": "c8c4cc24000723fc637dfad6c6fb9805c5e345da851f90574e15a213eff5ae08",
    "picloud/sql/0006_email.sql": "96087910248e30bef0ac5d848bfc842c411bb3f67b64d2a1a4e06964fe3390d7",
    "picloud/sql/0007_search_words.sql": "2fb1057b729caae0945e00ee2a344b1dc502ff6620279195b47f8dfd90d57f07",
    "triggers/sql/0001_triggers.sql": "e116e8e1729105023746c442bafd46c5c61b1d8120de177df23dab110f96ce69",
    "triggers/sql/0002_dead_letter_source_same_app.sql": "75522c3dcee7c91094365474bca29858b58f597a57ebf73a6651ab23811ebd16",
    "triggers/sql/0003_cron.sql": "84c628745d072ee0b62aff45ef53ef1e35aedb4fe19b6534361bc2b1d4d3a5a5",
    "triggers/sql/0004_pubsub_and_queues.sql": "83b4d2fa2106c15b4303e56e9e9eb8fa52d7f132c04057b67f9b0a7fd97e5046",
    "triggers/sql/0005_email.sql": "99a138b97022f801f496c1a85edd3b5bb3ce8de8c2b21fd9434203527c147598",
    "triggers/sql/0006_log_failures_only.sql": "8d30b0fcd9323201d4ac8c2b43537c4b66db4faf47542b38015f0fec1ad4824e",
    "triggers/sql/0007_queue_settle_claimed.sql": "9ee90dcf1d702066616898d2d03e8e8d57f5d611e32414ba21fbf727b9f1dbb5",
    "triggers/sql/0008_cron_drop_ahead_only.sql": "f888f661d5091147c8b53e14e039485476b16569c4e6264b6f7593eedadfc741",
}


def test_the_sql_of_released_migrations_does_not_change():
    changed, unpinned = [], []
    for app in APPS:
        for path in sorted((PROJECT_DIR / app / "sql").glob("0*.sql")):
            name = f"{app}/sql/{path.name}"
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if name not in RELEASED_MIGRATION_SQL:
                unpinned.append(f"{name}: {digest}")
            elif RELEASED_MIGRATION_SQL[name] != digest:
                changed.append(name)
    assert not changed, f"released migration SQL changed: {changed}; write a new migration instead"
    assert not unpinned, "pin the SQL of new migrations in RELEASED_MIGRATION_SQL:\n" + "\n".join(
        unpinned
    )
