from django.apps import AppConfig


class DeadlettersConfig(AppConfig):
    name = "deadletters"
    default_auto_field = "django.db.models.BigAutoField"
