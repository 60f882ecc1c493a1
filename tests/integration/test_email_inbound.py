"""Received mail through the Python API, the retention sweep and admin:
each app sees its own copy and nobody else's."""

from __future__ import annotations

import json
from datetime import timedelta
from email.message import EmailMessage
from io import StringIO

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from outbox.models import OutboxEntry
from picloud.config import EmailConfig, SandboxCeiling
from picloud.domain.authz import Role
from picloud.mail import inbound
from picloud.models import InboundEmail
from tests.factories import AppFactory, MembershipFactory, ScriptFactory, UserFactory
from triggers.pg_repository import PgTriggerRepo
from triggers.repository import EmailSpec, NewTrigger

DOMAIN = "mail.test"


@pytest.fixture
def mail(db, override_config):
    override_config(EmailConfig(domain=DOMAIN, max_bytes=200_000, retention_days=3))
    apps, members = {}, {}
    for slug in ("shop", "crm"):
        app = apps[slug] = AppFactory(slug=slug)
        member = members[slug] = MembershipFactory(app=app, role=Role.AppAdmin.value)
        PgTriggerRepo().create(
            NewTrigger(
                app_id=app.id,
                kind="email",
                script_id=ScriptFactory(app=app).id,
                name=f"{slug}-all",
                registered_by_principal=member.principal.id,
                email=EmailSpec("*"),
            )
        )
    return apps, members


def raw_message(subject="Hello", attachment=b"PK\x03\x04 zip bytes") -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "ann@example.com", "x@shop.mail.test", subject
    msg.set_content("body")
    msg.add_attachment(attachment, maintype="application", subtype="zip", filename="a.zip")
    return msg.as_bytes()


def test_accepts_answers_what_the_receiver_asks_at_rcpt(mail):
    assert inbound.accepts("Anything+tag@SHOP.mail.test").local_part == "anything"
    assert inbound.accepts("x@nope.mail.test") is None
    assert inbound.accepts("x@shop.other.test") is None
    assert inbound.accepts("not an address") is None


def test_reading_mail_back_needs_email_read_in_its_app(mail):
    apps, members = mail
    raw = raw_message()
    [stored] = inbound.receive("ann@example.com", ["x@shop.mail.test"], raw)
    viewer = MembershipFactory(app=apps["shop"], role=Role.Viewer.value).principal
    assert inbound.get_email("shop", stored.email_id, principal=viewer).subject == "Hello"
    assert [e.id for e in inbound.list_emails("shop", principal=viewer)] == [stored.email_id]
    attachment = inbound.get_attachment("shop", stored.email_id, 0, principal=viewer)
    assert (attachment.filename, attachment.content) == ("a.zip", b"PK\x03\x04 zip bytes")
    assert inbound.raw_message("shop", stored.email_id, principal=viewer) == raw
    stranger = members["crm"].principal
    for call in (
        lambda: inbound.get_email("shop", stored.email_id, principal=stranger),
        lambda: inbound.list_emails("shop", principal=stranger),
        lambda: inbound.raw_message("shop", stored.email_id, principal=stranger),
    ):
        with pytest.raises(PermissionDenied, match="EmailRead"):
            call()
    with pytest.raises(inbound.EmailNotFound):
        inbound.get_email("crm", stored.email_id, principal=stranger)  # not crm's message
    with pytest.raises(inbound.EmailNotFound):
        inbound.get_attachment("shop", stored.email_id, 1, principal=viewer)
    with pytest.raises(inbound.EmailNotFound):
        inbound.get_email("shop", "not-a-uuid", principal=viewer)


def test_receive_refuses_what_the_receiver_would(mail):
    with pytest.raises(inbound.MessageTooLarge, match="PICLOUD_EMAIL_MAX_BYTES=200000"):
        inbound.receive("a@example.com", ["x@shop.mail.test"], b"x" * 200_001)
    with pytest.raises(ValidationError, match="1 to 100 recipients"):
        inbound.receive("a@example.com", [f"x{i}@shop.mail.test" for i in range(101)], b"x")
    assert inbound.receive("a@example.com", ["x@elsewhere.example"], b"x") == []
    assert not InboundEmail.objects.exists()


