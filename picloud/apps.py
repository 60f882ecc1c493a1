from django.apps import AppConfig


class PicloudConfig(AppConfig):
    name = "picloud"
    verbose_name = "PiCloud platform"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        import picloud.domain.user_model  # noqa: F401 (registers system check picloud.E010)
        from picloud.config import validate_environment
        from picloud.domain import scripts, signals

        signals.connect()
        scripts.autodiscover()
        # A bad PICLOUD_* value must stop start-up, not surface at first use.
        validate_environment()
