"""One Starlette app for a shared deployment: streamable HTTP at ``/mcp``, legacy SSE at ``/sse``.

Both transports drive the same MCP server, and so the same task manager and store: the manager runs
once per process (``runapi_mcp.app.open_app``), never in a per-connection lifespan (the SDK enters the
server lifespan once per SSE connection). Around them:

- ``/health``: no auth, nothing private (status and version).
- ``/files/{image_id}``: a library image full size, behind the same auth, the caller's own images only.
  Inline previews stay small (one SSE event over 1 MiB breaks the Python client); this is where the
  full picture is fetched over HTTP.
- ``/callbacks/runapi/{task_id}``: RunAPI's completion webhook (when ``RUNAPI_MCP_PUBLIC_URL`` is set);
  not bearer-authenticated (RunAPI does not carry our token), but each task has its own secret.
- ``/.well-known/oauth-protected-resource/mcp``: with JWT auth, so clients discover the issuer.

Every request passes one Host/Origin check (DNS-rebinding protection) before anything else, and every
authenticated request carries its owner in the ASGI scope, where the MCP layer reads it. What one user
may hold is bounded: open sessions (``sessions.py``) and request bodies in flight (``limits.py``, which
also holds the connection-level limits ``serve.py`` gives uvicorn).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware
from mcp.server.auth.middleware.bearer_auth import BearerAuthBackend, RequireAuthMiddleware
from mcp.server.auth.provider import TokenVerifier
from mcp.server.auth.routes import build_resource_metadata_url, create_protected_resource_routes
from mcp.server.auth.settings import AuthSettings
from mcp.server.sse import SseServerTransport
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from runapi_mcp import __version__
from runapi_mcp.app import App
from runapi_mcp.http.gallery import GALLERY_PATH, Gallery
from runapi_mcp.http.hosts import HostCheck, transport_security
from runapi_mcp.http.limits import BodyBudget, HttpLimits
from runapi_mcp.http.links import PUBLIC_BASE_SCOPE_KEY, FileLinks
from runapi_mcp.http.owner import OwnerScope
from runapi_mcp.http.responses import image_headers
from runapi_mcp.http.sessions import McpEndpoint, SseStreams, UserSessions
from runapi_mcp.server import sdk
from runapi_mcp.server.owners import FILE_LINK_SCOPE_KEY
from runapi_mcp.tasks import ImageRecord, ImageStore, current_owner
from runapi_mcp.tasks.images import ImageFileError, inspect_image

log = logging.getLogger("runapi_mcp.http")

Transport = Literal["streamable-http", "sse"]
MCP_PATH = "/mcp"
SSE_PATH = "/sse"
MESSAGES_PATH = "/messages/"
FILES_PATH = "/files"


@dataclass(frozen=True)
class HttpOptions:
    """How the HTTP app is served."""

    transports: frozenset[Transport] = frozenset({"streamable-http", "sse"})
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = None  # as clients (and RunAPI) reach this server
    jwt_issuer: str | None = None  # advertised in the protected-resource metadata


class _FileLinkScope:
    """Tells the MCP layer how this request's client fetches full images: a signed link under the public
    URL when set, else under the address the client used (already through the Host check). The link is
    made for whoever the request runs as (``current_owner`` when the result is built)."""

    def __init__(self, app: ASGIApp, public_url: str | None, links: FileLinks) -> None:
        self.app = app
        self.public_url = public_url
        self.links = links

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            base = self.public_url or str(Request(scope).base_url).rstrip("/")
            scope[PUBLIC_BASE_SCOPE_KEY] = base
            files_url = base + FILES_PATH

            def link(image_id: str) -> str:
                return self.links.url(files_url, current_owner.get(), image_id)

            scope[FILE_LINK_SCOPE_KEY] = link
        await self.app(scope, receive, send)


def build_http_app(
    app: App,
    options: HttpOptions,
    *,
    verifier: TokenVerifier | None = None,
    extra_routes: Sequence[BaseRoute] = (),
    links: FileLinks | None = None,
) -> Starlette:
    """The Starlette app serving ``app``'s MCP server over the chosen transports; ``links`` signs and checks
    the full-image links (``links.shared_file_links``; default: a key of this process's own)."""
    lowlevel = sdk.lowlevel(app.server)
    security = transport_security(options.host, options.public_url)
    metadata_url: AnyHttpUrl | None = None
    routes: list[BaseRoute] = [Route("/health", _health, methods=["GET"])]
    if verifier is not None and options.jwt_issuer and options.public_url:
        # AuthSettings keeps a path-less issuer as given: RFC 8414 compares issuers as exact strings.
        urls = AuthSettings.model_validate(
            {
                "issuer_url": options.jwt_issuer,
                "resource_server_url": f"{options.public_url}{MCP_PATH}",
                "validate_token_resource": False,  # the verifier checks the audience itself
            }
        )
        assert urls.resource_server_url is not None
        metadata_url = build_resource_metadata_url(urls.resource_server_url)
        routes += create_protected_resource_routes(
            resource_url=urls.resource_server_url, authorization_servers=[urls.issuer_url], resource_name="runapi-mcp"
        )

    def guarded(endpoint: ASGIApp) -> ASGIApp:
        return RequireAuthMiddleware(endpoint, [], metadata_url) if verifier is not None else endpoint

    limits = HttpLimits.from_settings(app.settings)
    sessions: UserSessions | None = None
    if "streamable-http" in options.transports:
        sessions = UserSessions(
            lowlevel,
            per_user=limits.max_sessions_per_user,
            idle_s=limits.session_idle_s,
            security_settings=security,
        )
        routes.append(Route(MCP_PATH, guarded(McpEndpoint(sessions))))
    if "sse" in options.transports:
        sse = SseServerTransport(MESSAGES_PATH, security_settings=security)

        async def handle_sse(scope: Scope, receive: Receive, send: Send) -> None:
            async with sse.connect_sse(scope, receive, send) as (read, write):
                await lowlevel.run(read, write, lowlevel.create_initialization_options())

        streams = SseStreams(handle_sse, limits.max_sessions_per_user)
        routes.append(Route(SSE_PATH, guarded(streams), methods=["GET"]))
        routes.append(Mount(MESSAGES_PATH, app=guarded(sse.handle_post_message)))
    links = links or FileLinks(clock=app.manager.clock)
    files = _Files(app, links, guarded)
    routes.append(Route(FILES_PATH + "/{image_id}", files, methods=["GET", "HEAD"]))
    # Not guarded(): a browser carries the token in a cookie that only the gallery reads (see gallery.py).
    routes += Gallery(app.manager.store, app.manager.images, verifier).routes()
    routes += list(extra_routes)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if sessions is None:
            yield
            return
        async with sessions.run():
            yield

    middleware = [
        Middleware(HostCheck, settings=security),
        Middleware(_FileLinkScope, public_url=options.public_url, links=links),
    ]
    if verifier is not None:
        middleware += [
            Middleware(AuthenticationMiddleware, backend=BearerAuthBackend(verifier)),
            Middleware(AuthContextMiddleware),
        ]
    middleware.append(Middleware(OwnerScope, local=verifier is None))
    # After the owner is known: a user's bodies count against their own budget.
    middleware.append(
        Middleware(BodyBudget, process_bytes=limits.body_budget_bytes, user_bytes=limits.user_body_budget_bytes)
    )
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)


