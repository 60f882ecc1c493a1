"""Which addresses a webhook may reach: only globally routable unicast ones.

The tables below restate the IANA special-purpose address registries
(iana.org/assignments/iana-ipv4-special-registry and
iana-ipv6-special-registry) and the multicast and reserved blocks, on purpose
independently of picloud/runtime/webhooks.py: the test is the specification.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest

from picloud.config import WebhookConfig
from picloud.runtime import webhooks
from picloud.runtime.webhooks import WebhookRefused, _is_public
from tests.helpers import fake_resolver
from tests.webhook_senders import RESOLVERS

# Every block here is refused, including those the registry marks "globally
# reachable" (anycast service blocks such as AS112, AMT, PCP/TURN anycast):
# none of them is a webhook receiver.
IPV4_SPECIAL = [
    "0.0.0.0/8",  # "this network"; 0.0.0.0 connects to the local host on Linux
    "10.0.0.0/8",  # private use
    "100.64.0.0/10",  # shared address space (CGNAT, Tailscale, Alibaba metadata)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link local (cloud metadata services)
    "172.16.0.0/12",  # private use
    "192.0.0.0/24",  # IETF protocol assignments
    "192.0.0.0/29",  # IPv4 service continuity prefix
    "192.0.0.8/32",  # IPv4 dummy address
    "192.0.0.9/32",  # PCP anycast
    "192.0.0.10/32",  # TURN anycast
    "192.0.0.170/31",  # NAT64/DNS64 discovery
    "192.0.2.0/24",  # documentation (TEST-NET-1)
    "192.31.196.0/24",  # AS112-v4
    "192.52.193.0/24",  # AMT
    "192.88.99.0/24",  # deprecated 6to4 relay anycast
    "192.168.0.0/16",  # private use
    "192.175.48.0/24",  # direct delegation AS112 service
    "198.18.0.0/15",  # benchmarking
    "198.51.100.0/24",  # documentation (TEST-NET-2)
    "203.0.113.0/24",  # documentation (TEST-NET-3)
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved
    "255.255.255.255/32",  # limited broadcast
]

IPV6_SPECIAL = [
    "::/128",  # unspecified
    "::1/128",  # loopback
    "::/96",  # IPv4-compatible (deprecated)
    "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation
    "100::/64",  # discard-only
    "100:0:0:1::/64",  # dummy IPv6 prefix
    "2001::/23",  # IETF protocol assignments
    "2001::/32",  # Teredo
    "2001:1::1/128",  # PCP anycast
    "2001:1::2/128",  # TURN anycast
    "2001:1::3/128",  # DNS-SD service registration protocol anycast
    "2001:2::/48",  # benchmarking
    "2001:3::/32",  # AMT
    "2001:4:112::/48",  # AS112-v6
    "2001:10::/28",  # deprecated ORCHID
    "2001:20::/28",  # ORCHIDv2
    "2001:30::/28",  # drone remote ID
    "2001:db8::/32",  # documentation
    "2002::/16",  # 6to4
    "2620:4f:8000::/48",  # direct delegation AS112 service
    "3fff::/20",  # documentation
    "5f00::/16",  # segment routing (SRv6) SIDs
    "fc00::/7",  # unique local
    "fe80::/10",  # link-local
    "fec0::/10",  # deprecated site-local
    "ff00::/8",  # multicast
    # Outside 2000::/3, the only block IANA allocates global unicast from:
    "4000::/3",
    "8000::/1",
    "400::/6",
]


def edges(block: str) -> list[str]:
    """The first, a middle and the last address of a block."""
    network = ipaddress.ip_network(block)
    middle = network.network_address + network.num_addresses // 2
    return sorted({str(network[0]), str(middle), str(network[-1])})


SPECIAL_ADDRESSES = sorted({a for block in IPV4_SPECIAL + IPV6_SPECIAL for a in edges(block)})

# The ones the issue names, and the IPv6 forms that carry a refused IPv4 address.
NAMED_REFUSED = [
    "100.100.100.200",  # Alibaba Cloud metadata, in the shared address space
    "169.254.169.254",  # AWS, GCP, Azure metadata
    "0.0.0.0",
    "::ffff:169.254.169.254",  # IPv4-mapped
    "::ffff:127.0.0.1",
    "::ffff:100.100.100.200",
    "::169.254.169.254",  # IPv4-compatible
    "64:ff9b::a9fe:a9fe",  # NAT64 well-known prefix, 169.254.169.254 inside
    "64:ff9b::169.254.169.254",
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a64:6464",  # NAT64 of 10.100.100.100
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2002:808:808::1",  # 6to4 is refused whatever is inside
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo (RFC 4380's example)
    "fd00:ec2::254",  # AWS metadata over IPv6 (unique local)
    "fe80::1%eth0",  # zone id
    "[fe80::1%eth0]",  # as written in a URL
    "fe80::a9fe:a9fe",
]

PUBLIC = [
    "2a00::5efe:8.8.8.8",  # ISATAP form of a public address: what it tunnels to is public
    "8.8.8.8",
    "1.1.1.1",
    "9.9.9.9",
    "93.184.216.34",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",  # 2001:4860:: is outside 2001::/23
    "2620:fe::fe",  # 2620:: next to the AS112 block
    # Right next to refused blocks:
    "100.63.255.255",
    "100.128.0.0",
    "172.15.255.255",
    "172.32.0.0",
    "192.0.1.1",
    "198.17.255.255",
    "198.20.0.0",
    "223.255.255.255",
    "2001:200::1",
    "2003::1",
    "3ffe::1",
    # IPv4-mapped and NAT64 (64:ff9b::/96) addresses are judged by the IPv4
    # address inside: a dual-stack socket or a NAT64 gateway connects to it.
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
]


@pytest.mark.parametrize("address", SPECIAL_ADDRESSES + NAMED_REFUSED)
def test_special_purpose_addresses_are_refused(address):
    assert not _is_public(address), f"{address} must not be a webhook destination"


@pytest.mark.parametrize("address", PUBLIC)
def test_globally_routable_unicast_addresses_are_allowed(address):
    assert _is_public(address), f"{address} is globally routable and must be allowed"


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("100.100.100.200", ["100.64.0.0/10", "shared"]),
        ("::ffff:169.254.169.254", ["IPv4-mapped", "169.254.169.254", "link-local"]),
        ("64:ff9b::a9fe:a9fe", ["NAT64", "169.254.169.254", "link-local"]),
        ("2002:a9fe:a9fe::1", ["6to4", "169.254.169.254"]),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", ["Teredo", "65.54.227.120"]),
        ("::169.254.169.254", ["IPv4-compatible", "169.254.169.254"]),
        ("2a00::5efe:127.0.0.1", ["ISATAP", "127.0.0.1", "loopback"]),
        ("2a00::200:5efe:169.254.169.254", ["ISATAP", "169.254.169.254", "link-local"]),
        ("5f00::1", ["2000::/3"]),
        ("not-an-address", ["not an IP address"]),
    ],
)
def test_the_reason_names_the_kind_and_any_ipv4_inside(address, words):
    reason = webhooks.refusal_reason(address)
    for word in words:
        assert word in reason, f"{word!r} missing from the reason for {address}: {reason!r}"


GUARDED = WebhookConfig(allow_private=False)
UNGUARDED = WebhookConfig(allow_private=True)


@pytest.fixture(params=sorted(RESOLVERS))
def resolve_destination(request):
    """webhooks.resolve_destination, and the async client's GuardedResolver."""
    return RESOLVERS[request.param]


