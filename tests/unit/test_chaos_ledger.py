"""The chaos run's ledger: lost, duplicates and their explanations."""

from datetime import UTC, datetime, timedelta

from topology.chaos.ledger import Execution, Fault, tally

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_an_event_with_no_execution_is_lost_and_one_run_once_is_counted_once():
    produced = [("a", "s", "kv"), ("b", "s", "kv")]
    ledger = tally(produced, [Execution("a", "s", 1, at(1))], [])
    assert ledger.lost == [("b", "s")]
    assert ledger.executed_once == 1
    assert not ledger.ok


def test_a_duplicate_is_explained_by_a_fault_that_ended_the_first_runs_process():
    runs = [Execution("a", "s", 11, at(1)), Execution("a", "s", 12, at(9))]
    kill = Fault(at(3), "kill9_node", "kill -9 of node1", frozenset({11}))
    ledger = tally([("a", "s", "kv")], runs, [kill])
    assert (ledger.extra_runs, ledger.explained, ledger.unexplained) == (1, 1, [])
    assert ledger.duplicates_by_fault == {"kill9_node": 1}
    assert ledger.ok


def test_a_duplicate_is_not_explained_by_a_fault_elsewhere_or_at_another_time():
    runs = [Execution("a", "s", 11, at(10)), Execution("a", "s", 12, at(20))]
    faults = [
        Fault(at(15), "kill9_node", "another node", frozenset({99})),
        Fault(at(5), "pg_restart_fast", "long before the first run", db_wide=True),
        Fault(at(25), "terminate_sessions", "after the second run", db_wide=True),
    ]
    ledger = tally([("a", "s", "kv")], runs, faults)
    assert ledger.unexplained == [("a", "s")]
    assert not ledger.ok


def test_a_database_wide_fault_explains_any_duplicate_across_it():
    runs = [Execution("a", "s", 11, at(10)), Execution("a", "s", 12, at(20))]
    restart = Fault(at(12), "pg_restart_immediate", "restart", db_wide=True)
    assert tally([("a", "s", "kv")], runs, [restart]).explained == 1


def test_runs_of_events_never_confirmed_are_counted_apart():
    runs = [Execution("a", "s", 1, at(1)), Execution("x", "s", 1, at(1))]
    ledger = tally([("a", "s", "kv")], runs, [])
    assert ledger.unconfirmed_runs == 1
    assert ledger.ok
