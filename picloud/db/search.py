"""Word search served by a GIN index: what an operator types, as a tsquery.

A table's searchable text is a tsvector built in SQL by ``search_words``
(picloud/sql/0007_search_words.sql): every ASCII character but letters and
digits separates words there, as it does here, so the words of a search are
the words of the text. A search finds the rows where each of its words
starts a word of the text ("time" finds "TimeoutError", "o-4242" finds
"order o-424242"): an index search, where a substring search (ILIKE
'%…%') reads every row.
"""

from __future__ import annotations

import re

from django.contrib.postgres.search import SearchQuery, SearchVectorField
from django.db.models import Func, QuerySet

# search_words' separators: [\x01-\x2f\x3a-\x40\x5b-\x60\x7b-\x7f] (NUL,
# which text cannot hold, is refused before a search runs).
_SEPARATORS = re.compile(r"[\x00-\x2f\x3a-\x40\x5b-\x60\x7b-\x7f]+")


def prefix_query(term: str) -> str | None:
    """`term` as a tsquery in to_tsquery's syntax, each of its words a
    prefix: "HTTP 503" -> "'HTTP':* & '503':*"; None when it has no word.
    Quotes, backslashes and tsquery's operators are separators, so a word
    never needs escaping."""
    words = [w for w in _SEPARATORS.split(term) if w]
    return " & ".join(f"'{w}':*" for w in words) or None


def words_of(function: str, *columns) -> Func:
    """The SQL function `function` (search_words, or one built on it) over
    `columns`, as a tsvector: written exactly as its index is, so that the
    planner uses the index."""
    return Func(*columns, function=function, output_field=SearchVectorField())


def matching(queryset: QuerySet, words: Func, term: str) -> QuerySet:
    """The rows of `queryset` whose `words` hold each word of `term` as the
    start of one: all of them for a blank term, none for a term without a
    word (only punctuation)."""
    if not term.strip():
        return queryset
    query = prefix_query(term)
    if query is None:
        return queryset.none()
    found = SearchQuery(query, search_type="raw", config="simple")
    return queryset.alias(search_words=words).filter(search_words=found)
