import pytest
from django.core.exceptions import ValidationError

from picloud.config import WebhookConfig
from picloud.models import Script

pytestmark = pytest.mark.django_db


def test_unknown_handler_is_refused_on_save_listing_registered_ones(app):
    with pytest.raises(ValidationError) as excinfo:
        Script.objects.create(app=app, name="s", runtime="python", handler="orders.notfound")
    message = excinfo.value.message_dict["handler"][0]
    assert "Unknown handler 'orders.notfound'" in message
    assert "picloud.echo" in message, "the error should list what is allowed"


def test_python_script_saves_with_a_registered_handler(app):
    script = Script.objects.create(app=app, name="s", runtime="python", handler="picloud.echo")
    assert script.secret == ""


def test_webhook_script_gets_a_secret_and_refuses_plain_http(app, override_config):
    override_config(WebhookConfig(allow_http=False))
    script = Script.objects.create(
        app=app, name="hook", runtime="webhook", webhook_url="https://hooks.example.com/in"
    )
    assert script.secret.startswith("whsec_") and len(script.secret) > 30
    with pytest.raises(ValidationError, match="Plain http://"):
        Script.objects.create(
            app=app, name="hook2", runtime="webhook", webhook_url="http://hooks.example.com/in"
        )


def test_full_clean_reports_runtime_problems(app):
    script = Script(app=app, name="s", runtime="python", handler="")
    with pytest.raises(ValidationError) as excinfo:
        script.full_clean()
    assert "handler" in excinfo.value.message_dict


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("https://hooks.example.com:99999/in", "port must be a number from 1 to 65535"),
        ("https://hooks.example.com:+443/in", "port must be a number from 1 to 65535"),
        ("https://hooks.example.com:0/in", "port must be a number from 1 to 65535"),
        ("https://hooks.example.com/a b", "spaces or control characters"),
        ("https://hooks.example.com/a\x7fb", "spaces or control characters"),
        ("https://hooks.example.com/a\x00b", "spaces or control characters"),
    ],
)
def test_webhook_urls_that_could_never_be_sent_are_refused_on_save(app, url, says):
    script = Script(app=app, name="hook", runtime="webhook", webhook_url=url)
    with pytest.raises(ValidationError, match=says):
        script.full_clean()


def test_a_url_saved_before_these_checks_fails_for_good_not_retried(app):
    """Rows of a script whose URL cannot be sent are not retried to their maximum."""
    from outbox.storage.pg_repository import PgOutboxRepo
    from outbox.storage.repository import NewOutboxRow
    from picloud.runtime.execution import execute_row
    from tests.factories import MembershipFactory

    member = MembershipFactory(app=app, role="developer")
    script = Script.objects.create(
        app=app, name="old", runtime="webhook", webhook_url="https://hooks.example.com/in"
    )
    Script.objects.filter(pk=script.pk).update(webhook_url="https://hooks.example.com:99999/in")
    repo = PgOutboxRepo()
    repo.insert(NewOutboxRow(app.id, "kv", script.id, member.principal.id, {}))
    (row,) = repo.claim_due(limit=1, lease=60)
    outcome = execute_row(row)
    assert not outcome.ok and not outcome.retryable
    assert "webhook URL is not usable" in outcome.error
