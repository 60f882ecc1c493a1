"""Property tests: the SQL behind list_matching_kv and the kv_trigger_details
CHECK agree with triggers.matching for every pattern and name, whatever
characters they hold."""

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.factories import AppFactory, ScriptFactory, UserFactory
from triggers.matching import collection_matches, validate_collection_pattern
from triggers.pg_repository import PgTriggerRepo
from triggers.repository import KvSpec, NewTrigger

pytestmark = pytest.mark.django_db

# PostgreSQL text cannot hold NUL, and surrogates are not encodable in UTF-8.
ANY_CHAR = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
# Characters with a meaning in LIKE, regexes, patterns or SQL, to hit often.
TRICKY = st.sampled_from([*"%_*:\\.[]()^$'\" é日ab"])
TEXT = st.lists(st.one_of(TRICKY, ANY_CHAR), min_size=1, max_size=12).map("".join)
NO_STAR = TEXT.map(lambda s: s.replace("*", "")).filter(bool)

PATTERNS = st.one_of(st.just("*"), NO_STAR.map(lambda p: p + ":*"), NO_STAR)

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def ctx(db):
    app = AppFactory()
    return app, ScriptFactory(app=app), UserFactory().principal


@SETTINGS
@given(patterns=st.lists(PATTERNS, min_size=1, max_size=6, unique=True), data=st.data())
def test_list_matching_kv_agrees_with_collection_matches(ctx, patterns, data):
    app, script, principal = ctx
    # Names near the patterns (their prefixes with a tail) as well as arbitrary ones.
    near = (
        st.sampled_from(patterns)
        .flatmap(lambda p: st.tuples(st.just(p.rstrip("*")), st.text(ANY_CHAR, max_size=3)))
        .map("".join)
    )
    names = data.draw(st.lists(st.one_of(TEXT, near), min_size=1, max_size=6))
    repo = PgTriggerRepo()
    with transaction.atomic():
        by_name = {}
        for i, pattern in enumerate(patterns):
            repo.create(
                NewTrigger(
                    app.id, "kv", script.id, f"t{i}", principal.id, kv=KvSpec(pattern, ("insert",))
                )
            )
            by_name[f"t{i}"] = pattern
        for name in names:
            got = {t.name for t in repo.list_matching_kv(app.id, name, "insert")}
            expected = {t for t, pattern in by_name.items() if collection_matches(pattern, name)}
            assert got == expected, (
                f"name {name!r}: SQL matched {got}, Python {expected} ({by_name})"
            )
        transaction.set_rollback(True)


def _python_accepts(pattern: str) -> bool:
    try:
        validate_collection_pattern(pattern)
    except ValidationError:
        return False
    return True


@SETTINGS
@given(candidate=st.one_of(PATTERNS, TEXT, st.just(""), TEXT.map(lambda s: s + "*")))
def test_database_check_agrees_with_the_validator(ctx, candidate):
    app, script, principal = ctx
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute(
                "INSERT INTO triggers (app_id, kind, script_id, name, registered_by_principal) "
                "VALUES (%s, 'kv', %s, 'p', %s) RETURNING id",
                [app.id, script.id, principal.id],
            )
            trigger_id = cur.fetchone()[0]
        try:
            with transaction.atomic(), connection.cursor() as cur:
                cur.execute(
                    "INSERT INTO kv_trigger_details (trigger_id, collection, ops) "
                    "VALUES (%s, %s, '{insert}')",
                    [trigger_id, candidate],
                )
            db_accepts = True
        except IntegrityError:
            db_accepts = False
        transaction.set_rollback(True)
    assert db_accepts == _python_accepts(candidate), (
        f"{candidate!r}: database {'accepts' if db_accepts else 'refuses'}, validator disagrees"
    )
