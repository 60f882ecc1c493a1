"""Typed configuration read from PICLOUD_* environment variables.

Each config is a frozen dataclass built by ``from_env(env)``, which reads the
given mapping (``os.environ`` by default) and validates every value. A bad
value raises ``ConfigError`` whose message is one line naming the variable,
the value given and what is allowed.

Code uses ``Config.current()``: this process's config, built from
``os.environ`` on first use and then kept, so no hot path (a KV write, a
request, a script save) parses the environment again. Bad values are reported
before that by the system checks of ``picloud/checks.py`` (``manage.py check``
and every command that runs checks). Tests replace a config with
``override(...)`` (docs/configuration.md); ``reset()`` forgets what was built.

An unset or empty variable means "use the default"; surrounding whitespace
is ignored. Numbers are plain ASCII: Python's ``int()`` and ``float()`` also
take ``5_000``, other scripts' digits (fullwidth, Arabic-Indic), exponents
and ``inf``, none of which an operator means.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Self, TypeVar

import psycopg
from django.core.exceptions import ImproperlyConfigured
from psycopg.conninfo import conninfo_to_dict

MS_PER_DAY = 86_400_000
MIB = 1024 * 1024


class ConfigError(ImproperlyConfigured):
    """A PICLOUD_* variable holds a value that is malformed or out of range."""


def _raw(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


_INTEGER = re.compile(r"-?[0-9]+")
_DECIMAL = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")  # no exponent, no inf/nan


def parse_int(text: str) -> int | None:
    """`text` as an integer when it is ASCII digits with an optional leading
    '-' (nothing around them), else None."""
    if not _INTEGER.fullmatch(text):
        return None
    try:
        return int(text, 10)
    except ValueError:  # more digits than Python converts (sys.int_info)
        return None


def parse_decimal(text: str) -> float | None:
    """`text` as a float when it is a plain ASCII decimal (``0.25``, ``.5``,
    ``-1``), else None."""
    return float(text) if _DECIMAL.fullmatch(text) else None


def env_int(env: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> int:
    """An integer variable in [low, high]."""
    allowed = f"an integer from {low} to {high}"
    raw = _raw(env, name)
    if raw is None:
        return default
    value = parse_int(raw)
    if value is None:
        raise ConfigError(f"{name}={raw!r} is not valid: allowed is {allowed}")
    if not low <= value <= high:
        raise ConfigError(f"{name}={raw!r} is out of range: allowed is {allowed}")
    return value


def env_float(
    env: Mapping[str, str], name: str, default: float, *, low: float, high: float
) -> float:
    """A decimal variable in [low, high]."""
    allowed = f"a number from {low:g} to {high:g}"
    raw = _raw(env, name)
    if raw is None:
        return default
    value = parse_decimal(raw)
    if value is None:
        raise ConfigError(f"{name}={raw!r} is not valid: allowed is {allowed}")
    if not low <= value <= high:
        raise ConfigError(f"{name}={raw!r} is out of range: allowed is {allowed}")
    return value


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    """A boolean variable: true/false, 1/0, yes/no, on/off."""
    raw = _raw(env, name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(
        f"{name}={raw!r} is not valid: allowed is one of true, false, 1, 0, yes, no, on, off"
    )


def env_choice(env: Mapping[str, str], name: str, default: str, *, choices: Sequence[str]) -> str:
    """One of `choices`, matched ignoring ASCII case; returns it as spelled in `choices`."""
    raw = _raw(env, name)
    if raw is None:
        return default
    # ASCII only: str.lower() folds some other letters (the Kelvin sign) into ASCII ones.
    if raw.isascii():
        for choice in choices:
            if raw.lower() == choice.lower():
                return choice
    raise ConfigError(f"{name}={raw!r} is not valid: allowed is one of {', '.join(choices)}")


C = TypeVar("C", bound="EnvConfig")


class EnvConfig:
    """A config built from PICLOUD_* variables, once per process (see ``current``)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        raise NotImplementedError

    @classmethod
    def current(cls) -> Self:
        """This process's config: built from os.environ on first use, then kept."""
        return _current(cls)


