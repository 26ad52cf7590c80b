"""What one connection, or one user, may hold of the process: descriptors, time, and request bodies.

- **Descriptors.** At start the soft open-file limit is raised to the hard one (:func:`raise_fd_limit`).
  Open connections are capped below it (``RUNAPI_MCP_MAX_CONNECTIONS``, by default the limit less a
  reserve for the store, logs and upstream connections), where connections are accepted
  (:class:`ConnectionGuard`, through the listening socket's ``accept()``), so ``accept()`` does not run
  out: a connection over the cap closes the oldest one still waiting for its request headers (a slow or
  silent client, or an idle keep-alive one), and only when every connection is busy with a request is the
  new one answered ``503`` at once, without reading anything.
- **Time.** A connection's request headers must be complete within ``RUNAPI_MCP_HEADER_TIMEOUT_S`` (10 s)
  of its opening (or of the first byte of the next request on a kept-alive connection), and its body within
  ``RUNAPI_MCP_BODY_TIMEOUT_S`` (60 s) of the headers; an idle kept-alive connection closes after 5 s
  (``uvicorn_server.GuardedH11Protocol``, uvicorn's h11 protocol with those timers: uvicorn's internals
  stay in that one module).
- **Request bodies** (:class:`BodyBudget`). The bytes of request bodies in flight (from the headers until the
  request is answered) are bounded for the process and per user; a request over either answers ``503`` with
  ``Retry-After`` before its body is read, using its ``Content-Length`` (a chunked body is counted as it
  arrives).
- **Logs.** A condition that can repeat per connection is logged at most once per 10 s, with a count
  (:class:`Throttle`): asyncio's ``accept()`` errors and the SDK's tracebacks for a client gone mid-body
  included, which would otherwise fill the disk.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
import logging
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runapi_mcp.config import Settings
from runapi_mcp.http.sessions import Owner, owner_in

log = logging.getLogger("runapi_mcp.http.limits")

LOG_INTERVAL_S = 10.0
KEEP_ALIVE_S = 5
"""How long an idle kept-alive connection stays open (uvicorn's ``timeout_keep_alive``)."""
BUSY_RETRY_AFTER_S = 1


@dataclass(frozen=True)
class HttpLimits:
    """The limits one HTTP server applies (from :class:`~runapi_mcp.config.Settings`)."""

    max_sessions_per_user: int = 20
    session_idle_s: float = 300.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_connections: int | None = None  # None: from the open-file limit
    body_budget_bytes: int = 64 * 1024 * 1024
    user_body_budget_bytes: int = 16 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            max_sessions_per_user=settings.max_sessions_per_user,
            session_idle_s=settings.session_idle_s,
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            max_connections=settings.max_connections,
            body_budget_bytes=settings.body_budget_bytes,
            user_body_budget_bytes=settings.user_body_budget_bytes,
        )


