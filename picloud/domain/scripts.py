"""The rules of scripts: their runtimes, the Python handler registry, the shape of a webhook URL.

Django apps register handlers by name:

    from picloud.domain.scripts import handler

    @handler("orders.notify")
    def notify(event, ctx):
        ctx.kv.put("notifications", event["key"], {"sent": True})
        return {"ok": True}

A script of runtime ``python`` names a registered handler; the name is chosen
from this registry, never a dotted path typed into a form, so no form can make
the platform import or run arbitrary code. Each installed Django app's
``handlers`` module is imported at start-up (``autodiscover``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import models
from django.utils.module_loading import autodiscover_modules

from picloud.config import WebhookConfig

Handler = Callable[[dict[str, Any], Any], Any]


class Runtime(models.TextChoices):
    PYTHON = "python", "Python handler"
    WEBHOOK = "webhook", "Webhook"


_registry: dict[str, Handler] = {}
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


class PermanentError(Exception):
    """Raise from a handler for a failure that retrying cannot fix (no retries)."""


def handler(name: str) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler called `name`."""
    if not NAME.match(name):
        raise ImproperlyConfigured(
            f"handler name {name!r} is invalid: use 1-200 letters, digits, '.', '_' or '-'"
        )

    def register(fn: Handler) -> Handler:
        existing = _registry.get(name)
        if existing is not None and existing is not fn:
            raise ImproperlyConfigured(
                f"handler {name!r} is registered twice: {_where(existing)} and {_where(fn)}"
            )
        _registry[name] = fn
        return fn

    return register


def _where(fn: Callable) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def get_handler(name: str) -> Handler | None:
    return _registry.get(name)


def registered_names() -> list[str]:
    return sorted(_registry)


def unregister(name: str) -> None:
    """For tests that register throw-away handlers."""
    _registry.pop(name, None)


def autodiscover() -> None:
    autodiscover_modules("handlers")


def validate_runtime_fields(script) -> None:
    """The fields a script's runtime needs, with messages that say what is allowed."""
    if script.runtime == Runtime.PYTHON:
        if script.handler not in _registry:
            known = ", ".join(registered_names()) or "(none registered)"
            raise ValidationError(
                {"handler": f"Unknown handler {script.handler!r}; registered handlers: {known}."}
            )
        if script.webhook_url:
            raise ValidationError({"webhook_url": "Only webhook scripts have a URL."})
    elif script.runtime == Runtime.WEBHOOK:
        validate_webhook_url(script.webhook_url)
        if script.handler:
            raise ValidationError({"handler": "Only python scripts name a handler."})
    else:
        raise ValidationError(
            {"runtime": f"Unknown runtime {script.runtime!r}; allowed: python, webhook."}
        )


def validate_webhook_url(url: str, config: WebhookConfig | None = None) -> None:
    """Shape checks done when a script is saved (addresses are checked at send time)."""
    config = config or WebhookConfig.current()
    allowed = "https://host/path" + (" or http://host/path" if config.allow_http else "")
    parts = urlsplit(url or "")
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValidationError({"webhook_url": f"Enter an absolute URL; allowed: {allowed}."})
    if parts.scheme == "http" and not config.allow_http:
        raise ValidationError(
            {
                "webhook_url": "Plain http:// is refused; use https:// (or set "
                "PICLOUD_WEBHOOK_ALLOW_HTTP=true for development)."
            }
        )
    if parts.username or parts.password:
        raise ValidationError({"webhook_url": "Credentials in the URL are not allowed."})
    try:
        port = parts.port  # ValueError when not ASCII digits from 0 to 65535
    except ValueError:
        port = 0
    if port == 0:
        raise ValidationError(
            {"webhook_url": "The port must be a number from 1 to 65535 (or none)."}
        )
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValidationError(
            {
                "webhook_url": "The URL must not contain spaces or control characters; "
                "percent-encode them (%20)."
            }
        )
