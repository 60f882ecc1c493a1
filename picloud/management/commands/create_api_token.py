from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from picloud import tokens
from picloud.authz import Scope
from picloud.models import App, principal_for


class Command(BaseCommand):
    help = "Create an API token for a user and print it (it is shown this once, never again)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", required=True, help="what the token is for")
        parser.add_argument(
            "--scope",
            action="append",
            required=True,
            choices=[s.value for s in Scope],
            help="a scope the token carries; repeat for more",
        )
        parser.add_argument("--app", help="limit the token to the app with this slug")
        parser.add_argument(
            "--days", type=int, default=tokens.DEFAULT_LIFETIME.days, help="days until it expires"
        )

    def handle(self, *args, username, name, scope, app=None, days, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}")
        target = None
        if app is not None:
            target = App.objects.filter(slug=app).first()
            if target is None:
                raise CommandError(f"no app with slug {app!r}")
        if days < 1:
            raise CommandError(f"--days must be at least 1, got {days}")
        try:
            token, raw = tokens.create_token(
                principal_for(user),
                name=name,
                scopes=scope,
                app=target,
                expires_at=timezone.now() + timedelta(days=days),
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stderr.write(
            f"token {token.prefix}… for {username}: scopes {', '.join(token.scopes)}, "
            f"app {app or 'any'}, expires {token.expires_at:%Y-%m-%d %H:%M} UTC"
        )
        self.stdout.write(raw)
