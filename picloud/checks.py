"""System checks of the PICLOUD_* configuration (`manage.py check`).

Django runs them before every command that asks for checks (`migrate`,
`qcluster`, `runstack`, `runserver`, ours), so a bad value stops the command
before anything starts, with one error per config naming the variable, the
value given and what is allowed. Settings read at import (picloud/settings.py)
are checked earlier still: they stop start-up before checks can run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from django.apps import AppConfig
from django.core import checks

from picloud.config import (
    CircuitConfig,
    ConcurrencyConfig,
    ConfigError,
    DeliveryLogConfig,
    DispatcherConfig,
    EmailConfig,
    EnvConfig,
    MetricsConfig,
    PoolerConfig,
    SandboxCeiling,
    StopConfig,
    SyncConfig,
    TriggerConfig,
    WebhookConfig,
)

# One id per config; docs/configuration.md lists them. Never reuse an id.
CHECK_IDS: dict[type[EnvConfig], str] = {
    SandboxCeiling: "picloud.E001",
    TriggerConfig: "picloud.E002",
    WebhookConfig: "picloud.E003",
    DispatcherConfig: "picloud.E004",
    SyncConfig: "picloud.E005",
    StopConfig: "picloud.E006",
    ConcurrencyConfig: "picloud.E007",
    CircuitConfig: "picloud.E008",
    MetricsConfig: "picloud.E009",
    EmailConfig: "picloud.E011",  # E010 is the user model check (domain/user_model.py)
    DeliveryLogConfig: "picloud.E012",
    PoolerConfig: "picloud.E013",
}
HINT = "Fix or unset the variable (unset means the default); see docs/configuration.md."
# Variables that no longer do anything, and what replaced them: setting one
# is a warning (picloud.W001), so an operator learns it is ignored.
RETIRED = {
    "PICLOUD_DISPATCHER_CONCURRENCY": (
        "dispatch loops are gone: each worker process keeps up to "
        "PICLOUD_DISPATCHER_MAX_IN_FLIGHT executions running on one event loop"
    ),
}


def environment_errors(env: Mapping[str, str]) -> list[checks.Error]:
    """One error for each config that `env` cannot build (its first bad variable)."""
    errors = []
    failed = set()
    for cls, check_id in CHECK_IDS.items():
        if cls is StopConfig and DispatcherConfig in failed:
            continue  # its bounds come from the dispatcher's grace, already reported
        try:
            cls.from_env(env)
        except ConfigError as exc:
            failed.add(cls)
            errors.append(checks.Error(str(exc), hint=HINT, obj=cls.__name__, id=check_id))
    return errors


def retired_warnings(env: Mapping[str, str]) -> list[checks.Warning]:
    return [
        checks.Warning(
            f"{name} is set but no longer has any effect: {why}",
            hint="Unset it; see docs/configuration.md.",
            id="picloud.W001",
        )
        for name, why in RETIRED.items()
        if env.get(name, "").strip()
    ]


@checks.register()
def check_environment(
    app_configs: list[AppConfig] | None = None, **kwargs: object
) -> list[checks.CheckMessage]:
    if app_configs is not None and not any(a.label == "picloud" for a in app_configs):
        return []
    return [*environment_errors(os.environ), *retired_warnings(os.environ)]
