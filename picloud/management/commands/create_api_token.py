from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from picloud.domain import tokens
from picloud.domain.authz import Scope
from picloud.management.arguments import check_between, int_between
from picloud.models import App, principal_for

MAX_DAYS = tokens.MAX_LIFETIME.days


class Command(BaseCommand):
    help = "Create an API token for a user and print it (it is shown this once, never again)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument(
            "--name",
            required=True,
            help=f"what the token is for, at most {tokens.NAME_MAX_CHARS} characters",
        )
        parser.add_argument(
            "--scope",
            action="append",
            required=True,
            choices=[s.value for s in Scope],
            help="a scope the token carries; repeat for more",
        )
        parser.add_argument("--app", help="limit the token to the app with this slug")
        parser.add_argument(
            "--days",
            type=int_between(1, MAX_DAYS, "days"),
            default=tokens.DEFAULT_LIFETIME.days,
            help=f"days until it expires, 1 to {MAX_DAYS} (default: {tokens.DEFAULT_LIFETIME.days})",
        )

    def handle(self, *args, username, name, scope, app=None, days, **options):
        # No username or slug holds control characters or undecodable bytes,
        # and PostgreSQL could not even be asked about them.
        user = None
        if username.isprintable():
            user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}")
        target = None
        if app is not None:
            target = App.objects.filter(slug=app).first() if app.isprintable() else None
            if target is None:
                raise CommandError(f"no app with slug {app!r}")
        check_between("--days", days, 1, MAX_DAYS, "days")
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
