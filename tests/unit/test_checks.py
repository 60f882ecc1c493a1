"""PICLOUD_* values are reported by Django system checks (picloud/checks.py),
and every command that runs checks stops on them."""

import os
import subprocess
import sys

import pytest
from django.apps import apps
from django.core import checks as django_checks

from picloud.checks import CHECK_IDS, check_environment, environment_errors, retired_warnings
from picloud.config import (
    CONFIGS,
    CircuitConfig,
    ConcurrencyConfig,
    DeliveryLogConfig,
    DispatcherConfig,
    EmailConfig,
    MetricsConfig,
    PoolerConfig,
    SandboxCeiling,
    StopConfig,
    SyncConfig,
    TriggerConfig,
    WebhookConfig,
)
from tests.helpers import PROJECT_DIR
from tests.unit.test_settings import NO_DATABASE, manage

# config -> (a bad variable of it, its value, what the message must say is allowed)
BAD = {
    SandboxCeiling: ("PICLOUD_SANDBOX_TIMEOUT_MS", "-1", "an integer from 1 to 900000"),
    TriggerConfig: ("PICLOUD_TRIGGER_RETRY_JITTER", "2", "a number from 0 to 1"),
    WebhookConfig: (
        "PICLOUD_WEBHOOK_ALLOW_HTTP",
        "maybe",
        "one of true, false, 1, 0, yes, no, on, off",
    ),
    DispatcherConfig: ("PICLOUD_DISPATCHER_MAX_IN_FLIGHT", "0", "an integer from 1 to 10000"),
    SyncConfig: ("PICLOUD_SYNC_DB_CONNECTIONS", "many", "an integer from 1 to 100"),
    StopConfig: ("PICLOUD_STOP_GRACE_MS", "1000", "an integer from 12000 to 3600000"),
    ConcurrencyConfig: ("PICLOUD_APP_MAX_CONCURRENCY", "0", "an integer from 1 to 100000"),
    CircuitConfig: ("PICLOUD_CIRCUIT_FAILURE_THRESHOLD", "0", "an integer from 1 to 10000"),
    MetricsConfig: (
        "PICLOUD_METRICS_PER_APP",
        "maybe",
        "one of true, false, 1, 0, yes, no, on, off",
    ),
    EmailConfig: ("PICLOUD_EMAIL_MAX_BYTES", "10", "an integer from 1024 to 104857600"),
    DeliveryLogConfig: (
        "PICLOUD_DELIVERY_LOG_FAILURE_RETENTION_DAYS",
        "0",
        "an integer from 1 to 3650",
    ),
    PoolerConfig: ("PICLOUD_DATABASE_POOLER", "session", "one of none, transaction"),
}


def test_every_config_has_its_own_check_id():
    assert set(CHECK_IDS) == set(CONFIGS) == set(BAD)
    assert sorted(CHECK_IDS.values()) == [
        *(f"picloud.E00{n}" for n in range(1, 10)),
        "picloud.E011",  # E010 is the user model's check (test_user_model_check.py)
        "picloud.E012",
        "picloud.E013",
    ]


def test_a_valid_environment_passes():
    assert environment_errors({}) == []


@pytest.mark.parametrize("cls", list(BAD), ids=lambda cls: cls.__name__)
def test_a_bad_value_is_an_error_with_the_configs_id_naming_variable_and_allowed(cls):
    name, value, allowed = BAD[cls]
    [error] = environment_errors({name: value})
    assert error.id == CHECK_IDS[cls]
    assert error.level == django_checks.ERROR
    assert error.msg.startswith(f"{name}={value!r} ")
    assert f"allowed is {allowed}" in error.msg
    assert "\n" not in error.msg


def test_every_bad_config_is_reported_at_once():
    env = {name: value for name, value, _ in BAD.values() if name != "PICLOUD_STOP_GRACE_MS"}
    ids = [error.id for error in environment_errors(env)]
    assert ids == [
        "picloud.E001",
        "picloud.E002",
        "picloud.E003",
        "picloud.E004",
        "picloud.E005",
        "picloud.E007",
        "picloud.E008",
        "picloud.E009",
        "picloud.E011",
        "picloud.E012",
        "picloud.E013",
    ]


