"""Which collection names a KV trigger's pattern matches, and which patterns are valid.

Patterns: ``*`` matches every collection; ``prefix:*`` matches names that
start with ``prefix:`` (the prefix is non-empty and has no ``*``); anything
else is an exact name without ``*``. Names may hold any character, ``%`` and
``_`` included: matching never goes through LIKE.

``list_matching_kv``'s SQL (triggers/sql/queries.sql) implements the same
rule; a property test holds the two together.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError

from triggers.kinds import KvOp

MAX_COLLECTION_LENGTH = 255  # characters, for names and patterns alike

PATTERN_RULE = (
    "allowed: '*' (every collection), 'prefix:*' (names starting with 'prefix:'; "
    "the prefix is not empty and has no '*'), or an exact collection name without '*'"
)
OPS_ALLOWED = ", ".join(KvOp.values)
# Messages admin's form fields give for their own checks too (they run before
# the model's): Django fills in %(limit_value)d and %(show_value)d.
EMPTY_PATTERN = f"Collection pattern must not be empty; {PATTERN_RULE}."
PATTERN_TOO_LONG = (
    "Collection pattern is %(show_value)d characters long; at most %(limit_value)d are allowed."
)
NUL_IN_PATTERN = "Collection pattern must not contain the NUL character."
NO_OPS = f"Choose at least one op; allowed: {OPS_ALLOWED}."


def collection_matches(pattern: str, name: str) -> bool:
    """Whether a valid `pattern` matches the collection `name`."""
    if pattern == "*":
        return True
    if pattern.endswith(":*"):
        return name.startswith(pattern[:-1])
    return pattern == name


def validate_collection_pattern(pattern: object) -> None:
    """Raise ValidationError, saying what is allowed, unless `pattern` is valid."""
    if not isinstance(pattern, str) or not pattern:
        raise ValidationError(EMPTY_PATTERN, code="invalid_pattern")
    if len(pattern) > MAX_COLLECTION_LENGTH:
        raise ValidationError(
            PATTERN_TOO_LONG,
            code="invalid_pattern",
            params={"show_value": len(pattern), "limit_value": MAX_COLLECTION_LENGTH},
        )
    if "\x00" in pattern:
        raise ValidationError(NUL_IN_PATTERN, code="invalid_pattern")
    if pattern == "*" or "*" not in pattern:
        return
    if pattern.endswith(":*") and len(pattern) > 2 and "*" not in pattern[:-2]:
        return
    raise ValidationError(
        f"{pattern!r} is not a valid collection pattern; {PATTERN_RULE}.", code="invalid_pattern"
    )


def validate_ops(ops: object) -> None:
    """A non-empty list of distinct KV ops."""
    if not ops:
        raise ValidationError(NO_OPS, code="invalid_ops")
    ops = list(ops)  # type: ignore[arg-type]
    unknown = [op for op in ops if op not in KvOp.values]
    if unknown:
        raise ValidationError(
            f"Unknown op(s) {', '.join(map(repr, unknown))}; allowed: {OPS_ALLOWED}.",
            code="invalid_ops",
        )
    if len(set(ops)) != len(ops):
        raise ValidationError(
            f"Each op may be listed once; allowed: {OPS_ALLOWED}.", code="invalid_ops"
        )
