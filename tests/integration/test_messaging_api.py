"""Topics and queues over HTTP: publish, send, receive, ack, nack; the same
tokens, order of checks and error format as invoke (committed data: the
views query on the invoker's own database threads)."""

import json
from datetime import datetime

import pytest

from outbox.models import OutboxEntry
from outbox.sync.invoke import close_default_invoker
from picloud.config import SandboxCeiling
from picloud.domain import tokens
from picloud.domain.authz import Role
from picloud.messaging import queues, topics
from picloud.models import QueueMessage
from tests.factories import AppFactory, MembershipFactory, ScriptFactory, UserFactory
from triggers.pg_repository import PgTriggerRepo
from triggers.repository import NewTrigger, PubsubSpec

pytestmark = pytest.mark.django_db(transaction=True)

TOPIC, QUEUE = "orders:created", "emails"
CONSUMER_SCOPES = ["script:invoke", "kv:write"]


@pytest.fixture(autouse=True)
def _close_invoker():
    yield
    close_default_invoker()


@pytest.fixture
def admin():
    """An app with the topic and the queue, and its admin."""
    admin = MembershipFactory(role=Role.AppAdmin.value)
    topics.create_topic(admin.app, TOPIC, principal=admin.principal)
    queues.create_queue(admin.app, QUEUE, principal=admin.principal)
    return admin


@pytest.fixture
def member(admin):
    return MembershipFactory(app=admin.app, role=Role.Developer.value)


@pytest.fixture
def token(member):
    return tokens.create_token(member.principal, name="tests", scopes=CONSUMER_SCOPES)[1]


def call(client, token, path, body=b"", **headers):
    """POST `body` (bytes as they are, anything else as JSON) to `path`."""
    if token is not None:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    data = body if isinstance(body, bytes) else json.dumps(body)
    return client.post(path, data=data, content_type="application/json", **headers)


def publish_path(app, topic=TOPIC):
    return f"/api/apps/{app}/topics/{topic}/publish"


def queue_path(app, action, queue=QUEUE):
    return f"/api/apps/{app}/queues/{queue}/{action}"


def pubsub_trigger(app, principal, pattern, *, name, enabled=True):
    """Through the repository, the one write path for triggers."""
    return PgTriggerRepo().create(
        NewTrigger(
            app_id=app.id,
            kind="pubsub",
            script_id=ScriptFactory(app=app).id,
            name=name,
            registered_by_principal=principal.id,
            enabled=enabled,
            pubsub=PubsubSpec(pattern),
        )
    )


def send(member, *bodies):
    return queues.send_batch(member.app, QUEUE, list(bodies), principal=member.principal)


def stored():
    """What a refused request must leave as it was: outbox rows, queue messages."""
    return OutboxEntry.objects.count(), QueueMessage.objects.count()


def assert_refused(response, status, code, says=""):
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"] == code, response.json()
    assert says in response.json()["message"], response.json()


# Publish


def test_publish_enqueues_one_row_per_matching_enabled_trigger(client, admin, member, token):
    admin_principal = admin.principal
    orders = pubsub_trigger(member.app, admin_principal, "orders:*", name="orders")
    exact = pubsub_trigger(member.app, admin_principal, TOPIC, name="exact")
    pubsub_trigger(member.app, admin_principal, "audit", name="other-topic")
    pubsub_trigger(member.app, admin_principal, "orders:*", name="off", enabled=False)
    elsewhere = AppFactory()
    pubsub_trigger(elsewhere, admin_principal, "*", name="another-apps")

    response = call(client, token, publish_path(member.app.slug), {"order": 7})

    assert response.status_code == 202, response.content
    reply = response.json()
    assert reply["deliveries"] == 2
    rows = list(OutboxEntry.objects.all())
    assert sorted(r.trigger_id for r in rows) == sorted([orders.id, exact.id]), (
        "one row per matching enabled trigger of this app, no more"
    )
    for row in rows:
        assert (row.source_kind, row.app_id) == ("pubsub", member.app.id)
        assert row.run_as_principal_id == admin_principal.id, "run as the trigger's registrant"
        assert row.payload["message"] == {"order": 7}
        assert row.payload["topic"] == TOPIC
        assert row.payload["message_id"] == reply["message_id"]


