"""An HTTP load generator in a process of its own: aiohttp, one event loop.

    python benchmarks/loadgen.py URL --requests 4000 --concurrency 200
        [--header 'Authorization: Bearer ...'] [--body '{"seconds": 0.2}'] [--warmup N]

`--concurrency` POSTs are kept in flight until `--requests` were answered
(with --requests equal to --concurrency: one burst, all started together).
Connections are pooled (keep-alive), at most one per request in flight;
`--warmup` requests first open them, untimed. Prints one JSON object: wall
time, requests/s, the client's CPU seconds, statuses and every latency (ms).

A process of its own so that what is measured is the server: Python threads
sending hundreds of requests would compete with it for the same cores and
the same interpreter lock in the benchmark's process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter


async def run(
    url: str, requests: int, concurrency: int, headers: dict, body: bytes, warmup: int
) -> dict:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    statuses: Counter = Counter()
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> tuple[int | str, float]:
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    status: int | str = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = f"error {type(exc).__name__}"
            return status, (time.perf_counter() - started) * 1000

        async def drive(count: int) -> list[tuple[int | str, float]]:
            left = [count]
            out: list[tuple[int | str, float]] = []

            async def worker() -> None:
                while left[0] > 0:
                    left[0] -= 1
                    out.append(await one())

            await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))
            return out

        if warmup:
            await drive(warmup)
        cpu, started = time.process_time(), time.perf_counter()
        results = await drive(requests)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    for status, ms in results:
        statuses[str(status)] += 1
        latencies.append(ms)
    return {
        "wall": wall,
        "rate": requests / wall,
        "cpu": cpu,
        "statuses": dict(statuses),
        "latencies_ms": latencies,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--body", default="{}", help="the JSON body of every request")
    parser.add_argument("--warmup", type=int, default=0, help="untimed requests first")
    args = parser.parse_args()
    headers = {"Content-Type": "application/json"}
    for header in args.header:
        name, _, value = header.partition(":")
        headers[name.strip()] = value.strip()
    result = asyncio.run(
        run(args.url, args.requests, args.concurrency, headers, args.body.encode(), args.warmup)
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
