"""Keep aiortc's ICE on the networks we allow (DESIGN.md, "The WebRTC testbed").

aioice has no interface option: it drops 127.0.0.1 from its host candidates, would gather
the machine's public address, resolves a browser's ``.local`` candidate by multicasting
out of the machine, and ``RTCConfiguration(iceServers=None)`` silently adds Google's STUN
server. When a room is given ``ice_hosts`` (services pass ``CODESYNC_ICE_HOSTS``; tests
``127.0.0.1``) this module:

- replaces ``aioice.ice.get_host_addresses`` (looked up at every gathering) so the host
  candidates are exactly the configured addresses;
- replaces ``aioice.mdns.create_mdns_protocol`` with a protocol that never multicasts, so
  ``.local`` candidates resolve to nothing at once instead of blocking up to a second;
- drops remote candidates and incoming datagrams from outside loopback and the configured
  addresses' /24 networks.

Unset, aioice keeps its defaults. Either way ``rtc_configuration()`` builds an explicit
ICE server list (from ``GET /api/ice-servers``) — never ``None``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from functools import lru_cache
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import aioice.ice
import aioice.mdns
from aiortc import RTCConfiguration, RTCIceServer

log = logging.getLogger(__name__)

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_state: dict[str, Any] = {"applied": None, "originals": None}
_allowed: list[_Network] = []


def allowed_networks(hosts: Sequence[str]) -> list[_Network]:
    """Loopback plus the /24 (IPv4) or /64 (IPv6) around each configured address."""
    nets: list[_Network] = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
    for host in hosts:
        addr = ipaddress.ip_address(host)
        prefix = 24 if addr.version == 4 else 64
        nets.append(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))
    return nets


def address_allowed(host: str, networks: Iterable[_Network] | None = None) -> bool:
    """True when ``host`` is an IP literal inside one of the allowed networks."""
    if networks is None:
        return _allowed_cached(host)
    return _in_networks(host, networks)


def _in_networks(host: str, networks: Iterable[_Network]) -> bool:
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return any(addr in net for net in networks if addr.version == net.version)


@lru_cache(maxsize=4096)
def _allowed_cached(host: str) -> bool:
    """Per-datagram check: parsing the address every time cost ~5 % of a busy link's CPU."""
    return _in_networks(host, _allowed)


class _SilentMDnsProtocol:
    """Stands in for aioice's mDNS protocol: never joins a group, never sends a packet."""

    async def resolve(self, hostname: str, timeout: float | None = 1.0) -> str | None:
        return None

    async def publish(self, hostname: str, addr: str) -> None:
        return None

    async def close(self) -> None:
        return None


async def _create_silent_mdns_protocol() -> _SilentMDnsProtocol:
    return _SilentMDnsProtocol()


def apply_ice_policy(ice_hosts: Sequence[str] | str | None) -> bool:
    """Install the restrictions for ``ice_hosts``; a no-op when empty. Idempotent.

    Returns True when a policy is in force. Calling again with other hosts replaces the
    address list (one process has one policy; tests run every peer with the same one).
    """
    if isinstance(ice_hosts, str):
        ice_hosts = [h.strip() for h in ice_hosts.split(",") if h.strip()]
    hosts = list(ice_hosts or [])
    if not hosts:
        return False
    for host in hosts:
        ipaddress.ip_address(host)  # ValueError for a bad setting: fail loudly at start
    _allowed[:] = allowed_networks(hosts)
    _allowed_cached.cache_clear()
    if _state["applied"] == hosts:
        return True
    if _state["originals"] is None:
        _state["originals"] = (
            aioice.ice.get_host_addresses,
            aioice.mdns.create_mdns_protocol,
            aioice.ice.Connection._add_remote_candidate,
            aioice.ice.StunProtocol.datagram_received,
        )
    _, _, orig_add_remote, orig_datagram = _state["originals"]

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        out = []
        for host in hosts:
            version = ipaddress.ip_address(host).version
            if (version == 4 and use_ipv4) or (version == 6 and use_ipv6):
                out.append(host)
        return out

    def add_remote_candidate(self, remote_candidate, network_host: str) -> None:
        if not address_allowed(network_host):
            log.info("dropping remote ICE candidate outside the allowed networks: %s", network_host)
            return
        orig_add_remote(self, remote_candidate, network_host)

    def datagram_received(self, data, addr) -> None:
        if not address_allowed(str(addr[0])):
            return
        orig_datagram(self, data, addr)

    aioice.ice.get_host_addresses = get_host_addresses
    aioice.mdns.create_mdns_protocol = _create_silent_mdns_protocol  # type: ignore[assignment]  # duck-typed stand-in
    aioice.ice.Connection._add_remote_candidate = add_remote_candidate  # type: ignore[method-assign]
    aioice.ice.StunProtocol.datagram_received = datagram_received  # type: ignore[method-assign]
    _state["applied"] = hosts
    log.info("ICE restricted to %s (mDNS off)", ", ".join(hosts))
    return True


def remove_ice_policy() -> None:
    """Restore aioice's defaults (tests of this module only)."""
    if _state["originals"] is None:
        return
    gha, mdns, add_remote, datagram = _state["originals"]
    aioice.ice.get_host_addresses = gha
    aioice.mdns.create_mdns_protocol = mdns
    aioice.ice.Connection._add_remote_candidate = add_remote  # type: ignore[method-assign]
    aioice.ice.StunProtocol.datagram_received = datagram  # type: ignore[method-assign]
    _state["applied"] = None
    _allowed.clear()
    _allowed_cached.cache_clear()


def policy_active() -> bool:
    return _state["applied"] is not None


def _server_allowed(url: str) -> bool:
    """With a policy in force, an ICE server outside the allowed networks is never contacted."""
    rest = url.split(":", 1)[1] if ":" in url else url
    host = urlsplit("//" + rest.split("?", 1)[0]).hostname or ""
    if host == "localhost":
        return True
    return address_allowed(host)


def ice_servers_from_json(items: Any) -> list[RTCIceServer]:
    """RTCIceServer objects from the ``GET /api/ice-servers`` body (list, or {"iceServers": [...]})."""
    if isinstance(items, dict):
        items = items.get("iceServers") or items.get("ice_servers") or []
    servers: list[RTCIceServer] = []
    if not isinstance(items, list):
        return servers
    for item in items:
        if not isinstance(item, dict) or "urls" not in item:
            continue
        urls = item["urls"]
        urls = [urls] if isinstance(urls, str) else [u for u in urls if isinstance(u, str)]
        if policy_active():
            urls = [u for u in urls if _server_allowed(u)]
        if not urls:
            continue
        servers.append(RTCIceServer(urls=urls, username=item.get("username"), credential=item.get("credential")))
    return servers


async def fetch_ice_servers(http_base: str, token: str, timeout: float = 5.0) -> list[RTCIceServer]:
    """The ICE servers signaling hands out; ``[]`` (host candidates only) when unavailable."""
    url = http_base.rstrip("/") + "/api/ice-servers"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
                if resp.status != 200:
                    log.warning("GET %s answered %s; using host candidates only", url, resp.status)
                    return []
                return ice_servers_from_json(await resp.json(content_type=None))
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        log.warning("GET %s failed (%s); using host candidates only", url, exc)
        return []


def rtc_configuration(servers: Sequence[RTCIceServer] | None) -> RTCConfiguration:
    """Always an explicit list: ``iceServers=None`` would make aiortc add Google's STUN server."""
    return RTCConfiguration(iceServers=list(servers or []))
