"""What operators do in admin: triggers, dead-letter resolutions, the outbox."""

import pytest
from django.urls import reverse
from django.utils import timezone

from deadletters.models import DeadLetter
from deadletters.resolve import MAX_NOTE_CHARS
from outbox.models import OutboxEntry
from picloud.domain.authz import Role
from tests.factories import AppFactory, MembershipFactory, ScriptFactory, kv_trigger
from tests.helpers import trigger_inlines
from triggers.models import DeadLetterTriggerDetails, KvTriggerDetails, Trigger

pytestmark = pytest.mark.django_db

INLINES = trigger_inlines()


@pytest.fixture
def admin_member(client):
    member = MembershipFactory(role=Role.AppAdmin.value)
    client.force_login(member.principal.user)
    return member


def add_trigger(client, **fields):
    return client.post(reverse("admin:triggers_trigger_add"), {**INLINES, **fields})


def test_create_a_kv_trigger_registered_by_the_logged_in_user(client, admin_member):
    script = ScriptFactory(app=admin_member.app)
    response = add_trigger(
        client,
        app=admin_member.app.pk,
        name="orders",
        kind="kv",
        script=script.pk,
        enabled="on",
        **{"kv_details-0-collection": "orders:*", "kv_details-0-ops": ["insert", "update"]},
    )
    assert response.status_code == 302, response.context and response.context["errors"]
    trigger = Trigger.objects.get(name="orders")
    assert trigger.registered_by_principal_id == admin_member.principal.pk
    details = KvTriggerDetails.objects.get(trigger=trigger)
    assert (details.collection, sorted(details.ops)) == ("orders:*", ["insert", "update"])


def errors_of(response) -> str:
    assert response.status_code == 200, "the form should come back with errors"
    parts = [str(response.context["errors"])]
    parts += [
        str(fs.non_form_errors()) + str(fs.errors)
        for fs in response.context["inline_admin_formsets"]
        and [i.formset for i in response.context["inline_admin_formsets"]]
    ]
    return " ".join(parts)


def test_validation_says_what_is_allowed(client, admin_member):
    script = ScriptFactory(app=admin_member.app)
    base = {"app": admin_member.app.pk, "name": "t", "kind": "kv", "script": script.pk}
    bad_pattern = add_trigger(
        client, **base, **{"kv_details-0-collection": "ord*ers", "kv_details-0-ops": ["insert"]}
    )
    assert "prefix:*" in errors_of(bad_pattern)
    no_details = add_trigger(client, **base)
    assert "needs its details" in errors_of(no_details)
    other_script = ScriptFactory(app=AppFactory())
    foreign = add_trigger(
        client,
        **{**base, "script": other_script.pk},
        **{"kv_details-0-collection": "*", "kv_details-0-ops": ["insert"]},
    )
    assert "Select a valid choice" in errors_of(foreign), "another app's script is not offered"
    mixed = add_trigger(
        client,
        **base,
        **{
            "kv_details-0-collection": "*",
            "kv_details-0-ops": ["insert"],
            "dead_letter_details-0-source_kind": "kv",
        },
    )
    assert "Only Dead letter triggers have these details" in errors_of(mixed)
    assert not Trigger.objects.exists()


def test_a_dead_letter_trigger_with_no_filters_matches_any(client, admin_member):
    script = ScriptFactory(app=admin_member.app)
    response = add_trigger(
        client, app=admin_member.app.pk, name="alert", kind="dead_letter", script=script.pk
    )
    assert response.status_code == 302
    details = DeadLetterTriggerDetails.objects.get(trigger__name="alert")
    assert (details.source_kind, details.source_trigger_id) == (None, None)


def test_deleting_a_trigger_says_what_happens_to_its_pending_rows(client, admin_member):
    script = ScriptFactory(app=admin_member.app)
    record = kv_trigger(admin_member.app, script, admin_member.principal)
    for _ in range(3):
        OutboxEntry.objects.create(
            app=admin_member.app, source_kind="kv", script=script, trigger_id=record.id
        )
    page = client.get(reverse("admin:triggers_trigger_delete", args=[record.id]))
    assert (
        "3 pending outbox row(s) will be deleted with it and will not run" in page.content.decode()
    )
    bulk = client.post(
        reverse("admin:triggers_trigger_changelist"),
        {"action": "delete_selected", "_selected_action": [record.id]},
    )
    assert "3 pending outbox row(s)" in bulk.content.decode()
    client.post(reverse("admin:triggers_trigger_delete", args=[record.id]), {"post": "yes"})
    assert not OutboxEntry.objects.exists()


def make_letters(app, script, n, **fields):
    return [
        DeadLetter.objects.create(
            app=app,
            source_kind="kv",
            script=script,
            payload={"n": i},
            last_error=f"boom {i}",
            errors=[f"boom {i}"],
            attempts=1,
            depth=0,
            **fields,
        )
        for i in range(n)
    ]