def test_publish_with_an_empty_body_publishes_an_empty_object(client, admin, member, token):
    pubsub_trigger(member.app, admin.principal, "*", name="all")
    response = call(client, token, publish_path(member.app.slug), b"")
    assert (response.status_code, response.json()["deliveries"]) == (202, 1)
    assert OutboxEntry.objects.get().payload["message"] == {}


def test_publish_to_a_topic_nobody_subscribes_to_delivers_nothing(client, member, token):
    for message in ([1, "two"], "text", None, 3.5):
        response = call(client, token, publish_path(member.app.slug), message)
        assert (response.status_code, response.json()["deliveries"]) == (202, 0)
    assert not OutboxEntry.objects.exists()


# Queues


def test_send_one_then_a_batch_with_ids_in_order(client, member, token):
    one = call(client, token, queue_path(member.app.slug, "messages"), {"message": {"to": "a"}})
    assert one.status_code == 201, one.content
    [first] = one.json()["ids"]
    batch = call(
        client,
        token,
        queue_path(member.app.slug, "messages"),
        {"messages": [{"to": "b"}, None, "c"]},
    )
    assert batch.status_code == 201, batch.content
    ids = batch.json()["ids"]
    assert len(ids) == 3 and first < ids[0] < ids[1] < ids[2]
    bodies = dict(QueueMessage.objects.values_list("id", "body"))
    assert bodies == {first: {"to": "a"}, ids[0]: {"to": "b"}, ids[1]: None, ids[2]: "c"}


def test_a_delayed_message_is_not_received_before_its_delay(client, member, token):
    sent = call(
        client, token, queue_path(member.app.slug, "messages"), {"message": 1, "delay": 600}
    )
    assert sent.status_code == 201, sent.content
    received = call(client, token, queue_path(member.app.slug, "receive"), {"count": 10})
    assert received.json() == {"messages": []}
    assert QueueMessage.objects.get().receive_count == 0


def test_receive_hides_what_it_returns_and_counts_the_receive(client, member, token):
    ids = send(member, {"n": 1}, {"n": 2}, {"n": 3})
    path = queue_path(member.app.slug, "receive")
    first = call(client, token, path, {"count": 2, "visibility_timeout": 60})
    assert first.status_code == 200, first.content
    messages = first.json()["messages"]
    assert [(m["id"], m["body"], m["receive_count"]) for m in messages] == [
        (ids[0], {"n": 1}, 1),
        (ids[1], {"n": 2}, 1),
    ]
    for m in messages:
        sent_at = datetime.fromisoformat(m["sent_at"])
        visible_at = datetime.fromisoformat(m["visible_at"])
        assert 59 <= (visible_at - sent_at).total_seconds() < 120, m
    # An empty body takes the defaults: one message.
    second = call(client, token, path)
    assert [m["id"] for m in second.json()["messages"]] == [ids[2]]
    assert call(client, token, path).json() == {"messages": []}, "all three are hidden"


def test_ack_deletes_and_answers_only_the_ids_it_deleted(client, member, token):
    ids = send(member, "a", "b")
    path = queue_path(member.app.slug, "ack")
    response = call(client, token, path, {"ids": [ids[0], 999_999_999]})
    assert (response.status_code, response.json()) == (200, {"acked": [ids[0]]})
    assert list(QueueMessage.objects.values_list("id", flat=True)) == [ids[1]]
    assert call(client, token, path, {"ids": [ids[0]]}).json() == {"acked": []}


def test_nack_gives_a_received_message_back(client, member, token):
    [sent] = send(member, "job")
    receive = queue_path(member.app.slug, "receive")
    [got] = call(client, token, receive, {"visibility_timeout": 600}).json()["messages"]
    assert got["id"] == sent
    assert call(client, token, receive).json() == {"messages": []}
    response = call(client, token, queue_path(member.app.slug, "nack"), {"ids": [sent]})
    assert (response.status_code, response.json()) == (200, {"nacked": [sent]})
    [again] = call(client, token, receive).json()["messages"]
    assert (again["id"], again["receive_count"]) == (sent, 2)
    later = call(client, token, queue_path(member.app.slug, "nack"), {"ids": [sent], "delay": 600})
    assert later.json() == {"nacked": [sent]}
    assert call(client, token, receive).json() == {"messages": []}, "given back for later"


