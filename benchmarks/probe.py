"""A UDP probe: workers report "<tag> <unix time>" the moment a handler starts.

UDP on loopback costs microseconds and needs no shared state, so it measures
start times in any process (our dispatcher, django-q2, procrastinate) alike.
"""

from __future__ import annotations

import os
import socket
import time

ENV = "PICLOUD_BENCH_PROBE"  # "127.0.0.1:PORT"; unset: probes are no-ops

_sock: socket.socket | None = None
_addr: tuple[str, int] | None = None


def hit(tag) -> None:
    global _sock, _addr
    if _addr is None:
        target = os.environ.get(ENV)
        if not target:
            return
        host, port = target.rsplit(":", 1)
        _addr = (host, int(port))
        _sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    _sock.sendto(f"{tag} {time.time()}".encode(), _addr)  # type: ignore[union-attr]


class Receiver:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"

    def receive(self, timeout: float) -> tuple[str, float] | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(256)
        except TimeoutError:
            return None
        tag, at = data.decode().split()
        return tag, float(at)

    def drain(self, count: int, timeout: float) -> list[tuple[str, float]]:
        """Up to `count` hits, stopping after `timeout` seconds without one."""
        hits = []
        while len(hits) < count and (hit := self.receive(timeout)) is not None:
            hits.append(hit)
        return hits
