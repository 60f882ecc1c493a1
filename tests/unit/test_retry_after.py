"""Retry-After, as an endpoint may send it (RFC 9110 10.2.3)."""

from datetime import UTC, datetime

import pytest

from picloud.runtime.webhooks import retry_after_seconds

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("Sun, 29 Nov 2026 12:01:30 GMT", 90.0),
        ("Sunday, 29-Nov-26 12:00:10 GMT", 10.0),  # the obsolete RFC 850 form
        ("Sun, 29 Nov 2026 11:00:00 GMT", 0.0),  # already past: no wait
        ("99999999999999999999", 1e9),  # absurd: bounded (the dispatcher caps it further)
    ],
)
def test_values_that_say_when(header, seconds):
    assert retry_after_seconds(header, NOW) == seconds


@pytest.mark.parametrize(
    "header", ["", "soon", "-5", "1.5", "١٢٠", "Sun, 99 Nov 2026 25:00:00 GMT"]
)
def test_values_that_say_nothing_usable(header):
    assert retry_after_seconds(header, NOW) is None
