"""The chaos run's tenant: one app with a trigger of every kind, and the
producers that feed them while faults happen.

Producers that write through the Python API record each event in
``chaos_produced`` in the same transaction as the event, so the table holds
exactly the events that committed, whatever a fault did to the answer.
Mail and synchronous invocations cross a process boundary: they count as
produced when the client was told so (250, HTTP 200).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import random
import smtplib
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.message import EmailMessage

from django.contrib.auth import get_user_model
from django.db import Error as DatabaseError
from django.db import connection, transaction

from picloud.domain import tokens
from picloud.domain.authz import Role
from picloud.kv import store as kv
from picloud.messaging import queues, topics
from picloud.models import App, AppMembership, Script, principal_for
from triggers.pg_repository import PgTriggerRepo
from triggers.repository import (
    CronSpec,
    DeadLetterSpec,
    EmailSpec,
    KvSpec,
    NewTrigger,
    PubsubSpec,
    QueueSpec,
)

from .ledger import SCHEMA

logger = logging.getLogger("chaos")

SLUG = "chaos"
CRON_EVERY = 2  # seconds between cron ticks
DOOMED_EVERY = 100  # one KV write in this many goes to the collection whose script always fails
SUBSCRIBERS = ("sub_a", "sub_b")


@dataclass
class Tenant:
    app: App
    principal: object
    token: str
    cron_trigger_id: uuid.UUID
    created_at: float  # time.time() when the cron trigger was made


def set_up() -> Tenant:
    """The app, its scripts and triggers, an API token, and the ledger's tables."""
    with connection.cursor() as cursor:
        cursor.execute(SCHEMA)
    user = get_user_model().objects.create(username="chaos", is_staff=True)
    app = App.objects.create(slug=SLUG, name="Chaos", max_concurrency=1000)
    principal = principal_for(user)
    AppMembership.objects.create(app=app, principal=principal, role=Role.AppAdmin.value)
    scripts = {
        name: Script.objects.create(app=app, name=name, handler=handler)
        for name, handler in [
            ("kv_orders", "chaos.record"),
            ("doomed", "chaos.fail"),
            ("dl_alert", "chaos.record"),
            ("sub_a", "chaos.record"),
            ("sub_b", "chaos.record"),
            ("email_in", "chaos.record"),
            ("queue_in", "chaos.queue_batch"),
            ("cron_tick", "chaos.record"),
            ("echo", "chaos.record"),
        ]
    }
    queue = queues.create_queue(app, "work", principal=principal)
    topics.create_topic(app, "events", principal=principal)
    repo = PgTriggerRepo()

    def trigger(kind: str, script: str, **spec):
        return repo.create(
            NewTrigger(
                app_id=app.id,
                kind=kind,
                script_id=scripts[script].id,
                name=script,
                registered_by_principal=principal.id,
                **spec,
            )
        )

    trigger("kv", "kv_orders", kv=KvSpec("orders", ("insert",)))
    trigger("kv", "doomed", kv=KvSpec("doomed", ("insert",)))
    trigger("dead_letter", "dl_alert", dead_letter=DeadLetterSpec(source_kind="kv"))
    for name in SUBSCRIBERS:
        trigger("pubsub", name, pubsub=PubsubSpec("events"))
    trigger("email", "email_in", email=EmailSpec("orders"))
    trigger(
        "queue",
        "queue_in",
        queue=QueueSpec(queue.id, batch_size=50, max_concurrency=10, max_receives=20),
    )
    created_at = time.time()
    cron = trigger(
        "cron",
        "cron_tick",
        cron=CronSpec(f"*/{CRON_EVERY} * * * * *", catchup="all", overlap="allow"),
    )
    _, token = tokens.create_token(principal, name="chaos", scopes=["script:invoke"])
    return Tenant(app, principal, token, cron.id, created_at)


def pause_cron(tenant: Tenant) -> float:
    """Stop the cron trigger; return when (the last tick expected is before it)."""
    repo = PgTriggerRepo()
    cron = repo.get(tenant.cron_trigger_id).cron
    repo.update(tenant.cron_trigger_id, cron=dataclasses.replace(cron, paused=True))
    return time.time()


def expected_ticks(tenant: Tenant, until: float) -> list[str]:
    """The cron ticks that must each run: every CRON_EVERY seconds after the
    trigger was made, to a little before it was paused."""
    first = int(tenant.created_at) + 2 * CRON_EVERY
    first += -first % CRON_EVERY
    last = int(until) - 2 * CRON_EVERY
    return [
        f"{tenant.cron_trigger_id}|{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(t))}.000000Z"
        for t in range(first, last + 1, CRON_EVERY)
    ]


@dataclass
class Counts:
    committed: int = 0
    failed: int = 0  # attempts a fault refused (the producer went on)
    statuses: dict[str, int] = field(default_factory=dict)
    confirmed: list[tuple[str, str, str]] = field(default_factory=list)  # (uid, script, source)

    def refused(self, what: str) -> None:
        self.failed += 1
        self.statuses[what] = self.statuses.get(what, 0) + 1


