"""Which Host and Origin headers an HTTP app answers (DNS-rebinding protection), for every route.

Shared by the whole HTTP app (``app.py``) and the gallery served alone (``runapi-mcp gallery``).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from runapi_mcp.config import is_loopback_host

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def transport_security(host: str, public_url: str | None) -> TransportSecuritySettings:
    """Host and Origin allow-lists for a server bound to ``host``: this machine's names, plus the public
    URL's host when set.

    Bound to loopback with no public URL, only loopback names pass (a page on another site that
    rebinds its DNS name to 127.0.0.1 sends its own name as Host). Bound elsewhere with no public URL,
    the host names clients use are not known here: auth (required off loopback) is the protection.
    """
    hosts = [f"{h}:*" for h in LOOPBACK_HOSTS]
    origins = [f"http://{h}:*" for h in LOOPBACK_HOSTS] + [f"https://{h}:*" for h in LOOPBACK_HOSTS]
    if public_url:
        parts = urlsplit(public_url)
        netloc = parts.netloc.lower()
        hosts += [netloc, f"{parts.hostname}:*"]
        origins += [f"{parts.scheme}://{netloc}", f"{parts.scheme}://{parts.hostname}:*"]
    elif not is_loopback_host(host):
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)


class HostCheck:
    """DNS-rebinding protection for every route (the SDK's transports check only their own)."""

    def __init__(self, app: ASGIApp, settings: TransportSecuritySettings) -> None:
        self.app = app
        self.security = TransportSecurityMiddleware(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # Content-Type is the transports' business (they check it for their own POSTs).
            refused = await self.security.validate_request(Request(scope, receive), is_post=False)
            if refused is not None:
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)