# Refusals. Each endpoint with a body it would accept, and the scope it needs.

ENDPOINTS = {
    "publish": (lambda app: publish_path(app), {"x": 1}, "script:invoke"),
    "send": (lambda app: queue_path(app, "messages"), {"message": 1}, "script:invoke"),
    "receive": (lambda app: queue_path(app, "receive"), {}, "kv:write"),
    "ack": (lambda app: queue_path(app, "ack"), {"ids": [1]}, "kv:write"),
    "nack": (lambda app: queue_path(app, "nack"), {"ids": [1]}, "kv:write"),
}


@pytest.fixture(params=sorted(ENDPOINTS))
def endpoint(request):
    return ENDPOINTS[request.param]


def test_401_without_a_valid_token(client, member, token, endpoint):
    path, body, _ = endpoint
    before = stored()
    response = call(client, None, path(member.app.slug), body)
    assert_refused(response, 401, "unauthenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")
    for header in ("Basic abc", "Bearer pct_" + "x" * 43):
        response = call(client, None, path(member.app.slug), body, HTTP_AUTHORIZATION=header)
        assert_refused(response, 401, "unauthenticated")
    revoked, raw = tokens.create_token(member.principal, name="r", scopes=CONSUMER_SCOPES)
    tokens.revoke(revoked)
    assert_refused(call(client, raw, path(member.app.slug), body), 401, "unauthenticated")
    assert stored() == before


def test_403_for_a_token_without_the_endpoints_scope(client, member, endpoint):
    path, body, scope = endpoint
    others = [s for s in ("app:read", "kv:read", "kv:write", "script:invoke") if s != scope]
    _, raw = tokens.create_token(member.principal, name="narrow", scopes=others)
    before = stored()
    response = call(client, raw, path(member.app.slug), body)
    assert_refused(response, 403, "forbidden", f"lacks the {scope} scope")
    assert stored() == before


def test_403_for_a_viewer_whatever_the_token_holds(client, member, token, endpoint):
    path, body, scope = endpoint
    member.role = Role.Viewer.value
    member.save()
    before = stored()
    response = call(client, token, path(member.app.slug), body)
    assert_refused(response, 403, "forbidden", f"does not allow {scope}")
    assert "developer or admin" in response.json()["message"]
    assert stored() == before


def test_404_for_unknown_apps_and_names_and_outsiders_cannot_tell(client, member, token, endpoint):
    path, body, _ = endpoint
    outsiders = MembershipFactory(role=Role.AppAdmin.value)
    topics.create_topic(outsiders.app, TOPIC, principal=outsiders.principal)
    queues.create_queue(outsiders.app, QUEUE, principal=outsiders.principal)
    before = stored()
    unknown_app = call(client, token, path("no-such-app"), body)
    not_mine = call(client, token, path(outsiders.app.slug), body)
    assert_refused(unknown_app, 404, "not_found")
    assert_refused(not_mine, 404, "not_found")
    assert (
        unknown_app.json()["message"].replace("no-such-app", outsiders.app.slug)
        == not_mine.json()["message"]
    ), "the answers differ only by the name asked for"
    assert stored() == before


@pytest.mark.parametrize(
    "name", ["no-such-name", "a%00b", "x" * 300, "-starts-badly", "sp%20ace", "caf%C3%A9"]
)
def test_404_for_a_topic_or_queue_the_app_does_not_have(client, member, token, name):
    before = stored()
    for what, path, body in (
        ("topic", publish_path(member.app.slug, name), {}),
        ("queue", queue_path(member.app.slug, "messages", name), {"message": 1}),
        ("queue", queue_path(member.app.slug, "receive", name), {}),
        ("queue", queue_path(member.app.slug, "ack", name), {"ids": [1]}),
        ("queue", queue_path(member.app.slug, "nack", name), {"ids": [1]}),
    ):
        # The endpoint's own 404, not the one for paths no endpoint has.
        assert_refused(call(client, token, path, body), 404, "not_found", f"no {what} ")
    # A topic is not a queue, nor the other way round.
    assert_refused(call(client, token, publish_path(member.app.slug, QUEUE)), 404, "not_found")
    response = call(client, token, queue_path(member.app.slug, "receive", TOPIC))
    assert_refused(response, 404, "not_found", f"no queue {TOPIC!r}")
    assert stored() == before


