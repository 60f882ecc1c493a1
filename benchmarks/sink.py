"""A webhook receiver for benchmarks: answers 200 after a fixed delay and counts what it saw.

    python benchmarks/sink.py --port 8123 [--delay 0.1]

An aiohttp server in a process of its own, on loopback: asyncio sleeps, so a
few thousand requests can wait at once without threads. `POST /hook` is the
endpoint; `GET /stats` says how many requests arrived, how many distinct
deliveries (the `X-PiCloud-Delivery` header; a redelivery counts once), the
most that were waiting at once and how many on average (time-weighted, from
the first arrival to the last answer), and when the first arrived and the
last was answered (Unix time); `POST /reset` zeroes it all between rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
DELIVERY_HEADER = "X-PiCloud-Delivery"


class Counts:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.deliveries: set[str] = set()
        self.in_flight = 0
        self.peak = 0
        self.first_at: float | None = None
        self.last_answer_at: float | None = None
        self.waited = 0.0  # request-seconds spent waiting here, summed
        self.changed_at = 0.0

    def change(self, by: int) -> None:
        now = time.monotonic()
        if self.in_flight:
            self.waited += self.in_flight * (now - self.changed_at)
        self.changed_at = now
        self.in_flight += by
        self.peak = max(self.peak, self.in_flight)

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "deliveries": len(self.deliveries),
            "in_flight": self.in_flight,
            "peak": self.peak,
            "first_at": self.first_at,
            "last_answer_at": self.last_answer_at,
            "mean_in_flight": (
                self.waited / (self.last_answer_at - self.first_at) if self.last_answer_at else 0.0
            ),
        }


def serve(port: int, delay: float) -> None:
    from aiohttp import web

    counts = Counts()

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        counts.requests += 1
        delivery = request.headers.get(DELIVERY_HEADER, f"#{counts.requests}")
        counts.first_at = counts.first_at or time.time()
        counts.change(+1)
        try:
            await asyncio.sleep(delay)
        finally:
            counts.change(-1)
        counts.deliveries.add(delivery)
        counts.last_answer_at = time.time()
        return web.json_response({"ok": True})

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(counts.as_dict())

    async def reset(_request: web.Request) -> web.Response:
        counts.reset()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    # A deep accept backlog: hundreds of connections may open at once.
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, backlog=4096)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    """The sink's process, started and asked from the benchmark's."""

    def __init__(self, delay: float = 0.1, port: int | None = None) -> None:
        self.delay, self.port = delay, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE), "--port", str(self.port), "--delay", str(delay)],
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.stats()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise RuntimeError("the webhook sink did not start") from None
                time.sleep(0.05)

    def _ask(self, method: str, path: str) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path)
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def stats(self) -> dict:
        return self._ask("GET", "/stats")

    def reset(self) -> None:
        self._ask("POST", "/reset")

    def wait_for(self, deliveries: int, timeout: float) -> dict:
        """Poll until `deliveries` distinct deliveries were answered; the stats then."""
        deadline = time.monotonic() + timeout
        while (stats := self.stats())["deliveries"] < deliveries:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the sink had {stats['deliveries']} of {deliveries} deliveries "
                    f"after {timeout:.0f}s"
                )
            time.sleep(0.02)
        return stats

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.1, help="seconds before each answer")
    args = parser.parse_args()
    serve(args.port, args.delay)


if __name__ == "__main__":
    main()
