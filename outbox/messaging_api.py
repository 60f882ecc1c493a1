"""HTTP: publish to an app's topics, and use its queues (docs/api.md).

    POST /api/apps/<app>/topics/<topic>/publish     the body is the message
    POST /api/apps/<app>/queues/<queue>/messages    send one message or a batch
    POST /api/apps/<app>/queues/<queue>/receive
    POST /api/apps/<app>/queues/<queue>/ack
    POST /api/apps/<app>/queues/<queue>/nack

The same tokens, error format and order of checks as invoke (outbox/api.py):

    401 no valid token  ->  403 token lacks the scope  ->
    404 app, topic or queue unknown, or the app out of reach  ->
    403 role lacks the scope  ->  413 body or message too large  ->
    400 invalid JSON, request or field

Publishing and sending need script:invoke (they make scripts run: the
subscribers', the consumers'); receiving, acknowledging and giving back
need kv:write (a receive changes the message). The views only translate:
what a message, count, delay or id may be is the Python API's to say
(picloud.messaging), and its ValidationErrors become 400 ``invalid_<field>``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import HttpRequest, JsonResponse

from outbox.api import ApiError, api_endpoint, authorize_app, bearer_token, invalid, read_payload
from outbox.sync.invoke import default_invoker
from picloud.config import SandboxCeiling
from picloud.db.sqlexec import execute, model_from_row
from picloud.domain.authz import Capability, _AppCapability
from picloud.messaging import queues, topics
from picloud.messaging.names import MessageTooLarge
from picloud.models import App, Principal


@dataclass(frozen=True)
class _Source:
    what: str  # "topic" or "queue", as messages name it
    find: Callable[[App, str], object]  # the Python API's lookup
    missing: type[LookupError]  # what that lookup raises

    def not_found(self, app_slug: str, name: str) -> ApiError:
        # One answer for an unknown name and an app out of reach.
        return ApiError(404, "not_found", f"no {self.what} {name[:200]!r} in app {app_slug!r}")


TOPIC = _Source("topic", topics.get_topic, topics.TopicNotFound)
QUEUE = _Source("queue", queues.get_queue, queues.QueueNotFound)
IDS_RULE = f'"ids" (a list of 1 to {queues.MAX_IDS} message ids)'


@api_endpoint("POST", "publishing")
def publish_view(request: HttpRequest, app_slug: str, topic: str) -> JsonResponse:
    """The body (any JSON; empty means ``{}``) is the message. 202: published,
    its deliveries enqueued; the subscribers' scripts run later."""
    run_db, principal, app = _authorized(request, app_slug, Capability.TopicPublish, TOPIC, topic)
    message = read_payload(request, _max_body())
    result = run_db(_publish, principal, app, topic, message)
    return JsonResponse(
        {"message_id": str(result.message_id), "deliveries": result.deliveries}, status=202
    )


@api_endpoint("POST", "sending to a queue")
def send_view(request: HttpRequest, app_slug: str, queue: str) -> JsonResponse:
    """``{"message": <JSON>}`` or ``{"messages": [<JSON>, ...]}``, and
    optionally ``"delay"`` (seconds). 201 with the new messages' ids, in order."""
    run_db, principal, app = _authorized(request, app_slug, Capability.QueueSend, QUEUE, queue)
    body = _fields(
        read_payload(request, _max_body()),
        ("message", "messages", "delay"),
        f'"message" (one message) or "messages" (a list of 1 to {queues.MAX_SEND_BATCH}), '
        f'and optionally "delay" (seconds, 0 to {queues.MAX_DELAY_S})',
    )
    if ("message" in body) == ("messages" in body):
        raise ApiError(
            400, "invalid_request", 'send either "message" (one message) or "messages" (a list)'
        )
    messages = body["messages"] if "messages" in body else [body["message"]]
    ids = run_db(_send, principal, app, queue, messages, body.get("delay", 0))
    return JsonResponse({"ids": ids}, status=201)


@api_endpoint("POST", "receiving from a queue")
def receive_view(request: HttpRequest, app_slug: str, queue: str) -> JsonResponse:
    """``{"count": 1..100, "visibility_timeout": seconds}`` (defaults 1 and
    30; an empty body takes both). 200 with the messages received, each
    hidden from other receivers until its ``visible_at``."""
    run_db, principal, app = _authorized(request, app_slug, Capability.QueueConsume, QUEUE, queue)
    body = _fields(
        read_payload(request, _max_body()),
        ("count", "visibility_timeout"),
        f'optionally "count" (1 to {queues.MAX_RECEIVE}, default 1) and "visibility_timeout" '
        f"(seconds, 0 to {queues.MAX_DELAY_S}, default 30)",
    )
    count, timeout = body.get("count", 1), body.get("visibility_timeout", 30)
    received = run_db(_receive, principal, app, queue, count, timeout)
    return JsonResponse(
        {
            "messages": [
                {
                    "id": m.id,
                    "body": m.body,
                    "receive_count": m.receive_count,
                    "sent_at": m.sent_at.isoformat(),
                    "visible_at": m.visible_at.isoformat(),
                }
                for m in received
            ]
        }
    )


