from django.core.management.base import BaseCommand

from picloud.config import EmailConfig
from picloud.demo import load_demo


class Command(BaseCommand):
    help = (
        "Create or refresh the demo data and print the demo superuser's credentials "
        "and a fresh API token."
    )

    def add_arguments(self, parser):
        parser.add_argument("--password", help="use this password instead of a random one")

    def handle(self, *args, password=None, **options):
        creds = load_demo(password=password)
        self.stdout.write(
            self.style.SUCCESS(
                f"Demo data ready: app '{creds.app_slug}'. Log in at /admin/ as "
                f"username '{creds.username}', password '{creds.password}'"
            )
        )
        self.stdout.write(
            f"API token (shown once, valid 7 days): {creds.api_token}\n"
            f"  try: curl -X POST -H 'Authorization: Bearer {creds.api_token}' "
            f'-d \'{{"hello": "world"}}\' '
            f"http://127.0.0.1:8000/api/apps/{creds.app_slug}/scripts/hello/invoke"
        )
        mail = EmailConfig.current()
        self.stdout.write(
            f'  mail it (the answer is printed by the cluster): python3 -c "import smtplib; '
            f"smtplib.SMTP('{mail.smtp_host}', {mail.smtp_port}).sendmail('you@example.com', "
            f"['orders@{creds.app_slug}.{mail.domain}'], 'Subject: hello\\n\\nHi')\""
        )
