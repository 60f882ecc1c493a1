"""The SMTP receiver driven by smtplib as a real client, against real
PostgreSQL: what a 250 promises, what each refusal leaves behind (nothing)."""

from __future__ import annotations

import smtplib
import ssl
from email import policy
from email.message import EmailMessage

import pytest
from django.db import connection

from outbox.models import OutboxEntry
from picloud.config import EmailConfig, override
from picloud.models import InboundEmail
from picloud.smtp_receiver import SmtpReceiver
from tests.factories import AppFactory, MembershipFactory, ScriptFactory
from tests.helpers import free_port
from triggers.pg_repository import PgTriggerRepo
from triggers.repository import EmailSpec, NewTrigger

pytestmark = pytest.mark.django_db(transaction=True)

DOMAIN = "mail.test"
MAX_BYTES = 64 * 1024


def email_trigger(app, principal, name, local_part, *, enabled=True):
    script = ScriptFactory(app=app, name=f"script-{name}")
    return PgTriggerRepo().create(
        NewTrigger(
            app_id=app.id,
            kind="email",
            script_id=script.id,
            name=name,
            registered_by_principal=principal.id,
            enabled=enabled,
            email=EmailSpec(local_part),
        )
    )


@pytest.fixture
def apps():
    shop_app, crm_app = AppFactory(slug="shop"), AppFactory(slug="crm")
    shop = MembershipFactory(app=shop_app).principal
    crm = MembershipFactory(app=crm_app).principal
    return {
        "shop": shop_app,
        "crm": crm_app,
        "orders": email_trigger(shop_app, shop, "orders", "orders"),
        "catch-all": email_trigger(shop_app, shop, "catch-all", "*"),
        "support": email_trigger(crm_app, crm, "support", "support"),
        "off": email_trigger(crm_app, crm, "off", "sales", enabled=False),
    }


@pytest.fixture
def config():
    return EmailConfig(smtp_port=free_port(), domain=DOMAIN, max_bytes=MAX_BYTES)


@pytest.fixture
def receiver(config):
    with override(config):
        server = SmtpReceiver(config)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def client(receiver, config):
    with smtplib.SMTP(config.smtp_host, config.smtp_port, timeout=10) as smtp:
        smtp.ehlo("client.test")
        yield smtp


def message(to, *, subject="Order 7", body="Two boxes, please.\n") -> bytes:
    msg = EmailMessage()
    msg["From"] = "Ann <ann@example.com>"
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Message-ID"] = "<m1@example.com>"
    msg.set_content(body)
    return msg.as_bytes(policy=policy.SMTP)  # CRLF line ends, as a client sends them


def stored():
    return list(InboundEmail.objects.order_by("app__slug"))


def rows():
    return list(OutboxEntry.objects.order_by("trigger__name"))


def test_an_accepted_message_is_stored_with_one_row_per_matching_trigger(client, apps):
    raw = message(["orders@shop.mail.test"])
    assert client.sendmail("ann@example.com", ["orders@shop.mail.test"], raw) == {}

    (email,) = stored()
    assert bytes(email.raw) == raw
    assert (email.app_id, email.mail_from, email.rcpt_to) == (
        apps["shop"].id,
        "ann@example.com",
        ["orders@shop.mail.test"],
    )
    assert (email.subject, email.from_header, email.message_id) == (
        "Order 7",
        "Ann <ann@example.com>",
        "<m1@example.com>",
    )
    assert [r.trigger_id for r in rows()] == [apps["catch-all"].id, apps["orders"].id]
    assert sorted(f["name"] for f in email.fired) == ["catch-all", "orders"]
    assert {f["outbox_id"] for f in email.fired} == {str(r.id) for r in rows()}
    event = rows()[1].payload
    assert event["source"] == "email" and event["email_id"] == str(email.id)
    assert event["trigger"] == "orders" and event["app"] == "shop"
    assert event["envelope"] == {
        "mail_from": "ann@example.com",
        "rcpt_to": ["orders@shop.mail.test"],
    }
    assert event["message"]["subject"] == "Order 7"
    assert event["message"]["text"] == "Two boxes, please.\n"
    assert event["message"]["from"] == {"name": "Ann", "address": "ann@example.com"}
    assert all(r.source_kind == "email" and r.depth == 0 for r in rows())


def test_a_subaddress_reaches_the_trigger_of_its_base_with_the_tag_in_the_event(client, apps):
    client.sendmail("ann@example.com", ["Orders+7@shop.mail.test"], message(["x"]))
    orders = OutboxEntry.objects.get(trigger_id=apps["orders"].id)
    assert orders.payload["local_parts"] == ["orders"]
    assert orders.payload["tags"] == ["7"]


