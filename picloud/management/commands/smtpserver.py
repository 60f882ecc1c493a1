"""Run the SMTP receiver in the foreground (``runstack`` starts it too)."""

from __future__ import annotations

import signal
import threading

from django.core.management.base import BaseCommand, CommandError

from picloud.config import ConfigError, EmailConfig
from picloud.smtp_receiver import SmtpReceiver


class Command(BaseCommand):
    help = (
        "Receive mail for the apps on PICLOUD_SMTP_ADDR (default 127.0.0.1:2525) until "
        "SIGTERM or Ctrl-C; docs/email.md."
    )

    def handle(self, *args, **options):
        try:
            config = EmailConfig.current()
            receiver = SmtpReceiver(config)
        except ConfigError as exc:
            raise CommandError(str(exc)) from None
        except OSError as exc:  # the TLS certificate or key could not be read
            raise CommandError(
                f"cannot load PICLOUD_SMTP_TLS_CERT/PICLOUD_SMTP_TLS_KEY: {exc}"
            ) from None
        stop = threading.Event()
        previous = {
            s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            try:
                receiver.start()
            except OSError as exc:
                raise CommandError(
                    f"cannot listen on PICLOUD_SMTP_ADDR={config.smtp_addr}: {exc}"
                ) from None
            tls = ", STARTTLS offered" if config.tls_cert else ""
            self.stdout.write(
                f"picloud: SMTP receiver on {config.smtp_addr} for mail to "
                f"<local part>@<app>.{config.domain}{tls}"
            )
            stop.wait()
        finally:
            receiver.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