@dataclass(frozen=True)
class SandboxCeiling(EnvConfig):
    """Hard limits every script execution runs under, whatever its runtime."""

    timeout_ms: int = 30_000  # wall-clock limit of one execution
    max_payload_bytes: int = 1 * MIB  # event/request body, checked before sending
    max_result_bytes: int = 1 * MIB  # handler result / webhook response body

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SandboxCeiling:
        env = os.environ if env is None else env
        d = cls()
        return cls(
            timeout_ms=env_int(
                env, "PICLOUD_SANDBOX_TIMEOUT_MS", d.timeout_ms, low=1, high=15 * 60_000
            ),
            max_payload_bytes=env_int(
                env,
                "PICLOUD_SANDBOX_MAX_PAYLOAD_BYTES",
                d.max_payload_bytes,
                low=1,
                high=64 * MIB,
            ),
            max_result_bytes=env_int(
                env,
                "PICLOUD_SANDBOX_MAX_RESULT_BYTES",
                d.max_result_bytes,
                low=1,
                high=64 * MIB,
            ),
        )


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits base * 2**(n-1), capped."""

    max_attempts: int = 5  # total executions, the first one included
    base_delay_ms: int = 1_000
    max_delay_ms: int = 300_000
    jitter: float = 0.2  # fraction of the delay that is randomised, 0..1


@dataclass(frozen=True)
class TriggerConfig(EnvConfig):
    """Limits and retention of the triggers framework."""

    max_trigger_depth: int = 8  # deepest cascade of script-made writes that still fans out
    retry: RetryPolicy = RetryPolicy()
    dead_letter_retention_days: int = 30  # resolved dead letters older than this are swept
    abandoned_executions_retention_days: int = 7
    queue_retention_days: int = 4  # unconsumed queue messages older than this are swept (as SQS)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TriggerConfig:
        env = os.environ if env is None else env
        d = cls()
        r = d.retry
        base = env_int(
            env, "PICLOUD_TRIGGER_RETRY_BASE_DELAY_MS", r.base_delay_ms, low=1, high=MS_PER_DAY
        )
        max_delay = env_int(
            env, "PICLOUD_TRIGGER_RETRY_MAX_DELAY_MS", r.max_delay_ms, low=1, high=MS_PER_DAY
        )
        if max_delay < base:
            raise ConfigError(
                f"PICLOUD_TRIGGER_RETRY_MAX_DELAY_MS={str(max_delay)!r} is out of range: allowed is "
                f"an integer from PICLOUD_TRIGGER_RETRY_BASE_DELAY_MS ({base}) to {MS_PER_DAY}"
            )
        retry = RetryPolicy(
            max_attempts=env_int(
                env, "PICLOUD_TRIGGER_RETRY_MAX_ATTEMPTS", r.max_attempts, low=1, high=100
            ),
            base_delay_ms=base,
            max_delay_ms=max_delay,
            jitter=env_float(env, "PICLOUD_TRIGGER_RETRY_JITTER", r.jitter, low=0.0, high=1.0),
        )
        return cls(
            max_trigger_depth=env_int(
                env, "PICLOUD_MAX_TRIGGER_DEPTH", d.max_trigger_depth, low=0, high=100
            ),
            retry=retry,
            dead_letter_retention_days=env_int(
                env,
                "PICLOUD_DEAD_LETTER_RETENTION_DAYS",
                d.dead_letter_retention_days,
                low=1,
                high=3650,
            ),
            abandoned_executions_retention_days=env_int(
                env,
                "PICLOUD_ABANDONED_EXECUTIONS_RETENTION_DAYS",
                d.abandoned_executions_retention_days,
                low=1,
                high=3650,
            ),
            queue_retention_days=env_int(
                env, "PICLOUD_QUEUE_RETENTION_DAYS", d.queue_retention_days, low=1, high=3650
            ),
        )


@dataclass(frozen=True)
class WebhookConfig(EnvConfig):
    """Where webhook scripts may send requests."""

    # Only globally routable unicast destinations are allowed unless this is
    # set (a guard against requests into our network and to cloud metadata
    # services; picloud/runtime/webhooks.py has the refused blocks).
    allow_private: bool = False
    # Plain-HTTP URLs are refused unless this is set.
    allow_http: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WebhookConfig:
        env = os.environ if env is None else env
        return cls(
            allow_private=env_bool(env, "PICLOUD_WEBHOOK_ALLOW_PRIVATE", False),
            allow_http=env_bool(env, "PICLOUD_WEBHOOK_ALLOW_HTTP", False),
        )


@dataclass(frozen=True)
class DispatcherConfig(EnvConfig):
    """How each django-q2 worker process dispatches outbox rows."""

    enabled: bool = True  # false: this cluster runs tasks and schedules only
    # Executions one worker process keeps running at once (webhooks and async
    # handlers wait on the event loop; they cost no thread or connection).
    max_in_flight: int = 100
    # Threads that run plain (def) Python handlers in each worker process;
    # each may hold a database connection while its handler uses the KV store.
    handler_threads: int = 2
    max_batch: int = 100  # rows one claim takes at most
    lease_margin_ms: int = 30_000  # how much a claim's lease outlasts the sandbox timeout
    shutdown_grace_ms: int = 10_000  # how long stopping waits for running scripts

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DispatcherConfig:
        env = os.environ if env is None else env
        d = cls()
        return cls(
            enabled=env_bool(env, "PICLOUD_DISPATCHER_ENABLED", d.enabled),
            max_in_flight=env_int(
                env, "PICLOUD_DISPATCHER_MAX_IN_FLIGHT", d.max_in_flight, low=1, high=10_000
            ),
            handler_threads=env_int(
                env, "PICLOUD_DISPATCHER_HANDLER_THREADS", d.handler_threads, low=1, high=64
            ),
            max_batch=env_int(env, "PICLOUD_DISPATCHER_MAX_BATCH", d.max_batch, low=1, high=1000),
            lease_margin_ms=env_int(
                env,
                "PICLOUD_DISPATCHER_LEASE_MARGIN_MS",
                d.lease_margin_ms,
                low=100,
                high=3_600_000,
            ),
            shutdown_grace_ms=env_int(
                env,
                "PICLOUD_DISPATCHER_SHUTDOWN_GRACE_MS",
                d.shutdown_grace_ms,
                low=0,
                high=600_000,
            ),
        )


@dataclass(frozen=True)
class SyncConfig(EnvConfig):
    """Synchronous invocation over HTTP (outbox/sync/invoke.py)."""

    # How long a caller waits for the result; the effective wait is also
    # capped by the sandbox timeout (``wait_ms``).
    timeout_ms: int = 30_000
    # PostgreSQL connections a web process uses for invocations, whatever
    # the number of waiting requests (plus one that listens for replies).
    db_connections: int = 4

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SyncConfig:
        env = os.environ if env is None else env
        d = cls()
        return cls(
            timeout_ms=env_int(
                env, "PICLOUD_SYNC_TIMEOUT_MS", d.timeout_ms, low=1, high=15 * 60_000
            ),
            db_connections=env_int(
                env, "PICLOUD_SYNC_DB_CONNECTIONS", d.db_connections, low=1, high=100
            ),
        )

    def wait_ms(self, ceiling: SandboxCeiling) -> int:
        """How long a caller waits at most: no longer than a script may run."""
        return min(self.timeout_ms, ceiling.timeout_ms)


@dataclass(frozen=True)
class ConcurrencyConfig(EnvConfig):
    """How many executions may be in flight at once, per tenant."""

    # Rows of one app in flight at most, for apps with no cap of their own
    # (a superuser's platform setting in admin overrides it). Half the 200
    # slots of a default cluster (2 worker processes x 100 in flight): an app
    # whose endpoint hangs holds at most half of them, the rest keep serving
    # the other apps (benchmarks/fairness.py).
    app_max_concurrency: int = 100

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ConcurrencyConfig:
        env = os.environ if env is None else env
        d = cls()
        return cls(
            app_max_concurrency=env_int(
                env, "PICLOUD_APP_MAX_CONCURRENCY", d.app_max_concurrency, low=1, high=100_000
            ),
        )


@dataclass(frozen=True)
class CircuitConfig(EnvConfig):
    """The circuit breaker of each script (docs/dispatcher.md, "Failing endpoints")."""

    # Consecutive retryable failures (timeouts included) that open a script's circuit.
    failure_threshold: int = 5
    # The first cool-down; each failed probe doubles it, up to the max.
    cooldown_ms: int = 10_000
    max_cooldown_ms: int = 600_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CircuitConfig:
        env = os.environ if env is None else env
        d = cls()
        cooldown = env_int(
            env, "PICLOUD_CIRCUIT_COOLDOWN_MS", d.cooldown_ms, low=100, high=MS_PER_DAY
        )
        max_cooldown = env_int(
            env, "PICLOUD_CIRCUIT_MAX_COOLDOWN_MS", d.max_cooldown_ms, low=100, high=MS_PER_DAY
        )
        if max_cooldown < cooldown:
            raise ConfigError(
                f"PICLOUD_CIRCUIT_MAX_COOLDOWN_MS={max_cooldown} is below "
                f"PICLOUD_CIRCUIT_COOLDOWN_MS={cooldown}: allowed is a value at least the "
                "first cool-down"
            )
        return cls(
            failure_threshold=env_int(
                env,
                "PICLOUD_CIRCUIT_FAILURE_THRESHOLD",
                d.failure_threshold,
                low=1,
                high=10_000,
            ),
            cooldown_ms=cooldown,
            max_cooldown_ms=max_cooldown,
        )


@dataclass(frozen=True)
class MetricsConfig(EnvConfig):
    """What `GET /metrics` exposes beyond cluster-wide totals."""

    # Per-app series (the busiest apps' backlog and rows in flight) carry app
    # slugs and volumes, and /metrics has no per-app authorization: whoever
    # can scrape it would learn which tenants exist and how busy they are.
    # Off unless the operator decides the scrape path may see that.
    per_app: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MetricsConfig:
        env = os.environ if env is None else env
        return cls(per_app=env_bool(env, "PICLOUD_METRICS_PER_APP", cls().per_app))


# A host name label: what an app's slug and each part of the mail domain must be.
_DOMAIN = re.compile(
    r"(?=.{1,200}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+"
)
_SMTP_ADDR = re.compile(
    r"(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>[0-9]{1,5})"
)


def env_smtp_addr(env: Mapping[str, str], name: str, default: tuple[str, int]) -> tuple[str, int]:
    """host:port ([v6]:port for IPv6); port 1 to 65535."""
    raw = _raw(env, name)
    if raw is None:
        return default
    match = _SMTP_ADDR.fullmatch(raw)
    port = int(match["port"]) if match else 0
    if not match or not 1 <= port <= 65535:
        raise ConfigError(
            f"{name}={raw!r} is not an address to listen on: allowed is host:port "
            "(e.g. 127.0.0.1:2525, or [::1]:2525 for IPv6), port 1 to 65535"
        )
    return (match["v6"] or match["host"], port)


@dataclass(frozen=True)
class EmailConfig(EnvConfig):
    """The SMTP receiver, and mail the apps' scripts send (docs/email.md)."""

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525
    # Mail to <local part>@<app slug>.<domain> reaches the app.
    domain: str = "picloud.localhost"
    max_bytes: int = 10 * MIB  # one message as received, headers included
    retention_days: int = 7  # inbound_emails kept this long
    send_per_hour: int = 100  # messages each app's scripts may send per clock hour
    # STARTTLS is offered when both are set (PEM files).
    tls_cert: str | None = None
    tls_key: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EmailConfig:
        env = os.environ if env is None else env
        d = cls()
        host, port = env_smtp_addr(env, "PICLOUD_SMTP_ADDR", (d.smtp_host, d.smtp_port))
        domain = _raw(env, "PICLOUD_EMAIL_DOMAIN") or d.domain
        if not _DOMAIN.fullmatch(domain):
            raise ConfigError(
                f"PICLOUD_EMAIL_DOMAIN={domain!r} is not a mail domain: allowed is a lower-case "
                "host name of at least two labels (letters, digits, '-'), e.g. mail.example.com"
            )
        cert, key = _raw(env, "PICLOUD_SMTP_TLS_CERT"), _raw(env, "PICLOUD_SMTP_TLS_KEY")
        if (cert is None) != (key is None):
            raise ConfigError(
                "PICLOUD_SMTP_TLS_CERT and PICLOUD_SMTP_TLS_KEY go together: set both (PEM "
                "files of the certificate and its key) to offer STARTTLS, or neither"
            )
        return cls(
            smtp_host=host,
            smtp_port=port,
            domain=domain,
            max_bytes=env_int(
                env, "PICLOUD_EMAIL_MAX_BYTES", d.max_bytes, low=1024, high=100 * MIB
            ),
            retention_days=env_int(
                env, "PICLOUD_EMAIL_RETENTION_DAYS", d.retention_days, low=1, high=3650
            ),
            send_per_hour=env_int(
                env, "PICLOUD_EMAIL_SEND_PER_HOUR", d.send_per_hour, low=0, high=1_000_000
            ),
            tls_cert=cert,
            tls_key=key,
        )

    @property
    def smtp_addr(self) -> str:
        host = f"[{self.smtp_host}]" if ":" in self.smtp_host else self.smtp_host
        return f"{host}:{self.smtp_port}"


