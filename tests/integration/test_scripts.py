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
