import os
import subprocess
import sys
import threading

import pytest

from picloud import config
from picloud.config import (
    CircuitConfig,
    ConcurrencyConfig,
    ConfigError,
    EmailConfig,
    MetricsConfig,
    RetryPolicy,
    SandboxCeiling,
    TriggerConfig,
    WebhookConfig,
    env_bool,
    env_choice,
    env_float,
    env_int,
)
from tests.helpers import PROJECT_DIR

# variable -> (config class, attribute path, a valid value, its parsed form)
VARIABLES = {
    "PICLOUD_SANDBOX_TIMEOUT_MS": (SandboxCeiling, "timeout_ms", "1500", 1500),
    "PICLOUD_SANDBOX_MAX_PAYLOAD_BYTES": (SandboxCeiling, "max_payload_bytes", "2048", 2048),
    "PICLOUD_SANDBOX_MAX_RESULT_BYTES": (SandboxCeiling, "max_result_bytes", "4096", 4096),
    "PICLOUD_MAX_TRIGGER_DEPTH": (TriggerConfig, "max_trigger_depth", "3", 3),
    "PICLOUD_TRIGGER_RETRY_MAX_ATTEMPTS": (TriggerConfig, "retry.max_attempts", "9", 9),
    "PICLOUD_TRIGGER_RETRY_BASE_DELAY_MS": (TriggerConfig, "retry.base_delay_ms", "250", 250),
    "PICLOUD_TRIGGER_RETRY_MAX_DELAY_MS": (TriggerConfig, "retry.max_delay_ms", "60000", 60000),
    "PICLOUD_TRIGGER_RETRY_JITTER": (TriggerConfig, "retry.jitter", "0.5", 0.5),
    "PICLOUD_DEAD_LETTER_RETENTION_DAYS": (TriggerConfig, "dead_letter_retention_days", "90", 90),
    "PICLOUD_QUEUE_RETENTION_DAYS": (TriggerConfig, "queue_retention_days", "14", 14),
    "PICLOUD_ABANDONED_EXECUTIONS_RETENTION_DAYS": (
        TriggerConfig,
        "abandoned_executions_retention_days",
        "14",
        14,
    ),
    "PICLOUD_APP_MAX_CONCURRENCY": (ConcurrencyConfig, "app_max_concurrency", "40", 40),
    "PICLOUD_CIRCUIT_FAILURE_THRESHOLD": (CircuitConfig, "failure_threshold", "3", 3),
    "PICLOUD_CIRCUIT_COOLDOWN_MS": (CircuitConfig, "cooldown_ms", "2000", 2000),
    "PICLOUD_CIRCUIT_MAX_COOLDOWN_MS": (CircuitConfig, "max_cooldown_ms", "20000", 20000),
    "PICLOUD_METRICS_PER_APP": (MetricsConfig, "per_app", "yes", True),
    "PICLOUD_EMAIL_DOMAIN": (EmailConfig, "domain", "mx.example.com", "mx.example.com"),
    "PICLOUD_EMAIL_MAX_BYTES": (EmailConfig, "max_bytes", "2048", 2048),
    "PICLOUD_EMAIL_RETENTION_DAYS": (EmailConfig, "retention_days", "30", 30),
    "PICLOUD_EMAIL_SEND_PER_HOUR": (EmailConfig, "send_per_hour", "500", 500),
    "PICLOUD_SMTP_ADDR": (EmailConfig, "smtp_port", "127.0.0.1:25", 25),
}