@api_endpoint("POST", "acknowledging queue messages")
def ack_view(request: HttpRequest, app_slug: str, queue: str) -> JsonResponse:
    """``{"ids": [...]}``: delete these messages. 200 with the ids that were
    there to delete (not those already gone or held by a trigger's batch)."""
    run_db, principal, app = _authorized(request, app_slug, Capability.QueueConsume, QUEUE, queue)
    body = _fields(read_payload(request, _max_body()), ("ids",), IDS_RULE)
    return JsonResponse({"acked": run_db(_ack, principal, app, queue, body.get("ids"))})


@api_endpoint("POST", "giving back queue messages")
def nack_view(request: HttpRequest, app_slug: str, queue: str) -> JsonResponse:
    """``{"ids": [...], "delay": seconds}``: visible again after `delay`
    (default 0). 200 with the ids given back."""
    run_db, principal, app = _authorized(request, app_slug, Capability.QueueConsume, QUEUE, queue)
    body = _fields(
        read_payload(request, _max_body()),
        ("ids", "delay"),
        f'{IDS_RULE} and optionally "delay" (seconds, 0 to {queues.MAX_DELAY_S}, default 0)',
    )
    nacked = run_db(_nack, principal, app, queue, body.get("ids"), body.get("delay", 0))
    return JsonResponse({"nacked": nacked})


def _authorized(
    request: HttpRequest,
    app_slug: str,
    capability: type[_AppCapability],
    source: _Source,
    name: str,
) -> tuple[Callable[..., Any], Principal, App]:
    """The invoker's database threads to run on, the caller and the app;
    ApiError unless the caller may. Views call it before reading the body:
    nobody gets to make us read a large body for free."""
    run_db = default_invoker().run_db
    principal, app = run_db(_authorize, bearer_token(request), app_slug, capability, source, name)
    return run_db, principal, app


def _max_body() -> int:
    # Every endpoint takes bodies up to the one cap a proxy in front is set
    # to (docs/api.md); a message's own, smaller limit is the Python API's.
    return SandboxCeiling.current().max_payload_bytes


def _fields(body: Any, allowed: tuple[str, ...], rule: str) -> dict[str, Any]:
    """`body` if it is an object of `allowed` fields only; else 400
    ``invalid_request`` saying what to send (`rule`). A misspelt optional
    field is refused, not silently ignored for its default."""
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", f"send a JSON object with {rule}")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        shown = ", ".join(repr(name[:40]) for name in unknown[:5])
        raise ApiError(400, "invalid_request", f"unknown field(s) {shown}; send {rule}")
    return body


# On the invoker's database threads.


def _authorize(
    raw_token: str, app_slug: str, capability: type[_AppCapability], source: _Source, name: str
) -> tuple[Principal, App]:
    """The caller and the app, if the token and role allow `capability`
    there and the app has the topic or queue; ApiError otherwise."""

    def exists(row: dict[str, Any]) -> bool:
        # A name no topic or queue can have is not looked up (find says so).
        try:
            source.find(_app(row["app_id"], app_slug), name)
        except source.missing:
            return False
        return True

    not_found = source.not_found(app_slug, name).message
    principal, row = authorize_app(
        raw_token, app_slug, capability, not_found=not_found, exists=exists
    )
    return principal, _app(row["app_id"], app_slug)


def _app(app_id, app_slug: str) -> App:
    # What the Python API reads of an app (its id, and its slug for
    # messages and events), without loading it again.
    return model_from_row(App, {"id": app_id, "slug": app_slug})


def _publish(principal: Principal, app: App, topic: str, message: Any) -> topics.PublishResult:
    with _answers(TOPIC, app, topic), _durable():
        return topics.publish(app, topic, message, principal=principal)


def _send(principal: Principal, app: App, queue: str, messages: Any, delay: Any) -> list[int]:
    with _answers(QUEUE, app, queue), _durable():
        return queues.send_batch(app, queue, messages, principal=principal, delay=delay)


def _receive(
    principal: Principal, app: App, queue: str, count: Any, visibility_timeout: Any
) -> list[queues.Message]:
    with _answers(QUEUE, app, queue):
        return queues.receive(
            app, queue, principal=principal, count=count, visibility_timeout=visibility_timeout
        )


def _ack(principal: Principal, app: App, queue: str, ids: Any) -> list[int]:
    with _answers(QUEUE, app, queue):
        return queues.ack(app, queue, ids, principal=principal)


def _nack(principal: Principal, app: App, queue: str, ids: Any, delay: Any) -> list[int]:
    with _answers(QUEUE, app, queue):
        return queues.nack(app, queue, ids, principal=principal, delay=delay)


@contextmanager
def _answers(source: _Source, app: App, name: str) -> Iterator[None]:
    """The Python API's refusals as the API's answers. The caller was
    authorized a moment ago: a 404 or 403 here means the topic or queue was
    deleted, or the role taken away, since."""
    try:
        yield
    except MessageTooLarge as exc:
        raise ApiError(413, "payload_too_large", exc.messages[0]) from None
    except ValidationError as exc:
        raise invalid(exc) from None
    except source.missing:
        raise source.not_found(app.slug, name) from None
    except PermissionDenied as exc:
        raise ApiError(403, "forbidden", str(exc)) from None


@contextmanager
def _durable() -> Iterator[None]:
    """A transaction whose commit waits for the WAL flush. The invoker's
    threads commit without waiting (a lost invocation ends as its caller's
    error or 504), but a 201 or 202 says the message is kept: a crash of
    PostgreSQL just after must not lose it."""
    with transaction.atomic():
        execute("SET LOCAL synchronous_commit TO on")
        yield
