"""A small load balancer on loopback, in front of several ``runapi-mcp serve`` instances (tests/cluster.py).

It does what a deployment's balancer does for MCP (docs/deployment.md), and no more:

- A request without ``Mcp-Session-Id`` (the 2026-era stateless protocol, an ``initialize``, a webhook from
  RunAPI, a health check) goes to the next instance in turn; one that refuses the connection (it is down)
  is skipped, as a balancer's health check would take it out.
- An ``initialize`` answered with an ``Mcp-Session-Id`` pins that session to the instance that issued it:
  every later request carrying the id goes there (2025-era sessions live in one process's memory).
- A request for a session whose instance is down (or that no instance issued) is answered 404, which the
  spec says makes a client start a new session; the session is then forgotten.
- Responses stream through as they arrive (SSE), and a stream cut by a dying instance is cut for the client
  too, not ended cleanly.

The legacy HTTP+SSE transport (``/sse``, ``/messages/``) names its session in a query string the proxy does not
learn: it is round-robined like any stateless request, so tests through the proxy speak streamable HTTP
(docs/haproxy.cfg routes legacy SSE by client address instead).

Every request is logged with the instance it went to (``routed``), and ``steer`` can send the stateless
requests a test chooses to an instance of its choice (RunAPI's webhook to a given instance, say).

It runs on its own thread and event loop (like the simulator), so a test's loop and the proxy never wait for
each other; the benchmark uses it as it is.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio
import httpx
import uvicorn
from starlette.types import Message, Receive, Scope, Send

SESSION_HEADER = "mcp-session-id"
# Hop-by-hop headers (RFC 9110 7.6.1) are the proxy's own business on each side; everything else passes as sent,
# the Host header included (the instances check it against the address clients use, the proxy's).
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding",
     "upgrade"}
)
# What an instance itself answers for a session it does not have (the MCP SDK's words), so a client cannot tell
# the two apart.
_NO_SESSION_BODY = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Session not found"}}'



@dataclass(frozen=True)
class Routed:
    """One request the proxy passed on (or answered itself: ``backend`` None)."""

    method: str
    path: str
    backend: int | None
    status: int
    session: str | None
    time: float  # time.monotonic() when it arrived


Steer = Callable[[str, str], int | None]
"""(method, path) of a stateless request -> the instance it must go to, or None for the next in turn."""


class LoopbackProxy:
    def __init__(self, backends: Sequence[str]) -> None:
        self.backends = list(backends)  # base URLs, e.g. http://127.0.0.1:8001
        self.steer: Steer | None = None
        self._sessions: dict[str, int] = {}
        self._routed: list[Routed] = []
        self._lock = threading.Lock()
        self._turn = itertools.count()
        self._clients: list[httpx.AsyncClient] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- what it saw ---------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def sessions(self) -> dict[str, int]:
        """Each live session id -> the instance it is pinned to, in the order they were issued."""
        with self._lock:
            return dict(self._sessions)

    @property
    def routed(self) -> list[Routed]:
        with self._lock:
            return list(self._routed)

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> str:
        """Serve on a free loopback port from a thread; the proxy's URL once it accepts connections."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self, log_config=None, log_level="warning", access_log=False, lifespan="off", interface="asgi3",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"proxy:{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the proxy did not start")
            time.sleep(0.005)
        return self.url

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(5)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(5)

    def __enter__(self) -> LoopbackProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- routing -------------------------------------------------------------------------------------------
    def _client(self, backend: int) -> httpx.AsyncClient:
        # Made on the proxy's own loop, one pool per instance; no read timeout: SSE streams stay open.
        while len(self._clients) <= backend:
            self._clients.append(
                httpx.AsyncClient(
                    base_url=self.backends[len(self._clients)],
                    timeout=httpx.Timeout(None, connect=5),
                    limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
                )
            )
        return self._clients[backend]

    def _log(self, scope: Scope, backend: int | None, status: int, session: str | None, arrived: float) -> None:
        with self._lock:
            self._routed.append(Routed(scope["method"], scope["path"], backend, status, session, arrived))

    def _candidates(self, method: str, path: str, session: str | None) -> list[int]:
        """The instances to try, in order: the pinned one alone, or every one from the next in turn."""
        if session is not None:
            with self._lock:
                pinned = self._sessions.get(session)
            return [] if pinned is None else [pinned]
        chosen = self.steer(method, path) if self.steer is not None else None
        if chosen is not None:
            return [chosen]
        first = next(self._turn) % len(self.backends)
        return [(first + n) % len(self.backends) for n in range(len(self.backends))]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        arrived = time.monotonic()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        session = next((v for k, v in headers if k.lower() == SESSION_HEADER), None)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        forwarded = [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP]
        target = scope["path"] + (f"?{scope['query_string'].decode('latin-1')}" if scope["query_string"] else "")
        for backend in self._candidates(scope["method"], scope["path"], session):
            client = self._client(backend)
            request = client.build_request(scope["method"], target, headers=forwarded, content=bytes(body))
            try:
                response = await client.send(request, stream=True)
            except httpx.ConnectError:
                continue  # down: the next instance (a stateless request), or none (a pinned session)
            except httpx.HTTPError:
                await _answer(send, 502, b"the instance failed before answering")
                self._log(scope, backend, 502, session, arrived)
                return
            try:
                self._learn(response, backend, session, scope["method"])
                self._log(scope, backend, response.status_code, session, arrived)
                await _relay(response, receive, send)
            finally:
                await response.aclose()
            return
        if session is not None:
            with self._lock:
                self._sessions.pop(session, None)
            await _answer(send, 404, _NO_SESSION_BODY, "application/json")
            self._log(scope, None, 404, session, arrived)
            return
        await _answer(send, 503, b"no instance is up")
        self._log(scope, None, 503, session, arrived)

    def _learn(self, response: httpx.Response, backend: int, session: str | None, method: str) -> None:
        issued = response.headers.get(SESSION_HEADER)
        with self._lock:
            if issued and session is None:
                self._sessions[issued] = backend
            elif session is not None and (response.status_code == 404 or method == "DELETE"):
                self._sessions.pop(session, None)  # ended (or expired) on its instance


async def _answer(send: Send, status: int, body: bytes, content_type: str = "text/plain") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _relay(response: httpx.Response, receive: Receive, send: Send) -> None:
    """Stream ``response`` to the client as it arrives. A client that hangs up ends the upstream request too
    (an SSE stream would otherwise be held open on the instance); an instance that dies mid-answer raises,
    so the client's connection is cut rather than its answer ended as if complete."""
    headers = [
        (k.encode("latin-1"), v.encode("latin-1"))
        for k, v in response.headers.multi_items()
        if k.lower() not in _HOP_BY_HOP
    ]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    cut: httpx.HTTPError | None = None
    async with anyio.create_task_group() as tg:

        async def hang_up() -> None:
            message: Message = await receive()
            while message["type"] != "http.disconnect":
                message = await receive()
            tg.cancel_scope.cancel()

        tg.start_soon(hang_up)
        try:
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.HTTPError as exc:
            cut = exc
        else:
            await send({"type": "http.response.body", "body": b""})
        tg.cancel_scope.cancel()
    if cut is not None:
        raise InstanceGone(f"the instance stopped mid-answer ({type(cut).__name__}): cutting the client off too")


class InstanceGone(Exception):
    """Raised out of the ASGI app to make uvicorn drop the client's connection (ASGI has no other way)."""
