"""The webhook runtime: a signed HTTPS POST to a guarded destination.

Signature (docs/webhooks.md shows a receiver's check):
    X-PiCloud-Timestamp: <unix seconds>
    X-PiCloud-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>
    X-PiCloud-Delivery:  <outbox id>

The destination's addresses are resolved once and every one is checked (only
globally routable unicast addresses pass, see refusal_reason); the connection
then goes to the checked address (no second lookup a DNS answer could change)
with the original host name for TLS and the Host header. Redirects are not
followed: a 3xx is a failure like any other non-2xx answer.

`post` sends from a thread with http.client; webhook_client.py sends the same
request from an event loop, with the guard, errors and helpers defined here.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import hmac
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from picloud.config import WebhookConfig
from picloud.db.storable import clean_json, clean_text, parse_json
from picloud.domain.scripts import validate_webhook_url

USER_AGENT = "PiCloud-Webhook/1"
MAX_ERROR_BODY_CHARS = 500  # of a failed answer's body, kept in the error


class WebhookRefused(Exception):
    """The destination is not allowed (scheme, or a private address)."""


@dataclass(frozen=True)
class WebhookResponse:
    status: int
    body: bytes
    content_type: str
    retry_after: str = ""  # the Retry-After header as sent, "" when absent


# Statuses whose Retry-After the dispatcher honours (RFC 9110 15.5.20, 15.6.4).
RETRY_AFTER_STATUSES = (429, 503)


def retry_after_seconds(value: str, now: datetime) -> float | None:
    """Seconds a Retry-After header asks to wait (delay-seconds or an
    HTTP-date), or None when it says nothing usable. Never negative."""
    value = value.strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        return float(min(int(value[:12]), 10**9))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):  # a year past datetime's
        return None
    if when.tzinfo is None:  # "-0000" or no zone: RFC 9110 dates are in GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _table(*entries: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    """(network, "kind (block)") pairs, parsed once at import: the check runs per call."""
    return tuple((ipaddress.ip_network(block), f"{kind} ({block})") for block, kind in entries)


# An allow rule built from explicit tables, not Python's is_private/is_global
# (on 3.11 they miss 100.64.0.0/10, the AS112 and AMT blocks, 6to4, 3fff::/20).
# The IANA IPv4 and IPv6 special-purpose registries, multicast and reserved
# space: every block is refused, also those the registry marks "globally
# reachable" (anycast services such as AS112, AMT, PCP and TURN receive no
# webhooks). Where blocks nest, the narrower comes first to name it. IPv6
# outside 2000::/3, where IANA allocates global unicast from, is refused too.
IPV4_REFUSED = _table(
    ("0.0.0.0/8", "'this network'"),  # connecting to 0.0.0.0 reaches the local host
    ("10.0.0.0/8", "private use"),
    ("100.64.0.0/10", "shared address space: CGNAT, Tailscale, cloud metadata"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local: cloud metadata services"),
    ("172.16.0.0/12", "private use"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.31.196.0/24", "AS112"),
    ("192.52.193.0/24", "AMT"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private use"),
    ("192.175.48.0/24", "AS112"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "limited broadcast"),
    ("240.0.0.0/4", "reserved"),
)
IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
IPV6_REFUSED = _table(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "local-use IPv4/IPv6 translation"),
    ("100::/64", "discard-only"),
    ("2001::/32", "Teredo"),
    ("2001::/23", "IETF protocol assignments"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4"),
    ("2620:4f:8000::/48", "AS112"),
    ("3fff::/20", "documentation"),
    ("fc00::/7", "unique local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)
# A connection to these reaches the IPv4 address inside (through a dual-stack
# socket or a NAT64 gateway), so they are judged by that address.
IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated (RFC 4291): refused outright


def _first_match(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, table) -> str | None:
    return next((kind for network, kind in table if ip in network), None)


ISATAP_IDENTIFIER = 0x00005EFE  # bits 64-95 of an ISATAP address, the u/l bit masked off


def _ipv6_reason(ip: ipaddress.IPv6Address) -> str | None:
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    for prefix, name in ((IPV4_MAPPED, "IPv4-mapped"), (NAT64_WELL_KNOWN, "NAT64")):
        if ip in prefix:
            inner = _first_match(low32, IPV4_REFUSED)
            return None if inner is None else f"{name} ({prefix}) form of {low32}, {inner}"
    kind = _first_match(ip, IPV6_REFUSED)
    if ip in IPV4_COMPATIBLE and kind is None:
        return f"IPv4-compatible ({IPV4_COMPATIBLE}, deprecated) form of {low32}"
    # Transition forms that carry an IPv4 address are refused whatever it is;
    # naming it shows where the packet would have gone.
    if ip.sixtofour is not None:
        return f"{kind}, carrying {ip.sixtofour}"
    if ip.teredo is not None:
        server, client = ip.teredo
        return f"{kind}, carrying server {server} and client {client}"
    if kind is None and ip not in IPV6_GLOBAL_UNICAST:
        return f"outside global unicast ({IPV6_GLOBAL_UNICAST})"
    # ISATAP interface identifiers (RFC 5214: ::0:5efe:a.b.c.d, ::200:5efe:a.b.c.d)
    # tunnel to the IPv4 address in their last 32 bits wherever an ISATAP
    # router serves the prefix: judge that address too.
    if kind is None and (int(ip) >> 32) & 0xFDFFFFFF == ISATAP_IDENTIFIER:
        inner = _first_match(low32, IPV4_REFUSED)
        if inner is not None:
            return f"ISATAP form of {low32}, {inner}"
    return kind


def refusal_reason(address: str) -> str | None:
    """Why `address` is no allowed webhook destination, or None when it is
    a globally routable unicast address. Brackets and a zone id (`%eth0`)
    are ignored."""
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if ip.version == 4:
        return _first_match(ip, IPV4_REFUSED)
    return _ipv6_reason(ip)


def _is_public(address: str) -> bool:
    return refusal_reason(address) is None


def check_addresses(host: str, addresses: list[str], config: WebhookConfig) -> None:
    """Raise WebhookRefused unless every address `host` has may be reached
    (any address does when PICLOUD_WEBHOOK_ALLOW_PRIVATE is set)."""
    if config.allow_private:
        return
    for address in addresses:
        reason = refusal_reason(address)
        if reason is not None:
            raise WebhookRefused(
                f"destination {host!r} resolves to a non-public address ({address}): "
                f"{reason}; only globally routable unicast addresses are allowed. "
                "To allow it, set PICLOUD_WEBHOOK_ALLOW_PRIVATE=true."
            )


def unresolvable(host: str, exc: OSError) -> ConnectionError:
    return ConnectionError(f"cannot resolve {host!r}: {exc}")


def not_http(what: str) -> ConnectionError:
    # A garbled status line or headers, a body cut short: like a dropped
    # connection (and retried like one), not a crash of the caller.
    return ConnectionError(f"the answer is not valid HTTP or was cut short: {what}")


def no_answer_in_time(timeout: float) -> TimeoutError:
    return TimeoutError(f"no complete answer within {timeout} s")


def resolve_destination(host: str, port: int, config: WebhookConfig) -> str:
    """One address to connect to, after checking every address the name has."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise unresolvable(host, exc) from exc
    addresses = [info[4][0] for info in infos]
    check_addresses(host, addresses, config)
    return addresses[0]