def test_404_comes_before_a_bad_body(client, member, token):
    response = call(client, token, queue_path(member.app.slug, "messages", "nope"), b"{bad")
    assert_refused(response, 404, "not_found")


def test_a_token_limited_to_another_app_reaches_nothing_here(client, member, endpoint):
    path, body, _ = endpoint
    other = MembershipFactory(principal=member.principal, role=Role.Developer.value).app
    _, raw = tokens.create_token(member.principal, name="x", scopes=CONSUMER_SCOPES, app=other)
    before = stored()
    assert_refused(call(client, raw, path(member.app.slug), body), 404, "not_found")
    assert stored() == before


def test_a_token_limited_to_the_app_works_there(client, member):
    _, raw = tokens.create_token(member.principal, name="x", scopes=CONSUMER_SCOPES, app=member.app)
    response = call(client, raw, queue_path(member.app.slug, "messages"), {"message": 1})
    assert response.status_code == 201, response.content


def test_superuser_tokens_reach_every_app(client, member):
    ops = UserFactory(is_superuser=True)
    _, raw = tokens.create_token(ops.principal, name="ops", scopes=CONSUMER_SCOPES)
    response = call(client, raw, queue_path(member.app.slug, "messages"), {"message": 1})
    assert response.status_code == 201, response.content
    assert call(client, raw, queue_path(member.app.slug, "receive")).status_code == 200


def test_405_other_methods(client, member, token, endpoint):
    path, _, _ = endpoint
    for method in ("get", "put", "delete"):
        response = getattr(client, method)(
            path(member.app.slug), HTTP_AUTHORIZATION=f"Bearer {token}"
        )
        assert_refused(response, 405, "method_not_allowed")
        assert response["Allow"] == "POST"


def test_400_invalid_json(client, member, token, endpoint):
    path, _, _ = endpoint
    before = stored()
    for body in (b"{not json", b'{"x": NaN}', b'{"a": "x\\u0000y"}', b"\xff\xfe"):
        assert_refused(call(client, token, path(member.app.slug), body), 400, "invalid_json")
    assert stored() == before


@pytest.mark.parametrize(
    ("action", "body", "error", "says"),
    [
        ("messages", {}, "invalid_request", '"message" (one message) or "messages"'),
        ("messages", b"", "invalid_request", '"message" (one message) or "messages"'),
        ("messages", [1], "invalid_request", "send a JSON object"),
        ("messages", {"message": 1, "messages": [2]}, "invalid_request", "either"),
        ("messages", {"message": 1, "dealy": 5}, "invalid_request", "unknown field(s) 'dealy'"),
        ("messages", {"messages": "abc"}, "invalid_messages", "a list of messages"),
        ("messages", {"messages": {"a": 1}}, "invalid_messages", "a list of messages"),
        ("messages", {"messages": []}, "invalid_messages", "1 to 1000"),
        ("messages", {"messages": [0] * 1001}, "invalid_messages", "1 to 1000"),
        ("messages", {"message": 1, "delay": -1}, "invalid_delay", "0 to 43200"),
        ("messages", {"message": 1, "delay": 43_201}, "invalid_delay", "0 to 43200"),
        ("messages", {"message": 1, "delay": "5"}, "invalid_delay", "0 to 43200"),
        ("messages", {"message": 1, "delay": True}, "invalid_delay", "0 to 43200"),
        ("receive", {"count": 0}, "invalid_count", "1 to 100"),
        ("receive", {"count": 101}, "invalid_count", "1 to 100"),
        ("receive", {"count": "2"}, "invalid_count", "1 to 100"),
        ("receive", {"count": 1.5}, "invalid_count", "1 to 100"),
        ("receive", {"visibility_timeout": -1}, "invalid_visibility_timeout", "0 to 43200"),
        ("receive", {"visibility_timeout": None}, "invalid_visibility_timeout", "0 to 43200"),
        ("receive", {"vt": 30}, "invalid_request", "unknown field(s) 'vt'"),
        ("receive", "count=2", "invalid_request", "send a JSON object"),
        ("ack", {}, "invalid_ids", "a list of message ids"),
        ("ack", {"ids": 5}, "invalid_ids", "a list of message ids"),
        ("ack", {"ids": []}, "invalid_ids", "1 to 1000 message ids"),
        ("ack", {"ids": [0]}, "invalid_ids", "positive integer"),
        ("ack", {"ids": [True]}, "invalid_ids", "positive integer"),
        ("ack", {"ids": ["1"]}, "invalid_ids", "positive integer"),
        ("ack", {"ids": [2**63]}, "invalid_ids", "positive integer"),
        ("ack", {"ids": [1], "delay": 5}, "invalid_request", "unknown field(s) 'delay'"),
        ("nack", {"ids": [1], "delay": "later"}, "invalid_delay", "0 to 43200"),
        ("nack", {"delay": 5}, "invalid_ids", "a list of message ids"),
    ],
)
def test_400_bad_requests_name_the_field_and_what_is_allowed(
    client, member, token, action, body, error, says
):
    [kept] = send(member, "kept")
    before = stored()
    response = call(client, token, queue_path(member.app.slug, action), body)
    assert_refused(response, 400, error, says)
    assert stored() == before
    message = QueueMessage.objects.get(pk=kept)
    assert message.receive_count == 0, "a refused request received nothing"