def test_an_event_over_the_payload_cap_keeps_its_bodies_cut_and_flagged(mail, override_config):
    override_config(SandboxCeiling(max_payload_bytes=32_768))
    big = EmailMessage()
    big["From"], big["Subject"] = "a@example.com", "big"
    big.set_content("é" * 50_000)
    inbound.receive("a@example.com", ["x@shop.mail.test"], big.as_bytes())
    row = OutboxEntry.objects.get()
    assert row.payload["message"]["truncated"]["text"] is True
    assert row.payload["message"]["text"].startswith("éééé")
    assert len(json.dumps(row.payload, ensure_ascii=False).encode()) <= 32_768, "it runs"


def test_the_sweep_deletes_mail_past_retention(mail):
    old, new = (
        inbound.receive("a@example.com", ["x@shop.mail.test"], raw_message(s))[0]
        for s in ("old", "new")
    )
    InboundEmail.objects.filter(pk=old.email_id).update(
        received_at=timezone.now() - timedelta(days=4)
    )
    out = StringIO()
    call_command("gc_inbound_emails", "--dry-run", stdout=out)
    assert "(1 now)" in out.getvalue() and InboundEmail.objects.count() == 2
    call_command("gc_inbound_emails", stdout=out)
    assert "Deleted 1 received email(s) older than 3 day(s)." in out.getvalue()
    assert list(InboundEmail.objects.values_list("pk", flat=True)) == [new.email_id]


def test_the_daily_sweep_includes_received_mail(mail):
    from deadletters.tasks import sweep_retention

    [old] = inbound.receive("a@example.com", ["x@shop.mail.test"], raw_message())
    InboundEmail.objects.filter(pk=old.email_id).update(
        received_at=timezone.now() - timedelta(days=4)
    )
    assert "Received emails past retention removed: 1." in sweep_retention()


class TestAdmin:
    @pytest.fixture
    def stored(self, mail):
        both = ["x@shop.mail.test", "y@crm.mail.test"]
        self.raw = raw_message("<b>Hi</b>")
        shop, crm = inbound.receive("ann@example.com", both, self.raw)
        return shop, crm

    def url(self, view, *args):
        return reverse(f"admin:picloud_inboundemail_{view}", args=args)

    def test_each_app_sees_its_own_copy_only(self, client, mail, stored):
        _apps, members = mail
        shop, crm = stored
        client.force_login(members["shop"].principal.user)
        page = client.get(self.url("changelist")).content.decode()
        assert str(shop.email_id) in page and str(crm.email_id) not in page
        assert "shop-all" in page, "the triggers it fired"
        detail = client.get(self.url("change", shop.email_id))
        assert detail.status_code == 200
        assert "&lt;b&gt;Hi&lt;/b&gt;" in detail.content.decode(), "the subject is escaped"
        assert "a.zip" in detail.content.decode()
        raw = client.get(self.url("raw", shop.email_id))
        assert raw.status_code == 200 and raw.content == self.raw
        assert raw["Content-Type"] == "message/rfc822"
        assert raw["Content-Disposition"].startswith("attachment;")
        for view in ("change", "raw"):
            assert client.get(self.url(view, crm.email_id)).status_code == 404

    def test_a_viewer_reads_and_nobody_edits_or_deletes(self, client, mail, stored):
        apps, _ = mail
        shop, _ = stored
        viewer = MembershipFactory(app=apps["shop"], role=Role.Viewer.value).principal.user
        client.force_login(viewer)
        assert client.get(self.url("change", shop.email_id)).status_code == 200
        assert client.post(self.url("delete", shop.email_id)).status_code == 403
        assert client.get(self.url("add")).status_code == 403

    def test_a_user_of_no_app_sees_nothing(self, client, stored):
        shop, _ = stored
        client.force_login(UserFactory())
        assert client.get(self.url("raw", shop.email_id)).status_code in (403, 404)
