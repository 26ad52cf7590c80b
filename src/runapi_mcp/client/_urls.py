"""Which image URLs the client may fetch, and at which address.

RunAPI's answers name the image URLs the client downloads, so whoever controls an answer (or a redirect
from an image host) could point the client at the cloud metadata service, at the user's router or at
another service on the same machine. The policy resolves the host once, judges EVERY address it resolves
to, and hands back the addresses it approved; the client then connects to one of exactly those addresses
(see ``RunAPIClient._open_pinned``), so DNS rebinding between the check and the connect cannot move it.

Address classes:

- link-local (169.254/16, fe80::/10) and cloud metadata addresses: always refused;
- unspecified (0.0.0.0/8, ::), multicast, broadcast, reserved: always refused;
- loopback: refused, except at the base URL's own port when the base URL is itself on loopback (the
  simulator serves its own images; other local services stay out of reach);
- private (RFC 1918, ULA fc00::/7, CGNAT 100.64/10, and other non-public ranges): refused, unless the base
  URL is itself on a private address (a self-hosted gateway on the LAN);
- everything else: allowed.

IPv4-mapped (::ffff:a.b.c.d) and NAT64 (64:ff9b::a.b.c.d) addresses are judged as the IPv4 they carry.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal

import anyio
import httpx

from runapi_mcp.client._text import clean_text
from runapi_mcp.client.errors import ImageUrlRefusedError, RunAPIConnectionError, RunAPIResponseError
from runapi_mcp.redaction import Redactor

__all__ = ["ImageUrlPolicy", "Resolver", "address_class", "default_port", "host_header"]

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
AddressClass = Literal[
    "public", "loopback", "private", "metadata", "unspecified", "multicast", "broadcast", "reserved"
]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, ...
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
    )
)
METADATA_NAMES = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # 0.0.0.0 connects to the local host on Linux
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_REASONS: dict[AddressClass, str] = {
    "metadata": "link-local/metadata address",
    "unspecified": "unspecified address",
    "multicast": "multicast address",
    "broadcast": "broadcast address",
    "reserved": "reserved address",
    "loopback": "loopback address",
    "private": "private address",
    "public": "public address",
}
_MAX_SHOWN_HOST = 100


def _unwrap(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv4-mapped or NAT64 IPv6 address carries, else ``address`` itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def address_class(address: str | IPAddress) -> AddressClass:
    """The class of an IP address, as the policy judges it (module docstring)."""
    ip = _unwrap(ipaddress.ip_address(address) if isinstance(address, str) else address)
    if ip in METADATA_ADDRESSES or ip.is_link_local:
        return "metadata"
    if ip.is_unspecified or (isinstance(ip, ipaddress.IPv4Address) and ip in _THIS_NETWORK):
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip == ipaddress.IPv4Address("255.255.255.255"):
        return "broadcast"
    if ip.is_loopback:
        return "loopback"
    if ip.is_reserved:  # after loopback: IPv6's reserved ::/8 contains ::1
        return "reserved"
    if (
        ip.is_private
        or (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT)
        or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local)
        or not ip.is_global
    ):
        return "private"
    return "public"


def default_port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


def host_header(url: httpx.URL) -> str:
    """The ``Host`` header the URL's own host name gets (kept when the connection goes to an IP)."""
    return url.netloc.decode("ascii")