def test_a_name_with_one_private_address_among_public_ones_is_refused(
    monkeypatch, resolve_destination
):
    getaddrinfo, _ = fake_resolver({"hooks.example": ["8.8.8.8", "2606:4700::1", "10.0.0.5"]})
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(WebhookRefused) as refused:
        resolve_destination("hooks.example", 443, GUARDED)
    message = str(refused.value)
    for part in ("'hooks.example'", "10.0.0.5", "PICLOUD_WEBHOOK_ALLOW_PRIVATE=true"):
        assert part in message, f"the refusal should name {part}: {message}"


def test_allow_private_lets_private_and_mixed_answers_through(monkeypatch, resolve_destination):
    getaddrinfo, _ = fake_resolver(
        {"hooks.example": ["10.0.0.5", "8.8.8.8"], "meta.example": ["100.100.100.200"]}
    )
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    assert resolve_destination("hooks.example", 443, UNGUARDED) == "10.0.0.5"
    assert resolve_destination("meta.example", 443, UNGUARDED) == "100.100.100.200"


def test_a_public_name_resolves_to_its_first_address(monkeypatch, resolve_destination):
    getaddrinfo, _ = fake_resolver({"hooks.example": ["2606:4700::1", "8.8.8.8"]})
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    assert resolve_destination("hooks.example", 443, GUARDED) == "2606:4700::1"


@pytest.mark.parametrize("literal", ["2130706433", "0x7f.1", "0177.0.0.1", "127.1", "0"])
def test_odd_spellings_of_local_addresses_are_refused_after_resolution(
    literal, resolve_destination
):
    # The system resolver turns these into 127.0.0.1 or 0.0.0.0 without DNS.
    with pytest.raises(WebhookRefused):
        resolve_destination(literal, 443, GUARDED)


def record_connects(monkeypatch) -> list:
    """Refuse every connection and record where it went: through
    socket.create_connection (webhooks.post) or a socket's connect (asyncio)."""
    connected = []

    def create_connection(address, timeout=None, *args, **kwargs):
        connected.append(address)
        raise ConnectionRefusedError("test: nothing listens")

    def connect(sock, address):
        connected.append(address)
        raise ConnectionRefusedError("test: nothing listens")

    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return connected


def test_the_connection_goes_to_the_checked_address_after_one_lookup(monkeypatch, webhook_post):
    getaddrinfo, lookups = fake_resolver({"hooks.example": ["93.184.216.34"]})
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    connected = record_connects(monkeypatch)
    with pytest.raises(ConnectionRefusedError):
        webhook_post(
            "https://hooks.example/x", b"{}", {}, timeout=1, max_response_bytes=10, config=GUARDED
        )
    assert lookups == ["hooks.example"], "the name must be resolved exactly once"
    assert connected == [("93.184.216.34", 443)]


def test_nothing_is_connected_to_when_one_address_is_refused(monkeypatch, webhook_post):
    getaddrinfo, _ = fake_resolver({"hooks.example": ["93.184.216.34", "100.100.100.200"]})
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    connected = record_connects(monkeypatch)
    with pytest.raises(WebhookRefused, match=r"100\.100\.100\.200"):
        webhook_post(
            "https://hooks.example/latest/meta-data/",
            b"{}",
            {},
            timeout=1,
            max_response_bytes=10,
            config=GUARDED,
        )
    assert connected == []


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "[::1]", "[::ffff:169.254.169.254]", "2130706433", "0x7f.1", "127.1", "0"],
)
def test_an_address_in_the_url_is_checked_like_a_name(monkeypatch, webhook_post, host):
    # aiohttp connects to an IP-address host without asking its resolver.
    connected = record_connects(monkeypatch)
    with pytest.raises(WebhookRefused):
        webhook_post(
            f"https://{host}/x", b"{}", {}, timeout=1, max_response_bytes=10, config=GUARDED
        )
    assert connected == []