def test_a_bad_dispatcher_grace_is_reported_once_not_again_for_the_stop_grace():
    errors = environment_errors({"PICLOUD_DISPATCHER_SHUTDOWN_GRACE_MS": "-5"})
    assert [error.id for error in errors] == ["picloud.E004"]


def test_the_registered_check_reads_the_environment(monkeypatch):
    monkeypatch.setenv("PICLOUD_MAX_TRIGGER_DEPTH", "deep")
    assert [e.id for e in check_environment()] == ["picloud.E002"]
    assert "picloud.E002" in [e.id for e in django_checks.run_checks()]


def test_the_check_only_runs_for_the_picloud_app(monkeypatch):
    monkeypatch.setenv("PICLOUD_MAX_TRIGGER_DEPTH", "deep")
    assert check_environment(app_configs=[apps.get_app_config("triggers")]) == []
    assert check_environment(app_configs=[apps.get_app_config("picloud")]) != []


@pytest.mark.parametrize(
    "command",
    [["check"], ["gc_dead_letters", "--dry-run"], ["qcluster", "--run-once"]],
    ids=lambda command: command[0],
)
def test_commands_that_run_checks_stop_with_the_check_id(command):
    # No database answers at this address: a command that got past its
    # checks would fail differently, not print the check.
    proc = manage(*command, PICLOUD_DISPATCHER_MAX_IN_FLIGHT="0")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert (
        "DispatcherConfig: (picloud.E004) PICLOUD_DISPATCHER_MAX_IN_FLIGHT='0' is out of range: "
        "allowed is an integer from 1 to 10000"
    ) in proc.stderr, proc.stderr


def test_a_command_without_checks_refuses_a_bad_value_at_first_use_with_one_line():
    use = "from picloud.config import SyncConfig; SyncConfig.current()"
    proc = manage("shell", "-c", use, PICLOUD_SYNC_TIMEOUT_MS="0")
    assert proc.returncode != 0
    assert proc.stderr.strip() == (
        "picloud: configuration error: PICLOUD_SYNC_TIMEOUT_MS='0' is out of range: "
        "allowed is an integer from 1 to 900000"
    ), proc.stderr


def test_a_web_server_process_refuses_a_bad_value_as_it_loads():
    # gunicorn runs no system checks: loading the WSGI application builds every config.
    proc = subprocess.run(
        [sys.executable, "-c", "import picloud.wsgi"],
        cwd=PROJECT_DIR,
        env=dict(
            os.environ,
            DATABASE_URL=NO_DATABASE,
            PICLOUD_DATABASE_ANNOUNCED="1",
            PICLOUD_SANDBOX_MAX_RESULT_BYTES="0",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "PICLOUD_SANDBOX_MAX_RESULT_BYTES='0' is out of range" in proc.stderr, proc.stderr


@pytest.mark.parametrize("command", ["qcluster", "runstack"])
def test_commands_that_start_processes_refuse_a_bad_value_without_checks(command):
    proc = manage(command, "--skip-checks", PICLOUD_TRIGGER_RETRY_JITTER="2")
    assert proc.returncode != 0
    assert proc.stderr.strip() == (
        "CommandError: PICLOUD_TRIGGER_RETRY_JITTER='2' is out of range: "
        "allowed is a number from 0 to 1"
    ), proc.stderr


def test_a_retired_variable_that_is_set_is_a_warning_naming_its_replacement():
    (warning,) = retired_warnings({"PICLOUD_DISPATCHER_CONCURRENCY": "4"})
    assert warning.id == "picloud.W001"
    assert "PICLOUD_DISPATCHER_CONCURRENCY" in warning.msg
    assert "PICLOUD_DISPATCHER_MAX_IN_FLIGHT" in warning.msg
    assert retired_warnings({"PICLOUD_DISPATCHER_CONCURRENCY": " "}) == []