async def resolve(host: str, port: int) -> list[str]:
    """The host's addresses, via the event loop's resolver (a worker thread, never blocking the loop)."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


class ImageUrlPolicy:
    """Decides which image URLs may be fetched; built from the RunAPI base URL (module docstring).

    ``resolver`` replaces DNS (tests); it gets ``(host, port)`` and returns IP address strings.
    """

    def __init__(self, base_url: str, *, resolver: Resolver | None = None) -> None:
        base = httpx.URL(base_url)
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError("base_url must be an http(s) URL")
        self._resolve: Resolver = resolver or resolve
        self._base_host = base.raw_host.decode("ascii").lower().rstrip(".")
        self._base_port = default_port(base)
        # Whether the base URL is on loopback or a private network decides the exemptions; a name is
        # resolved on first use (not here: the constructor is synchronous) and remembered once known.
        self._base_classes: frozenset[AddressClass] | None = self._literal_base_classes()

    def __repr__(self) -> str:
        return f"ImageUrlPolicy(base_host={self._base_host!r}, base_port={self._base_port})"

    def _literal_base_classes(self) -> frozenset[AddressClass] | None:
        try:
            return frozenset({address_class(self._base_host)})
        except ValueError:
            pass
        if self._base_host == "localhost" or self._base_host.endswith(".localhost"):
            return frozenset({"loopback"})  # RFC 6761: always loopback, whatever DNS says
        return None

    async def _base(self) -> frozenset[AddressClass]:
        if self._base_classes is None:
            try:
                addresses = await self._resolve(self._base_host, self._base_port)
                self._base_classes = frozenset(address_class(a) for a in addresses)
            except (OSError, UnicodeError, ValueError):
                return frozenset({"public"})  # unknown for now: no exemptions, and ask again next time
        return self._base_classes

    async def check(self, url: httpx.URL, *, redactor: Redactor | None = None) -> tuple[str, ...]:
        """The addresses ``url`` may be fetched from, in the resolver's order; at least one.

        Raises :class:`ImageUrlRefusedError` when the URL or ANY of its addresses is refused,
        :class:`RunAPIConnectionError` when the host does not resolve (worth retrying) and
        :class:`RunAPIResponseError` when the host is not a usable name. ``redactor`` masks the host in
        messages (a key may ride anywhere in a URL RunAPI sent).
        """
        if url.scheme not in ("http", "https"):
            raise ImageUrlRefusedError("refused to fetch an image from a URL that is not http(s)")
        if url.userinfo:
            raise ImageUrlRefusedError("refused to fetch an image from a URL with credentials in it")
        try:
            host = url.raw_host.decode("ascii").lower().rstrip(".")
        except UnicodeError:
            raise RunAPIResponseError("the image URL's host name is not valid", summary="") from None
        if not host:
            raise RunAPIResponseError("the image URL has no host", summary="")
        shown = clean_text(host, redactor, limit=_MAX_SHOWN_HOST)
        if host in METADATA_NAMES or host.endswith(".metadata.google.internal"):
            raise ImageUrlRefusedError(f"refused to fetch an image from {shown}: link-local/metadata address")
        port = default_port(url)
        try:
            resolved = await self._resolve(host, port)
        except UnicodeError:
            raise RunAPIResponseError(f"the image URL's host name {shown} is not valid", summary="") from None
        except OSError as exc:
            raise RunAPIConnectionError(
                f"could not resolve {shown} ({type(exc).__name__})", summary="Could not reach the image host"
            ) from None
        addresses = list(dict.fromkeys(resolved))  # unique, resolver's order kept
        if not addresses:
            raise RunAPIConnectionError(f"{shown} has no address", summary="Could not reach the image host")
        base = await self._base()
        for address in addresses:
            reason = self._refusal(address, port, base)
            if reason is not None:
                where = shown if address == host else f"{shown} ({address})"
                raise ImageUrlRefusedError(f"refused to fetch an image from {where}: {reason}")
        return tuple(addresses)

    def _refusal(self, address: str, port: int, base: frozenset[AddressClass]) -> str | None:
        """Why ``address:port`` is refused, or ``None`` when it may be fetched."""
        try:
            kind = address_class(address)
        except ValueError:
            return "not an IP address"
        if kind == "public":
            return None
        if kind == "loopback" and "loopback" in base:
            if port == self._base_port:
                return None
            return f"loopback address (only the RunAPI base URL's port {self._base_port} is allowed)"
        if kind == "private" and "private" in base:
            return None
        return _REASONS[kind]
