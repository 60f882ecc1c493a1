"""The same work for the peers: django-q2 and procrastinate noops, and
procrastinate's webhook delivery (benchmarks/webhooks.py)."""

import json

import aiohttp

from benchmarks import probe
from picloud.runtime.webhooks import delivery_headers

# One pool per worker process, made on its event loop by the first delivery,
# as large as PiCloud's per-host pool (picloud/runtime/webhook_client.py).
WEBHOOK_POOL = 100
_session: aiohttp.ClientSession | None = None


def django_q_noop(n):
    probe.hit(n)


def _webhook_session() -> aiohttp.ClientSession:
    global _session
    if _session is None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=WEBHOOK_POOL)
        _session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=30)
        )
    return _session


try:
    from procrastinate.contrib.django import app as procrastinate_app
except ImportError:  # procrastinate is a benchmark-only dependency
    procrastinate_app = None

if procrastinate_app is not None:

    @procrastinate_app.task(name="bench.procrastinate_noop")
    def procrastinate_noop(n):
        probe.hit(n)

    @procrastinate_app.task(name="bench.procrastinate_webhook")
    async def procrastinate_webhook(url, secret, delivery, payload):
        """PiCloud's delivery of one KV event: the signed JSON POST, through
        a keep-alive pool; anything but a 2xx fails the job."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = delivery_headers(secret, body, delivery)
        async with _webhook_session().post(url, data=body, headers=headers) as response:
            await response.read()
            response.raise_for_status()
