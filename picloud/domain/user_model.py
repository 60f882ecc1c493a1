"""PiCloud runs on Django's own user model; a system check refuses another.

The core SQL names the auth_user table: the principals' foreign key and
their backfill in picloud/sql/0001_core.sql, and the joins of run_context
and token_context in picloud/sql/queries.sql (which read is_active and
is_superuser there). Deriving the table from AUTH_USER_MODEL would not
reach the released migration, whose key already points at auth_user, nor
promise the columns those joins read. So a swapped model is refused by the
system checks (`manage.py check`, and first thing in `migrate` and
`runserver`) rather than failing at the first token or script run.
"""

from __future__ import annotations

from django.conf import settings
from django.core import checks

SUPPORTED_USER_MODEL = "auth.User"


@checks.register(checks.Tags.compatibility)
def check_user_model(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    model = settings.AUTH_USER_MODEL
    if model == SUPPORTED_USER_MODEL:
        return []
    return [
        checks.Error(
            f"AUTH_USER_MODEL is {model!r}; PiCloud supports only Django's own "
            f"{SUPPORTED_USER_MODEL!r}: its SQL (picloud/sql/0001_core.sql, "
            "picloud/sql/queries.sql) names the auth_user table.",
            hint="Remove AUTH_USER_MODEL from the settings; keep what you add about a "
            "user in a model with a one-to-one key to auth.User.",
            id="picloud.E010",
        )
    ]
