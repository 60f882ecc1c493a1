from django.apps import AppConfig
from django.db.models.signals import post_migrate


class DeadlettersConfig(AppConfig):
    name = "deadletters"
    verbose_name = "Dead letters"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from deadletters.schedules import on_post_migrate

        # After this app's migrations (and django_q's, which come earlier).
        post_migrate.connect(on_post_migrate, sender=self, dispatch_uid="picloud-schedules")
