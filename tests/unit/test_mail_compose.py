"""What a script's message may hold (picloud.mail.compose): nothing of it
starts a header of its own, and the sender is always the app's."""

import pytest
from django.core.exceptions import ValidationError

from picloud.db.storable import jsonb_text_size
from picloud.mail.addresses import is_app_address, route
from picloud.mail.compose import MAX_REPLY_TO, compose, reply_fields

DOMAIN = "mail.test"
# Every character Python's email package (str.splitlines) ends a line at,
# besides CR and LF, and other controls.
LINE_BREAKERS = [
    "\r",
    "\n",
    "\x0b",
    "\x0c",
    "\x1c",
    "\x1d",
    "\x1e",
    "\x85",
    "\u2028",
    "\u2029",
    "\x00",
    "\x7f",
]


def message(**fields):
    return compose(
        "shop",
        **{"to": "bob@example.com", "subject": "Hi", "text": "t", **fields},
        domain=DOMAIN,
        max_bytes=1024 * 1024,
    )


@pytest.mark.parametrize("char", LINE_BREAKERS, ids=repr)
@pytest.mark.parametrize(
    "field,value",
    [
        ("subject", "hi{}Bcc : evil@example.com"),
        ("headers", {"X-Tag": "a{}Bcc : evil@example.com"}),
        ("from_", "Shop{} <sales@shop.mail.test>"),
        ("to", "bob@example.com{}"),
    ],
)
def test_nothing_may_start_a_header_of_its_own(char, field, value):
    if isinstance(value, dict):
        value = {k: v.format(char) for k, v in value.items()}
    else:
        value = value.format(char)
    with pytest.raises(ValidationError) as refused:
        message(**{field: value})
    assert field in refused.value.message_dict


def test_the_sender_is_the_apps_own_domain_only():
    assert message()["from"] == "noreply@shop.mail.test"
    assert message(from_="Shop <sales@shop.mail.test>")["from"] == "Shop <sales@shop.mail.test>"
    for bad in [
        "boss@bank.example",
        "x@crm.mail.test",
        "x@shop.mail.test.evil",
        "a@shop.mail.test, b@evil.example",
        "evil@other.example)<a@shop.mail.test>",
    ]:
        with pytest.raises(ValidationError, match="not an address of app 'shop'"):
            message(from_=bad)


def test_an_app_whose_slug_is_no_host_label_sends_nothing():
    # Slugs "Shop" and "shop" would otherwise name one mail domain.
    assert not is_app_address("x@shop.mail.test", "Shop", DOMAIN)
    with pytest.raises(ValidationError, match="slug is not a lower-case host label"):
        compose("Shop", to="b@example.com", subject="s", text="t", domain=DOMAIN, max_bytes=10**6)
    assert route("x@Shop.mail.test", DOMAIN).app_slug == "shop", (
        "routes to the lower-case slug only"
    )


def test_the_stored_message_stays_under_the_payload_cap_as_jsonb():
    # Quotes double as JSON: measured as stored, not as typed.
    with pytest.raises(ValidationError, match="PICLOUD_SANDBOX_MAX_PAYLOAD_BYTES"):
        compose(
            "shop",
            to="b@example.com",
            subject="s",
            text='"' * 40_000,
            domain=DOMAIN,
            max_bytes=50_000,
        )
    fits = compose(
        "shop", to="b@example.com", subject="s", text='"' * 20_000, domain=DOMAIN, max_bytes=50_000
    )
    assert jsonb_text_size({"email": fits}) <= 50_000


def test_reply_to_addresses_are_capped():
    with pytest.raises(ValidationError, match=f"at most {MAX_REPLY_TO}"):
        message(reply_to=[f"r{i}@example.com" for i in range(MAX_REPLY_TO + 1)])


def event(**message_fields):
    return {"source": "email", "message": {"subject": "Order 7", **message_fields}}


def test_a_reply_goes_to_one_address_only():
    many = [{"name": "", "address": f"victim{i}@example.com"} for i in range(50)]
    fields = reply_fields(event(reply_to=many, **{"from": {"address": "a@example.com"}}), None)
    assert fields["to"] == ["victim0@example.com"]
    assert reply_fields(event(**{"from": {"address": "a@example.com"}}), None)["to"] == [
        "a@example.com"
    ]
    with pytest.raises(ValidationError, match="no From or Reply-To"):
        reply_fields(event(), None)


@pytest.mark.parametrize(
    "message_id",
    ["<x@y>\x1c\x1cCheap pills", "<" + "x" * 300 + "@y>", "not-an-id", "<a b@c>"],
    ids=repr,
)
def test_a_reply_threads_only_by_well_formed_ids(message_id):
    fields = reply_fields(
        event(message_id=message_id, **{"from": {"address": "a@example.com"}}), None
    )
    assert "in_reply_to" not in fields and "references" not in fields


def test_a_reply_threads_by_the_thread_and_quotes_no_line_break_of_the_subject():
    fields = reply_fields(
        event(
            subject="Order\x0b7\u2028Bcc: x",
            message_id="<m7@example.com>",
            references=["<m1@example.com>", "<bad\x1c>"],
            **{"from": {"address": "a@example.com"}},
        ),
        None,
    )
    assert fields["in_reply_to"] == "<m7@example.com>"
    assert fields["references"] == ["<m1@example.com>", "<m7@example.com>"]
    assert fields["subject"] == "Re: Order 7 Bcc: x"