@dataclass(frozen=True)
class DeliveryLogConfig(EnvConfig):
    """The delivery log: one row per attempt (docs/operations.md)."""

    enabled: bool = True
    retention_days: int = 7  # successful attempts kept this long
    failure_retention_days: int = 30  # failed attempts kept this long

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DeliveryLogConfig:
        env = os.environ if env is None else env
        d = cls()
        retention = env_int(
            env, "PICLOUD_DELIVERY_LOG_RETENTION_DAYS", d.retention_days, low=1, high=3650
        )
        failures = env_int(
            env,
            "PICLOUD_DELIVERY_LOG_FAILURE_RETENTION_DAYS",
            d.failure_retention_days,
            low=1,
            high=3650,
        )
        return cls(
            enabled=env_bool(env, "PICLOUD_DELIVERY_LOG", d.enabled),
            retention_days=retention,
            failure_retention_days=failures,
        )


POOLERS = ("none", "transaction")
LISTEN_URL_FORM = "postgres://user:pass@host:port/db"


def env_listen_url(env: Mapping[str, str], name: str) -> str | None:
    """A PostgreSQL URL naming a database, or None when unset."""
    raw = _raw(env, name)
    if raw is None:
        return None
    # Neither message shows the value: it may hold a password.
    if not raw.startswith(("postgres://", "postgresql://")):
        raise ConfigError(
            f"{name} is not valid (not a postgres:// URL): allowed is {LISTEN_URL_FORM}"
        )
    try:
        params = conninfo_to_dict(raw)
    except psycopg.Error:
        raise ConfigError(
            f"{name} is not valid (malformed): allowed is {LISTEN_URL_FORM}"
        ) from None
    if not params.get("dbname"):
        raise ConfigError(
            f"{name} is not valid (it names no database): allowed is {LISTEN_URL_FORM}"
        )
    return raw


