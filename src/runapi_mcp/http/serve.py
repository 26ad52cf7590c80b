"""Serving the HTTP app with uvicorn, in the same event loop as the task manager.

Shutdown (SIGTERM, SIGINT) is graceful: the listening socket closes, every tool call still waiting on a
task answers at once with what it has (the task id, "still running": get_task finds it later), the
answers are flushed, and only then are the sessions closed. Tasks stay in the store and resume on the
next start.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import FrameType

import anyio
import uvicorn
from starlette.applications import Starlette

from runapi_mcp.app import App, open_app
from runapi_mcp.config import ConfigError, Settings
from runapi_mcp.http.app import HttpOptions, build_http_app, describe, is_loopback_host
from runapi_mcp.http.auth import build_verifier
from runapi_mcp.http.limits import (
    KEEP_ALIVE_S,
    ConnectionGuard,
    HttpLimits,
    connection_cap,
    guarded_protocol,
    raise_fd_limit,
    throttle_logs,
)
from runapi_mcp.http.webhook import callback_routes

log = logging.getLogger("runapi_mcp.http")

# Long enough for waiting calls to answer and their responses to flush; the standalone SSE streams
# (GET /mcp, GET /sse) never end by themselves and are cut after it.
GRACEFUL_SHUTDOWN_S = 3.0


class _Server(uvicorn.Server):
    """uvicorn with an optional hook run first thing at shutdown, and no re-raise of the stopping signal.

    Also serves the standalone gallery (``gallery.py``).
    """

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown
        self.settled = anyio.Event()  # started, or failed to

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        finally:
            self.settled.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._on_shutdown is not None:
            self._on_shutdown()
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn's own re-raises the signal once it has shut down, which would end the process before
        # the manager and the store are closed: the rest of the shutdown is ours.
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


def bind_socket(host: str, port: int, *, fallback: bool = False) -> socket.socket:
    """A socket bound to ``host:port`` (port 0: any free port); with ``fallback``, any free port when that
    one is taken. Raises the ``OSError`` of a failed bind."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if not (fallback and exc.errno == errno.EADDRINUSE):
                raise
            sock.bind((host, 0))
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class RunningServer:
    """A serving HTTP app: its bound port, and an event set when it has stopped."""

    server: _Server
    port: int
    stopped: anyio.Event
    guard: ConnectionGuard

    def stop(self) -> None:
        self.server.should_exit = True


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
    guard = connection_guard(settings)
    verifier = build_verifier(settings)
    extra = callback_routes(app.manager) if settings.public_url else []
    starlette: Starlette = build_http_app(app, options, verifier=verifier, extra_routes=extra)
    config = uvicorn.Config(
        starlette,
        host=options.host,
        port=options.port,
        http=guarded_protocol(guard),  # h11 with header and body deadlines and the connection cap
        timeout_keep_alive=KEEP_ALIVE_S,
        log_config=None,  # our logging (stderr, redacted) stays in charge
        access_log=False,
        timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN_S),
        lifespan="on",
    )
    server = _Server(config, app.manager.stop_waiting)
    if sock is None:
        sock = bind_socket(options.host, options.port)
    port = int(sock.getsockname()[1])
    listener = guard.listen(sock)  # accept() asks the guard first: the connection cap
    running = RunningServer(server, port, anyio.Event(), guard)

    async def serve() -> None:
        try:
            await server.serve(sockets=[listener])
        finally:
            server.settled.set()
            running.stopped.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            await server.settled.wait()
            if not server.started or server.should_exit:
                raise ConfigError(f"could not serve HTTP on {options.host}:{running.port}")
            try:
                yield running
            finally:
                running.stop()
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
