"""Mail a script sends: through the outbox and the dispatcher to a local
SMTP sink, retried and dead-lettered like any row; checked and capped
where the script sends it."""

from __future__ import annotations

import email
from email import policy

import pytest
from aiosmtpd.controller import Controller
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from deadletters.models import DeadLetter
from outbox.dispatch.worker import postgres_dispatcher
from outbox.models import OutboxEntry
from picloud import kv
from picloud.config import CircuitConfig, EmailConfig, RetryPolicy, TriggerConfig
from picloud.domain.authz import Role
from picloud.domain.scripts import handler
from picloud.runtime.outbound_mail import SendLimitReached
from tests.factories import AppFactory, MembershipFactory, ScriptFactory, kv_trigger
from tests.helpers import free_port, wait_for
from triggers.pg_repository import PgTriggerRepo

# The dispatcher runs rows on a helper thread, with its own connection.
pytestmark = pytest.mark.django_db(transaction=True)

DOMAIN = "mail.test"
SENT = {}  # what the test handler's last send returned, or raised


@handler("tests.email.send")
def send_one(event, ctx):
    spec = event["new"]
    try:
        SENT["result"] = ctx.email.send(**spec)
    except Exception as exc:
        SENT["result"] = exc
        raise
    return {"queued": True}


class Sink:
    """An SMTP server that keeps what it is sent, or refuses with `refuse`."""

    def __init__(self) -> None:
        self.received: list = []
        self.refuse: str | None = None
        self.refuse_rcpt: dict[str, str] = {}  # address -> the answer to its RCPT

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse_rcpt:
            return self.refuse_rcpt[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.refuse:
            return self.refuse
        self.received.append(envelope)
        return "250 OK"


@pytest.fixture
def sink(settings):
    found = Sink()
    port = free_port()
    controller = Controller(found, hostname="127.0.0.1", port=port)
    controller.start()
    settings.EMAIL_BACKEND = "picloud.mail.delivery.SmtpBackend"  # what EMAIL_URL=smtp:// sets
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    try:
        yield found
    finally:
        controller.stop()


@pytest.fixture
def shop(transactional_db, override_config):
    override_config(
        EmailConfig(domain=DOMAIN, send_per_hour=3),
        # Tests here make the script fail on purpose, more often than a
        # circuit would let it.
        CircuitConfig(failure_threshold=100),
        TriggerConfig(
            retry=RetryPolicy(max_attempts=2, base_delay_ms=1, max_delay_ms=1, jitter=0.0)
        ),
    )
    app = AppFactory(slug="shop")
    member = MembershipFactory(app=app, role=Role.Developer.value)
    script = ScriptFactory(app=app, name="mailer", handler="tests.email.send")
    kv_trigger(app, script, member.principal, name="on-mail", collection="mail")
    SENT.clear()
    return app, member.principal


def run_due():
    """Run what is due now (retries wait 1 ms) and settle it all."""
    wait_for(
        lambda: not OutboxEntry.objects.filter(due_at__gt=timezone.now()).exists(),
        timeout=5,
        what="retries due (1 ms backoff)",
    )
    running = postgres_dispatcher()
    report = running.run_once(limit=50)
    running.flush_acks()
    return report


def send(app, principal, **spec):
    kv.put(app, "mail", "k", spec, principal=principal)
    run_due()
    return SENT["result"]


def test_a_scripts_mail_reaches_the_smtp_server_through_the_dispatcher(shop, sink):
    app, principal = shop
    sent = send(app, principal, to=["bob@example.com"], subject="Hi", text="Hello Bob")
    row = OutboxEntry.objects.get(source_kind="email_send")
    assert row.id == sent.outbox_id and row.run_as_principal_id == principal.id
    assert sink.received == [], "nothing leaves before the dispatcher delivers it"

    report = run_due()
    assert report.executed == 1 and not OutboxEntry.objects.exists()
    (envelope,) = sink.received
    assert envelope.mail_from == "noreply@shop.mail.test"
    assert envelope.rcpt_tos == ["bob@example.com"]
    message = email.message_from_bytes(envelope.original_content, policy=policy.default)
    assert message["Subject"] == "Hi" and message["Message-ID"] == sent.message_id
    assert message["Auto-Submitted"] == "auto-generated"
    assert message.get_content().strip() == "Hello Bob"


def test_a_refusing_server_makes_a_retry_then_a_dead_letter(shop, sink):
    app, principal = shop
    sink.refuse = "451 4.3.0 Try again later"
    sent = send(app, principal, to="bob@example.com", subject="Hi", text="Hello")

    run_due()
    row = OutboxEntry.objects.get(pk=sent.outbox_id)
    assert row.attempts == 1 and "451" in row.last_error, "retried"
    run_due()
    assert not OutboxEntry.objects.exists()
    letter = DeadLetter.objects.get()
    assert letter.source_kind == "email_send" and letter.attempts == 2
    assert "451" in letter.last_error
    assert letter.payload["email"]["to"] == ["bob@example.com"]
    assert sink.received == []


def test_a_permanent_refusal_dead_letters_at_once(shop, sink):
    app, principal = shop
    sink.refuse = "550 5.7.1 Not here"
    send(app, principal, to="bob@example.com", subject="Hi", text="Hello")
    run_due()
    letter = DeadLetter.objects.get()
    assert letter.attempts == 1 and "550" in letter.last_error


def test_the_sender_must_be_an_address_of_the_apps_domain(shop, sink):
    app, principal = shop
    for bad in ["boss@bank.example", "x@crm.mail.test", "x@shop.mail.test.evil"]:
        result = send(app, principal, to="bob@example.com", subject="s", text="t", from_=bad)
        assert isinstance(result, ValidationError) and "from_" in result.message_dict
    good = send(
        app,
        principal,
        to="b@example.com",
        subject="s",
        text="t",
        from_="Shop <sales@shop.mail.test>",
    )
    assert not isinstance(good, Exception)
    run_due()
    message = email.message_from_bytes(sink.received[-1].original_content, policy=policy.default)
    assert str(message["From"]) == "Shop <sales@shop.mail.test>"


@pytest.mark.parametrize(
    "spec,field",
    [
        ({"to": "not an address", "subject": "s", "text": "t"}, "to"),
        ({"to": [], "subject": "s", "text": "t"}, "to"),
        ({"to": "a@example.com", "subject": "s\r\nBcc: all@example.com", "text": "t"}, "subject"),
        ({"to": "a@example.com\nBcc: x@y.z", "subject": "s", "text": "t"}, "to"),
        ({"to": "a@example.com", "subject": "s"}, "text"),
        ({"to": "a@example.com", "subject": "s", "text": "t", "headers": {"From": "x"}}, "headers"),
    ],
)
def test_bad_messages_are_refused_naming_the_field(shop, sink, spec, field):
    app, principal = shop
    result = send(app, principal, **spec)
    assert isinstance(result, ValidationError) and field in result.message_dict
    assert not OutboxEntry.objects.filter(source_kind="email_send").exists()


def test_an_app_sends_at_most_its_hourly_cap(shop, sink):
    app, principal = shop
    for _ in range(3):
        assert not isinstance(
            send(app, principal, to="b@example.com", subject="s", text="t"), Exception
        )
    refused = send(app, principal, to="b@example.com", subject="s", text="t")
    assert isinstance(refused, SendLimitReached) and "PICLOUD_EMAIL_SEND_PER_HOUR" in str(refused)
    run_due()
    assert len(sink.received) == 3


def test_a_principal_that_may_not_invoke_cannot_send(shop, sink):
    app, _ = shop
    viewer = MembershipFactory(app=app, role=Role.Viewer.value).principal
    from picloud.models import Script
    from picloud.runtime.outbound_mail import EmailClient

    client = EmailClient(app, viewer, Script.objects.get(name="mailer"))
    with pytest.raises(PermissionDenied, match="EmailSend"):
        client.send("b@example.com", "s", "t")


@handler("tests.email.reply")
def reply_with_attachment_size(event, ctx):
    attachment = ctx.email.attachment(0)
    SENT["result"] = ctx.email.reply(f"Got {attachment.filename}, {len(attachment.content)} bytes.")
    return {}


def test_a_reply_answers_the_sender_from_the_address_mailed_threaded(shop, sink):
    from email.message import EmailMessage

    from picloud.mail import inbound
    from triggers.repository import EmailSpec, NewTrigger

    app, principal = shop
    script = ScriptFactory(app=app, name="replier", handler="tests.email.reply")
    PgTriggerRepo().create(
        NewTrigger(
            app_id=app.id,
            kind="email",
            script_id=script.id,
            name="orders",
            registered_by_principal=principal.id,
            email=EmailSpec("orders"),
        )
    )
    original = EmailMessage()
    original["From"], original["To"] = "Ann <ann@example.com>", "orders@shop.mail.test"
    original["Subject"], original["Message-ID"] = "Order 7", "<m7@example.com>"
    original.set_content("See attached.")
    original.add_attachment(
        b"%PDF-1.4 ...", maintype="application", subtype="pdf", filename="po.pdf"
    )
    inbound.receive("ann@example.com", ["orders+eu@shop.mail.test"], original.as_bytes())

    run_due()  # the email trigger's script replies
    assert isinstance(SENT["result"], Exception) is False, SENT["result"]
    run_due()  # the reply is delivered
    (envelope,) = sink.received
    assert envelope.mail_from == "orders+eu@shop.mail.test"
    assert envelope.rcpt_tos == ["ann@example.com"]
    reply = email.message_from_bytes(envelope.original_content, policy=policy.default)
    assert reply["Subject"] == "Re: Order 7"
    assert reply["In-Reply-To"] == "<m7@example.com>"
    assert reply["References"] == "<m7@example.com>"
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply.get_content().strip() == "Got po.pdf, 12 bytes."


def test_recipients_refused_for_now_get_a_follow_up_of_their_own(shop, sink):
    app, principal = shop
    sink.refuse_rcpt = {"later@example.com": "450 4.2.1 Mailbox busy"}
    sent = send(app, principal, to=["now@example.com", "later@example.com"], subject="s", text="t")
    run_due()
    (first,) = sink.received
    assert first.rcpt_tos == ["now@example.com"]
    follow_up = OutboxEntry.objects.get(source_kind="email_send")
    assert follow_up.id != sent.outbox_id
    assert follow_up.payload["email"]["envelope_to"] == ["later@example.com"]
    sink.refuse_rcpt = {}
    run_due()
    second = sink.received[1]
    assert second.rcpt_tos == ["later@example.com"], "only those refused, once more"
    resent = email.message_from_bytes(second.original_content, policy=policy.default)
    assert resent["To"] == "now@example.com, later@example.com", "the headers name everyone"
    assert resent["Message-ID"] == sent.message_id, "the same message, for the receiver to dedupe"
    assert not OutboxEntry.objects.exists()


def test_a_row_whose_message_cannot_be_built_dead_letters_at_once(shop, sink):
    from outbox.storage.pg_repository import PgOutboxRepo
    from outbox.storage.repository import NewOutboxRow
    from picloud.models import Script

    app, principal = shop
    bad = {
        "from": "noreply@shop.mail.test",
        "to": ["b@example.com"],
        "subject": "written by hand\x0bBcc : evil@example.com",
        "text": "t",
        "message_id": "<x@shop.mail.test>",
    }
    PgOutboxRepo().insert(
        NewOutboxRow(
            app_id=app.id,
            source_kind="email_send",
            script_id=Script.objects.get(name="mailer").id,
            run_as_principal=principal.id,
            payload={"email": bad},
        )
    )
    run_due()
    letter = DeadLetter.objects.get()
    assert letter.attempts == 1 and "cannot be built" in letter.last_error
    assert sink.received == []
