import pytest
from django.core.exceptions import ImproperlyConfigured, ValidationError

from picloud.config import WebhookConfig
from picloud.domain.scripts import get_handler, handler, registered_names, unregister
from picloud.runtime.webhooks import sign, validate_webhook_url


def test_shipped_handlers_are_registered_at_start_up():
    assert {"picloud.noop", "picloud.echo", "picloud.fail"} <= set(registered_names())


def test_register_and_look_up():
    @handler("tests.registry.one")
    def one(event, ctx):
        return 1

    try:
        assert get_handler("tests.registry.one") is one
        handler("tests.registry.one")(one)  # the same function again is harmless
    finally:
        unregister("tests.registry.one")
    assert get_handler("tests.registry.one") is None


def test_a_name_registered_twice_is_refused_naming_both():
    @handler("tests.registry.dup")
    def first(event, ctx): ...

    def second(event, ctx): ...

    try:
        with pytest.raises(ImproperlyConfigured, match=r"registered twice: .*first and .*second"):
            handler("tests.registry.dup")(second)
    finally:
        unregister("tests.registry.dup")


@pytest.mark.parametrize("name", ["", "has space", "a/b", "x" * 201, "os.system;rm"])
def test_invalid_handler_names_are_refused(name):
    with pytest.raises(ImproperlyConfigured, match="letters, digits"):
        handler(name)


@pytest.mark.parametrize(
    ("url", "allow_http", "ok"),
    [
        ("https://hooks.example.com/x", False, True),
        ("https://hooks.example.com:8443/x?y=1", False, True),
        ("http://hooks.example.com/x", False, False),
        ("http://hooks.example.com/x", True, True),
        ("ftp://hooks.example.com/x", True, False),
        ("hooks.example.com/x", False, False),
        ("https://user:pw@hooks.example.com/", False, False),
        ("", False, False),
    ],
)
def test_webhook_url_shapes(url, allow_http, ok):
    config = WebhookConfig(allow_http=allow_http)
    if ok:
        validate_webhook_url(url, config)
    else:
        with pytest.raises(ValidationError) as excinfo:
            validate_webhook_url(url, config)
        assert "webhook_url" in excinfo.value.message_dict


def test_signature_is_hmac_sha256_over_timestamp_dot_body():
    # Known answer: HMAC-SHA256(key=b"k", msg=b"1700000000.{}").
    assert sign("k", "1700000000", b"{}") == (
        "sha256=c6ef4734033cee2367414a0939385eca0397754aa7a59716da7463a9298b5146"
    )