# Values each variable must refuse: malformed, negative, out of range.
BAD_VALUES = {
    "PICLOUD_SANDBOX_TIMEOUT_MS": ["abc", "-1", "0", "1.5", "900001"],
    "PICLOUD_SANDBOX_MAX_PAYLOAD_BYTES": ["1MB", "-5", "0", "67108865"],
    "PICLOUD_SANDBOX_MAX_RESULT_BYTES": ["x", "-5", "0", "67108865"],
    "PICLOUD_MAX_TRIGGER_DEPTH": ["deep", "-1", "101", "2.0"],
    "PICLOUD_TRIGGER_RETRY_MAX_ATTEMPTS": ["many", "-3", "0", "101"],
    "PICLOUD_TRIGGER_RETRY_BASE_DELAY_MS": ["1s", "-1", "0", "86400001"],
    "PICLOUD_TRIGGER_RETRY_MAX_DELAY_MS": ["5m", "-1", "0", "86400001"],
    "PICLOUD_TRIGGER_RETRY_JITTER": ["lots", "-0.1", "1.01", "nan"],
    "PICLOUD_DEAD_LETTER_RETENTION_DAYS": ["forever", "-1", "0", "3651"],
    "PICLOUD_QUEUE_RETENTION_DAYS": ["four", "-4", "0", "3651"],
    "PICLOUD_ABANDONED_EXECUTIONS_RETENTION_DAYS": ["week", "-7", "0", "3651"],
    "PICLOUD_APP_MAX_CONCURRENCY": ["lots", "-1", "0", "100001", "1e3"],
    "PICLOUD_CIRCUIT_FAILURE_THRESHOLD": ["few", "-1", "0", "10001"],
    "PICLOUD_CIRCUIT_COOLDOWN_MS": ["10s", "-1", "99", "86400001"],
    "PICLOUD_CIRCUIT_MAX_COOLDOWN_MS": ["1h", "-1", "99", "86400001"],
    "PICLOUD_METRICS_PER_APP": ["maybe", "2", "tenants"],
    "PICLOUD_EMAIL_DOMAIN": ["localhost", "UPPER.example", "a..b"],
    "PICLOUD_EMAIL_MAX_BYTES": ["10MB", "-1", "1023", "104857601"],
    "PICLOUD_EMAIL_RETENTION_DAYS": ["week", "-1", "0", "3651"],
    "PICLOUD_EMAIL_SEND_PER_HOUR": ["many", "-1", "1000001"],
    "PICLOUD_SMTP_ADDR": ["2525", "host:0", "host:65536", "host port"],
}


def _get(obj, path):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def test_defaults_are_documented_values():
    assert SandboxCeiling.from_env({}) == SandboxCeiling()
    config = TriggerConfig.from_env({})
    assert config == TriggerConfig()
    assert config.abandoned_executions_retention_days == 7
    assert config.retry == RetryPolicy(
        max_attempts=5, base_delay_ms=1000, max_delay_ms=300_000, jitter=0.2
    )


def test_the_default_app_cap_leaves_a_default_cluster_slots_for_other_apps():
    # 2 worker processes x 100 executions in flight each (docs/configuration.md).
    assert ConcurrencyConfig.from_env({}).app_max_concurrency == 100 == 2 * 100 // 2


def test_per_app_metrics_are_off_unless_asked_for():
    # They name tenants on an endpoint with no per-app authorization.
    assert MetricsConfig.from_env({}).per_app is False


def test_every_variable_has_bad_values_listed():
    assert set(BAD_VALUES) == set(VARIABLES)


@pytest.mark.parametrize("name", sorted(VARIABLES))
def test_valid_value_is_read(name):
    cls, path, raw, parsed = VARIABLES[name]
    assert _get(cls.from_env({name: raw}), path) == parsed


@pytest.mark.parametrize("name", sorted(VARIABLES))
def test_empty_value_means_default(name):
    cls, path, _, _ = VARIABLES[name]
    assert _get(cls.from_env({name: "  "}), path) == _get(cls(), path)


@pytest.mark.parametrize(
    ("name", "bad"), [(name, bad) for name, values in sorted(BAD_VALUES.items()) for bad in values]
)
def test_bad_value_names_variable_value_and_what_is_allowed(name, bad):
    cls = VARIABLES[name][0]
    with pytest.raises(ConfigError) as excinfo:
        cls.from_env({name: bad})
    message = str(excinfo.value)
    assert "\n" not in message, "the error must be one line"
    assert name in message, f"the error must name the variable: {message}"
    assert repr(bad) in message, f"the error must quote the value given: {message}"
    assert "allowed is" in message, f"the error must say what is allowed: {message}"


def test_max_delay_below_base_delay_is_refused():
    with pytest.raises(ConfigError, match=r"PICLOUD_TRIGGER_RETRY_MAX_DELAY_MS='100' .*BASE_DELAY"):
        TriggerConfig.from_env(
            {
                "PICLOUD_TRIGGER_RETRY_BASE_DELAY_MS": "500",
                "PICLOUD_TRIGGER_RETRY_MAX_DELAY_MS": "100",
            }
        )


def test_configs_are_frozen():
    with pytest.raises(AttributeError):
        SandboxCeiling().timeout_ms = 1  # type: ignore[misc]


def test_bad_value_stops_start_up_with_its_system_check():
    """`manage.py check` (any command that runs checks) refuses to start and
    names the check, the variable, the value and what is allowed."""
    env = dict(os.environ, PICLOUD_TRIGGER_RETRY_JITTER="2")
    proc = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0, "start-up must fail on a bad variable"
    error_lines = [line for line in proc.stderr.splitlines() if "picloud.E" in line]
    assert error_lines == [
        "TriggerConfig: (picloud.E002) PICLOUD_TRIGGER_RETRY_JITTER='2' is out of range: "
        "allowed is a number from 0 to 1"
    ], proc.stderr
    assert "Traceback" not in proc.stderr


