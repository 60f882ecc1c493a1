from django.apps import AppConfig


class PicloudConfig(AppConfig):
    name = "picloud"
    verbose_name = "PiCloud platform"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from picloud import checks  # noqa: F401 - registers the PICLOUD_* system checks
        from picloud.domain import (
            scripts,
            signals,
            user_model,  # noqa: F401 - registers check picloud.E010
        )

        signals.connect()
        scripts.autodiscover()
