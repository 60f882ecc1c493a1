"""A webhook's time limit bounds the whole request, not each socket read,
for both senders (tests/webhook_senders.py).

The servers here answer one byte at a time, each byte well within the limit:
a per-read timeout never fires, so only a deadline for the whole request
stops them.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from picloud.config import WebhookConfig
from tests.helpers import trusted_server_context

LOCAL = WebhookConfig(allow_private=True, allow_http=True)
DRIP_INTERVAL = 0.2  # seconds between two bytes: far below the limit
DRIP_FOR = 6.0  # seconds; the server gives up then, so a missing deadline fails, not hangs
LIMIT = 1.0  # seconds, the request's time limit
MARGIN = 1.5  # seconds allowed past the limit on a busy machine

ANSWERS = {
    # The status line and headers never end.
    "headers": (b"", b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * 1000),
    # A declared body that arrives too slowly.
    "body": (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n",
        b"x" * 1000,
    ),
    # A body that ends when the connection closes: cutting it short must not
    # pass for the whole answer.
    "body until close": (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
        b"x" * 1000,
    ),
}


def _read_request(conn: socket.socket) -> None:
    """Read the whole request, so that closing later sends no reset."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += conn.recv(65536)


def _drip(listener: socket.socket, head: bytes, slow: bytes, stop: threading.Event):
    conn, _ = listener.accept()
    with conn:
        _read_request(conn)
        conn.sendall(head)
        for i in range(len(slow)):
            if stop.wait(DRIP_INTERVAL) or i * DRIP_INTERVAL > DRIP_FOR:
                return
            try:
                conn.sendall(slow[i : i + 1])
            except OSError:  # the client hung up: what the deadline should do
                return


@pytest.fixture(params=sorted(ANSWERS))
def dripping_server(request):
    head, slow = ANSWERS[request.param]
    stop = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        thread = threading.Thread(target=_drip, args=(listener, head, slow, stop), daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
        stop.set()
        thread.join(timeout=DRIP_FOR + 1)


def test_a_server_dripping_its_answer_is_cut_off_at_the_limit(dripping_server, webhook_post):
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        webhook_post(
            dripping_server, b"{}", {}, timeout=LIMIT, max_response_bytes=10_000, config=LOCAL
        )
    elapsed = time.monotonic() - started
    assert elapsed < LIMIT + MARGIN, (
        f"post(timeout={LIMIT}) took {elapsed:.1f} s against a server sending one byte "
        f"every {DRIP_INTERVAL} s: the limit must bound the whole request"
    )


def test_a_prompt_answer_within_the_limit_is_returned_whole(webhook_post):
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
    stop = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        thread = threading.Thread(target=_drip, args=(listener, answer, b"", stop), daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
        response = webhook_post(url, b"{}", {}, timeout=LIMIT, max_response_bytes=100, config=LOCAL)
        stop.set()
        thread.join(timeout=2)
    assert (response.status, response.body) == (200, b"hello")


def test_a_server_dripping_its_tls_handshake_is_cut_off_at_the_limit(webhook_post):
    # A TLS record header announcing 16 KiB, then the record a byte at a time:
    # the handshake waits for the whole record. (CPython bounds a handshake
    # by the socket timeout as a whole; this keeps the handshake, now started
    # after the deadline watches the socket, within the request's limit.)
    stop = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        thread = threading.Thread(
            target=_drip_handshake, args=(listener, b"\x16\x03\x03\x3f\xff", stop), daemon=True
        )
        thread.start()
        url = f"https://127.0.0.1:{listener.getsockname()[1]}/hook"
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            webhook_post(url, b"{}", {}, timeout=LIMIT, max_response_bytes=100, config=LOCAL)
        elapsed = time.monotonic() - started
        stop.set()
        thread.join(timeout=DRIP_FOR + 1)
    assert elapsed < LIMIT + MARGIN, f"the TLS handshake held post(timeout={LIMIT}) {elapsed:.1f} s"


def _drip_handshake(listener: socket.socket, head: bytes, stop: threading.Event):
    conn, _ = listener.accept()
    with conn:
        conn.sendall(head)
        for _ in range(int(DRIP_FOR / DRIP_INTERVAL)):
            if stop.wait(DRIP_INTERVAL):
                return
            try:
                conn.sendall(b"\x00")
            except OSError:
                return


def test_an_https_answer_within_the_limit_is_returned_whole(tmp_path, monkeypatch, webhook_post):
    server_context = trusted_server_context(tmp_path, monkeypatch, "IP:127.0.0.1")
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"

    def serve(listener):
        conn, _ = listener.accept()
        with server_context.wrap_socket(conn, server_side=True) as tls:
            _read_request(tls)
            tls.sendall(answer)

    with socket.create_server(("127.0.0.1", 0)) as listener:
        thread = threading.Thread(target=serve, args=(listener,), daemon=True)
        thread.start()
        url = f"https://127.0.0.1:{listener.getsockname()[1]}/hook"
        response = webhook_post(url, b"{}", {}, timeout=LIMIT, max_response_bytes=100, config=LOCAL)
        thread.join(timeout=2)
    assert (response.status, response.body) == (200, b"hello")
