"""The admin in a real browser: Debian's Chromium driven by Playwright against
`manage.py runstack` (gunicorn + qcluster) on the test database.

An app admin creates a KV trigger pointing at a failing script, a KV write
makes it fail into a dead letter, the badge counts it, the admin replays it
from the list behind the confirmation page; a second user with no role in
that app gets nothing. Screenshots go to PICLOUD_SCREENSHOTS_DIR (`make
screenshots` keeps them in docs/screenshots/), else to the test's tmp dir.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from django.db import connection, connections

from deadletters.models import DeadLetter
from picloud import kv
from picloud.domain.authz import Role
from tests.acceptance import handlers  # noqa: F401 - registers the acc.* handlers here too
from tests.factories import AppFactory, MembershipFactory, ScriptFactory, UserFactory
from tests.helpers import PROJECT_DIR, free_port, subprocess_env, wait_for
from triggers.models import Trigger

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]

CHROMIUM = os.environ.get("PICLOUD_CHROMIUM", "/usr/bin/chromium")
# Headless, and quiet on a machine without internet access.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "correct horse battery staple"
STACK_ENV = {
    # Fail fast: two attempts 200 ms apart, then the dead letter.
    "PICLOUD_TRIGGER_RETRY_MAX_ATTEMPTS": "2",
    "PICLOUD_TRIGGER_RETRY_BASE_DELAY_MS": "200",
    "PICLOUD_TRIGGER_RETRY_JITTER": "0",
    "PICLOUD_QCLUSTER_WORKERS": "1",
    "PICLOUD_LOG_LEVEL": "INFO",
    # The acceptance handlers (acc.record writes what it ran on to KV "runs").
    "PICLOUD_EXTRA_APPS": "tests.acceptance",
}


@pytest.fixture
def real_passwords(settings):
    # The server checks passwords with the default hashers; the suite's fast
    # MD5 hasher is not among them.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]


@pytest.fixture
def people(real_passwords):
    shop = AppFactory(slug="shop", name="Shop")
    ScriptFactory(app=shop, name="flaky", handler="picloud.fail")
    ScriptFactory(app=shop, name="notify", handler="picloud.echo")
    alice = MembershipFactory(app=shop, role=Role.AppAdmin.value).principal.user
    mallory = UserFactory(is_staff=True)
    MembershipFactory(principal=mallory.principal, role=Role.AppAdmin.value)  # another app
    for user in (alice, mallory):
        user.set_password(PASSWORD)
        user.save()
    return {"shop": shop, "alice": alice, "mallory": mallory}


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except OSError:
        return None


@pytest.fixture
def stack(tmp_path):
    port = free_port()
    log_path = tmp_path / "runstack.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "runstack", "--addr", f"127.0.0.1:{port}"],
            cwd=PROJECT_DIR,
            env=subprocess_env(connection.settings_dict, **STACK_ENV),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _status(f"{base}/admin/login/") == 200, timeout=60, what="the web server")
        wait_for(
            lambda: "listening for outbox rows" in log_path.read_text(),
            timeout=60,
            what="the dispatcher",
        )
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


@pytest.fixture
def browser(monkeypatch):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM}: run `make browser` or install Debian's chromium")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop on this thread; our ORM calls
    # in between are plain synchronous calls, not made from async code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
        # With Playwright's loop running, Django keys connections by that
        # loop's context: the test's queries got a connection of their own,
        # which must be closed here or the test database cannot be dropped.
        connections.close_all()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("PICLOUD_SCREENSHOTS_DIR") or tmp_path / "screenshots")
    if not folder.is_absolute():
        folder = PROJECT_DIR / folder
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def log_in(page, base: str, user) -> None:
    page.goto(f"{base}/admin/login/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{base}/admin/")


def badge_count(page) -> int:
    return int(page.text_content("#dead-letter-count"))


def test_an_app_admin_sees_a_dead_letter_arrive_and_replays_it(stack, browser, people, shots):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    log_in(page, stack, people["alice"])
    assert badge_count(page) == 0

    # Create a KV trigger pointing at the failing script.
    page.goto(f"{stack}/admin/triggers/trigger/add/")
    page.select_option("#id_app", label="shop")
    page.fill("#id_name", "orders-to-flaky")
    page.select_option("#id_kind", "kv")
    page.select_option("#id_script", label="shop/flaky")
    page.fill("#id_kv_details-0-collection", "orders:*")
    page.check("input[name='kv_details-0-ops'][value='insert']")
    page.screenshot(path=shots / "trigger-form.png", full_page=True)
    page.click("input[name='_save']")
    assert "was added successfully" in page.text_content(".messagelist")
    trigger = Trigger.objects.get(name="orders-to-flaky")
    assert trigger.registered_by_principal.user == people["alice"]

    # A KV write fails twice, then becomes a dead letter; the badge rises.
    kv.put(people["shop"], "orders:eu", "o-1", {"qty": 2}, principal=people["alice"].principal)

    def badge_shows_one():
        page.reload()
        return badge_count(page) == 1

    wait_for(badge_shows_one, timeout=30, what="the badge to count the dead letter", interval=0.5)

    # From the badge to the list, then replay the letter behind the confirmation.
    page.click("#dead-letter-badge")
    page.wait_for_selector("#result_list")
    page.screenshot(path=shots / "dead-letters.png", full_page=True)
    (letter,) = DeadLetter.objects.filter(trigger=trigger)
    assert "picloud.fail always fails" in page.text_content("#result_list")
    page.check(f"input[name='_selected_action'][value='{letter.pk}']")
    page.select_option("select[name='action']", "replay")
    page.click("button[name='index']")
    page.wait_for_selector("#resolution-count")
    assert "Replay 1 unresolved dead letter" in page.text_content("#resolution-count")
    page.screenshot(path=shots / "replay-confirmation.png", full_page=True)
    assert DeadLetter.objects.get(pk=letter.pk).resolution is None, "nothing before confirming"
    page.click("input[type=submit][value='Yes, replay 1']")
    assert "1 dead letter(s) replayed" in page.text_content(".messagelist")
    letter.refresh_from_db()
    assert (letter.resolution, letter.resolved_by.user) == ("replayed", people["alice"])

    # Mallory administers another app: nothing of the shop reaches her.
    mallory = browser.new_page()
    log_in(mallory, stack, people["mallory"])
    assert badge_count(mallory) == 0, "another app's dead letters are not counted"
    mallory.goto(f"{stack}/admin/deadletters/deadletter/")
    assert "shop" not in mallory.text_content("#result_list, #changelist")
    response = mallory.goto(f"{stack}/admin/deadletters/deadletter/{letter.pk}/change/")
    assert response.status == 404
    response = mallory.goto(f"{stack}/admin/triggers/trigger/{trigger.pk}/change/")
    assert response.status == 404
    assert "orders-to-flaky" not in mallory.content()


def test_an_app_admin_schedules_a_cron_trigger_pauses_it_and_runs_it_now(
    stack, browser, people, shots
):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    log_in(page, stack, people["alice"])

    page.goto(f"{stack}/admin/triggers/trigger/add/")
    page.select_option("#id_app", label="shop")
    page.fill("#id_name", "nightly-report")
    page.select_option("#id_kind", "cron")
    page.select_option("#id_script", label="shop/notify")
    page.fill("#id_cron_details-0-schedule", "30 2 * * *")
    page.fill("#id_cron_details-0-timezone", "Europe/Paris")
    page.fill("#id_cron_details-0-payload", '{"report": "daily"}')
    page.click("input[name='_continue']")
    assert "was added successfully" in page.text_content(".messagelist")
    trigger = Trigger.objects.get(name="nightly-report")

    # The change page previews the next five fires, in Paris time and in UTC.
    preview = page.text_content(".field-next_fires")
    assert preview.count("02:30:00 (Europe/Paris)") == 5 and preview.count("UTC") == 5
    page.screenshot(path=shots / "cron-trigger.png", full_page=True)

    # Pause it from the list, then run it now: one extra tick, run at once.
    def act(action):
        page.goto(f"{stack}/admin/triggers/trigger/")
        page.check(f"input[name='_selected_action'][value='{trigger.pk}']")
        page.select_option("select[name='action']", action)
        page.click("button[name='index']")

    act("pause")
    assert "Paused 1 cron trigger" in page.text_content(".messagelist")
    assert "paused" in page.text_content("#result_list tr:has(a:text('nightly-report'))")
    act("run_now")
    assert "Queued an extra tick for 1 cron trigger" in page.text_content(".messagelist")

    def last_fire_done():
        page.goto(f"{stack}/admin/triggers/trigger/")
        return ": done" in page.text_content(".field-last_fire")

    wait_for(last_fire_done, timeout=30, what="the run-now tick to run", interval=0.5)
    page.screenshot(path=shots / "cron-triggers.png", full_page=True)


def test_an_app_admin_edits_a_kv_entry_and_its_trigger_fires(stack, browser, people, shots):
    from triggers.pg_repository import PgTriggerRepo
    from triggers.repository import KvSpec, NewTrigger

    shop, alice = people["shop"], people["alice"]
    recorder = ScriptFactory(app=shop, name="record", handler="acc.record")
    PgTriggerRepo().create(
        NewTrigger(
            app_id=shop.id,
            kind="kv",
            script_id=recorder.id,
            name="orders-updated",
            registered_by_principal=alice.principal.id,
            kv=KvSpec("orders", ("update",)),
        )
    )
    kv.put(shop, "orders", "o-7", {"qty": 1, "item": "pi"}, principal=alice.principal)
    entry = shop.kv_entries.get(key="o-7")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    log_in(page, stack, alice)

    page.goto(f"{stack}/admin/picloud/kventry/?q=orders/o-")
    assert "o-7" in page.text_content("#result_list")
    page.click("#result_list a:text('orders')")
    value = page.input_value("#id_value")
    assert '"qty": 1' in value, "indented JSON to edit"
    page.fill("#id_value", value.replace('"qty": 1', '"qty": 3'))
    page.screenshot(path=shots / "kv-entry.png", full_page=True)
    page.click("input[name='_save']")
    assert "was changed successfully" in page.text_content(".messagelist")
    item = kv.get(shop, "orders", "o-7", principal=alice.principal)
    assert (item.value["qty"], item.version) == (3, 2)

    # The write went through the KV API: the trigger's script ran on it.
    def recorded():
        runs = kv.list(shop, "runs", principal=alice.principal)
        return [r.value["event"] for r in runs]

    (event,) = wait_for(recorded, timeout=30, what="the orders-updated trigger's script to run")
    assert (event["key"], event["op"], event["new"]["qty"]) == ("o-7", "update", 3)

    # Saving what the page showed after someone else wrote is refused.
    page.goto(f"{stack}/admin/picloud/kventry/{entry.pk}/change/")
    kv.put(shop, "orders", "o-7", {"qty": 9}, principal=alice.principal)  # a script, say
    page.fill("#id_value", '{"qty": 4}')
    page.click("input[name='_save']")
    assert "is at version 3, expected to be at version 2" in page.text_content(".messagelist")
    assert kv.get(shop, "orders", "o-7", principal=alice.principal).value == {"qty": 9}


def test_an_operator_follows_a_failing_trigger_to_its_dead_letter_and_replays_it(
    stack, browser, people, shots
):
    """Dashboard → the failing trigger → its attempts → the dead letter →
    replay → the new successful attempt."""
    from triggers.pg_repository import PgTriggerRepo
    from triggers.repository import KvSpec, NewTrigger

    shop, alice = people["shop"], people["alice"]
    picky = ScriptFactory(app=shop, name="picky", handler="acc.fail_until_fixed")
    PgTriggerRepo().create(
        NewTrigger(
            app_id=shop.id,
            kind="kv",
            script_id=picky.id,
            name="orders-picky",
            registered_by_principal=alice.principal.id,
            kv=KvSpec("orders", ("insert",)),
        )
    )
    kv.put(shop, "orders", "o-42", {"qty": 1}, principal=alice.principal)
    wait_for(
        lambda: DeadLetter.objects.filter(script=picky).exists(),
        timeout=30,
        what="two failed attempts and a dead letter",
    )
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    log_in(page, stack, alice)

    # The dashboard names the failing trigger (its counts arrive within a second or two).
    def dashboard_names_it():
        page.goto(f"{stack}/admin/outbox/deliverydashboard/")
        return "orders-picky" in page.text_content("#failing-triggers")

    wait_for(dashboard_names_it, timeout=30, what="the dashboard to list the trigger", interval=0.5)
    assert page.locator("svg.picloud-chart").count() >= 4
    page.screenshot(path=shots / "dashboard.png", full_page=True)

    # To the trigger: its health and recent attempts.
    page.click("#failing-triggers a:text('orders-picky')")
    page.wait_for_selector(".recent-attempts")
    assert page.locator(".recent-attempts tbody tr").count() == 2
    assert "dead_letter" in page.text_content(".recent-attempts tbody tr:first-child")
    page.screenshot(path=shots / "trigger-health.png", full_page=True)

    # To its attempts in the delivery log: a retry, then the dead letter.
    page.click("#trigger-attempts")
    page.wait_for_selector("#attempts")
    rows = page.locator("#attempts tbody tr")
    assert rows.count() == 2
    assert "retry" in rows.nth(1).text_content() and "not set yet" in rows.nth(1).text_content()
    page.screenshot(path=shots / "delivery-log.png", full_page=True)

    # To the dead letter; the operator fixes the cause, and replays it.
    page.click("#attempts a.dead-letter-link")
    page.wait_for_selector(".field-all_errors")
    assert "acc.fail_until_fixed: config/fixed is not set yet" in page.text_content("#content")
    kv.put(shop, "config", "fixed", True, principal=alice.principal)
    (letter,) = DeadLetter.objects.filter(script=picky)
    page.goto(f"{stack}/admin/deadletters/deadletter/")
    page.check(f"input[name='_selected_action'][value='{letter.pk}']")
    page.select_option("select[name='action']", "replay")
    page.click("button[name='index']")
    page.wait_for_selector("#resolution-count")
    page.click("input[type=submit][value='Yes, replay 1']")
    assert "1 dead letter(s) replayed" in page.text_content(".messagelist")

    # The trigger's attempts now start with the replay's success.
    def newest_succeeded():
        page.goto(f"{stack}/admin/triggers/trigger/")
        page.click("#result_list a:text('orders-picky')")
        page.wait_for_selector("#trigger-attempts")
        page.click("#trigger-attempts")
        page.wait_for_selector("#attempts")
        return "success" in page.locator("#attempts tbody tr").first.text_content()

    wait_for(newest_succeeded, timeout=30, what="the replay's attempt", interval=0.5)
    assert page.locator("#attempts tbody tr").count() == 3
