"""picloud.kv: semantics and authorization against the real database."""

import threading

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connections

from picloud import kv
from picloud.domain.authz import Role
from tests.factories import AppFactory, MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def writer(app):
    return MembershipFactory(app=app, role=Role.Developer.value).principal


def test_put_inserts_then_updates_with_versions(app, writer):
    first = kv.put(app, "orders", "o1", {"n": 1}, principal=writer)
    second = kv.put(app, "orders", "o1", {"n": 2}, principal=writer)
    assert (first.version, second.version) == (1, 2)
    got = kv.get(app, "orders", "o1", principal=writer)
    assert got.value == {"n": 2} and got.version == 2


def test_get_missing_is_none_and_delete_missing_is_a_no_op(app, writer):
    assert kv.get(app, "orders", "nope", principal=writer) is None
    assert kv.delete(app, "orders", "nope", principal=writer) is False
    kv.put(app, "orders", "o1", 1, principal=writer)
    assert kv.delete(app, "orders", "o1", principal=writer) is True
    assert kv.get(app, "orders", "o1", principal=writer) is None


def test_values_are_any_json(app, writer):
    for value in [None, 0, "text", [1, {"a": None}], {"nested": {"deep": [True]}}]:
        kv.put(app, "c", "k", value, principal=writer)
        assert kv.get(app, "c", "k", principal=writer).value == value


def test_list_orders_by_key_and_filters_by_literal_prefix(app, writer):
    for key in ["b", "a%1", "a_2", "ab", "A"]:
        kv.put(app, "c", key, key, principal=writer)
    assert [i.key for i in kv.list(app, "c", principal=writer)] == ["A", "a%1", "a_2", "ab", "b"]
    assert [i.key for i in kv.list(app, "c", principal=writer, prefix="a%")] == ["a%1"]
    assert [i.key for i in kv.list(app, "c", principal=writer, prefix="a_")] == ["a_2"]
    assert [i.key for i in kv.list(app, "c", principal=writer, limit=2)] == ["A", "a%1"]


def test_apps_have_separate_stores(app, writer):
    other = AppFactory()
    MembershipFactory(app=other, principal=writer, role=Role.Developer.value)
    kv.put(app, "c", "k", "mine", principal=writer)
    assert kv.get(other, "c", "k", principal=writer) is None


def test_accepts_app_id_slug_and_django_user(app, writer):
    kv.put(app.id, "c", "k", 1, principal=writer.user)
    assert kv.get(app.slug, "c", "k", principal=writer).value == 1


def test_viewer_reads_but_cannot_write(app, writer):
    viewer = MembershipFactory(app=app, role=Role.Viewer.value).principal
    kv.put(app, "c", "k", 1, principal=writer)
    assert kv.get(app, "c", "k", principal=viewer).value == 1
    with pytest.raises(PermissionDenied, match=r"lacks KvWrite \(scope kv:write\)"):
        kv.put(app, "c", "k", 2, principal=viewer)
    with pytest.raises(PermissionDenied):
        kv.delete(app, "c", "k", principal=viewer)
    assert kv.get(app, "c", "k", principal=viewer).value == 1


def test_outsiders_and_inactive_users_get_nothing(app, writer):
    outsider = UserFactory().principal
    with pytest.raises(PermissionDenied, match="lacks KvRead"):
        kv.get(app, "c", "k", principal=outsider)
    with pytest.raises(PermissionDenied):
        kv.list(app, "c", principal=outsider)
    writer.user.is_active = False
    writer.user.save()
    with pytest.raises(PermissionDenied):
        kv.put(app, "c", "k", 1, principal=writer)


@pytest.mark.parametrize(
    ("collection", "key", "message"),
    [
        ("", "k", "Collection"),
        ("c" * 256, "k", "at most 255"),
        ("c", "", "Key"),
        ("c", "k" * 1025, "at most 1024"),
        ("c\x00", "k", "NUL"),
        ("c", "k\ud800", "unpaired surrogates"),
    ],
)
def test_bad_names_are_refused_with_what_is_allowed(app, writer, collection, key, message):
    with pytest.raises(ValidationError, match=message):
        kv.put(app, collection, key, 1, principal=writer)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("nan"), r"\$ is nan"),
        ({"x": float("inf")}, r"\$\.x is inf"),
        ({"x": "a\x00b"}, r"\$\.x contains a NUL"),
        (["\udc80"], r"\$\[0\] contains a NUL or unpaired surrogate"),
        ({"k\x00": 1}, "contains a NUL"),
        ({1: "a"}, "not a string"),
        ({"when": object()}, "not a JSON type"),
    ],
)
def test_values_postgresql_cannot_store_are_refused_saying_where(app, writer, value, message):
    with pytest.raises(ValidationError, match=message):
        kv.put(app, "c", "k", value, principal=writer)
    assert kv.get(app, "c", "k", principal=writer) is None


