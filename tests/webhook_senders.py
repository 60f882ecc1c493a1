"""The two webhook senders behind one call: webhooks.post (http.client in a
thread) and WebhookClient.post (aiohttp on an event loop). The webhook tests
run against both, so the two cannot drift apart."""

from __future__ import annotations

import asyncio

from picloud.config import WebhookConfig
from picloud.runtime import webhooks
from picloud.runtime.webhook_client import GuardedResolver, WebhookClient


def post_with_client(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float,
    max_response_bytes: int,
    config: WebhookConfig | None = None,
) -> webhooks.WebhookResponse:
    """WebhookClient.post, called like webhooks.post: a client of its own on
    an event loop of its own, closed after the one request."""

    async def once() -> webhooks.WebhookResponse:
        client = WebhookClient(config)
        try:
            return await client.post(
                url, body, headers, timeout=timeout, max_response_bytes=max_response_bytes
            )
        finally:
            await client.close()

    return asyncio.run(once())


def resolve_with_resolver(host: str, port: int, config: WebhookConfig) -> str:
    """GuardedResolver's first address: the one aiohttp tries first."""
    return asyncio.run(GuardedResolver(config).resolve(host, port))[0]["host"]


SENDERS = {"http.client": webhooks.post, "aiohttp": post_with_client}
RESOLVERS = {"http.client": webhooks.resolve_destination, "aiohttp": resolve_with_resolver}