@dataclass(frozen=True)
class PoolerConfig(EnvConfig):
    """What stands between PiCloud and PostgreSQL (docs/operations.md, "Connection pooling")."""

    # "transaction": DATABASE_URL reaches a transaction-mode pooler (PgBouncer),
    # which may run each transaction on another server connection, so nothing
    # may outlive a transaction: no session SET, no prepared statement, no LISTEN.
    pooler: str = "none"
    # A direct (not pooled) connection for LISTEN; None: DATABASE_URL's, unless
    # that goes through a transaction pooler, then nobody listens and waiters poll.
    listen_url: str | None = None
    # How often waiters look for themselves when nobody listens.
    poll_ms: int = 200

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PoolerConfig:
        env = os.environ if env is None else env
        d = cls()
        return cls(
            pooler=env_choice(env, "PICLOUD_DATABASE_POOLER", d.pooler, choices=POOLERS),
            listen_url=env_listen_url(env, "PICLOUD_LISTEN_DATABASE_URL"),
            poll_ms=env_int(env, "PICLOUD_LISTEN_POLL_MS", d.poll_ms, low=10, high=60_000),
        )

    @property
    def session_state_kept(self) -> bool:
        """Whether a session setting made on a connection stays with it (no
        transaction pooler in between)."""
        return self.pooler != "transaction"

    @property
    def listens(self) -> bool:
        """Whether LISTEN/NOTIFY wakes waiters (else they poll every poll_ms)."""
        return self.listen_url is not None or self.session_state_kept


