from django.apps import AppConfig


class TriggersConfig(AppConfig):
    name = "triggers"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from picloud import kv
        from triggers.fanout import fan_out_kv

        # The KV store sits below triggers and must not import them: it owns
        # the write hook, and this app registers the fan-out on it.
        kv.hooks.on_write(fan_out_kv)
