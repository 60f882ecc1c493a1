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
