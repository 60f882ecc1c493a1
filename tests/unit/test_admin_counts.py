"""How admin pages word a count that was not made to the last row, and how
a search becomes an index query (no database: the SQL side is tested in
tests/integration/test_admin_at_scale.py)."""

import pytest

from picloud.admin_counts import Counted, beyond, bounded, rounded
from picloud.db.search import prefix_query


@pytest.mark.parametrize(
    ("n", "shown"),
    [(0, 0), (99, 99), (150, 150), (10_001, 10_000), (987_654, 990_000), (1_234_567, 1_200_000)],
)
def test_an_estimate_keeps_two_significant_digits(n, shown):
    assert rounded(n) == shown


def test_each_kind_of_figure_says_what_it_is():
    assert (str(Counted(1234)), Counted(1234).display()) == ("1,234", 1234)
    estimated = Counted(1_200_000, Counted.ESTIMATED)
    assert (str(estimated), estimated.display()) == (
        "about 1,200,000",
        "about 1,200,000 (estimated)",
    )
    stopped = Counted(100, Counted.MORE_THAN)
    assert (str(stopped), stopped.display()) == ("more than 100", "more than 100")
    assert estimated == 1_200_000 and estimated > stopped, "a figure compares as its number"


def test_past_a_count_the_planner_is_believed_only_when_it_says_more():
    assert beyond(100, 5_000) == 5_000 and beyond(100, 5_000).estimated
    low = beyond(100, 40)
    assert (low, low.kind) == (100, Counted.MORE_THAN), (
        "a planner's figure below the count is wrong"
    )


def test_a_count_without_an_estimate_to_fall_back_on_is_a_bound():
    assert (bounded(100), bounded(100).exact) == (100, True)
    assert bounded(101).display() == "more than 100"


@pytest.mark.parametrize(
    ("term", "query"),
    [
        ("timeout", "'timeout':*"),
        ("HTTP 503", "'HTTP':* & '503':*"),
        ("o-4242", "'o':* & '4242':*"),
        ("https://hooks.example.com/x", "'https':* & 'hooks':* & 'example':* & 'com':* & 'x':*"),
        # Quotes, backslashes and tsquery's own operators only separate words.
        ("it's a \\ (b | !c) & d:*", "'it':* & 's':* & 'a':* & 'b':* & 'c':* & 'd':*"),
        ("café crème", "'café':* & 'crème':*"),
        ("!!! ...", None),
        ("", None),
    ],
)
def test_a_search_is_each_of_its_words_as_a_prefix(term, query):
    assert prefix_query(term) == query
