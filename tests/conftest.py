import pytest

from tests.factories import AppFactory, UserFactory


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


@pytest.fixture
def app(db):
    return AppFactory()


@pytest.fixture
def user(db):
    return UserFactory()