def test_413_body_over_the_payload_cap(client, member, token, endpoint, override_config):
    path, _, _ = endpoint
    override_config(SandboxCeiling(max_payload_bytes=2_000))
    before = stored()
    body = {"data": "x" * 2_100}
    response = call(client, token, path(member.app.slug), body)
    assert_refused(response, 413, "payload_too_large", "PICLOUD_SANDBOX_MAX_PAYLOAD_BYTES")
    assert stored() == before


def test_413_message_over_its_own_limit_inside_the_body_cap(
    client, admin, member, token, override_config
):
    """A message's limit leaves room for the event's envelope under the
    payload cap: a body under the cap can still hold a message over it."""
    override_config(SandboxCeiling(max_payload_bytes=2_000))
    pubsub_trigger(member.app, admin.principal, "*", name="all")
    message = {"data": "x" * 1_500}
    before = stored()
    response = call(client, token, publish_path(member.app.slug), message)
    assert_refused(response, 413, "payload_too_large", "at most 976 are allowed")
    send_path = queue_path(member.app.slug, "messages")
    response = call(client, token, send_path, {"message": message})
    assert_refused(response, 413, "payload_too_large", "at most 976 are allowed")
    response = call(client, token, send_path, {"messages": [1, message]})
    assert_refused(response, 413, "payload_too_large", "message 1:")
    assert stored() == before, "a batch is all or nothing"


def test_publish_and_send_wait_for_the_wal_flush_on_the_invokers_threads():
    """The invoker's threads commit without waiting for the flush (a lost
    invocation ends as its caller's error); a message answered 201 or 202
    must survive a crash of PostgreSQL."""
    from django.db import connection

    from outbox.messaging_api import _durable
    from outbox.sync.invoke import default_invoker

    def show():
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            return cursor.fetchone()[0]

    def setting(durable):
        if not durable:
            return show()
        with _durable():
            return show()

    run_db = default_invoker().run_db
    assert (run_db(setting, False), run_db(setting, True)) == ("off", "on")


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("publish-topic", "/api/apps/demo/topics/orders:created/publish"),
        ("queue-send", "/api/apps/demo/queues/emails/messages"),
        ("queue-receive", "/api/apps/demo/queues/emails/receive"),
        ("queue-ack", "/api/apps/demo/queues/emails/ack"),
        ("queue-nack", "/api/apps/demo/queues/emails/nack"),
    ],
)
def test_url_names(name, path):
    from django.urls import reverse

    kwargs = {"app_slug": "demo"}
    kwargs |= {"topic": TOPIC} if name == "publish-topic" else {"queue": QUEUE}
    assert reverse(name, kwargs=kwargs) == path
