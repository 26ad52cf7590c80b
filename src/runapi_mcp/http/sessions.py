"""MCP sessions over HTTP: a cap per user, a short idle expiry, and SSE streams a client can resume.

**Per user.** The SDK caps open streamable-HTTP sessions for the whole server (10,000) and keeps an idle
one for 30 minutes, so one user could hold every slot. :class:`UserSessions` keeps the SDK's manager and
adds a cap per user (``RUNAPI_MCP_MAX_SESSIONS_PER_USER``): when a user at the cap opens another session,
that user's least recently used idle session (no request in flight, no open GET stream) is closed, as an
idle expiry would; when none of theirs is idle, the new one is refused (429 with a JSON-RPC error naming
the cap and its setting). Another user's sessions are never touched. Sessions expire after
``RUNAPI_MCP_SESSION_IDLE_S`` with no request in flight. The legacy SSE transport gets the same cap on its
open streams (:class:`SseStreams`); there a stream is its session, so at the cap the new one is refused.

**Resumable streams (SEP-1699).** Each session has its own bounded event store (:class:`SessionEvents`), so
every SSE response to a client on 2025-11-25 or later starts with a priming event (an id, empty data and a
``retry:`` field); a client that loses the stream reconnects with ``Last-Event-ID`` and gets what it
missed. One store per session: a replay never reaches another session's events. The legacy SSE stream has
no event ids to resume from; its first event (``endpoint``) carries the ``retry:`` field.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections import OrderedDict
from contextvars import ContextVar
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthorizationContext
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http import (
    MCP_SESSION_ID_HEADER,
    EventCallback,
    EventId,
    EventMessage,
    EventStore,
    StreamableHTTPServerTransport,
    StreamId,
)
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import JSONRPCMessage, jsonrpc_message_adapter
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runapi_mcp.server.owners import OWNER_SCOPE_KEY
from runapi_mcp.server.sdk import SessionManagerHooks

# The limits' logger: each of its lines at most once per 10 s (``limits.throttle_logs``), as a user can
# repeat what they say at will.
log = logging.getLogger("runapi_mcp.http.limits")

SSE_RETRY_MS = 3000
"""The reconnection delay every SSE stream suggests (its ``retry:`` field)."""
EVENTS_MAX_BYTES = 1024 * 1024
"""Per session: the most bytes of messages kept for replay (the newest event is kept whatever its size)."""
EVENTS_MAX_COUNT = 256
"""Per session: the most events kept for replay."""
REFUSED_RETRY_AFTER_S = 5

Owner = str | None
"""Whose session: the owner id ``http.owner.OwnerScope`` put in the scope (``""`` for the shared token, and
for every caller without auth); None for a request with no verified caller."""

# The owner of the request opening a session, for the SDK's admission (which sees no ASGI scope).
_opening_owner: ContextVar[Owner] = ContextVar("runapi_mcp_opening_owner", default=None)


def owner_in(scope: Scope) -> Owner:
    """The owner ``http.owner.OwnerScope`` put in the scope (None: no verified caller)."""
    owner = scope.get(OWNER_SCOPE_KEY)
    return owner if isinstance(owner, str) else None


def too_many_sessions(cap: int, detail: str) -> JSONResponse:
    """429: the user is at the cap and nothing of theirs can make room (a JSON-RPC error, no request id)."""
    message = (
        f"Too many open sessions for this user: {cap} are open ({detail}); the limit is "
        f"RUNAPI_MCP_MAX_SESSIONS_PER_USER={cap}. End one (DELETE /mcp with its Mcp-Session-Id) or retry later."
    )
    return JSONResponse(
        {"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": message}},
        status_code=429,
        headers={"Retry-After": str(REFUSED_RETRY_AFTER_S), "Cache-Control": "no-store"},
    )


class SessionEvents(EventStore):
    """One session's SSE events, newest kept, for replay after a reconnection (``Last-Event-ID``).

    Bounded by count and bytes (each message is kept as its JSON text, whose length is what it costs);
    the oldest go first. Event ids are ``<random>-<n>``: unique, and meaningless to any other store.
    """

    def __init__(self, max_bytes: int = EVENTS_MAX_BYTES, max_count: int = EVENTS_MAX_COUNT) -> None:
        self.max_bytes = max_bytes
        self.max_count = max_count
        self._prefix = secrets.token_hex(8)
        self._next = 0
        self._events: OrderedDict[EventId, tuple[StreamId, str | None]] = OrderedDict()
        self._bytes = 0

    @property
    def size(self) -> tuple[int, int]:
        """(events, bytes) held."""
        return len(self._events), self._bytes

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        self._next += 1
        event_id = f"{self._prefix}-{self._next}"
        text = None if message is None else message.model_dump_json(by_alias=True, exclude_unset=True)
        self._events[event_id] = (stream_id, text)
        self._bytes += len(text or "")
        while len(self._events) > 1 and (len(self._events) > self.max_count or self._bytes > self.max_bytes):
            _, (_, dropped) = self._events.popitem(last=False)
            self._bytes -= len(dropped or "")
        return event_id

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        found = self._events.get(last_event_id)
        if found is None:
            return None
        stream_id = found[0]
        after = False
        for event_id, (stream, text) in list(self._events.items()):
            if after and stream == stream_id and text is not None:
                message = jsonrpc_message_adapter.validate_json(text, by_name=False)
                await send_callback(EventMessage(message, event_id))
            after = after or event_id == last_event_id
        return stream_id


class UserSessions(SessionManagerHooks):
    """The SDK's streamable-HTTP session manager with a cap on each user's open sessions.

    Admission stays the SDK's (under its lock, so concurrent opens are counted one by one); this class
    only decides, for the opening request's owner, whether one of that owner's idle sessions must end
    first, and gives each session its own event store. Requests reach it through :class:`McpEndpoint` (which
    refuses early, with a clear answer, an owner at the cap with nothing idle).
    """

    def __init__(
        self,
        app: Server[Any],
        *,
        per_user: int,
        idle_s: float,
        security_settings: TransportSecuritySettings | None = None,
        retry_ms: int = SSE_RETRY_MS,
    ) -> None:
        super().__init__(
            app=app,
            event_store=SessionEvents(),
            security_settings=security_settings,
            retry_interval=retry_ms,
            session_idle_timeout=idle_s,
        )
        self.per_user = per_user
        self._owned: dict[Owner, dict[str, StreamableHTTPServerTransport]] = {}
        self._owner_of: dict[str, Owner] = {}
        self.evicted = 0
        self.refused = 0

    def open_sessions(self, owner: Owner) -> int:
        """How many sessions ``owner`` holds (opening ones included)."""
        return len(self._owned.get(owner, {}))

    def _idle_victim(self, owner: Owner) -> str | None:
        """The id of ``owner``'s least recently used session with nothing in flight, if any."""
        best: tuple[float, str] | None = None
        for session_id, transport in self._owned.get(owner, {}).items():
            scope = transport.idle_scope
            # No scope yet (still opening) or an infinite deadline (a request or a GET stream in flight): busy.
            if scope is None or scope.cancel_called or math.isinf(scope.deadline):
                continue
            if best is None or scope.deadline < best[0]:
                best = (scope.deadline, session_id)
        return best[1] if best is not None else None

    def has_room(self, owner: Owner) -> bool:
        """Whether ``owner`` may open a session now (under the cap, or one of theirs is idle)."""
        return self.open_sessions(owner) < self.per_user or self._idle_victim(owner) is not None

    def admit_session(self, requestor: AuthorizationContext | None) -> StreamableHTTPServerTransport | None:
        owner = _opening_owner.get()
        mine = self._owned.get(owner, {})
        while len(mine) >= self.per_user:
            victim = self._idle_victim(owner)
            if victim is None:
                self.refused += 1
                return None  # a race with another opening request: the SDK answers 503
            self._close(victim)
        # One store per session: a Last-Event-ID replay only ever sees this session's events.
        self.event_store = SessionEvents()
        transport = super().admit_session(requestor)
        if transport is not None and transport.mcp_session_id is not None:
            self._owned.setdefault(owner, {})[transport.mcp_session_id] = transport
            self._owner_of[transport.mcp_session_id] = owner
        return transport

    def _close(self, session_id: str) -> None:
        """End a session as its idle expiry would (its server task winds down and the SDK discards it)."""
        owner = self._owner_of.pop(session_id, None)
        transport = self._owned.get(owner, {}).pop(session_id, None)
        if transport is not None and transport.idle_scope is not None:
            transport.idle_scope.cancel()
            self.evicted += 1
            log.info(
                "a user at the session cap (RUNAPI_MCP_MAX_SESSIONS_PER_USER=%d) opened another: closed their "
                "least recently used idle one",
                self.per_user,
            )

    async def discard_session(self, session_id: str, transport: StreamableHTTPServerTransport) -> None:
        owner = self._owner_of.pop(session_id, None)
        mine = self._owned.get(owner)
        if mine is not None:
            mine.pop(session_id, None)
            if not mine:
                del self._owned[owner]
        await super().discard_session(session_id, transport)


