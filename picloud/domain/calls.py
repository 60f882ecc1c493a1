"""What every Python API call checks of its arguments: the app (an App, its
id or its slug), the principal (a Principal or a Django user), and names
given as text. Each refusal is a ValidationError saying what is allowed."""

from __future__ import annotations

import uuid

from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import ValidationError

from picloud.db.storable import is_storable_text
from picloud.models import App, Principal, principal_for

MAX_SLUG_LENGTH = App._meta.get_field("slug").max_length  # characters


def resolve_app(app: App | uuid.UUID | str) -> App:
    """The App; App.DoesNotExist when there is none."""
    if isinstance(app, App):
        return app
    if isinstance(app, uuid.UUID):
        return App.objects.get(pk=app)
    # A slug no app can have is a caller's mistake, said as such; a NUL or a
    # surrogate would otherwise fail in the driver or PostgreSQL, not here.
    return App.objects.get(slug=check_text("App slug", app, MAX_SLUG_LENGTH))


def resolve_principal(principal) -> Principal | None:
    if principal is None or isinstance(principal, Principal):
        return principal
    if isinstance(principal, AbstractBaseUser):
        return principal_for(principal)
    raise ValidationError(
        f"principal must be a Principal or a Django user, got {type(principal).__name__}."
    )


def check_text(what: str, value: object, limit: int) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{what} must be a non-empty string of at most {limit} characters.")
    if len(value) > limit:
        raise ValidationError(
            f"{what} is {len(value)} characters long; at most {limit} are allowed."
        )
    if not is_storable_text(value):
        raise ValidationError(f"{what} must not contain the NUL character or unpaired surrogates.")
    return value