# Around the dispatcher's own stop, the cluster wakes its guard, stops the
# pusher and the monitor, and each worker closes its connections: about a
# second, more on a loaded machine. The floor keeps a stop grace from cutting
# the dispatcher's short; the default leaves room to spare.
STOP_MIN_MARGIN_MS = 2_000
STOP_DEFAULT_MARGIN_MS = 10_000


@dataclass(frozen=True)
class StopConfig(EnvConfig):
    """How long `qcluster` and `runstack` wait for an orderly stop before SIGKILL."""

    grace_ms: int = 20_000  # the dispatcher's default grace + STOP_DEFAULT_MARGIN_MS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StopConfig:
        env = os.environ if env is None else env
        dispatcher_grace_ms = DispatcherConfig.from_env(env).shutdown_grace_ms
        try:
            grace_ms = env_int(
                env,
                "PICLOUD_STOP_GRACE_MS",
                dispatcher_grace_ms + STOP_DEFAULT_MARGIN_MS,
                low=dispatcher_grace_ms + STOP_MIN_MARGIN_MS,
                high=3_600_000,
            )
        except ConfigError as exc:
            raise ConfigError(
                f"{exc} (at least PICLOUD_DISPATCHER_SHUTDOWN_GRACE_MS + {STOP_MIN_MARGIN_MS})"
            ) from None
        return cls(grace_ms=grace_ms)

    @property
    def grace(self) -> float:
        return self.grace_ms / 1000  # seconds


