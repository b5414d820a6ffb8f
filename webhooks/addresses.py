"""Where a webhook may be sent: no server-side request forgery from a staff form.

An endpoint's host must resolve to public addresses only. Loopback, private,
link-local (the cloud metadata address 169.254.169.254), carrier-grade NAT,
multicast and reserved addresses are refused, unless
ACCOLADE_WEBHOOK_ALLOW_PRIVATE_ADDRESSES is on (a receiver inside the
network, and the tests' receiver on 127.0.0.1). The check is made when staff
save the endpoint and again before every send, and the connection goes to
the address that was checked, so a name that resolves elsewhere the second
time (DNS rebinding) reaches nothing it should not.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings


class Refused(ValueError):
    """A URL that may not be sent to; the message says why, for staff."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # as written in the URL, for the Host header and TLS
    port: int
    path: str  # path and query
    address: str  # the checked IP address to connect to


def private_allowed() -> bool:
    return bool(settings.ACCOLADE_WEBHOOK_ALLOW_PRIVATE_ADDRESSES)


def parse(url: str) -> tuple[str, str, int, str]:
    """The scheme, host, port and path of an endpoint URL, or Refused."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Refused(f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise Refused("must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise Refused("must not hold a user name or password; receivers check the signature")
    host = parts.hostname or ""
    if not host:
        raise Refused("has no host")
    if parts.fragment:
        raise Refused("must not have a #fragment")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80), path


def refusal(address: str) -> str | None:
    """Why a webhook may not go to this IP address, or None if it may."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    for inner in embedded_ipv4(ip):
        # An IPv6 address that carries an IPv4 one (mapped, NAT64, 6to4, Teredo,
        # the old compatible form) reaches that one: judge it by it.
        problem = refusal(str(inner))
        if problem:
            return problem
    if ip.is_global and not ip.is_multicast:
        return None
    if private_allowed() and not (ip.is_multicast or ip.is_unspecified):
        return None
    what = (
        "loopback"
        if ip.is_loopback
        else "link-local"
        if ip.is_link_local
        else "multicast"
        if ip.is_multicast
        else "private or reserved"
    )
    return f"resolves to {ip}, a {what} address; webhooks go to public addresses only"


# Prefixes whose last 32 bits are an IPv4 address: NAT64 (well-known and local
# use), SIIT's IPv4-translated form, and the old IPv4-compatible form.
EMBEDDING = [
    ipaddress.ip_network("64:ff9b::/96"),
    ipaddress.ip_network("64:ff9b:1::/48"),
    ipaddress.ip_network("::ffff:0:0:0/96"),
    ipaddress.ip_network("::/96"),
]


def embedded_ipv4(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address leads to, if it is one of the forms that embed one."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found += list(ip.teredo)
    if int(ip) > 1 and any(ip in network for network in EMBEDDING):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def resolve(url: str) -> Target:
    """The checked address to send this URL's messages to, or Refused.

    Every address the name resolves to must pass: a name with one public and
    one private address is refused, as the system's choice between them is
    not ours.
    """
    scheme, host, port, path = parse(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Refused(f"host {host!r} could not be resolved ({exc})") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise Refused(f"host {host!r} has no address")
    for address in addresses:
        problem = refusal(address)
        if problem:
            raise Refused(problem)
    return Target(scheme=scheme, host=host, port=port, path=path, address=addresses[0])