async def _health(_: Request) -> Response:
    return JSONResponse({"status": "ok", "version": __version__}, headers={"Cache-Control": "no-store"})


class _Files:
    """``GET /files/{image_id}``: a library image, full size, to its owner only: with the bearer token,
    or through a signed link (``links.py``) that a result handed out."""

    def __init__(self, app: App, links: FileLinks, guarded: Callable[[ASGIApp], ASGIApp]) -> None:
        self.manager = app.manager
        self.links = links
        self.with_token = guarded(self.serve)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        params = request.query_params
        if "sig" not in params:
            await self.with_token(scope, receive, send)
            return
        image_id = str(request.path_params.get("image_id", ""))
        image = await self.manager.images.lookup(image_id) if len(image_id) <= 200 else None
        if image is None or not self.links.check(
            await self.manager.owner_of_image(image), image_id, params.get("exp"), params.get("sig")
        ):
            # Expired, forged or for another picture: the token is the way in (the same 401 as without one).
            await self.with_token(scope, receive, send)
            return
        await self._send(image, scope, receive, send)  # the link names its owner's image: no second look-up

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """With the bearer token: the image if the caller (``current_owner``) may see it."""
        image_id = str(Request(scope, receive).path_params.get("image_id", ""))
        image = await self.manager.find_image(image_id) if len(image_id) <= 200 else None
        await self._send(image, scope, receive, send)

    async def _send(self, image: ImageRecord | None, scope: Scope, receive: Receive, send: Send) -> None:
        data = b""
        size: int | None = None
        if image is not None and scope["method"] == "HEAD":
            size = await anyio.to_thread.run_sync(_head_size, self.manager.images, image)
        elif image is not None:
            read = await self.manager.images.read(image.id)
            if read is not None:
                data, size = read, len(read)
        if image is None or size is None:
            response: Response = JSONResponse({"error": "no such image"}, status_code=404)
        else:
            response = Response(
                data,
                media_type=image.mime_type or "application/octet-stream",
                headers={"Content-Length": str(size), **image_headers(image, "inline")},
            )
        await response(scope, receive, send)


def _head_size(images: ImageStore, image: ImageRecord) -> int | None:
    """The Content-Length a GET of ``image`` sends, without reading the file (blocking): the size the
    look-up saw, when the file is one ``ImageStore.read`` accepts (within ``max_bytes``, and its header
    the format its name says); else None (a GET would be 404)."""
    if image.path is None or image.bytes is None or image.bytes > images.max_bytes:
        return None
    path = Path(image.path)
    try:
        info = inspect_image(path)  # the header only, through the sandbox
    except (ImageFileError, OSError):
        return None
    return image.bytes if info.extension == path.suffix else None


def describe(options: HttpOptions, bound_port: int) -> list[str]:
    """The endpoints to tell the operator about, with the port actually bound."""
    host = options.host if ":" not in options.host else f"[{options.host}]"
    base = f"http://{host}:{bound_port}"
    lines = []
    if "streamable-http" in options.transports:
        lines.append(f"streamable HTTP: {base}{MCP_PATH}")
    if "sse" in options.transports:
        lines.append(f"SSE: {base}{SSE_PATH}")
    lines.append(f"gallery: {base}{GALLERY_PATH}")
    lines.append(f"health: {base}/health")
    return lines
