"""Outside data made fit for PostgreSQL before it reaches SQL.

PostgreSQL refuses three things Python happily carries: the NUL character
(in text and in jsonb), unpaired UTF-16 surrogates (they have no UTF-8
form), and the non-finite numbers NaN and Infinity (not JSON). One such
value in one row used to fail the statement that settled a whole batch, so
everything that comes from outside (request bodies, KV values, handler
results, webhook answers, error messages) passes through here first:

- ``check_json`` refuses a value we would store as the caller gave it
  (input: the caller must learn what is wrong, not find it silently changed);
- ``clean_json`` and ``storable_text`` repair what a script or an endpoint
  returned (output: the outcome must be kept, and the change is said).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from picloud.text import truncate

MAX_ERROR_CHARS = 2_000  # one error message, as stored (an outbox attempt, a dead letter)
MAX_JSON_DEPTH = 100  # nesting levels of arrays and objects in a stored JSON value
# Python writes no longer integer as text (sys.get_int_max_str_digits), so
# such a value could never be written as JSON.
MAX_INT_DIGITS = 4_300
MAX_INT_BITS = int(MAX_INT_DIGITS * math.log2(10))
REPLACEMENT = "\ufffd"  # what an unstorable character becomes

# NUL and every surrogate code point: a str holding one has no UTF-8 form
# PostgreSQL accepts (a surrogate pair stored as two code points included).
_UNSTORABLE_CHARS = re.compile("[\x00\ud800-\udfff]")


class Unstorable(ValueError):
    """A value that PostgreSQL cannot store; the message says what and where."""


def is_storable_text(text: str) -> bool:
    """True when PostgreSQL stores `text` as it is (no NUL, no surrogate)."""
    # Fast path first: most text is ASCII without NUL.
    if text.isascii():
        return "\x00" not in text
    return _UNSTORABLE_CHARS.search(text) is None


def clean_text(text: str) -> tuple[str, int]:
    """`text` with NUL and surrogate characters replaced by U+FFFD, and how many were."""
    if is_storable_text(text):
        return text, 0
    return _UNSTORABLE_CHARS.subn(REPLACEMENT, text)


def storable_text(text: str, limit: int) -> str:
    """`text` cut to `limit` characters with unstorable characters replaced,
    saying so at the end (the note is never cut off)."""
    cleaned, replaced = clean_text(text)
    if not replaced:
        return truncate(cleaned, limit)
    note = f" [{replaced} NUL or unpaired surrogate character(s) replaced with U+FFFD]"
    return truncate(cleaned, max(1, limit - len(note))) + note


def _where(path: list[str | int]) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def _walk(value: Any, fix_text: bool) -> tuple[Any, int]:
    """(value with text fixed, replacements) or Unstorable. Iterative, so a
    deep value cannot exhaust Python's stack before its depth is judged."""
    replaced = 0

    def text(s: str, path: list) -> str:
        nonlocal replaced
        if is_storable_text(s):
            return s
        if not fix_text:
            raise Unstorable(
                f"{_where(path)} contains a NUL or unpaired surrogate character, "
                "which cannot be stored"
            )
        s, n = clean_text(s)
        replaced += n
        return s

    def leaf(v: Any, path: list) -> Any:
        if v is None or isinstance(v, bool):
            return v
        if isinstance(v, int):
            if v.bit_length() > MAX_INT_BITS:
                raise Unstorable(
                    f"{_where(path)} is an integer of more than {MAX_INT_DIGITS} digits"
                )
            return v
        if isinstance(v, float):
            if not math.isfinite(v):
                raise Unstorable(f"{_where(path)} is {v!r}; JSON allows only finite numbers")
            return v
        if isinstance(v, str):
            return text(v, path)
        raise Unstorable(f"{_where(path)} is a {type(v).__name__}, which is not a JSON type")

    root: list[Any] = [None]
    # (container to read, parent to fill, key in the parent, path, depth)
    stack: list[tuple[Any, Any, Any, list, int]] = [(value, root, 0, [], 0)]
    while stack:
        item, parent, key, path, depth = stack.pop()
        if isinstance(item, dict):
            if depth >= MAX_JSON_DEPTH:
                raise Unstorable(f"{_where(path)} is nested deeper than {MAX_JSON_DEPTH} levels")
            out: dict[str, Any] = {}
            parent[key] = out
            for k, v in item.items():
                if not isinstance(k, str):
                    raise Unstorable(f"{_where(path)} has a key that is not a string: {k!r}")
                k2 = text(k, path)
                out[k2] = None  # the key's place now, so the order is kept
                stack.append((v, out, k2, [*path, k2], depth + 1))
        elif isinstance(item, list | tuple):
            if depth >= MAX_JSON_DEPTH:
                raise Unstorable(f"{_where(path)} is nested deeper than {MAX_JSON_DEPTH} levels")
            items: list[Any] = [None] * len(item)
            parent[key] = items
            for i, v in enumerate(item):
                stack.append((v, items, i, [*path, i], depth + 1))
        else:
            parent[key] = leaf(item, path)
    return root[0], replaced


def parse_json(data: str | bytes) -> Any:
    """JSON text parsed strictly: ValueError for what is not JSON (NaN and
    Infinity included), numbers out of a float's range, or nesting too deep
    for the parser. The value may still hold unstorable text (check_json)."""
    try:
        return json.loads(data, parse_constant=_not_json, parse_float=_finite)
    except RecursionError:
        raise Unstorable(f"nested deeper than {MAX_JSON_DEPTH} levels") from None


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def check_json(value: Any) -> None:
    """Unstorable, naming the first problem and where it is ($.a[0].b), unless
    `value` is JSON that PostgreSQL stores as given: dicts with string keys,
    lists, strings, finite numbers, booleans and None, nested at most
    MAX_JSON_DEPTH levels, no NUL or unpaired surrogate characters."""
    _walk(value, fix_text=False)


def clean_json(value: Any) -> tuple[Any, int]:
    """`value` with unstorable characters replaced in every string and key,
    and how many were. Unstorable for what cannot be repaired without
    guessing (non-finite numbers, non-JSON types, too deep)."""
    if value is None or isinstance(value, bool):
        return value, 0  # the usual handler result: nothing to walk
    return _walk(value, fix_text=True)


def bounded_error(error: str) -> str:
    """An error message as it may be stored: at most MAX_ERROR_CHARS, with
    characters PostgreSQL refuses replaced (and said so)."""
    return storable_text(error, MAX_ERROR_CHARS)


def jsonb_text_size(value: Any) -> int:
    """Bytes of `value` as PostgreSQL writes a jsonb out (a space after each
    ':' and ','; UTF-8): what the sandbox's payload cap measures of a row."""
    return len(json.dumps(value, ensure_ascii=False, allow_nan=False).encode())
