"""Histograms kept as counters (outbox/dispatch/metrics.py)."""

import pytest

from outbox.dispatch.metrics import CLAIM_SECONDS, COUNTERS, Counters, Histogram

SMALL = Histogram("h", (0.01, 0.1))


def test_an_observation_counts_in_every_bucket_at_or_above_it():
    assert SMALL.increments(0.01) == {
        "h_count": 1,
        "h_sum_us": 10_000,
        "h_le_0.01": 1,
        "h_le_0.1": 1,
    }
    assert SMALL.increments(0.05) == {"h_count": 1, "h_sum_us": 50_000, "h_le_0.1": 1}
    assert SMALL.increments(3.0) == {"h_count": 1, "h_sum_us": 3_000_000}


def test_a_clock_that_stepped_back_counts_as_zero():
    assert SMALL.increments(-0.5)["h_sum_us"] == 0


def test_the_stored_names_of_the_claim_histogram_are_stable():
    # Stored in dispatcher_counters and documented (docs/dispatcher.md, "Metrics").
    assert CLAIM_SECONDS.names == (
        "claim_seconds_count",
        "claim_seconds_sum_us",
        "claim_seconds_le_0.001",
        "claim_seconds_le_0.0025",
        "claim_seconds_le_0.005",
        "claim_seconds_le_0.01",
        "claim_seconds_le_0.025",
        "claim_seconds_le_0.05",
        "claim_seconds_le_0.1",
        "claim_seconds_le_0.25",
        "claim_seconds_le_1",
    )
    assert not set(CLAIM_SECONDS.names) & set(COUNTERS)


def test_counters_refuse_a_histogram_they_do_not_know():
    with pytest.raises(KeyError, match="unknown counters"):
        Counters().observe(SMALL, 0.01)
