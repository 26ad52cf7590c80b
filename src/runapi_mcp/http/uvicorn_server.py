"""uvicorn, behind one door: every use the server makes of it is in this module.

uvicorn is the dependency whose internals the server reaches into: :class:`_Server` overrides its
``Server``'s start, shutdown and signal handling (a hook at shutdown, an event once started, no re-raise of
the stopping signal), and :class:`GuardedH11Protocol` subclasses its h11 protocol and drives its keep-alive
timer (the header and body deadlines and the connection cap of ``limits.py``). Neither is uvicorn's public
API, so ``pyproject.toml`` pins the uvicorn release this was verified with, and the rest of the package only
calls :func:`serving` and :func:`bind_socket` (``tests/test_imports.py`` holds every other module to that).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any, ClassVar

import anyio
import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from runapi_mcp.config import ConfigError
from runapi_mcp.http.limits import BUSY_RESPONSE, KEEP_ALIVE_S, TIMEOUT_RESPONSE, ConnectionGuard

# The deadlines' lines are the limits' (``limits.throttle_logs`` throttles that logger).
log = logging.getLogger("runapi_mcp.http.limits")


class _Server(uvicorn.Server):
    """uvicorn with an optional hook run first thing at shutdown, and no re-raise of the stopping signal."""

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
class Serving:
    """An app being served: its bound port, and an event set once it has stopped (a signal, or ``stop()``)."""

    port: int
    stopped: anyio.Event
    _server: _Server

    @property
    def stopping(self) -> bool:
        """Asked to stop (a signal or ``stop()``), whether or not it has yet."""
        return bool(self._server.should_exit)

    def stop(self) -> None:
        self._server.should_exit = True


@asynccontextmanager
async def serving(
    app: ASGIApp,
    sock: socket.socket,
    *,
    failure: str,
    guard: ConnectionGuard | None = None,
    lifespan: bool = False,
    on_shutdown: Callable[[], None] | None = None,
    graceful_shutdown_s: float | None = None,
) -> AsyncIterator[Serving]:
    """Serve ``app`` on ``sock`` (bound; taken over: serving closes it) in this event loop, for as long as the
    block lasts or until SIGINT/SIGTERM stops it (uvicorn's handlers, without its re-raise: what comes
    after the block, closing the store, is the caller's). Yields once the server accepts connections; if it
    cannot start, raises ``ConfigError(failure)``.

    ``guard``: the connection cap and the header and body deadlines (uvicorn's h11 protocol with them, and
    the listening socket's ``accept()`` asking the guard first). ``on_shutdown`` runs first thing when the
    server starts shutting down (before open connections are waited for, at most ``graceful_shutdown_s``).
    uvicorn logs nothing of its own (no ``log_config``, no access log): the server's logging, to stderr and
    redacted, stays in charge.
    """
    extra: dict[str, Any] = {}
    if guard is not None:
        extra.update(http=guarded_protocol(guard), timeout_keep_alive=KEEP_ALIVE_S)
        sock = guard.listen(sock)  # accept() asks the guard first: the connection cap
    if graceful_shutdown_s is not None:
        extra["timeout_graceful_shutdown"] = int(graceful_shutdown_s)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on" if lifespan else "off", **extra)
    server = _Server(config, on_shutdown)
    running = Serving(int(sock.getsockname()[1]), anyio.Event(), server)

    async def serve() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            server.settled.set()
            running.stopped.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            await server.settled.wait()
            if not server.started:
                raise ConfigError(failure)
            try:
                yield running
            finally:
                running.stop()
    finally:
        sock.close()  # uvicorn closed it if it started; not if it failed to


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline, a body deadline and the connection cap."""

    guard: ClassVar[ConnectionGuard]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.guard.made(self)
        if self.guard.open > self.guard.max_connections + self.guard.slack:
            # Past the gate (an event loop that accepts without calling GuardedSocket.accept): refused here.
            self.guard.refused += 1
            self.close_now(BUSY_RESPONSE)
            return
        self._header_timer = self.loop.call_later(self.guard.header_timeout_s, self._headers_late)
        self.guard.waiting(self, fresh=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        self.guard.lost(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._track(after_response=False)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track(after_response=True)

    def close_now(self, answer: bytes = b"") -> None:
        """Close the connection at once (after ``answer``, raw bytes, if any)."""
        self._cancel_timers()
        if not self.transport.is_closing():
            if answer:
                self.transport.write(answer)
            self.transport.close()

    def _track(self, *, after_response: bool) -> None:
        """Arm or disarm the deadlines for where the request now is."""
        if self.transport.is_closing():
            self._cancel_timers()
            self.guard.forget(self)
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            if not self.conn.trailing_data[0]:
                # Kept alive between requests: uvicorn's keep-alive timer closes it if nothing comes.
                self._cancel_header_timer()
                if self.timeout_keep_alive_task is None:
                    self.timeout_keep_alive_task = self.loop.call_later(
                        self.timeout_keep_alive, self.timeout_keep_alive_handler
                    )
                self.guard.waiting(self, fresh=False)
            else:  # partway through the next request's headers
                if self._header_timer is None:
                    self._header_timer = self.loop.call_later(self.guard.header_timeout_s, self._headers_late)
                self.guard.waiting(self, fresh=True)
        elif state is h11.SEND_BODY:
            self._cancel_header_timer()
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self.guard.body_timeout_s, self._body_late)
            if after_response:
                # Answered before its body came in (a refusal): uvicorn drops the rest of the body as it
                # arrives. Its keep-alive timer would close the connection under a client still sending
                # (a reset that loses the answer): the body deadline governs instead.
                self._unset_keepalive_if_required()
            self.guard.forget(self)
        else:  # the request is complete (or the connection is done): the app has it
            self._cancel_timers()
            self.guard.forget(self)

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        self.guard.header_timeouts += 1
        log.warning(
            "closed connections whose request headers were not complete within %g s", self.guard.header_timeout_s
        )
        self.guard.forget(self)
        self.close_now(TIMEOUT_RESPONSE if self.conn.trailing_data[0] else b"")

    def _body_late(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        self.guard.body_timeouts += 1
        log.warning("closed connections whose request body was not complete within %g s", self.guard.body_timeout_s)
        self.guard.forget(self)
        self.close_now()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_header_timer()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None


def guarded_protocol(guard: ConnectionGuard) -> type[GuardedH11Protocol]:
    """A protocol class (uvicorn's ``http=``) bound to ``guard``."""
    return type("RunapiH11Protocol", (GuardedH11Protocol,), {"guard": guard})