# -- descriptors ---------------------------------------------------------------------------------------
def raise_fd_limit() -> int | None:
    """Raise the soft open-file limit to the hard one; the soft limit now (None where there is none)."""
    if sys.platform == "win32":
        return None
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return None if soft == resource.RLIM_INFINITY else soft
    for value in (target, 1 << 20):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(value, target), hard))
            break
        except (ValueError, OSError):  # above the kernel's nr_open: keep what there is
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_cap(fd_limit: int | None) -> tuple[int, int]:
    """The most open connections under ``fd_limit`` descriptors, and the slack (how many more while the
    ones closed to make room finish closing). The rest of the descriptors is the reserve (an eighth, at
    least 64, less the slack) for the store, the logs, upstream connections and the files a tool call opens.
    """
    if fd_limit is None:
        return 4096, 64
    reserve = max(64, fd_limit // 8)
    return max(16, fd_limit - reserve), max(8, min(256, reserve // 3))


# -- logs ----------------------------------------------------------------------------------------------
class Throttle(logging.Filter):
    """Lets one record of a kind through per interval, with how many like it were held back since.

    A kind is what ``kind_of`` says of a record (None: not throttled). The traceback of a throttled kind
    is dropped (its exception is named on the line): one line, whatever the rate.
    """

    def __init__(self, kind_of: Callable[[logging.LogRecord], str | None], interval_s: float = LOG_INTERVAL_S) -> None:
        super().__init__()
        self.kind_of = kind_of
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = self.kind_of(record)
        if kind is None:
            return True
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval_s:
            self._held[kind] = self._held.get(kind, 0) + 1
            return False
        held = self._held.pop(kind, 0)
        self._last[kind] = now
        text = record.getMessage().splitlines()[0]
        if record.exc_info and record.exc_info[1] is not None:
            text += f": {record.exc_info[1] or type(record.exc_info[1]).__name__}"
        if held:
            text += f" ({held} more like it in the last {now - last if last is not None else 0:.0f} s)"
        record.msg, record.args, record.exc_info, record.exc_text = text, (), None, None
        return True


def _accept_errors(record: logging.LogRecord) -> str | None:
    text = str(record.msg)
    if text.startswith("socket.accept() out of system resource"):
        return "accept"
    if text.startswith("Exception in callback BaseSelectorEventLoop._start_serving"):
        return "start_serving"  # asyncio's retries of accept() after those errors
    return None


def _by_template(record: logging.LogRecord) -> str | None:
    return str(record.msg)


def _client_left(record: logging.LogRecord) -> str | None:
    # The SDK logs a traceback for each request whose client left (or was cut off at the body deadline)
    # before its body was read.
    return "client left" if record.exc_info and isinstance(record.exc_info[1], ClientDisconnect) else None


_THROTTLES = {
    "asyncio": Throttle(_accept_errors),
    log.name: Throttle(_by_template),
    "mcp.server.streamable_http": Throttle(_client_left),
    "mcp.server.sse": Throttle(_client_left),
}


def throttle_logs() -> None:
    """Throttle asyncio's ``accept()`` errors, the SDK's tracebacks for clients gone mid-body and this
    module's own lines (idempotent, process-wide)."""
    for name, throttle in _THROTTLES.items():
        logger = logging.getLogger(name)
        if throttle not in logger.filters:
            logger.addFilter(throttle)


# -- connections ---------------------------------------------------------------------------------------
def _raw_response(status: str, body: dict[str, Any] | None, extra: str = "") -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(data)}\r\nConnection: close\r\n{extra}"
    if data:
        head += "Content-Type: application/json\r\nCache-Control: no-store\r\n"
    return head.encode() + b"\r\n" + data


BUSY_RESPONSE = _raw_response(
    "503 Service Unavailable",
    {"error": "the server is at its connection limit (RUNAPI_MCP_MAX_CONNECTIONS); retry shortly"},
    f"Retry-After: {BUSY_RETRY_AFTER_S}\r\n",
)
TIMEOUT_RESPONSE = _raw_response("408 Request Timeout", {"error": "request headers not complete in time"})


class Connection(Protocol):
    """What the guard needs of an open connection (``uvicorn_server.GuardedH11Protocol``)."""

    def close_now(self, answer: bytes = b"") -> None:
        """Close the connection at once (after ``answer``, raw bytes, if any)."""


class ConnectionGuard:
    """The open connections of one server: the cap, enforced where connections are accepted.

    The listening socket is a :class:`GuardedSocket`: under the cap a connection is accepted as usual; at
    the cap, the connection longest waiting for a request is closed to make room (``_fresh``: opened, or
    partway through a request line or headers, so a client sending headers slowly or nothing; then
    ``_idle``: kept alive between requests), and when every connection is busy with a request the new one
    is answered ``503`` and closed there and then, its descriptor never reaching the event loop. So
    ``accept()`` never runs out of descriptors. A connection busy with a request is never closed to make
    room.
    """

    def __init__(
        self, max_connections: int, header_timeout_s: float, body_timeout_s: float, *, slack: int = 16
    ) -> None:
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        # How many may be over the cap while the ones closed to make room finish closing (their descriptors
        # are released on the event loop's next turn): part of the descriptor reserve.
        self.slack = slack
        self._accepted: deque[float] = deque()  # accepted, protocol not yet made (when)
        self._live: set[Connection] = set()
        self._closing: set[Connection] = set()  # closed to make room, not yet gone
        self._fresh: dict[Connection, None] = {}
        self._idle: dict[Connection, None] = {}
        self.made_room = 0  # connections closed to make room
        self.refused = 0  # connections answered 503 at once
        self.header_timeouts = 0
        self.body_timeouts = 0

    @property
    def open(self) -> int:
        """Connections holding a descriptor: accepted (protocol still to be made) or made and not yet lost."""
        horizon = time.monotonic() - 5.0  # one whose protocol was never made (a failed handshake) is gone
        while self._accepted and self._accepted[0] < horizon:
            self._accepted.popleft()
        return len(self._accepted) + len(self._live)

    def listen(self, sock: socket.socket) -> GuardedSocket:
        """``sock`` (bound; taken over, as its descriptor moves) as a listening socket under this guard."""
        guarded = GuardedSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
        guarded.guard = self
        return guarded

    def admit(self, conn: socket.socket) -> bool:
        """Whether a just-accepted connection may stay (else it has been answered 503 and closed)."""
        if self.open < self.max_connections:
            self._accepted.append(time.monotonic())
            return True
        if len(self._closing) < self.slack:
            if self._make_room():
                self._accepted.append(time.monotonic())
                return True
            log.warning("at the connection limit (%d), every one busy with a request: refusing", self.max_connections)
        else:
            log.warning("at the connection limit (%d): refusing while others close", self.max_connections)
        self.refused += 1
        try:
            conn.setblocking(False)
            conn.send(BUSY_RESPONSE)
        except OSError:
            pass
        conn.close()
        return False

    def _make_room(self) -> bool:
        for pool in (self._fresh, self._idle):
            victim = next(iter(pool), None)
            if victim is not None:
                self.forget(victim)
                self._closing.add(victim)
                self.made_room += 1
                log.warning(
                    "at the connection limit (%d): closing the connections longest waiting for a request",
                    self.max_connections,
                )
                victim.close_now()
                return True
        return False

    def made(self, protocol: Connection) -> None:
        if self._accepted:
            self._accepted.popleft()
        self._live.add(protocol)

    def lost(self, protocol: Connection) -> None:
        self.forget(protocol)
        self._live.discard(protocol)
        self._closing.discard(protocol)

    def waiting(self, protocol: Connection, *, fresh: bool) -> None:
        (self._idle if fresh else self._fresh).pop(protocol, None)
        (self._fresh if fresh else self._idle).setdefault(protocol, None)

    def forget(self, protocol: Connection) -> None:
        self._fresh.pop(protocol, None)
        self._idle.pop(protocol, None)


class GuardedSocket(socket.socket):
    """A listening socket whose ``accept()`` asks its guard first (asyncio's accept loop calls it)."""

    __slots__ = ("guard",)
    guard: ConnectionGuard

    def accept(self) -> tuple[socket.socket, Any]:
        conn, address = super().accept()  # BlockingIOError when nobody is waiting: asyncio's loop ends there
        if not self.guard.admit(conn):
            # asyncio ends this turn's accept loop on it: the next turn first lets the closed ones go.
            raise ConnectionAbortedError("refused at the connection limit")
        return conn, address


# -- request bodies ------------------------------------------------------------------------------------
class BodyBudget:
    """Bounds the bytes of request bodies in flight, for the process and per user (ASGI middleware).

    A request's body counts from its headers until it is answered (the parsed message lives that long).
    Over either budget the request is answered ``503`` with ``Retry-After`` before anything of its body
    is read; the body then arriving is dropped as it comes (uvicorn discards a body once the response is
    complete), so the client reads the answer, and the body deadline bounds how long that may take. A body
    larger than a whole budget can never fit: ``413``, its body dropped the same way. The user is the
    verified owner (``http.owner.OwnerScope``); requests with none share one budget.
    """

    def __init__(self, app: ASGIApp, *, process_bytes: int, user_bytes: int) -> None:
        self.app = app
        self.process_bytes = process_bytes
        self.user_bytes = min(user_bytes, process_bytes)
        self.in_flight = 0
        self.by_owner: dict[Owner, int] = {}
        self.refused = 0
        self._trim = _Trim(lambda: self.in_flight > 0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length, chunked = _declared_body(scope)
        if not length and not chunked:
            await self.app(scope, receive, send)
            return
        owner = owner_in(scope)
        if length:
            if length > self.user_bytes:
                await _too_large(self.user_bytes)(scope, receive, send)
                return
            if not self._take(owner, length):
                await self._busy(scope, receive, send)
                return
            try:
                await self.app(scope, receive, send)
            finally:
                self._give(owner, length)
            return
        await self._chunked(owner, scope, receive, send)

    async def _chunked(self, owner: Owner, scope: Scope, receive: Receive, send: Send) -> None:
        """A body of unknown length: read here, counted chunk by chunk, then handed on whole."""
        body = bytearray()
        taken = 0
        try:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client left: nobody to answer
                chunk = bytes(message.get("body", b""))
                if chunk and not self._take(owner, len(chunk)):
                    await self._busy(scope, receive, send)
                    return
                taken += len(chunk)
                body += chunk
                if not message.get("more_body", False):
                    break
            messages: list[Message] = [{"type": "http.request", "body": bytes(body), "more_body": False}]
            body = bytearray()

            async def replay() -> Message:
                return messages.pop() if messages else await receive()

            await self.app(scope, replay, send)
        finally:
            self._give(owner, taken)

    def _take(self, owner: Owner, size: int) -> bool:
        mine = self.by_owner.get(owner, 0)
        if self.in_flight + size > self.process_bytes or mine + size > self.user_bytes:
            return False
        self.in_flight += size
        self.by_owner[owner] = mine + size
        return True

    def _give(self, owner: Owner, size: int) -> None:
        if not size:
            return
        self.in_flight -= size
        left = self.by_owner.get(owner, 0) - size
        if left > 0:
            self.by_owner[owner] = left
        else:
            self.by_owner.pop(owner, None)
        self._trim.released(size)

    async def _busy(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.refused += 1
        log.warning("request bodies over the budget: answering 503 (RUNAPI_MCP_BODY_BUDGET_BYTES and per user)")
        message = (
            "Too many request bytes in flight (the process's budget is RUNAPI_MCP_BODY_BUDGET_BYTES="
            f"{self.process_bytes}, a user's RUNAPI_MCP_USER_BODY_BUDGET_BYTES={self.user_bytes}); "
            f"retry after {BUSY_RETRY_AFTER_S} s"
        )
        await _json_error(503, message, {"Retry-After": str(BUSY_RETRY_AFTER_S)})(scope, receive, send)


def _declared_body(scope: Scope) -> tuple[int | None, bool]:
    """(Content-Length, whether the body is chunked) of a request."""
    length: int | None = None
    chunked = False
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = None
        elif key == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    return length, chunked


def _json_error(status: int, message: str, headers: dict[str, str] | None = None) -> ASGIApp:
    body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": message}}
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})})


