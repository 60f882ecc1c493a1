"""The unresolved dead-letter badge on every admin page."""

from __future__ import annotations

from functools import cached_property

from django.urls import reverse

from deadletters.pg_repository import PgDeadLetterRepo
from picloud.admin_access import ALL, allowed_app_ids
from picloud.domain.authz import Capability


def dead_letter_badge(request) -> dict:
    """`dead_letter_badge`: the unresolved count over the apps the user may
    manage dead letters of, and the link to that list. Computed only when a
    template asks for it (admin pages do), with one count query served by
    the partial index on unresolved rows."""
    user = getattr(request, "user", None)
    if user is None or not (user.is_active and user.is_staff):
        return {}
    return {"dead_letter_badge": _Badge(request)}


class _Badge:
    def __init__(self, request) -> None:
        self.request = request

    @cached_property
    def app_ids(self):
        return allowed_app_ids(self.request, Capability.AppDeadLetterManage)

    @property
    def visible(self) -> bool:
        return self.app_ids is ALL or bool(self.app_ids)

    @cached_property
    def count(self) -> int:

        repo = PgDeadLetterRepo()
        ids = self.app_ids
        return repo.unresolved_count() if ids is ALL else repo.unresolved_count(app_ids=ids)

    @property
    def url(self) -> str:
        return reverse("admin:deadletters_deadletter_changelist") + "?resolution=unresolved"
