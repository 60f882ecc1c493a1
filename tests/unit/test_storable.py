import math

import pytest

from picloud.db.storable import (
    MAX_JSON_DEPTH,
    Unstorable,
    check_json,
    clean_json,
    clean_text,
    storable_text,
)


def nested(levels):
    value = []
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -1.5, "text", "caf\u00e9 \U0001f600", {"a": [1, {"b": None}]}, nested(100)],
)
def test_storable_values_pass_unchanged(value):
    check_json(value)
    assert clean_json(value) == (value, 0)


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"a": "x\x00y"}, "$.a contains a NUL"),
        ({"a": ["ok", "\ud800"]}, "$.a[1] contains a NUL or unpaired surrogate"),
        ({"k\x00": 1}, "$ contains"),
        ({"n": math.nan}, "$.n is nan"),
        ([math.inf], "$[0] is inf"),
        ({"s": {1, 2}}, "$.s is a set"),
        ({1: "a"}, "key that is not a string"),
        (nested(MAX_JSON_DEPTH + 1), f"deeper than {MAX_JSON_DEPTH} levels"),
    ],
)
def test_unstorable_values_are_refused_saying_where(value, where):
    with pytest.raises(Unstorable, match=where.replace("[", r"\[").replace("$", r"\$")):
        check_json(value)


def test_a_value_nested_far_beyond_the_stack_is_judged_without_recursion():
    with pytest.raises(Unstorable, match="deeper"):
        check_json(nested(100_000))


def test_clean_json_replaces_characters_in_keys_and_strings_and_keeps_order():
    value = {"z": 1, "k\x00": ["a\x00b", "\ud83d\ude00"], "a": 2}
    cleaned, replaced = clean_json(value)
    assert cleaned == {"z": 1, "k\ufffd": ["a\ufffdb", "\ufffd\ufffd"], "a": 2}
    assert list(cleaned) == ["z", "k\ufffd", "a"]
    assert replaced == 4


def test_clean_json_refuses_what_it_cannot_repair():
    with pytest.raises(Unstorable):
        clean_json({"n": math.nan})


def test_clean_text_and_the_note():
    assert clean_text("plain") == ("plain", 0)
    assert clean_text("a\x00b\udc80") == ("a\ufffdb\ufffd", 2)
    text = storable_text("x" * 50 + "\x00", limit=80)
    assert len(text) <= 80 and "\x00" not in text
    assert text.endswith("[1 NUL or unpaired surrogate character(s) replaced with U+FFFD]")
    assert storable_text("ok", limit=80) == "ok"
    assert storable_text(storable_text("a\x00", 200), 200) == storable_text("a\x00", 200), (
        "idempotent: cleaning twice adds no second note"
    )


def test_an_integer_python_cannot_write_as_text_is_refused():
    check_json(10**4000)
    with pytest.raises(Unstorable, match=r"\$\.n is an integer of more than 4300 digits"):
        check_json({"n": 10**5000})
    with pytest.raises(Unstorable):
        clean_json([10**5000])