@pytest.mark.parametrize("limit", [True, "5", 1.5, 0, 1001, None])
def test_list_limit_must_be_an_integer_in_range(app, writer, limit):
    with pytest.raises(ValidationError, match="limit must be an integer from 1 to 1000"):
        kv.list(app, "c", principal=writer, limit=limit)


def test_list_prefix_with_nul_is_refused(app, writer):
    with pytest.raises(ValidationError, match="Prefix must not contain"):
        kv.list(app, "c", principal=writer, prefix="a\x00")


@pytest.mark.parametrize(
    ("slug", "message"),
    [
        ("my\x00app", "App slug must not contain the NUL character"),
        ("my\udc80app", "unpaired surrogates"),
        ("", "App slug must be a non-empty string"),
        ("a" * 64, "App slug is 64 characters long; at most 63"),
    ],
)
def test_an_app_slug_that_cannot_exist_is_refused_with_what_is_allowed(app, writer, slug, message):
    with pytest.raises(ValidationError, match=message):
        kv.get(slug, "c", "k", principal=writer)
    with pytest.raises(ValidationError, match=message):
        kv.put(slug, "c", "k", 1, principal=writer)
    # Refused before SQL: the transaction is still usable.
    assert kv.get(app.slug, "c", "k", principal=writer) is None


@pytest.mark.django_db(transaction=True)
def test_concurrent_first_writes_of_one_key_both_land():
    app = AppFactory()
    writer = MembershipFactory(app=app, role=Role.Developer.value).principal
    start = threading.Barrier(2)
    errors = []

    def write(n):
        try:
            start.wait(timeout=10)
            kv.put(app, "c", "same", n, principal=writer)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert kv.get(app, "c", "same", principal=writer).version == 2


@pytest.mark.parametrize("call", ["get", "delete"])
def test_a_missing_key_is_refused_like_any_bad_key(app, writer, call):
    with pytest.raises(ValidationError, match="Key must be a non-empty string"):
        getattr(kv, call)(app, "c", None, principal=writer)


def test_a_principal_that_is_neither_a_principal_nor_a_user_is_refused(app):
    with pytest.raises(ValidationError, match="principal must be a Principal or a Django user"):
        kv.get(app, "c", "k", principal="admin")


def test_a_conditional_put_writes_only_over_the_version_it_read(app, writer):
    created = kv.put(app, "c", "k", 1, principal=writer, expected_version=0)
    assert created.version == 1
    with pytest.raises(kv.VersionConflict, match="c/k is at version 1, expected not to exist"):
        kv.put(app, "c", "k", 2, principal=writer, expected_version=0)
    assert kv.put(app, "c", "k", 2, principal=writer, expected_version=1).version == 2
    with pytest.raises(kv.VersionConflict, match="is at version 2, expected to be at version 1"):
        kv.put(app, "c", "k", 3, principal=writer, expected_version=1)
    with pytest.raises(kv.VersionConflict, match="c/gone does not exist"):
        kv.put(app, "c", "gone", 3, principal=writer, expected_version=4)
    assert kv.get(app, "c", "k", principal=writer).value == 2, "nothing written on a conflict"
    with pytest.raises(ValidationError, match="expected_version"):
        kv.put(app, "c", "k", 3, principal=writer, expected_version=-1)


def test_a_conditional_delete_deletes_only_the_version_it_read(app, writer):
    kv.put(app, "c", "k", 1, principal=writer)
    kv.put(app, "c", "k", 2, principal=writer)
    with pytest.raises(kv.VersionConflict):
        kv.delete(app, "c", "k", principal=writer, expected_version=1)
    assert kv.delete(app, "c", "k", principal=writer, expected_version=2) is True
    assert kv.get(app, "c", "k", principal=writer) is None