@pytest.mark.parametrize(
    "recipient",
    [
        "nobody@crm.mail.test",  # no trigger matches
        "sales@crm.mail.test",  # its trigger is disabled
        "orders@ghost.mail.test",  # no such app
        "orders@shop.example.com",  # not our domain: never a relay
        "orders@mail.test",  # no app label
        '"or ders"@shop.mail.test',  # no dot-atom: never a trigger's
    ],
)
def test_an_unwanted_recipient_is_refused_at_rcpt_and_nothing_is_stored(client, apps, recipient):
    client.mail("ann@example.com")
    code, answer = client.rcpt(recipient)
    assert code == 550, answer
    assert b"No such mailbox" in answer, "one answer for every refusal: it names no app"
    with pytest.raises(smtplib.SMTPDataError) as no_data:
        client.data(message([recipient]))
    assert no_data.value.smtp_code == 503, "no DATA without an accepted recipient"
    assert stored() == [] and rows() == []


def test_an_oversized_message_is_refused_and_nothing_is_stored(client, apps):
    assert client.has_extn("size") and int(client.esmtp_features["size"]) == MAX_BYTES
    big = message(["orders@shop.mail.test"], body=("y" * 76 + "\n") * (MAX_BYTES // 77 + 10))
    # A client that declares the size is refused at MAIL FROM...
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        client.sendmail("ann@example.com", ["orders@shop.mail.test"], big)
    assert refused.value.smtp_code == 552
    client.rset()
    # ...one that does not, at the end of DATA.
    client.mail("ann@example.com")
    assert client.rcpt("orders@shop.mail.test")[0] == 250
    code, _ = client.data(big)
    assert code == 552
    assert stored() == [] and rows() == []


def test_a_database_failure_during_data_answers_4xx_and_stores_nothing(client, apps):
    # A real failure inside the transaction: the second app's outbox row is
    # refused after the first app's message and rows were written.
    with connection.cursor() as cursor:
        cursor.execute(
            """
            CREATE FUNCTION test_refuse_crm() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'disk full (test)'; END $$;
            CREATE TRIGGER test_refuse_crm BEFORE INSERT ON outbox FOR EACH ROW
            WHEN (NEW.payload->>'app' = 'crm') EXECUTE FUNCTION test_refuse_crm();
            """
        )
    recipients = ["orders@shop.mail.test", "support@crm.mail.test"]
    raw = message(recipients)
    try:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("ann@example.com", recipients, raw)
        assert 400 <= refused.value.smtp_code < 500, "a 4xx: the client keeps the message"
        assert stored() == [] and rows() == [], "nothing half-stored"
    finally:
        with connection.cursor() as cursor:
            cursor.execute(
                "DROP TRIGGER test_refuse_crm ON outbox; DROP FUNCTION test_refuse_crm()"
            )
    client.rset()
    assert client.sendmail("ann@example.com", recipients, raw) == {}, "the retry is taken"
    assert [e.app.slug for e in stored()] == ["crm", "shop"]


def test_recipients_across_two_apps_fan_out_to_both_and_only_them(client, apps):
    recipients = ["orders@shop.mail.test", "support@crm.mail.test", "nobody@crm.mail.test"]
    refused = client.sendmail("ann@example.com", recipients, message(recipients))
    assert list(refused) == ["nobody@crm.mail.test"]
    crm, shop = stored()
    assert (crm.app_id, crm.rcpt_to) == (apps["crm"].id, ["support@crm.mail.test"])
    assert (shop.app_id, shop.rcpt_to) == (apps["shop"].id, ["orders@shop.mail.test"])
    assert bytes(crm.raw) == bytes(shop.raw)
    by_trigger = {r.trigger_id: r for r in rows()}
    assert set(by_trigger) == {apps["orders"].id, apps["catch-all"].id, apps["support"].id}
    assert by_trigger[apps["support"].id].app_id == apps["crm"].id
    assert by_trigger[apps["support"].id].payload["envelope"]["rcpt_to"] == [
        "support@crm.mail.test"
    ]
    assert by_trigger[apps["support"].id].payload["email_id"] == str(crm.id)
    assert by_trigger[apps["orders"].id].payload["email_id"] == str(shop.id)


def test_a_catch_all_fires_once_for_two_recipients_of_its_app(client, apps):
    recipients = ["orders@shop.mail.test", "billing@shop.mail.test"]
    client.sendmail("ann@example.com", recipients, message(recipients))
    (email,) = stored()
    assert email.rcpt_to == recipients
    catch_all = OutboxEntry.objects.get(trigger_id=apps["catch-all"].id)
    assert catch_all.payload["envelope"]["rcpt_to"] == recipients
    assert catch_all.payload["local_parts"] == ["billing", "orders"]
    assert OutboxEntry.objects.filter(trigger_id=apps["orders"].id).count() == 1


@pytest.mark.parametrize(
    "raw",
    [
        b'Subject: broken\r\nContent-Type: multipart/mixed; boundary="zz"\r\n\r\n--zz\r\n'
        b"Content-Type: text/plain\r\n\r\nhello\r\n--zz",  # unterminated multipart
        b"\xff\xfe garbage with no headers at all \x00\x01\r\n",
        b"To: <<<@@@>>>\r\nDate: not a date\r\nSubject: =?bogus?Q?x?=\r\n\r\nbody\r\n",
    ],
)
def test_malformed_mime_still_makes_an_event(client, apps, raw):
    assert client.sendmail("ann@example.com", ["orders@shop.mail.test"], raw) == {}
    (email,) = stored()
    event = OutboxEntry.objects.get(trigger_id=apps["orders"].id).payload["message"]
    assert set(event) >= {"subject", "text", "headers", "attachments", "defects"}
    assert bytes(email.raw).rstrip(b"\r\n") == raw.rstrip(b"\r\n")


def test_a_bounce_with_an_empty_sender_is_taken(client, apps):
    client.sendmail("", ["orders@shop.mail.test"], message(["orders@shop.mail.test"]))
    (email,) = stored()
    assert email.mail_from == ""


def test_starttls_is_offered_when_a_certificate_is_configured(tmp_path, apps, monkeypatch):
    from tests.helpers import trusted_server_context

    trusted_server_context(tmp_path, monkeypatch, "DNS:mail.test")
    config = EmailConfig(
        smtp_port=free_port(),
        domain=DOMAIN,
        tls_cert=str(tmp_path / "cert.pem"),
        tls_key=str(tmp_path / "key.pem"),
    )
    with override(config):
        server = SmtpReceiver(config)
        server.start()
        try:
            with smtplib.SMTP(config.smtp_host, config.smtp_port, timeout=10) as smtp:
                smtp.ehlo()
                assert smtp.has_extn("starttls")
                context = ssl.create_default_context()
                context.check_hostname = False
                smtp.starttls(context=context)
                smtp.ehlo()
                smtp.sendmail("ann@example.com", ["orders@shop.mail.test"], message(["x"]))
        finally:
            server.stop()
    assert len(stored()) == 1


def test_no_250_when_the_app_was_deleted_between_rcpt_and_data(client, apps):
    client.mail("ann@example.com")
    assert client.rcpt("support@crm.mail.test")[0] == 250
    apps["crm"].delete()
    code, _ = client.data(message(["support@crm.mail.test"]))
    assert code == 550, "nothing was stored: no 250"
    assert stored() == []


def test_long_lines_are_taken(client, apps):
    raw = b"From: a@example.com\r\nSubject: wide\r\n\r\n" + b"x" * 5_000 + b"\r\n"
    assert client.sendmail("a@example.com", ["orders@shop.mail.test"], raw) == {}
    event = OutboxEntry.objects.get(trigger_id=apps["orders"].id).payload["message"]
    assert event["text"] == "x" * 5_000 + "\n"


def test_an_event_of_many_recipients_stays_under_the_payload_cap(apps, override_config):
    from django.db import connection as db

    from picloud.config import SandboxCeiling
    from picloud.mail import inbound

    override_config(EmailConfig(domain=DOMAIN), SandboxCeiling(max_payload_bytes=65_536))
    to = ", ".join(f"person{i}@example.com" for i in range(3_000))
    raw = f"From: a@example.com\r\nTo: {to}\r\nSubject: s\r\n\r\n".encode() + b"y" * 80_000
    recipients = [f"orders+{'t' * 40}{i}@shop.mail.test" for i in range(100)]
    inbound.receive("a@example.com", recipients, raw)
    with db.cursor() as cursor:
        cursor.execute("SELECT max(octet_length(payload::text)) FROM outbox")
        (largest,) = cursor.fetchone()
    assert largest <= 65_536, "measured as the dispatcher measures it: it runs"


def test_refusals_cost_the_same_queries_whether_the_app_exists_or_not(apps, config):
    from django.db import connection as db
    from django.test.utils import CaptureQueriesContext

    from picloud.mail import inbound

    counts = []
    for address in ("nobody@crm.mail.test", "nobody@ghost.mail.test"):
        with CaptureQueriesContext(db) as queries:
            assert inbound.accepts(address, config=config) is None
        counts.append(len(queries))
    assert counts[0] == counts[1]