# Python's int() and float() take underscores and other scripts' digits
# (fullwidth, Arabic-Indic); a setting takes plain ASCII only, so what an
# operator reads is what is used.
NOT_ASCII_NUMBERS = ["5_000", "\uff15", "\u0663", "²", "1 2", "+5", "0x10", "1e3", "\u0661\u0662"]


@pytest.mark.parametrize("raw", NOT_ASCII_NUMBERS)
def test_env_int_takes_plain_ascii_digits_only(raw):
    with pytest.raises(
        ConfigError, match=r"^X=.* is not valid: allowed is an integer from 0 to 10000$"
    ):
        env_int({"X": raw}, "X", 1, low=0, high=10_000)


@pytest.mark.parametrize(
    "raw", [*NOT_ASCII_NUMBERS, "0_5", "\u0660.\u0665", "0,5", "1e-1", "inf", "nan", "."]
)
def test_env_float_takes_plain_ascii_decimals_only(raw):
    with pytest.raises(
        ConfigError, match=r"^X=.* is not valid: allowed is a number from 0 to 10000$"
    ):
        env_float({"X": raw}, "X", 1.0, low=0.0, high=10_000.0)


@pytest.mark.parametrize(
    ("raw", "value"), [("7", 7), ("-3", -3), ("007", 7), (" 12 ", 12), ("\t42\n", 42)]
)
def test_env_int_reads_ascii_integers_around_whitespace(raw, value):
    assert env_int({"X": raw}, "X", 1, low=-10, high=100) == value


@pytest.mark.parametrize(
    ("raw", "value"),
    [("0.25", 0.25), (".5", 0.5), ("1", 1.0), ("1.", 1.0), (" 0.1 ", 0.1), ("-0.5", -0.5)],
)
def test_env_float_reads_plain_decimals(raw, value):
    assert env_float({"X": raw}, "X", 0.0, low=-1.0, high=1.0) == value


def test_env_int_with_thousands_of_digits_is_a_config_error():
    with pytest.raises(ConfigError, match="is not valid"):
        env_int({"X": "9" * 5000}, "X", 1, low=0, high=10)


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@pytest.mark.parametrize(
    ("raw", "value"), [("warning", "WARNING"), (" Debug ", "DEBUG"), ("", "INFO")]
)
def test_env_choice_is_case_insensitive_and_returns_the_choice(raw, value):
    assert env_choice({"LEVEL": raw}, "LEVEL", "INFO", choices=LEVELS) == value


@pytest.mark.parametrize("raw", ["bogus", "warn", "\u0131nfo", "INFO,DEBUG", "10"])
def test_env_choice_refuses_anything_else_naming_the_choices(raw):
    with pytest.raises(ConfigError) as excinfo:
        env_choice({"LEVEL": raw}, "LEVEL", "INFO", choices=LEVELS)
    assert str(excinfo.value) == (
        f"LEVEL={raw!r} is not valid: allowed is one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
    )


def test_env_bool_refuses_maybe():
    with pytest.raises(ConfigError, match="X='maybe' is not valid: allowed is one of true, false"):
        env_bool({"X": "maybe"}, "X", True)


# Built once per process: what code uses is `Config.current()`.


def test_current_is_built_from_the_environment_once_and_kept_until_reset(monkeypatch):
    monkeypatch.setenv("PICLOUD_SANDBOX_TIMEOUT_MS", "1500")
    assert SandboxCeiling.current().timeout_ms == 1500
    monkeypatch.setenv("PICLOUD_SANDBOX_TIMEOUT_MS", "2500")
    assert SandboxCeiling.current().timeout_ms == 1500, "the environment is read once"
    config.reset()
    assert SandboxCeiling.current().timeout_ms == 2500


def count_builds(monkeypatch, cls) -> list[None]:
    """A list that grows by one each time `cls.from_env` runs."""
    calls = []
    build = cls.from_env.__func__

    def counted(klass, env=None):
        calls.append(None)
        return build(klass, env)

    monkeypatch.setattr(cls, "from_env", classmethod(counted))
    return calls


def test_threads_that_start_together_build_a_config_once(monkeypatch):
    calls = count_builds(monkeypatch, TriggerConfig)
    threads = 8
    barrier = threading.Barrier(threads)
    seen = []

    def use():
        barrier.wait()
        seen.append(TriggerConfig.current())

    workers = [threading.Thread(target=use) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=10)
    assert len(seen) == threads and all(c is seen[0] for c in seen)
    assert len(calls) == 1