class McpEndpoint:
    """The ``/mcp`` endpoint (ASGI): a request that opens a session is checked against its owner's cap,
    then everything goes to the session manager."""

    def __init__(self, sessions: UserSessions) -> None:
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        owner = owner_in(scope)
        opening = scope["type"] == "http" and scope["method"] == "POST" and not _has_session_header(scope)
        if opening and not self.sessions.has_room(owner):
            self.sessions.refused += 1
            log.warning(
                "refused a new session: the user is at the session cap (RUNAPI_MCP_MAX_SESSIONS_PER_USER=%d) "
                "with every session busy",
                self.sessions.per_user,
            )
            detail = "each has a request or a stream in flight"
            await too_many_sessions(self.sessions.per_user, detail)(scope, receive, send)
            return
        token = _opening_owner.set(owner)
        try:
            await self.sessions.handle_request(scope, receive, send)
        finally:
            _opening_owner.reset(token)


def _has_session_header(scope: Scope) -> bool:
    name = MCP_SESSION_ID_HEADER.encode()
    return any(key == name for key, _ in scope.get("headers", ()))


class SseStreams:
    """The legacy SSE transport's streams (one per session) under the same per-user cap, each stream's
    first event carrying the ``retry:`` field."""

    def __init__(self, app: ASGIApp, per_user: int, retry_ms: int = SSE_RETRY_MS) -> None:
        self.app = app
        self.per_user = per_user
        self.retry_ms = retry_ms
        self._open: dict[Owner, int] = {}
        self.refused = 0

    def open_streams(self, owner: Owner) -> int:
        return self._open.get(owner, 0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        owner = owner_in(scope)
        if self._open.get(owner, 0) >= self.per_user:
            self.refused += 1
            log.warning(
                "refused a new SSE stream: the user is at the session cap (RUNAPI_MCP_MAX_SESSIONS_PER_USER=%d)",
                self.per_user,
            )
            await too_many_sessions(self.per_user, "each an open SSE stream")(scope, receive, send)
            return
        self._open[owner] = self._open.get(owner, 0) + 1
        first = True

        async def send_with_retry(message: Message) -> None:
            nonlocal first
            if first and message["type"] == "http.response.body" and message.get("body"):
                first = False
                message = {**message, "body": with_retry(bytes(message["body"]), self.retry_ms)}
            await send(message)

        try:
            await self.app(scope, receive, send_with_retry)
        finally:
            self._open[owner] -= 1
            if not self._open[owner]:
                del self._open[owner]


def with_retry(body: bytes, retry_ms: int) -> bytes:
    """An SSE chunk with a ``retry:`` field added to its first event (after that event's first line)."""
    for sep in (b"\r\n", b"\n"):
        end = body.find(sep)
        if end >= 0:
            return body[: end + len(sep)] + b"retry: %d" % retry_ms + sep + body[end + len(sep) :]
    return body
