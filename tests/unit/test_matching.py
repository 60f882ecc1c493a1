import pytest
from django.core.exceptions import ValidationError

from triggers.matching import collection_matches, validate_collection_pattern, validate_ops


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("*", "anything", True),
        ("*", "", True),
        ("orders:*", "orders:1", True),
        ("orders:*", "orders:", True),
        ("orders:*", "orders", False),
        ("orders:*", "ordersX:1", False),
        ("orders:*", "xorders:1", False),
        ("a:b:*", "a:b:c", True),
        ("a:b:*", "a:c", False),
        ("orders", "orders", True),
        ("orders", "orders:1", False),
        ("Orders", "orders", False),
        ("a%", "abc", False),
        ("a_c", "abc", False),
        ("a%:*", "a%:x", True),
    ],
)
def test_collection_matches(pattern, name, expected):
    assert collection_matches(pattern, name) is expected


@pytest.mark.parametrize(
    "pattern", ["*", "orders:*", "a:b:*", "::*", "orders", "a b%_é", "x" * 255]
)
def test_valid_patterns(pattern):
    validate_collection_pattern(pattern)


@pytest.mark.parametrize(
    "pattern", ["", "orders*", ":*", "*:*", "a*b", "**", "a:*:*", "x" * 256, "a\x00b", None]
)
def test_invalid_patterns_say_what_is_allowed(pattern):
    with pytest.raises(ValidationError) as excinfo:
        validate_collection_pattern(pattern)
    message = " ".join(excinfo.value.messages)
    assert "allowed" in message or "NUL" in message, message


def test_validate_ops():
    validate_ops(["insert", "delete"])
    for bad in ([], ["upsert"], ["insert", "insert"]):
        with pytest.raises(ValidationError, match="allowed: insert, update, delete"):
            validate_ops(bad)