class _Deadline:
    """One time limit for a whole request. A socket timeout bounds each read
    and write alone, so a server sending a byte at a time would hold the
    request (and its worker thread) for as long as it likes; at the deadline
    this shuts the connection's socket down, which wakes whatever call is
    blocked on it."""

    def __init__(self, seconds: float):
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._expired = False
        self._finished = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        """Shut `sock` down at the deadline (at once if it has passed)."""
        with self._lock:
            self._sock = sock
            if self._expired:
                _shut_down(sock)

    def _expire(self) -> None:
        with self._lock:
            if self._finished:
                return
            self._expired = True
            if self._sock is not None:
                _shut_down(self._sock)

    def finish(self) -> bool:
        """Stop watching; whether the deadline passed first. Once this
        returns, the socket is never touched again, so it may be closed."""
        self._timer.cancel()
        with self._lock:
            self._finished = True
            return self._expired


def _shut_down(sock: socket.socket) -> None:
    # The plain socket's shutdown, also for a TLS socket: ssl.SSLSocket's own
    # would drop its SSL object under the thread that is reading with it.
    with contextlib.suppress(OSError):  # already closed, or never connected
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host, port, address, deadline: _Deadline, timeout):
        super().__init__(host, port, timeout=timeout)
        self._address = address
        self._deadline = deadline

    def connect(self):
        # The connect itself is bounded by `timeout`, the time left.
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        self._deadline.watch(self.sock)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host, port, address, deadline: _Deadline, timeout):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address
        self._deadline = deadline

    def connect(self):
        raw = socket.create_connection((self._address, self.port), self.timeout)
        # Wrap first and shake hands after, so the deadline watches the
        # socket the handshake reads from.
        self.sock = self._context.wrap_socket(
            raw, server_hostname=self.host, do_handshake_on_connect=False
        )
        self._deadline.watch(self.sock)
        self.sock.do_handshake()


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
    the same class), OSError for connection errors and answers that are not
    HTTP, or ResponseTooLarge; any HTTP status is returned, not raised.

    `timeout` (seconds) bounds the request as a whole, from the connect to the
    last byte of the answer, however slowly the server sends it. The name's
    lookup is not bounded by it (the system resolver has its own)."""
    config = config or WebhookConfig.current()
    validate_webhook_url(url, config)
    parts = urlsplit(url)
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    deadline_at = time.monotonic() + timeout
    address = resolve_destination(parts.hostname, port, config)
    remaining = deadline_at - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(f"no time left to connect after {timeout} s")
    deadline = _Deadline(remaining)
    cls = _PinnedHTTPSConnection if https else _PinnedHTTPConnection
    conn = cls(parts.hostname, port, address, deadline, timeout=remaining)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        try:
            response = _exchange(conn, path, body, headers, max_response_bytes)
        finally:
            expired = deadline.finish()
            conn.close()
    except (OSError, http.client.HTTPException) as exc:
        # Cut off at the deadline, the exchange fails however it happens to
        # (a reset, a short read, a broken pipe): it is a timeout.
        if expired:
            raise no_answer_in_time(timeout) from exc
        if isinstance(exc, http.client.HTTPException):
            raise not_http(repr(exc)) from exc
        raise
    if expired:
        # A body that ends when the connection closes ends early, without
        # an error, when the deadline shuts the socket: not the whole answer.
        raise no_answer_in_time(timeout)
    return response


def _exchange(conn, path, body, headers, max_response_bytes) -> WebhookResponse:
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read(max_response_bytes + 1)
    if len(data) > max_response_bytes:
        raise ResponseTooLarge(max_response_bytes)
    return WebhookResponse(
        response.status,
        data,
        response.getheader("Content-Type", "") or "",
        response.getheader("Retry-After", "") or "",
    )


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
    (picloud/db/storable.py): an endpoint's answer must never fail the statement
    that delivers or settles it."""
    if not response.body:
        return None
    text = response.body.decode("utf-8", errors="replace")
    if "json" in response.content_type:
        try:
            return clean_json(parse_json(text))[0]
        except ValueError:  # not strict JSON, or not storable as JSON (Unstorable)
            pass
    return clean_text(text)[0]