def test_replay_asks_with_the_count_then_replays_once(client, admin_member):
    script = ScriptFactory(app=admin_member.app)
    letters = make_letters(admin_member.app, script, 3)
    url = reverse("admin:deadletters_deadletter_changelist")
    chosen = [letters[0].pk, letters[1].pk]
    confirm = client.post(url, {"action": "replay", "_selected_action": chosen})
    assert confirm.status_code == 200
    assert "Replay <strong>2</strong> unresolved dead letters" in confirm.content.decode()
    assert not OutboxEntry.objects.exists(), "nothing happens before the confirmation"
    done = client.post(
        url, {"action": "replay", "_selected_action": chosen, "confirm": "yes", "index": "0"}
    )
    assert done.status_code == 302
    assert OutboxEntry.objects.count() == 2
    replayed = DeadLetter.objects.get(pk=letters[0].pk)
    assert (
        replayed.resolution == "replayed" and replayed.resolved_by_id == admin_member.principal.pk
    )
    assert replayed.resolved_at is not None
    row = OutboxEntry.objects.get(payload={"n": 0})
    assert (row.script_id, row.attempts, row.source_kind) == (script.pk, 0, "kv")
    # Again: nothing to replay, no new rows.
    again = client.post(
        url,
        {"action": "replay", "_selected_action": chosen, "confirm": "yes", "index": "0"},
        follow=True,
    )
    said = [str(m) for m in again.context["messages"]]
    assert said[-1] == "Nothing to replay: the selected dead letters are already resolved."
    assert OutboxEntry.objects.count() == 2
    # A resolved letter's page is read-only.
    page = client.get(reverse("admin:deadletters_deadletter_change", args=[letters[0].pk]))
    assert page.context["has_change_permission"] is False


def test_ignore_everything_matching_the_filter_with_a_note(client, admin_member):
    script = ScriptFactory(app=admin_member.app)
    make_letters(admin_member.app, script, 4)
    make_letters(admin_member.app, script, 2, resolution="ignored", resolved_at=timezone.now())
    url = reverse("admin:deadletters_deadletter_changelist") + "?resolution=unresolved"
    one = DeadLetter.objects.filter(resolution__isnull=True).first().pk
    confirm = client.post(
        url, {"action": "ignore", "_selected_action": [one], "select_across": "1"}
    )
    body = confirm.content.decode()
    assert "Ignore <strong>4</strong> unresolved dead letters: every one matching" in body
    client.post(
        url,
        {
            "action": "ignore",
            "_selected_action": [one],
            "select_across": "1",
            "index": "0",
            "confirm": "yes",
            "note": "known outage, fixed upstream",
        },
    )
    assert not DeadLetter.objects.filter(resolution__isnull=True).exists()
    notes = set(
        DeadLetter.objects.filter(resolved_by=admin_member.principal).values_list("note", flat=True)
    )
    assert notes == {"known outage, fixed upstream"}


@pytest.mark.parametrize(
    ("note", "message"),
    [
        ("bad\x00note", "NUL or unpaired surrogate"),
        ("n" * (MAX_NOTE_CHARS + 1), f"at most {MAX_NOTE_CHARS}"),
    ],
)
def test_an_ignore_note_that_cannot_be_stored_is_shown_back_with_why(
    client, admin_member, note, message
):
    (letter,) = make_letters(admin_member.app, ScriptFactory(app=admin_member.app), 1)
    response = client.post(
        reverse("admin:deadletters_deadletter_changelist"),
        {
            "action": "ignore",
            "_selected_action": [letter.pk],
            "index": "0",
            "confirm": "yes",
            "note": note,
        },
    )
    assert response.status_code == 200, "the confirmation comes back, with the reason"
    body = response.content.decode()
    assert message in body and 'class="errornote"' in body, body
    assert "\x00" not in body, "the note is shown back with the NUL replaced"
    assert DeadLetter.objects.get(pk=letter.pk).resolution is None


def test_detail_page_shows_payload_and_every_error(client, admin_member):
    (letter,) = make_letters(admin_member.app, ScriptFactory(app=admin_member.app), 1)
    DeadLetter.objects.filter(pk=letter.pk).update(
        payload={"order": {"id": 7}}, errors=["first <b>", "second"]
    )
    body = client.get(
        reverse("admin:deadletters_deadletter_change", args=[letter.pk])
    ).content.decode()
    assert '"order": {\n    "id": 7\n  }' in body.replace("&quot;", '"')
    assert "first &lt;b&gt;" in body and "second" in body, "errors listed and escaped"


def test_search_finds_text_in_any_attempts_error(client, admin_member):
    script = ScriptFactory(app=admin_member.app)
    (letter,) = make_letters(admin_member.app, script, 1)
    DeadLetter.objects.filter(pk=letter.pk).update(errors=["timeout talking to billing", "x"])
    make_letters(admin_member.app, script, 2)
    response = client.get(reverse("admin:deadletters_deadletter_changelist"), {"q": "billing"})
    assert [d.pk for d in response.context["cl"].result_list] == [letter.pk]


def test_run_now_makes_waiting_rows_due(client, admin_member):
    script = ScriptFactory(app=admin_member.app)
    later = timezone.now() + timezone.timedelta(hours=1)
    row = OutboxEntry.objects.create(
        app=admin_member.app, source_kind="kv", script=script, due_at=later
    )
    client.post(
        reverse("admin:outbox_outboxentry_changelist"),
        {"action": "run_now", "_selected_action": [row.pk]},
    )
    assert OutboxEntry.objects.get(pk=row.pk).due_at <= timezone.now()
    page = client.get(reverse("admin:outbox_outboxentry_changelist"))
    assert page.context["backlog"][0]["total"] == 1
