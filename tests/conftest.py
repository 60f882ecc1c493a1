from contextlib import ExitStack

import pytest

from picloud import config
from picloud.runtime import webhooks
from tests.factories import AppFactory, UserFactory
from tests.webhook_senders import SENDERS


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # The default hasher spends ~0.3 s per password on purpose; tests create many users.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _stop_handler_threads():
    # Handler helper threads hold their own database connections; end them
    # after each test so the test database can be dropped at the end.
    yield
    from picloud.runtime.sandbox import stop_helper

    stop_helper()


@pytest.fixture(autouse=True)
def _fresh_config():
    # Configs are built once per process; each test starts from os.environ
    # as it is, and nothing one test built or overrode reaches the next.
    config.reset()
    yield
    config.reset()


@pytest.fixture
def override_config():
    """Use the given configs, in every thread, until the test ends:
    ``override_config(SandboxCeiling(timeout_ms=300))`` (docs/configuration.md)."""
    with ExitStack() as stack:
        yield lambda *configs: stack.enter_context(config.override(*configs))


@pytest.fixture
def app(db):
    return AppFactory()


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture(params=sorted(SENDERS))
def webhook_post(request, monkeypatch):
    """Each webhook sender in turn (tests/webhook_senders.py), returned and
    also installed as webhooks.post, which execute_row calls."""
    post = SENDERS[request.param]
    monkeypatch.setattr(webhooks, "post", post)
    return post
