from django.apps import AppConfig


class TriggersConfig(AppConfig):
    name = "triggers"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from picloud import kv
        from picloud.mail import hooks as mail_hooks
        from picloud.messaging import hooks as messaging_hooks
        from triggers.fanout import email_wanted, fan_out_email, fan_out_kv, fan_out_pubsub

        # The KV store, topics and mail sit below triggers and must not import
        # them: they own their hooks, and this app registers the fan-out.
        kv.hooks.on_write(fan_out_kv)
        messaging_hooks.on_publish(fan_out_pubsub)
        mail_hooks.on_recipient(email_wanted)
        mail_hooks.on_receive(fan_out_email)