def _too_large(limit: int) -> ASGIApp:
    # Not closed after the answer: the client would lose it to a reset; what comes is dropped, under the
    # body deadline.
    return _json_error(413, f"Request body larger than a user's whole budget ({limit} bytes)")


class _Trim:
    """Gives freed heap back to the system after large bodies (glibc's ``malloc_trim``): a second after the
    last body in flight is answered, once at least 8 MiB of bodies were released. Without it the process
    keeps its peak RSS for good (freed arenas are not returned)."""

    THRESHOLD = 8 * 1024 * 1024
    DELAY_S = 1.0

    def __init__(self, busy: Callable[[], bool]) -> None:
        self._released = 0
        self._pending: asyncio.TimerHandle | None = None
        self._fn = _malloc_trim()
        self.busy = busy  # whether bodies are in flight

    def released(self, size: int) -> None:
        self._released += size
        if self._fn is None or self._pending is not None or self._released < self.THRESHOLD:
            return
        self._pending = asyncio.get_running_loop().call_later(self.DELAY_S, self._run)

    def _run(self) -> None:
        self._pending = None
        if self._fn is None:
            return
        if self.busy():
            self._pending = asyncio.get_running_loop().call_later(self.DELAY_S, self._run)
            return
        self._released = 0
        self._fn(0)


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    return trim
