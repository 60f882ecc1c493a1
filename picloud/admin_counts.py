"""Counts on admin pages that stay cheap however large the tables grow.

Django's changelist counts the filtered rows for its paginator and, by
default, every row again for "N total": two COUNT(*)s, each reading the
whole table (0.1 s apiece at 1,000,000 dead letters, growing with it). Here
a list first asks PostgreSQL's planner how many rows the same query would
return (EXPLAIN, not run: pg_class.reltuples and the column statistics
ANALYZE keeps). If it expects few, they are counted, reading at most
EXACT_UP_TO + 1 rows, and the count is exact; if it expects many, the page
shows the planner's figure as "about N (estimated)". Figures shown on each
row of a list (a trigger's pending rows) are counted up to FIGURE_EXACT_UP_TO
the same way, one bounded index range each.

The planner can be wrong, so a figure is one of three (``Counted``):
exact; "about N (estimated)", the planner's; or "more than N", where the
count stopped at N and the planner says fewer, which is known to be wrong.
"""

from __future__ import annotations

import json
import math
from functools import cached_property

from django.core.paginator import Paginator
from django.db import OperationalError, connections, transaction
from django.db.models import QuerySet

EXACT_UP_TO = 10_000  # rows a list counts one by one; past this it estimates
# A figure on each row of a list is counted up to this many: a page of 100
# rows then reads at most about EXACT_UP_TO index entries for a column.
FIGURE_EXACT_UP_TO = 100
# A count that takes longer is given up for the estimate: reading
# EXACT_UP_TO rows by an index takes a few milliseconds, but where the
# planner misjudges a filter (a search word that starts many words, say)
# each row counted may cost a second look at it.
COUNT_BUDGET_MS = 50
QUERY_CANCELED = "57014"  # PostgreSQL's SQLSTATE for a statement_timeout


class Counted(int):
    """A number of rows, an int so that it sorts, sums and compares like
    one; `kind` says what it is: EXACT, ESTIMATED (the planner's figure) or
    MORE_THAN (a count that stopped there)."""

    EXACT, ESTIMATED, MORE_THAN = "exact", "estimated", "more than"
    kind: str

    def __new__(cls, n: int, kind: str = EXACT) -> Counted:
        counted = super().__new__(cls, n)
        counted.kind = kind
        return counted

    @property
    def exact(self) -> bool:
        return self.kind == self.EXACT

    @property
    def estimated(self) -> bool:
        return self.kind == self.ESTIMATED

    def __str__(self) -> str:
        # Where it is shown, "(estimated)" follows what is counted: "about 1,200 rows (estimated)".
        if self.kind == self.ESTIMATED:
            return f"about {self:,}"
        if self.kind == self.MORE_THAN:
            return f"more than {self:,}"
        return f"{self:,}"

    def display(self) -> int | str:
        """The figure as an admin column shows it: a number when exact
        (Django formats it like any other), else "about 1,200 (estimated)"
        or "more than 100"."""
        if self.exact:
            return int(self)
        return f"{self} (estimated)" if self.estimated else str(self)


def planner_rows(queryset: QuerySet) -> int:
    """The planner's estimate of how many rows `queryset` returns (EXPLAIN: planned, not run)."""
    sql, params = queryset.order_by().values("pk").query.sql_with_params()
    with connections[queryset.db].cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        plan = cursor.fetchone()[0]
    plan = json.loads(plan) if isinstance(plan, str) else plan
    return int(plan[0]["Plan"]["Plan Rows"])


def rounded(n: int) -> int:
    """An estimate to two significant digits (1,234,567 -> 1,200,000): the
    planner's figure is not good to more, and showing them would say it is."""
    if n < 100:
        return n
    unit = 10 ** (int(math.log10(n)) - 1)
    return round(n / unit) * unit


def beyond(counted_to: int, planned: int) -> Counted:
    """A figure known to be more than `counted_to` (a count stopped there):
    the planner's estimate, unless that says otherwise (its statistics lag
    the table, or its guess for a filter is poor)."""
    if planned > counted_to:
        return Counted(rounded(planned), Counted.ESTIMATED)
    return Counted(counted_to, Counted.MORE_THAN)


