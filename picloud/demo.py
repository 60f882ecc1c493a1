"""Demo data for `make run`: a superuser, a demo app with scripts and
triggers, a topic and a queue with their triggers, an email trigger, an API token, and a few
KV writes whose failing trigger produces dead letters within seconds of the
cluster starting, a publish and some queue messages."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from picloud import kv
from picloud.domain import tokens
from picloud.domain.authz import Role, Scope
from picloud.messaging import queues, topics
from picloud.models import (
    ApiToken,
    App,
    AppMembership,
    Principal,
    Queue,
    Script,
    Topic,
    principal_for,
)
from triggers.pg_repository import PgTriggerRepo
from triggers.repository import EmailSpec, KvSpec, NewTrigger, PubsubSpec, QueueSpec

DEMO_USERNAME = "admin"
DEMO_APP_SLUG = "demo"
DEMO_TOKEN_NAME = "make run demo"
DEMO_SCRIPTS = {  # name -> registered handler
    "hello": "picloud.echo",
    "slow": "picloud.sleep",
    "notify": "picloud.echo",
    "flaky": "picloud.fail",
    "send-emails": "picloud.echo",
    "ack-mail": "picloud.email_ack",
}
DEMO_TOPIC = "orders:created"
DEMO_QUEUE = "emails"
DEMO_PULL_QUEUE = "jobs"  # no trigger: for consumers that pull (docs/api.md)
DEMO_ORDERS = 3  # KV writes per run; each ends as one dead letter of the flaky trigger


@dataclass(frozen=True)
class DemoCredentials:
    username: str
    password: str
    app_slug: str
    api_token: str


@transaction.atomic
def load_demo(password: str | None = None) -> DemoCredentials:
    """Create (or refresh) the demo data; idempotent apart from the orders it writes.

    The superuser's password is set anew on every call (a fresh random one
    unless given) and a new API token replaces the last run's, so the
    credentials printed by `make run` always work.
    """
    password = password or secrets.token_urlsafe(12)
    User = get_user_model()
    user, _ = User.objects.get_or_create(
        username=DEMO_USERNAME, defaults={"email": "admin@picloud.invalid"}
    )
    user.is_staff = user.is_superuser = user.is_active = True
    user.set_password(password)
    user.save()
    principal = principal_for(user)
    app, _ = App.objects.get_or_create(slug=DEMO_APP_SLUG, defaults={"name": "Demo app"})
    AppMembership.objects.update_or_create(
        app=app, principal=principal, defaults={"role": Role.AppAdmin.value}
    )
    scripts = {
        name: Script.objects.get_or_create(app=app, name=name, defaults={"handler": handler})[0]
        for name, handler in DEMO_SCRIPTS.items()
    }
    _ensure_messaging(app, principal)
    _ensure_triggers(app, scripts, principal)
    _write_orders(app, principal)
    return DemoCredentials(
        username=user.get_username(),
        password=password,
        app_slug=app.slug,
        api_token=_fresh_token(principal, app),
    )


def _ensure_triggers(app: App, scripts: dict[str, Script], principal: Principal) -> None:
    """Through the repository, as admin and the Python API write triggers."""

    def trigger(kind: str, script: str, name: str, **details) -> NewTrigger:
        return NewTrigger(
            app_id=app.pk,
            kind=kind,
            script_id=scripts[script].pk,
            name=name,
            registered_by_principal=principal.pk,
            **details,
        )

    queue = Queue.objects.get(app=app, name=DEMO_QUEUE)
    wanted = [
        trigger("kv", "notify", "orders-notify", kv=KvSpec("orders:*", ("insert", "update"))),
        # Always fails, and gives up after two quick attempts: dead letters
        # for the admin badge within seconds.
        trigger(
            "kv",
            "flaky",
            "orders-audit",
            kv=KvSpec("orders:*", ("insert",)),
            max_attempts=2,
            retry_base_delay_ms=1000,
            retry_max_delay_ms=1000,
        ),
        # Every publish to an orders:* topic runs notify; the emails queue is
        # consumed by send-emails in batches of up to 10.
        trigger("pubsub", "notify", "orders-published", pubsub=PubsubSpec("orders:*")),
        trigger(
            "queue",
            "send-emails",
            "emails-worker",
            queue=QueueSpec(queue.pk, batch_size=10, max_batch_wait_ms=1000),
        ),
        # Mail to orders@demo.<PICLOUD_EMAIL_DOMAIN> is answered by ack-mail
        # (the answer is printed by the cluster: EMAIL_URL's default backend).
        trigger("email", "ack-mail", "orders-mail", email=EmailSpec("orders")),
    ]
    repo = PgTriggerRepo()
    existing = {t.name for t in repo.list_for_app(app.pk)}
    for new in wanted:
        if new.name not in existing:
            repo.create(new)


def _ensure_messaging(app: App, principal: Principal) -> None:
    if not Topic.objects.filter(app=app, name=DEMO_TOPIC).exists():
        topics.create_topic(app, DEMO_TOPIC, principal=principal)
    for name in (DEMO_QUEUE, DEMO_PULL_QUEUE):
        if not Queue.objects.filter(app=app, name=name).exists():
            queues.create_queue(app, name, principal=principal)


def _write_orders(app: App, principal: Principal) -> None:
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S-%f")
    for n in range(DEMO_ORDERS):
        order = {"item": "pi", "qty": n + 1}
        kv.put(app, "orders:eu", f"{stamp}-{n}", order, principal=principal)
        topics.publish(app, DEMO_TOPIC, {"order": f"{stamp}-{n}", **order}, principal=principal)
    queues.send_batch(
        app,
        DEMO_QUEUE,
        [{"to": f"customer-{n}@example.com", "order": f"{stamp}-{n}"} for n in range(DEMO_ORDERS)],
        principal=principal,
    )


def _fresh_token(principal: Principal, app: App) -> str:
    ApiToken.objects.filter(principal=principal, name=DEMO_TOKEN_NAME).delete()
    _, raw = tokens.create_token(
        principal,
        name=DEMO_TOKEN_NAME,
        scopes=[Scope.ScriptInvoke, Scope.KvRead, Scope.KvWrite],
        app=app,
        expires_at=timezone.now() + timedelta(days=7),
    )
    return raw
