import pytest

from tests.factories import AppFactory, UserFactory


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # The default hasher spends ~0.3 s per password on purpose; tests create many users.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def app(db):
    return AppFactory()


@pytest.fixture
def user(db):
    return UserFactory()