CONFIGS: tuple[type[EnvConfig], ...] = (
    SandboxCeiling,
    TriggerConfig,
    WebhookConfig,
    DispatcherConfig,
    SyncConfig,
    StopConfig,
    ConcurrencyConfig,
    CircuitConfig,
    MetricsConfig,
    EmailConfig,
    DeliveryLogConfig,
    PoolerConfig,
)

# The configs this process built (or a test put in place), by class. Read
# without the lock (a dict lookup is atomic); built under it, so threads that
# start together build each config once.
_built: dict[type[EnvConfig], EnvConfig] = {}
_lock = threading.Lock()


def _current(cls: type[C]) -> C:
    config = _built.get(cls)
    if config is None:
        with _lock:
            config = _built.get(cls)
            if config is None:
                # A bad value raises here, at every use until it is fixed: the
                # system checks report it first wherever they run.
                config = _built[cls] = cls.from_env()
    return config  # type: ignore[return-value]


def build_all() -> None:
    """Build every config now; raises ConfigError on the first bad variable.

    For processes that run no system checks (a WSGI server), so a bad value
    stops them at start-up rather than failing requests.
    """
    for cls in CONFIGS:
        cls.current()


@contextmanager
def override(*configs: EnvConfig) -> Iterator[None]:
    """Use `configs` as this process's configs (every thread) inside the block.

    The one way tests change configuration (docs/configuration.md): setting
    PICLOUD_* variables has no effect once a config was built.
    """
    with _lock:
        saved = {type(c): _built.get(type(c)) for c in configs}
        for config in configs:
            _built[type(config)] = config
    try:
        yield
    finally:
        with _lock:
            for cls, previous in saved.items():
                if previous is None:
                    _built.pop(cls, None)
                else:
                    _built[cls] = previous


def reset() -> None:
    """Forget every built config: the next use reads os.environ again."""
    with _lock:
        _built.clear()
