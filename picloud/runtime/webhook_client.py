"""The webhook runtime for an event loop: webhooks.post's guarded, signed POST
sent with aiohttp through keep-alive connection pools.

It raises what webhooks.post raises, so a caller maps outcomes the same way:
WebhookRefused, TimeoutError, ResponseTooLarge, OSError (ConnectionError for
an answer that is not valid HTTP or is cut short), ValidationError or
ValueError for a URL that cannot be used. Any HTTP status is returned.

The guard is the same. GuardedResolver looks the name up once, checks every
address with webhooks.check_addresses and hands aiohttp only those, so the
connection goes to a checked address with no lookup of its own; TLS
verification, SNI and Host use the name. aiohttp skips the resolver for an
IP-address host, so post checks such a host itself. A connection is pooled
per (host name, port, TLS): it is never reused for another name, even one
with the same address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from functools import cached_property

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from picloud.config import WebhookConfig
from picloud.domain.scripts import validate_webhook_url
from picloud.runtime.webhooks import (
    USER_AGENT,
    ResponseTooLarge,
    WebhookResponse,
    check_addresses,
    no_answer_in_time,
    not_http,
    unresolvable,
)

# Open connections in all, 0 for no limit: the engine's own cap on executions
# in flight bounds them, and a lower limit here would make deliveries wait for
# each other inside their time limits.
MAX_CONNECTIONS = 0
# Open connections to one host name, as many as the engine's default
# executions in flight (PICLOUD_DISPATCHER_MAX_IN_FLIGHT, 100): a delivery
# beyond it waits for a free connection, within its own time limit.
MAX_CONNECTIONS_PER_HOST = 100
# Idle seconds before a pooled connection is closed: below the 5 s many
# servers (Node.js among them) close idle connections after, so a delivery
# rarely meets a connection its receiver has just dropped.
KEEPALIVE_SECONDS = 4.0
# How long a name's checked addresses are reused for new connections. The
# cache only ever holds addresses that passed the guard (under this client's
# config); the short life bounds how long a receiver's move goes unseen.
DNS_CACHE_SECONDS = 10

HTTP_CLIENT_MAX_LINE = 65536  # bytes in a status or header line (http.client's _MAXLINE)

# The addresses GuardedResolver returns are numbers: connecting to them needs
# no lookup.
_NUMERIC = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV


class GuardedResolver(AbstractResolver):
    """Resolves a destination's name the way webhooks.resolve_destination
    does (every address, not only those this host can route) and refuses it
    unless every address passes the guard."""

    def __init__(self, config: WebhookConfig) -> None:
        self.config = config

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise unresolvable(host, exc) from exc
        check_addresses(host, [info[4][0] for info in infos], self.config)
        return [
            ResolveResult(
                hostname=host,
                host=address[0],
                port=address[1],
                family=address_family,
                proto=proto,
                flags=_NUMERIC,
            )
            for address_family, _, proto, _, address in infos
        ]

    async def close(self) -> None:
        pass


def literal_address(host: str) -> str | None:
    """The address an IP-address host means, in any spelling the system
    accepts (`127.1`, `2130706433`), or None for a name."""
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        pass
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        return None


class WebhookClient:
    """Sends webhooks from one event loop (the first that posts with it) and
    keeps its connections open between deliveries. Close it on that loop."""

    def __init__(
        self,
        config: WebhookConfig | None = None,
        *,
        max_connections: int = MAX_CONNECTIONS,
        max_connections_per_host: int = MAX_CONNECTIONS_PER_HOST,
    ) -> None:
        self.config = config or WebhookConfig.current()
        self.max_connections = max_connections
        self.max_connections_per_host = max_connections_per_host
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @cached_property
    def _tls_context(self) -> ssl.SSLContext:
        # The system's trust store, verification and host name checks on;
        # made on the first https post (it costs tens of milliseconds), and
        # the same object for every one, as connections are pooled by it.
        return ssl.create_default_context()

    def _session_here(self) -> aiohttp.ClientSession:
        """The session, made on the first post: aiohttp binds it to the
        running loop."""
        loop = asyncio.get_running_loop()
        if self._closed:
            raise RuntimeError("this WebhookClient is closed")
        if self._session is None:
            self._loop, self._session = loop, self._new_session()
        elif loop is not self._loop:
            raise RuntimeError(
                "a WebhookClient posts from the event loop it first posted from; "
                "make one per event loop"
            )
        return self._session

    def _new_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self.config),
            limit=self.max_connections,
            limit_per_host=self.max_connections_per_host,
            use_dns_cache=True,
            ttl_dns_cache=DNS_CACHE_SECONDS,
            keepalive_timeout=KEEPALIVE_SECONDS,
            # Python before 3.12.7 leaks a TLS connection whose server never
            # completes the shutdown; receivers are not ours to trust.
            enable_cleanup_closed=True,
        )
        return aiohttp.ClientSession(
            connector=connector,
            # Deliveries of different apps share the session: nothing one
            # receiver sets may reach another.
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,  # no proxy or .netrc from the environment
            # The body is capped as it arrives: never inflate it (a small
            # gzip answer can expand a thousandfold), and ask for none.
            auto_decompress=False,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            # http.client's limits, not aiohttp's 8190: an answer whose status
            # line or a header was fine for webhooks.post stays fine here.
            max_line_size=HTTP_CLIENT_MAX_LINE,
            max_field_size=HTTP_CLIENT_MAX_LINE,
            # No time limits of aiohttp's own: post sets one for the whole request.
            timeout=aiohttp.ClientTimeout(),
        )

    async def post(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        *,
        timeout: float,
        max_response_bytes: int,
    ) -> WebhookResponse:
        """POST `body` to `url`, like webhooks.post. `timeout` (seconds)
        bounds the whole request, from the name's lookup to the answer's
        last byte; cancelling the calling task ends the request and closes
        its connection."""
        validate_webhook_url(url, self.config)
        target = URL(url)
        literal = literal_address(target.raw_host or "")
        if literal is not None:  # aiohttp connects to it without asking the resolver
            check_addresses(target.raw_host, [literal], self.config)
        session = self._session_here()
        try:
            async with (
                asyncio.timeout(timeout),
                session.post(
                    target,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    ssl=self._tls_context if target.scheme == "https" else True,
                ) as answer,
            ):
                data = await _read_at_most(answer.content, max_response_bytes + 1)
                if len(data) > max_response_bytes:
                    # Raised in here: the unread rest closes the connection.
                    raise ResponseTooLarge(max_response_bytes)
                return WebhookResponse(
                    answer.status,
                    data,
                    answer.headers.get("Content-Type", ""),
                    answer.headers.get("Retry-After", ""),
                )
        except TimeoutError as exc:
            raise no_answer_in_time(timeout) from exc
        except aiohttp.ClientConnectorError as exc:
            # The lookup or connect failed: the OSError it failed with, as
            # webhooks.post raises it (WebhookRefused is no OSError and
            # comes through as it is).
            raise exc.os_error from None
        except (
            aiohttp.ServerDisconnectedError,  # closed before the whole head came
            aiohttp.ClientResponseError,  # a garbled status line or headers
            aiohttp.ClientPayloadError,  # a body cut short or badly chunked
        ) as exc:
            raise not_http(_describe(exc)) from exc
        except aiohttp.ClientConnectionError as exc:
            if isinstance(exc, OSError):
                raise
            raise ConnectionError(str(exc) or repr(exc)) from exc

    async def close(self) -> None:
        """Close every connection; posting afterwards is an error."""
        self._closed = True
        if self._session is not None:
            await self._session.close()


async def _read_at_most(stream: aiohttp.StreamReader, limit: int) -> bytes:
    data = bytearray()
    while len(data) < limit:
        chunk = await stream.read(limit - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _describe(exc: aiohttp.ClientError) -> str:
    """The exception in a few words: a ClientResponseError's repr carries the
    whole request, headers and signature included."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{type(exc).__name__}({exc.message!r})"
    return repr(exc)
