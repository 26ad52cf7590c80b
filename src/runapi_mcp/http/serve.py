"""Serving the HTTP app (through ``uvicorn_server``), in the same event loop as the task manager.

Shutdown (SIGTERM, SIGINT) is graceful: the listening socket closes, every tool call still waiting on a
task answers at once with what it has (the task id, "still running": get_task finds it later), the
answers are flushed, and only then are the sessions closed. Tasks stay in the store and resume on the
next start.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from starlette.applications import Starlette

from runapi_mcp.app import App, open_app
from runapi_mcp.config import ConfigError, Settings, is_loopback_host
from runapi_mcp.http.app import HttpOptions, build_http_app, describe
from runapi_mcp.http.auth import build_verifier
from runapi_mcp.http.limits import ConnectionGuard, HttpLimits, connection_cap, raise_fd_limit, throttle_logs
from runapi_mcp.http.links import shared_file_links
from runapi_mcp.http.uvicorn_server import Serving, bind_socket, serving
from runapi_mcp.http.webhook import callback_routes

log = logging.getLogger("runapi_mcp.http")

# Long enough for waiting calls to answer and their responses to flush; the standalone SSE streams
# (GET /mcp, GET /sse) never end by themselves and are cut after it.
GRACEFUL_SHUTDOWN_S = 3.0


@dataclass
class RunningServer:
    """A serving HTTP app: its bound port, and an event set when it has stopped."""

    serving: Serving
    guard: ConnectionGuard

    @property
    def port(self) -> int:
        return self.serving.port

    @property
    def stopped(self) -> anyio.Event:
        return self.serving.stopped

    def stop(self) -> None:
        self.serving.stop()


def check_exposure(settings: Settings, options: HttpOptions) -> None:
    """Refuse to serve off loopback with no auth: anyone who can reach the port would spend the key."""
    if is_loopback_host(options.host):
        return
    if settings.auth_token is None and settings.jwt_issuer is None:
        raise ConfigError(
            f"refusing to serve on {options.host} without auth: set RUNAPI_MCP_AUTH_TOKEN (a shared bearer "
            "token) or RUNAPI_MCP_JWT_ISSUER (per-user OAuth tokens), or bind 127.0.0.1"
        )


@asynccontextmanager
async def http_server(
    app: App, options: HttpOptions, settings: Settings, *, sock: socket.socket | None = None
) -> AsyncIterator[RunningServer]:
    """Serve ``app`` over HTTP for as long as the block lasts (or until a signal stops it).

    ``sock``: an already bound socket (taken over: serving closes it); by default ``options.host``/
    ``options.port`` are bound (port 0: any free port, see ``RunningServer.port``).
    """
    check_exposure(settings, options)
    # Instances sharing a store share the links' key: a link one made opens on any other.
    links = await shared_file_links(app.manager.store, app.manager.clock)
    guard = connection_guard(settings)
    verifier = build_verifier(settings, clock=app.manager.clock)
    extra = callback_routes(app.manager) if settings.public_url else []
    starlette: Starlette = build_http_app(app, options, verifier=verifier, extra_routes=extra, links=links)
    if sock is None:
        sock = bind_socket(options.host, options.port)
    failure = f"could not serve HTTP on {options.host}:{sock.getsockname()[1]}"
    try:
        async with serving(
            starlette,
            sock,
            failure=failure,
            guard=guard,  # h11 with the header and body deadlines; the connection cap where connections are accepted
            lifespan=True,
            on_shutdown=app.manager.stop_waiting,  # waiting calls answer before the connections are waited for
            graceful_shutdown_s=GRACEFUL_SHUTDOWN_S,
        ) as running:
            if running.stopping:  # a signal during the start (uvicorn took it): as if it had not started
                raise ConfigError(failure)
            yield RunningServer(running, guard)
    finally:
        if verifier is not None:
            await verifier.aclose()


def connection_guard(settings: Settings) -> ConnectionGuard:
    """The connection limits of a server about to start: the soft open-file limit is raised to the hard one
    first, and the connection cap set under it (unless ``RUNAPI_MCP_MAX_CONNECTIONS`` says otherwise)."""
    throttle_logs()
    limits = HttpLimits.from_settings(settings)
    fd_limit = raise_fd_limit()
    cap, slack = connection_cap(fd_limit)
    if limits.max_connections is not None:
        cap = limits.max_connections
    log.debug("HTTP limits: %d connections (open files: %s), %s", cap, fd_limit, limits)
    return ConnectionGuard(cap, limits.header_timeout_s, limits.body_timeout_s, slack=slack)


async def serve_http(settings: Settings, options: HttpOptions) -> None:
    """``runapi-mcp serve --transport sse|streamable-http|http``: serve until a signal stops it."""
    check_exposure(settings, options)
    async with open_app(settings) as app, http_server(app, options, settings) as running:
        for line in describe(options, running.port):
            log.info("serving %s", line)
        await running.stopped.wait()