def test_a_bad_value_raises_at_use_until_it_is_fixed(monkeypatch):
    monkeypatch.setenv("PICLOUD_MAX_TRIGGER_DEPTH", "deep")
    for _ in range(2):
        with pytest.raises(ConfigError, match="PICLOUD_MAX_TRIGGER_DEPTH='deep'"):
            TriggerConfig.current()
    with pytest.raises(ConfigError, match="PICLOUD_MAX_TRIGGER_DEPTH='deep'"):
        config.build_all()
    monkeypatch.delenv("PICLOUD_MAX_TRIGGER_DEPTH")
    assert TriggerConfig.current() == TriggerConfig()


def test_override_holds_in_every_thread_and_ends_with_its_block():
    before = SandboxCeiling.current()
    with config.override(SandboxCeiling(timeout_ms=300), WebhookConfig(allow_http=True)):
        seen = []
        thread = threading.Thread(target=lambda: seen.append(SandboxCeiling.current()))
        thread.start()
        thread.join(timeout=10)
        assert seen == [SandboxCeiling(timeout_ms=300)]
        assert WebhookConfig.current().allow_http
        with config.override(SandboxCeiling(timeout_ms=400)):
            assert SandboxCeiling.current().timeout_ms == 400
        assert SandboxCeiling.current().timeout_ms == 300
    assert SandboxCeiling.current() is before
    assert WebhookConfig.current() == WebhookConfig.from_env()


def test_the_override_config_fixture_lasts_the_test(override_config, monkeypatch):
    monkeypatch.setenv("PICLOUD_SANDBOX_TIMEOUT_MS", "1500")
    override_config(SandboxCeiling(timeout_ms=300))
    assert SandboxCeiling.current().timeout_ms == 300, "an override beats the environment"
    override_config(TriggerConfig(max_trigger_depth=2))
    assert (SandboxCeiling.current().timeout_ms, TriggerConfig.current().max_trigger_depth) == (
        300,
        2,
    )


def test_the_circuit_s_max_cool_down_may_not_be_below_the_first():
    with pytest.raises(ConfigError, match="PICLOUD_CIRCUIT_MAX_COOLDOWN_MS=1000 is below"):
        CircuitConfig.from_env(
            {"PICLOUD_CIRCUIT_COOLDOWN_MS": "5000", "PICLOUD_CIRCUIT_MAX_COOLDOWN_MS": "1000"}
        )


class TestEmailConfig:
    def test_defaults(self):
        config = EmailConfig.from_env({})
        assert (config.smtp_addr, config.domain) == ("127.0.0.1:2525", "picloud.localhost")
        assert (config.max_bytes, config.retention_days, config.send_per_hour) == (
            10 * 1024 * 1024,
            7,
            100,
        )
        assert config.tls_cert is None

    @pytest.mark.parametrize(
        "value,addr",
        [("0.0.0.0:25", "0.0.0.0:25"), ("[::1]:2525", "[::1]:2525"), (" mx:26 ", "mx:26")],
    )
    def test_smtp_addr(self, value, addr):
        assert EmailConfig.from_env({"PICLOUD_SMTP_ADDR": value}).smtp_addr == addr

    @pytest.mark.parametrize("value", ["2525", "host:", "host:70000", "host:0", "::1:25", "a b:25"])
    def test_a_bad_smtp_addr_says_what_is_allowed(self, value):
        with pytest.raises(ConfigError, match=r"PICLOUD_SMTP_ADDR=.*allowed is host:port"):
            EmailConfig.from_env({"PICLOUD_SMTP_ADDR": value})

    @pytest.mark.parametrize("value", ["localhost", "Mail.Example.com", "a..b", "-a.b", "a_b.c"])
    def test_a_bad_domain_says_what_is_allowed(self, value):
        with pytest.raises(ConfigError, match=r"PICLOUD_EMAIL_DOMAIN=.*allowed is a lower-case"):
            EmailConfig.from_env({"PICLOUD_EMAIL_DOMAIN": value})

    def test_tls_needs_both_files(self):
        with pytest.raises(ConfigError, match="go together"):
            EmailConfig.from_env({"PICLOUD_SMTP_TLS_CERT": "cert.pem"})
        config = EmailConfig.from_env(
            {"PICLOUD_SMTP_TLS_CERT": "cert.pem", "PICLOUD_SMTP_TLS_KEY": "key.pem"}
        )
        assert (config.tls_cert, config.tls_key) == ("cert.pem", "key.pem")

    def test_a_send_cap_of_zero_turns_sending_off(self):
        assert EmailConfig.from_env({"PICLOUD_EMAIL_SEND_PER_HOUR": "0"}).send_per_hour == 0
