import pytest

from tests.factories import AppFactory, UserFactory


@pytest.fixture
def app(db):
    return AppFactory()


@pytest.fixture
def user(db):
    return UserFactory()
