"""What the async webhook client adds to webhooks.post: connections kept open
and pooled per host name, many requests in flight, cancellation that ends a
request and closes its connection. Real sockets, and the production guard
and resolver (allow_private only where a loopback receiver needs it).

What both senders share (the guard, the deadline, the outcomes) is tested
against both in test_webhook_addresses.py, test_webhook_deadline.py and the
integration tests; the senders' common tests that need no database are here
too, parametrized by `webhook_post`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import json
import socket
import ssl
import warnings
from http.server import BaseHTTPRequestHandler

import pytest
from aiohttp import web

from picloud.config import WebhookConfig
from picloud.runtime.webhook_client import MAX_CONNECTIONS_PER_HOST, WebhookClient
from picloud.runtime.webhooks import USER_AGENT, decode_result, delivery_headers
from tests.endpoints import aiohttp_endpoint, serve
from tests.helpers import fake_resolver, trusted_server_context

LOCAL = WebhookConfig(allow_private=True, allow_http=True)
WAIT = 30  # seconds: a bound for a failing test, not an expected duration


def run_closing(coro, caplog):
    """asyncio.run(coro); fail on any 'Unclosed …' or 'unclosed …' warning or
    log line once the loop is gone: nothing may be left open."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = asyncio.run(coro, debug=True)
        gc.collect()
    left_open = [str(w.message) for w in caught if "unclosed" in str(w.message).lower()]
    left_open += [r.getMessage() for r in caplog.records if "unclosed" in r.getMessage().lower()]
    assert left_open == [], f"left open: {left_open}"
    return result


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return await reader.readexactly(length)


ENDED_AFTER = 0.5  # seconds; the answer's head arrives at once, its body never


@pytest.mark.parametrize("ended_by", ["the caller", "its own deadline"])
def test_a_request_ended_mid_body_closes_its_connection(caplog, ended_by):
    """The caller cancels a delivery (as the sandbox does at its timeout), or
    post's own deadline passes, while the answer's body is still arriving:
    the connection is closed then, not kept in the pool or left for close()."""

    async def scenario():
        hung_up = asyncio.Event()

        async def receiver(reader, writer):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
            await writer.drain()
            with contextlib.suppress(ConnectionResetError):
                await reader.read()  # returns at the client's end of the connection
            hung_up.set()
            writer.close()

        server = await asyncio.start_server(receiver, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
        client = WebhookClient(LOCAL)
        try:
            with pytest.raises(TimeoutError):
                if ended_by == "the caller":
                    async with asyncio.timeout(ENDED_AFTER):  # cancels the task at the time
                        await client.post(url, b"{}", {}, timeout=WAIT, max_response_bytes=10_000)
                else:
                    await client.post(
                        url, b"{}", {}, timeout=ENDED_AFTER, max_response_bytes=10_000
                    )
            async with asyncio.timeout(WAIT):
                await hung_up.wait()
        finally:
            await client.close()
            server.close()
            await server.wait_closed()

    run_closing(scenario(), caplog)


def test_a_hundred_deliveries_are_in_flight_at_once(caplog):
    """The receiver answers only once all of them have arrived: a client that
    held some back (a pool limit under 100) would never see an answer."""
    count = 100
    assert count <= MAX_CONNECTIONS_PER_HOST

    async def scenario():
        connections: set = set()
        all_arrived = asyncio.Event()

        async def hook(request):
            event = await request.json()
            connections.add(request.transport.get_extra_info("peername"))
            if len(connections) == count:
                all_arrived.set()
            await all_arrived.wait()
            return web.json_response({"echo": event["i"]})

        async with aiohttp_endpoint({"/hook": hook}) as base:
            client = WebhookClient(LOCAL)
            try:
                async with asyncio.timeout(WAIT):
                    answers = await asyncio.gather(
                        *(
                            client.post(
                                base + "/hook",
                                json.dumps({"i": i}).encode(),
                                {"Content-Type": "application/json"},
                                timeout=WAIT,
                                max_response_bytes=1000,
                            )
                            for i in range(count)
                        )
                    )
            finally:
                all_arrived.set()  # lets the handlers end should the test fail
                await client.close()
        return answers, connections

    answers, connections = run_closing(scenario(), caplog)
    assert [decode_result(a) for a in answers] == [{"echo": i} for i in range(count)]
    assert len(connections) == count


def test_a_kept_open_connection_serves_its_host_name_only(monkeypatch, caplog):
    """Two names with one address: each gets connections of its own (TLS
    would have verified the other name on a shared one)."""
    getaddrinfo, lookups = fake_resolver({"a.example": ["127.0.0.1"], "b.example": ["127.0.0.1"]})

    async def scenario():
        seen = []

        async def hook(request):
            await request.read()
            seen.append((request.host.split(":")[0], request.transport.get_extra_info("peername")))
            return web.Response(text="ok")

        async with aiohttp_endpoint({"/hook": hook}) as base:
            port = base.rsplit(":", 1)[1]
            monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
            client = WebhookClient(LOCAL)
            try:
                for host in ("a.example", "a.example", "b.example", "a.example"):
                    url = f"http://{host}:{port}/hook"
                    await client.post(url, b"{}", {}, timeout=WAIT, max_response_bytes=100)
            finally:
                await client.close()
        return seen

    seen = run_closing(scenario(), caplog)
    assert [host for host, _ in seen] == ["a.example", "a.example", "b.example", "a.example"]
    a1, a2, b, a3 = (peer for _, peer in seen)
    assert a1 == a2 == a3, "a.example's connection is kept open and reused"
    assert b != a1, "b.example must not reuse a.example's connection"
    assert lookups == ["a.example", "b.example"]


def test_no_cookie_reaches_a_later_delivery(monkeypatch, caplog):
    getaddrinfo, _ = fake_resolver({"hooks.example": ["127.0.0.1"]})
    cookies = []

    async def scenario():
        async def hook(request):
            await request.read()
            cookies.append(request.headers.get("Cookie"))
            response = web.Response(text="ok")
            response.set_cookie("session", "of-the-first-app")
            return response

        async with aiohttp_endpoint({"/hook": hook}) as base:
            monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
            url = base.replace("127.0.0.1", "hooks.example") + "/hook"
            client = WebhookClient(LOCAL)
            try:
                for _ in range(2):
                    await client.post(url, b"{}", {}, timeout=WAIT, max_response_bytes=100)
            finally:
                await client.close()

    run_closing(scenario(), caplog)
    assert cookies == [None, None]


def test_no_proxy_is_taken_from_the_environment(monkeypatch, caplog):
    # A proxy that is not there: a client that used it would fail to connect.
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead_proxy = f"http://127.0.0.1:{unused.getsockname()[1]}"
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, dead_proxy)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)

    async def scenario():
        async def hook(request):
            await request.read()
            return web.Response(text="direct")

        async with aiohttp_endpoint({"/hook": hook}) as base:
            client = WebhookClient(LOCAL)
            try:
                return await client.post(
                    base + "/hook", b"{}", {}, timeout=WAIT, max_response_bytes=100
                )
            finally:
                await client.close()

    assert run_closing(scenario(), caplog).body == b"direct"