def figure(counted: int, rows: QuerySet, exact_up_to: int = FIGURE_EXACT_UP_TO) -> Counted:
    """A count that read at most exact_up_to + 1 of `rows`, as shown:
    exact, or past `exact_up_to` what `beyond` says of `rows`."""
    if counted <= exact_up_to:
        return Counted(counted)
    return beyond(exact_up_to, planner_rows(rows))


def bounded(counted: int, exact_up_to: int = FIGURE_EXACT_UP_TO) -> Counted:
    """A count that read at most exact_up_to + 1 rows, as shown: exact, or
    "more than `exact_up_to`", for rows the planner has no statistics on to
    estimate (a condition on an expression that only a partial index holds:
    PostgreSQL keeps no statistics for those)."""
    if counted <= exact_up_to:
        return Counted(counted)
    return Counted(exact_up_to, Counted.MORE_THAN)


def count_or_estimate(queryset: QuerySet, exact_up_to: int) -> Counted:
    """How many rows `queryset` has: the planner's estimate when it expects
    more than `exact_up_to` (then nothing is read); else counted, reading at
    most exact_up_to + 1 rows within COUNT_BUDGET_MS; past that, or when
    the count takes longer, what the planner says after all."""
    if queryset.query.is_empty():  # .none(): no SQL to ask about
        return Counted(0)
    planned = planner_rows(queryset)
    if planned > exact_up_to:
        return Counted(rounded(planned), Counted.ESTIMATED)
    counted = capped_count(queryset, exact_up_to + 1, COUNT_BUDGET_MS)
    if counted is None:
        return Counted(rounded(planned), Counted.ESTIMATED)
    if counted <= exact_up_to:
        return Counted(counted)
    return beyond(exact_up_to, planned)


def capped_count(queryset: QuerySet, cap: int, budget_ms: int) -> int | None:
    """`queryset`'s rows counted up to `cap`; None if that takes longer
    than `budget_ms` (PostgreSQL cancels the count)."""
    capped = queryset.order_by().values("pk")[:cap]
    with (
        transaction.atomic(using=queryset.db),
        connections[queryset.db].cursor() as cursor,
    ):
        # Local to this transaction, or to the caller's: set back below.
        cursor.execute(
            "SELECT current_setting('statement_timeout'), set_config('statement_timeout', %s, true)",
            [f"{budget_ms}ms"],
        )
        before = cursor.fetchone()[0]
        try:
            with transaction.atomic(using=queryset.db):  # a cancelled count undoes only itself
                return capped.count()
        except OperationalError as e:
            if getattr(e.__cause__, "sqlstate", None) != QUERY_CANCELED:
                raise
            return None
        finally:
            cursor.execute("SELECT set_config('statement_timeout', %s, true)", [before])


class EstimatingPaginator(Paginator):
    """A paginator whose count is `count_or_estimate` of its rows; the
    templates (picloud/templates/admin/) show it as "about N … (estimated)"
    or "more than N …" when it is `approximate`. Page links follow the
    figure: a page past the real last one shows no rows; one past the
    figure is out of range."""

    @cached_property
    def counted(self) -> Counted:
        return count_or_estimate(self.object_list, EXACT_UP_TO)

    @cached_property
    def count(self) -> int:
        return int(self.counted)

    @property
    def approximate(self) -> bool:
        return not self.counted.exact


class ScaledChangeList:
    """For a ModelAdmin: lists count with EstimatingPaginator, and never
    count the unfiltered table too (Django's "N total" beside a search or
    filter: the second COUNT(*)); "Show all" links to it instead."""

    paginator = EstimatingPaginator
    show_full_result_count = False

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None) or {}
        cl = context.get("cl")
        counted = getattr(getattr(cl, "paginator", None), "counted", None)
        if counted is not None and not counted.exact:
            # The note "select all" leaves, which Django words as exact.
            context["selection_note_all"] = (
                f"All of {counted} {cl.opts.verbose_name_plural} selected"
                + (" (estimated)" if counted.estimated else "")
            )
        return response
