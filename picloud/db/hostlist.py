"""The host list of a DATABASE_URL: refuse a malformed multi-host one, and
write a Django database entry's hosts back as host:port pairs.

libpq tries the hosts of ``postgres://u@h1:p1,h2:p2/db`` in turn (with
``target_session_attrs=read-write``, until one accepts writes): how PiCloud
follows a failover. django-environ splits such a URL into HOST "h1,h2" and
PORT "p1,p2" without checking it, so a port on some hosts only, an empty host
or an IPv6 address in brackets would reach libpq as a different list.
"""

from __future__ import annotations

from urllib.parse import urlsplit

MULTI_HOST_FORM = "postgres://user:pass@host1:port1,host2:port2/db?target_session_attrs=read-write"


def check(url: str) -> None:
    """Raise ValueError saying what is wrong with `url`'s host list, if it
    names more than one host and is not host:port,host:port (or every host
    without a port)."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    if "," not in netloc:
        return
    ported = 0
    for item in netloc.split(","):
        host, colon, port = item.partition(":")
        if not host:
            raise ValueError("a host of the list is empty")
        if host.startswith("["):
            raise ValueError("an IPv6 address in a host list: name the hosts")
        if colon:
            if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
                raise ValueError("a port of the host list is not a number from 1 to 65535")
            ported += 1
    if ported not in (0, netloc.count(",") + 1):
        raise ValueError("a port on some hosts of the list only: give every host its port")


def pairs(settings_dict: dict) -> list[str]:
    """The entry's hosts as "host:port" ("host" when no port is set)."""
    hosts = (settings_dict.get("HOST") or "").split(",")
    ports = str(settings_dict.get("PORT") or "").split(",")
    if len(ports) == 1:  # one port (or none) for every host, as libpq reads it
        ports = ports * len(hosts)
    return [host + (f":{port}" if port else "") for host, port in zip(hosts, ports, strict=True)]