def test_requests_name_picloud_and_ask_for_no_compression(caplog):
    received = []

    async def scenario():
        async def hook(request):
            received.append((dict(request.headers), await request.read()))
            return web.Response(text="ok")

        async with aiohttp_endpoint({"/hook": hook}) as base:
            client = WebhookClient(LOCAL)
            try:
                await client.post(base + "/hook", b"{}", {}, timeout=WAIT, max_response_bytes=100)
                body = b'{"k": 1}'
                signed = delivery_headers("whsec_test", body, "delivery-1")
                await client.post(
                    base + "/hook", body, signed, timeout=WAIT, max_response_bytes=100
                )
            finally:
                await client.close()

    run_closing(scenario(), caplog)
    (bare, _), (signed, body) = received
    assert bare["User-Agent"] == signed["User-Agent"] == USER_AGENT
    assert bare["Accept-Encoding"] == signed["Accept-Encoding"] == "identity"
    assert (signed["X-PiCloud-Delivery"], body) == ("delivery-1", b'{"k": 1}')


def test_a_client_serves_the_event_loop_it_started_on():
    client = WebhookClient(LOCAL)

    async def post(url):
        return await client.post(url, b"{}", {}, timeout=WAIT, max_response_bytes=100)

    async def first():
        async with aiohttp_endpoint({"/hook": _ok}) as base:
            await post(base + "/hook")
        return base

    base = asyncio.run(first())
    with pytest.raises(RuntimeError, match="one per event loop"):
        asyncio.run(post(base + "/hook"))
    asyncio.run(client.close())  # connections close on their own loop's end; this marks it closed
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(post(base + "/hook"))


async def _ok(request):
    await request.read()
    return web.Response(text="ok")


# An answer that inflates to 10 MB: it must be capped as sent, never inflated.
BOMB = gzip.compress(b"\0" * 10_000_000)


class GzipBomb(BaseHTTPRequestHandler):
    asked_for: list = []

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).asked_for.append(self.headers.get("Accept-Encoding"))
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(BOMB)))
        self.end_headers()
        self.wfile.write(BOMB)

    def log_message(self, *args):
        pass


def test_a_compressed_answer_is_not_inflated(webhook_post):
    GzipBomb.asked_for = []
    with serve(GzipBomb) as base:
        response = webhook_post(
            base + "/hook", b"{}", {}, timeout=WAIT, max_response_bytes=100_000, config=LOCAL
        )
    assert GzipBomb.asked_for == ["identity"]
    assert response.body == BOMB, "the body as sent, within the cap"


class NamedReceiver(BaseHTTPRequestHandler):
    hosts: list = []

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).hosts.append(self.headers["Host"])
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_tls_verifies_and_names_the_host_not_the_address(tmp_path, monkeypatch, webhook_post):
    """The connection goes to the checked address, but the certificate is
    checked against the name, which SNI and Host carry."""
    tls = trusted_server_context(tmp_path, monkeypatch, "DNS:hooks.example")
    server_names = []
    tls.sni_callback = lambda _sock, name, _context: server_names.append(name)
    getaddrinfo, _ = fake_resolver({"hooks.example": ["127.0.0.1"]})
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    NamedReceiver.hosts = []
    with serve(NamedReceiver, tls=tls) as base:
        port = base.rsplit(":", 1)[1]
        named = webhook_post(
            f"https://hooks.example:{port}/hook",
            b"{}",
            {},
            timeout=WAIT,
            max_response_bytes=100,
            config=LOCAL,
        )
        with pytest.raises(ssl.SSLCertVerificationError, match=r"127\.0\.0\.1"):
            webhook_post(
                base + "/hook", b"{}", {}, timeout=WAIT, max_response_bytes=100, config=LOCAL
            )
    assert named.body == b"ok"
    assert server_names[0] == "hooks.example"
    assert NamedReceiver.hosts == [f"hooks.example:{port}"]


class LongHeader(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("X-Long", "a" * 20_000)  # aiohttp's own limit is 8190 bytes
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_a_long_header_line_is_read_as_http_client_reads_it(webhook_post):
    with serve(LongHeader) as base:
        response = webhook_post(
            base + "/hook", b"{}", {}, timeout=WAIT, max_response_bytes=100, config=LOCAL
        )
    assert (response.status, response.body) == (200, b"ok")