class Producer(threading.Thread):
    """Calls `produce_once` at `rate` calls per second until `stop` is set,
    going on through errors (a fault refuses some calls; the next may pass)."""

    def __init__(self, name: str, rate: float, stop: threading.Event) -> None:
        super().__init__(name=f"chaos-{name}", daemon=True)
        self.rate, self.stop, self.counts = rate, stop, Counts()

    def run(self) -> None:
        interval, next_at = 1.0 / self.rate, time.monotonic()
        try:
            while not self.stop.is_set():
                try:
                    self.produce_once()
                except DatabaseError as exc:
                    self.counts.refused(type(exc).__name__)
                    connection.close()  # the next call reconnects
                    self.stop.wait(0.1)
                except smtplib.SMTPRecipientsRefused as exc:
                    codes = {code for code, _ in exc.recipients.values()}
                    self.counts.refused(f"smtp {'/'.join(map(str, sorted(codes)))}")
                    self.stop.wait(0.1)
                except (OSError, smtplib.SMTPException, http.client.HTTPException) as exc:
                    self.counts.refused(type(exc).__name__)
                    self.stop.wait(0.1)
                except Exception as exc:  # reported with the ledger; the producer goes on
                    self.counts.refused(f"unexpected {type(exc).__name__}")
                    logger.exception("%s: unexpected error", self.name)
                    self.stop.wait(0.1)
                next_at += interval
                self.stop.wait(max(0.0, next_at - time.monotonic()))
                next_at = max(next_at, time.monotonic() - 1)  # no burst to catch up
        finally:
            connection.close()

    def produce_once(self) -> None:
        raise NotImplementedError


def _note_produced(rows: list[tuple[str, str, str]]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO chaos_produced (uid, script, source)"
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[])",
            [[r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]],
        )


class KvProducer(Producer):
    """Batches of KV writes; one in DOOMED_EVERY goes to the failing script."""

    BATCH = 20

    def __init__(self, tenant: Tenant, rate: float, stop: threading.Event) -> None:
        super().__init__("kv", rate / self.BATCH, stop)
        self.tenant, self.n = tenant, 0

    def produce_once(self) -> None:
        rows = []
        with transaction.atomic():
            for _ in range(self.BATCH):
                self.n += 1
                uid = f"kv-{uuid.uuid4()}"
                if self.n % DOOMED_EVERY == 0:
                    kv.put(
                        self.tenant.app,
                        "doomed",
                        uid,
                        {"n": self.n},
                        principal=self.tenant.principal,
                    )
                    rows.append((uid, "dl_alert", "dead_letter"))
                else:
                    kv.put(
                        self.tenant.app,
                        "orders",
                        uid,
                        {"n": self.n},
                        principal=self.tenant.principal,
                    )
                    rows.append((uid, "kv_orders", "kv"))
            _note_produced(rows)
        self.counts.committed += len(rows)


class PubsubProducer(Producer):
    BATCH = 5

    def __init__(self, tenant: Tenant, rate: float, stop: threading.Event) -> None:
        super().__init__("pubsub", rate / self.BATCH, stop)
        self.tenant = tenant

    def produce_once(self) -> None:
        rows = []
        with transaction.atomic():
            for _ in range(self.BATCH):
                uid = f"ps-{uuid.uuid4()}"
                topics.publish(
                    self.tenant.app, "events", {"uid": uid}, principal=self.tenant.principal
                )
                rows += [(uid, name, "pubsub") for name in SUBSCRIBERS]
            _note_produced(rows)
        self.counts.committed += len(rows)


class QueueProducer(Producer):
    BATCH = 25

    def __init__(self, tenant: Tenant, rate: float, stop: threading.Event) -> None:
        super().__init__("queue", rate / self.BATCH, stop)
        self.tenant = tenant

    def produce_once(self) -> None:
        uids = [f"q-{uuid.uuid4()}" for _ in range(self.BATCH)]
        with transaction.atomic():
            queues.send_batch(
                self.tenant.app, "work", [{"uid": u} for u in uids], principal=self.tenant.principal
            )
            _note_produced([(u, "queue_in", "queue") for u in uids])
        self.counts.committed += len(uids)


class MailProducer(Producer):
    """One message per call to the SMTP receiver; produced once it answered 250."""

    def __init__(self, host: str, port: int, domain: str, rate: float, stop) -> None:
        super().__init__("email", rate, stop)
        self.host, self.port, self.rcpt = host, port, f"orders@{SLUG}.{domain}"

    def produce_once(self) -> None:
        uid = f"mail-{uuid.uuid4()}"
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = "ops@example.com", self.rcpt, uid
        message.set_content("chaos")
        with smtplib.SMTP(self.host, self.port, timeout=10) as client:
            try:
                client.send_message(message)
            except smtplib.SMTPResponseException as exc:
                self.counts.refused(f"smtp {exc.smtp_code}")
                return
        self.counts.committed += 1
        self.counts.confirmed.append((uid, "email_in", "email"))


class InvokeProducer(Producer):
    """Synchronous invocations over HTTP; produced once answered 200 (the
    answer is the execution's own, so it ran)."""

    def __init__(self, host: str, port: int, token: str, rate: float, stop) -> None:
        super().__init__("invoke", rate, stop)
        self.host, self.port, self.token = host, port, token

    def produce_once(self) -> None:
        uid = f"inv-{uuid.uuid4()}"
        client = http.client.HTTPConnection(self.host, self.port, timeout=15)
        try:
            client.request(
                "POST",
                f"/api/apps/{SLUG}/scripts/echo/invoke",
                body=json.dumps({"uid": uid}),
                headers={
                    "Authorization": f"Bearer {self.token}",
                    "Content-Type": "application/json",
                },
            )
            answer = client.getresponse()
            answer.read()
        finally:
            client.close()
        if answer.status == 200:
            self.counts.committed += 1
            self.counts.confirmed.append((uid, "echo", "invoke"))
        else:
            self.counts.refused(f"http {answer.status}")


def shuffled(seed: int, items: list) -> list:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items
