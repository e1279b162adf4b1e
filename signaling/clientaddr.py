"""The client's address, believing ``X-Forwarded-For`` only from configured proxies.

Behind a reverse proxy every request comes from the proxy, so per-address limits (login
throttling) would put all users into one bucket; but a client talking to the server directly
can write any ``X-Forwarded-For`` it likes. So the header counts only when the TCP peer is a
trusted proxy (``CODESYNC_TRUSTED_PROXIES``: addresses or CIDRs), and then the client is the
*rightmost* address in it that is not itself a trusted proxy — each proxy appends the address
it received the request from, and everything left of the first untrusted hop was written by
the client (nginx: ``proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for``).
"""

from __future__ import annotations

import ipaddress
import logging
from functools import lru_cache

from aiohttp import web

from .state import get_state

log = logging.getLogger("codesync.clientaddr")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_HOPS = 32  # addresses looked at in one header (it is client-controlled on its left side)


@lru_cache(maxsize=16)
def parse_networks(spec: tuple[str, ...]) -> tuple[Network, ...]:
    """``("10.0.0.0/8", "127.0.0.1", ...)`` → networks; a bad entry is logged and skipped."""
    nets: list[Network] = []
    for item in spec:
        try:
            nets.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            log.error("CODESYNC_TRUSTED_PROXIES: %r is not an address or CIDR; ignored", item)
    return tuple(nets)


def _address(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "192.0.2.1:8080"
        text = text.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _trusted(addr: IPAddress, nets: tuple[Network, ...]) -> bool:
    return any(addr.version == net.version and addr in net for net in nets)


def resolve(peer: str | None, forwarded_for: list[str], trusted: tuple[Network, ...]) -> str:
    """The client address for a request from ``peer`` carrying these ``X-Forwarded-For`` values."""
    peer_addr = _address(peer) if peer else None
    if peer_addr is None:
        return peer or "unknown"
    if not trusted or not forwarded_for or not _trusted(peer_addr, trusted):
        return str(peer_addr)
    hops = [h for value in forwarded_for for h in value.split(",")][-MAX_HOPS:]
    client = peer_addr
    for hop in reversed(hops):
        addr = _address(hop)
        if addr is None:  # junk left of a trusted proxy: the client wrote it; stop here
            break
        client = addr
        if not _trusted(addr, trusted):
            break
    return str(client)


def client_address(request: web.Request) -> str:
    """The address of whoever sent ``request`` (see the module docstring)."""
    settings = get_state(request).settings
    trusted = parse_networks(tuple(settings.trusted_proxy_list))
    return resolve(request.remote, request.headers.getall("X-Forwarded-For", []), trusted)
