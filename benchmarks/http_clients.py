"""aiohttp or httpx for webhooks that wait on the network? Both, side by side,
and PiCloud's own client built on aiohttp (picloud/runtime/webhook_client.py).

    .venv/bin/python -m pip install -r benchmarks/requirements.txt
    .venv/bin/python benchmarks/http_clients.py [--requests 2000] [--concurrency 100]
        [--clients aiohttp httpx picloud]

The workload the async dispatcher will run: signed JSON POSTs (about 300
bytes) to an endpoint that answers after 100 ms, `--concurrency` in flight
through one keep-alive pool, in one client process. The endpoint is an
aiohttp server in a process of its own (asyncio sleeps, so it is not the
bottleneck). Rounds alternate between the clients; medians are reported with
the Little's-law bound (concurrency / endpoint latency) and the client's CPU
time per request, which is what one dispatcher process pays. Loopback only;
prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import multiprocessing
import os
import platform
import socket
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # picloud, for its client

ENDPOINT_LATENCY = 0.1  # seconds the sink waits before answering
BODY = json.dumps({"app": "bench", "collection": "orders", "key": "o-1", "new": {"n": 1}}).encode()
SECRET = b"whsec_bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(port: int, ready) -> None:
    from aiohttp import web

    async def hook(request):
        await request.read()
        await asyncio.sleep(ENDPOINT_LATENCY)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    ready.set()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def headers() -> dict[str, str]:
    timestamp = str(int(time.time()))
    mac = hmac.new(SECRET, timestamp.encode() + b"." + BODY, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-PiCloud-Timestamp": timestamp,
        "X-PiCloud-Signature": f"sha256={mac}",
    }


async def run_aiohttp(url: str, requests: int, concurrency: int) -> list[float]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> float:
            started = time.perf_counter()
            async with session.post(url, data=BODY, headers=headers()) as response:
                await response.read()
                assert response.status == 200
            return time.perf_counter() - started

        return await _drive(one, requests, concurrency)


async def run_httpx(url: str, requests: int, concurrency: int) -> list[float]:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def one() -> float:
            started = time.perf_counter()
            response = await client.post(url, content=BODY, headers=headers())
            assert response.status_code == 200
            return time.perf_counter() - started

        return await _drive(one, requests, concurrency)


async def run_picloud(url: str, requests: int, concurrency: int) -> list[float]:
    """PiCloud's own client (picloud/runtime/webhook_client.py): aiohttp with
    the guard, one deadline per request and the capped read."""
    from picloud.config import WebhookConfig
    from picloud.runtime.webhook_client import WebhookClient

    client = WebhookClient(WebhookConfig(allow_private=True, allow_http=True))  # a loopback sink
    try:

        async def one() -> float:
            started = time.perf_counter()
            response = await client.post(
                url, BODY, headers(), timeout=30, max_response_bytes=1_000_000
            )
            assert response.status == 200
            return time.perf_counter() - started

        return await _drive(one, requests, concurrency)
    finally:
        await client.close()


async def _drive(one, requests: int, concurrency: int) -> list[float]:
    """`requests` calls, `concurrency` at a time; their latencies (seconds)."""
    queue = list(range(requests))
    latencies: list[float] = []

    async def worker() -> None:
        while queue:
            queue.pop()
            latencies.append(await one())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


CLIENTS = {"aiohttp": run_aiohttp, "httpx": run_httpx, "picloud": run_picloud}


def measure(client: str, url: str, requests: int, concurrency: int, out) -> None:
    """One round in a fresh process: throughput, latency, CPU per request."""
    import resource

    # Warm the pool: connections are opened once per process in production.
    asyncio.run(CLIENTS[client](url, concurrency, concurrency))
    cpu, wall = time.process_time(), time.perf_counter()
    latencies = asyncio.run(CLIENTS[client](url, requests, concurrency))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    latencies.sort()
    out.put(
        {
            "rate": requests / wall,
            "p50": latencies[len(latencies) // 2] * 1000,
            "p99": latencies[int(len(latencies) * 0.99)] * 1000,
            "cpu_us": cpu / requests * 1e6,
            "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", nargs="+", choices=sorted(CLIENTS), default=sorted(CLIENTS))
    args = parser.parse_args()

    ctx = multiprocessing.get_context("spawn")
    port = free_port()
    ready = ctx.Event()
    sink = ctx.Process(target=serve, args=(port, ready), daemon=True)
    sink.start()
    ready.wait(30)
    url = f"http://127.0.0.1:{port}/hook"
    deadline = time.monotonic() + 30
    while True:  # the server accepts shortly after it said it was ready
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)

    results: dict[str, list[dict]] = {name: [] for name in args.clients}
    try:
        for round_no in range(args.rounds):
            for name in args.clients:
                out = ctx.Queue()
                proc = ctx.Process(
                    target=measure, args=(name, url, args.requests, args.concurrency, out)
                )
                proc.start()
                result = out.get(timeout=300)
                proc.join(30)
                results[name].append(result)
                print(
                    f"round {round_no + 1}: {name} {result['rate']:,.0f} req/s, "
                    f"p50 {result['p50']:.1f} ms, p99 {result['p99']:.1f} ms, "
                    f"{result['cpu_us']:.0f} us CPU/request",
                    flush=True,
                )
    finally:
        sink.terminate()
        sink.join(10)

    bound = args.concurrency / ENDPOINT_LATENCY
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print()
    print(
        f"- Command: `python benchmarks/http_clients.py --requests {args.requests} "
        f"--concurrency {args.concurrency} --rounds {args.rounds} "
        f"--clients {' '.join(args.clients)}`"
    )
    print(
        f"- Date: {now}; machine: {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )
    print()
    print(
        "| client | req/s (median) | of the bound | p50 ms | p99 ms | CPU µs/request | peak RSS MiB |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, rounds in results.items():
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        print(
            f"| {name} | {med['rate']:,.0f} | {med['rate'] / bound:.0%} | {med['p50']:.1f} "
            f"| {med['p99']:.1f} | {med['cpu_us']:.0f} | {med['rss_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
