"""The daily retention sweep as a django-q2 schedule, created idempotently.

`migrate` creates it (post_migrate) and `manage.py setup_schedules` does the
same on demand. Running either again changes nothing but a schedule whose
function or type someone edited, which is put back; its next run is kept.
"""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from django_q.models import Schedule

SCHEDULE_NAME = "picloud: retention sweep"
SCHEDULE_FUNC = "deadletters.tasks.sweep_retention"


def ensure_schedules() -> bool:
    """Create or repair the sweep's schedule; True when something changed."""

    wanted = {"func": SCHEDULE_FUNC, "schedule_type": Schedule.DAILY, "repeats": -1}
    schedule, created = Schedule.objects.get_or_create(
        name=SCHEDULE_NAME,
        # First run tomorrow at 03:00 UTC-ish: off-peak, and not at start-up.
        defaults={**wanted, "next_run": _next_three_am()},
    )
    if created:
        return True
    stale = {k: v for k, v in wanted.items() if getattr(schedule, k) != v}
    if stale:
        Schedule.objects.filter(pk=schedule.pk).update(**stale)
    return bool(stale)


def _next_three_am():
    now = timezone.now()
    at = now.replace(hour=3, minute=0, second=0, microsecond=0)
    return at if at > now else at + timedelta(days=1)


def on_post_migrate(sender, using="default", **kwargs) -> None:
    ensure_schedules()
