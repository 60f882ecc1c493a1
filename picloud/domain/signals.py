"""Keep one principal per Django user."""

from django.conf import settings
from django.db.models.signals import post_save

from picloud.models import Principal


def _create_principal(sender, instance, created, raw=False, **kwargs):
    if created and not raw:
        Principal.objects.get_or_create(user=instance)


def connect() -> None:
    post_save.connect(
        _create_principal, sender=settings.AUTH_USER_MODEL, dispatch_uid="picloud-principal"
    )
