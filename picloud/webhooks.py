"""The webhook runtime: a signed HTTPS POST to a guarded destination.

Signature (docs/webhooks.md shows a receiver's check):
    X-PiCloud-Timestamp: <unix seconds>
    X-PiCloud-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>
    X-PiCloud-Delivery:  <outbox id>

The destination's addresses are resolved once and checked; the connection
then goes to the checked address (no second lookup a DNS answer could change)
with the original host name for TLS and the Host header. Redirects are not
followed: a 3xx is a failure like any other non-2xx answer.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import math
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError

from picloud.config import WebhookConfig
from picloud.storable import clean_json, clean_text

USER_AGENT = "PiCloud-Webhook/1"
MAX_ERROR_BODY_CHARS = 500  # of a failed answer's body, kept in the error


class WebhookRefused(Exception):
    """The destination is not allowed (scheme, or a private address)."""


@dataclass(frozen=True)
class WebhookResponse:
    status: int
    body: bytes
    content_type: str


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def validate_webhook_url(url: str, config: WebhookConfig | None = None) -> None:
    """Shape checks done when a script is saved (addresses are checked at send time)."""
    config = config or WebhookConfig.from_env()
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


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return not (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def resolve_destination(host: str, port: int, config: WebhookConfig) -> str:
    """One address to connect to, after checking every address the name has."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConnectionError(f"cannot resolve {host!r}: {exc}") from exc
    addresses = [info[4][0] for info in infos]
    if not config.allow_private:
        blocked = [a for a in addresses if not _is_public(a)]
        if blocked:
            raise WebhookRefused(
                f"destination {host!r} resolves to a non-public address ({blocked[0]}); "
                "loopback, private, link-local and multicast destinations are refused "
                "unless PICLOUD_WEBHOOK_ALLOW_PRIVATE=true"
            )
    return addresses[0]


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host, port, address, timeout):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host, port, address, timeout):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self):
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float,
    max_response_bytes: int,
    config: WebhookConfig | None = None,
) -> WebhookResponse:
    """POST `body`. Raises WebhookRefused, TimeoutError (socket.timeout is
    the same class), OSError for connection errors, or ResponseTooLarge; any
    HTTP status is returned, not raised."""
    config = config or WebhookConfig.from_env()
    validate_webhook_url(url, config)
    parts = urlsplit(url)
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    deadline = time.monotonic() + timeout
    address = resolve_destination(parts.hostname, port, config)
    cls = _PinnedHTTPSConnection if https else _PinnedHTTPConnection
    conn = cls(parts.hostname, port, address, timeout=max(0.001, deadline - time.monotonic()))
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read(max_response_bytes + 1)
        if len(data) > max_response_bytes:
            raise ResponseTooLarge(max_response_bytes)
        return WebhookResponse(response.status, data, response.getheader("Content-Type", "") or "")
    finally:
        conn.close()


class ResponseTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"response body exceeds {limit} bytes (PICLOUD_SANDBOX_MAX_RESULT_BYTES)")


def delivery_headers(secret: str, body: bytes, delivery_id: str) -> dict[str, str]:
    timestamp = str(int(time.time()))
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-PiCloud-Timestamp": timestamp,
        "X-PiCloud-Signature": sign(secret, timestamp, body),
        "X-PiCloud-Delivery": delivery_id,
    }


def decode_result(response: WebhookResponse) -> Any:
    """A 2xx answer's body as the script's result: JSON if it says so and
    PostgreSQL can store it as JSON, else the text. Either way storable
    (picloud/storable.py): an endpoint's answer must never fail the statement
    that delivers or settles it."""
    if not response.body:
        return None
    text = response.body.decode("utf-8", errors="replace")
    if "json" in response.content_type:
        try:
            value = json.loads(text, parse_constant=_not_json, parse_float=_finite)
            return clean_json(value)[0]
        except (ValueError, RecursionError):  # Unstorable is a ValueError too
            pass
    return clean_text(text)[0]


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range for a JSON number")
    return value
