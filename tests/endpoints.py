"""Local HTTP endpoints for webhook tests, served on 127.0.0.1: in a thread
(http.server), or on the test's event loop (aiohttp)."""

from __future__ import annotations

import json
import ssl
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiohttp import web

# path: (status, content type, body bytes). Answers PostgreSQL cannot store
# as they are: NUL bytes, invalid UTF-8, NaN, 1e400, deep nesting.
POISON_ANSWERS = {
    "/clean": (200, "application/json", b'{"ok": true}'),
    "/nul-500": (500, "text/plain", b"broken\x00answer"),
    "/nul-400": (400, "text/plain", b"refused\x00here"),
    "/bytes-500": (500, "text/plain", b"\xff\xfe\xed\xa0\x80 not utf-8"),
    "/nul-json": (200, "application/json", b'{"a\\u0000": "x\\u0000y", "s": "\\ud800"}'),
    "/nan-json": (200, "application/json", b'{"n": NaN}'),
    "/huge-number": (200, "application/json", b"[1e400]"),
    "/deep-json": (200, "application/json", b"[" * 5000 + b"]" * 5000),
}


class PoisonEndpoint(BaseHTTPRequestHandler):
    """Answers each path as POISON_ANSWERS says; counts requests per
    (path, the event's "key") so tests can tell a duplicate from a retry."""

    received: Counter = Counter()
    lock = threading.Lock()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            type(self).received[(self.path, body.get("key"))] += 1
        status, content_type, data = POISON_ANSWERS[self.path]
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog is 5: a burst of a hundred connects
    # from the dispatcher would overflow it, and dropped SYNs are retried
    # only after a second or more (a slow test endpoint, not a slow client).
    request_queue_size = 1024
    daemon_threads = True


@contextmanager
def serve(
    handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None
) -> Iterator[str]:
    """Serve `handler` on a free loopback port, over TLS with `tls`; yields
    the base URL."""
    server = _Server(("127.0.0.1", 0), handler)
    if tls is not None:
        # Handshakes happen in each request's thread, not in accept().
        server.socket = tls.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    scheme = "https" if tls else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@asynccontextmanager
async def aiohttp_endpoint(
    routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]],
) -> AsyncIterator[str]:
    """Serve POSTs to `routes` (path: handler) on a free loopback port, on
    the running event loop; yields the base URL."""
    app = web.Application()
    for path, route in routes.items():
        app.router.add_post(path, route)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextmanager
def poison_endpoint() -> Iterator[str]:
    PoisonEndpoint.received = Counter()
    with serve(PoisonEndpoint) as url:
        yield url
