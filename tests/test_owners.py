"""Owner scoping fails closed: every MCP handler, every HTTP route and every background job of a task runs
as a known owner, and a read of ``current_owner`` where none was set raises instead of reading as the local
user.

The handlers and routes are enumerated from the running server (the low-level server's request methods, the
Starlette app's routes), each wrapped in a probe that records whom it runs as, then each is called: a new
handler or route is checked without this file naming it (a handler needs a call in ``CALLS``; the test says
so when one is missing).
"""

from __future__ import annotations

import re
import socket
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import anyio
import httpx
import httpx2
import pytest
from mcp.client import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp.types import (
    CancelTaskRequest,
    CancelTaskRequestParams,
    CancelTaskResult,
    GetTaskPayloadRequest,
    GetTaskPayloadRequestParams,
    GetTaskPayloadResult,
    GetTaskRequest,
    GetTaskRequestParams,
    GetTaskResult,
    ListTasksRequest,
    ListTasksResult,
    PromptReference,
)
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from runapi_mcp.app import App, open_app
from runapi_mcp.catalog import get_catalog
from runapi_mcp.http.app import HttpOptions, build_http_app
from runapi_mcp.http.auth import build_verifier
from runapi_mcp.http.gallery import standalone_app
from runapi_mcp.http.uvicorn_server import serving as uvicorn_serving
from runapi_mcp.http.webhook import callback_routes
from runapi_mcp.server import RunAPIMCPServer, sdk
from runapi_mcp.server.owners import OWNER_SCOPE_KEY, request_owner
from runapi_mcp.simulator import Simulator
from runapi_mcp.tasks import LOCAL_OWNER, MissingOwnerError, TaskRecord, current_owner
from runapi_mcp.tasks.ownership import OwnerVar
from tests.support import FAST_POLICY, Harness, make_settings
from tests.test_auth_tokens import AUDIENCE, JWKS_PATH, Issuer, Keys, claims, issuer, keys, mint

pytestmark = pytest.mark.anyio

__all__ = ["issuer", "keys"]  # fixtures used here, defined beside the verifier's own tests

Seen = dict[str, list[str | MissingOwnerError]]
"""Per handler or route: whom each call of it ran as (the error when it ran as nobody)."""


def whose() -> str | MissingOwnerError:
    try:
        return current_owner.get()
    except MissingOwnerError as exc:
        return exc


# -- the owner variable itself ---------------------------------------------------------------------------------


def test_reading_the_owner_outside_any_scope_raises_our_error_not_the_local_user() -> None:
    owner = OwnerVar("test_owner")
    assert not owner.is_set()
    with pytest.raises(MissingOwnerError, match="no owner is set for this work"):
        owner.get()
    with owner.scope("alice"):
        assert owner.get() == "alice" and owner.is_set()
        with owner.scope(LOCAL_OWNER):
            assert owner.get() == LOCAL_OWNER  # the local user is an owner like any other, when set
        assert owner.get() == "alice"
    with pytest.raises(MissingOwnerError):
        owner.get()
    with pytest.raises(TypeError, match="str"):
        owner.set(cast(Any, None))  # "nobody" is no owner


def test_the_process_starts_with_no_owner() -> None:
    # Module-level code, a CLI command, a job: none of them is anyone until a scope says so.
    with pytest.raises(MissingOwnerError):
        current_owner.get()


def _ctx(request: object) -> ServerRequestContext[Any, Any]:
    return cast("ServerRequestContext[Any, Any]", SimpleNamespace(request=request))


def test_an_mcp_request_over_http_without_a_verified_owner_is_refused() -> None:
    assert request_owner(_ctx(None)) == LOCAL_OWNER  # stdio, in-process: no HTTP behind it
    assert request_owner(_ctx(SimpleNamespace(scope={OWNER_SCOPE_KEY: "alice"}))) == "alice"
    with pytest.raises(MCPError, match="no verified owner"):
        request_owner(_ctx(SimpleNamespace(scope={"type": "http"})))  # came some way that skipped the check


# -- every MCP request handler ---------------------------------------------------------------------------------


def probe_handlers(server: RunAPIMCPServer) -> Seen:
    """Wrap every request handler of ``server`` so that each call records whom it runs as."""
    seen: Seen = defaultdict(list)
    lowlevel = sdk.lowlevel(server)
    for method in sdk.request_methods(lowlevel):
        entry = lowlevel.get_request_handler(method)
        assert entry is not None

        def probe(handler: Any, name: str) -> Any:
            async def probed(ctx: ServerRequestContext[Any, Any], params: Any) -> Any:
                seen[name].append(whose())
                return await handler(ctx, params)

            return probed

        lowlevel.add_request_handler(method, entry.params_type, probe(entry.handler, method))
    return seen


async def _quietly(call: Awaitable[object]) -> None:
    """A call whose handler must run; its answer (an error for an unknown task, say) is not the point."""
    with suppress(MCPError):
        await call


def _task_request(client: Client, request: Any, result: Any) -> Awaitable[object]:
    return _quietly(client.session.send_request(request, result))


# One call per request method, as a client makes it; the era it is made in (the tasks/* methods are 2025-11-25's,
# subscriptions/listen and server/discover 2026-07-28's).
Call = Callable[[Client], Awaitable[object]]
HANDSHAKE_CALLS: dict[str, Call] = {
    "ping": lambda c: c.send_ping(),
    "prompts/list": lambda c: c.list_prompts(),
    "prompts/get": lambda c: c.get_prompt("product_shot", {"product": "a mug"}),
    "resources/list": lambda c: c.list_resources(),
    "resources/templates/list": lambda c: c.list_resource_templates(),
    "resources/read": lambda c: c.read_resource("runapi://tasks"),
    "resources/subscribe": lambda c: c.session.subscribe_resource("runapi://tasks"),
    "resources/unsubscribe": lambda c: c.session.unsubscribe_resource("runapi://tasks"),
    "tools/list": lambda c: c.list_tools(),
    "tools/call": lambda c: c.call_tool("list_tasks", {}),
    "completion/complete": lambda c: c.complete(PromptReference(name="product_shot"), {"name": "model", "value": "g"}),
    "tasks/get": lambda c: _task_request(
        c, GetTaskRequest(params=GetTaskRequestParams(task_id="task-none")), GetTaskResult
    ),
    "tasks/result": lambda c: _task_request(
        c, GetTaskPayloadRequest(params=GetTaskPayloadRequestParams(task_id="task-none")), GetTaskPayloadResult
    ),
    "tasks/list": lambda c: _task_request(c, ListTasksRequest(), ListTasksResult),
    "tasks/cancel": lambda c: _task_request(
        c, CancelTaskRequest(params=CancelTaskRequestParams(task_id="task-none")), CancelTaskResult
    ),
}


async def _listen(client: Client) -> None:
    async with client.listen(resources_list_changed=True):
        pass


MODERN = "2026-07-28"
MODERN_CALLS: dict[str, Call] = {
    "server/discover": lambda c: c.session.send_discover(MODERN),
    "subscriptions/listen": _listen,
}


async def test_every_request_method_has_a_call_here(harness: Harness) -> None:
    methods = set(sdk.request_methods(sdk.lowlevel(harness.app.server)))
    missing = methods - set(HANDSHAKE_CALLS) - set(MODERN_CALLS)
    assert not missing, f"new request handler(s) {sorted(missing)}: add a call to CALLS so each is checked"


Connect = Callable[[str], AbstractAsyncContextManager[Client]]
"""A protocol mode ("legacy" or a modern version) -> a connected client."""


async def call_every_handler(server: RunAPIMCPServer, connect: Connect, *, modern: bool = True) -> Seen:
    seen = probe_handlers(server)
    async with connect("legacy") as client:
        for call in HANDSHAKE_CALLS.values():
            await call(client)
    if modern:
        async with connect(MODERN) as client:
            for call in MODERN_CALLS.values():
                await call(client)
    return seen


def assert_ran_as(seen: Seen, methods: list[str], owner: str) -> None:
    for method in methods:
        assert seen.get(method), f"{method}: its handler was never reached (its call in CALLS does not get there)"
        wrong = [who for who in seen[method] if who != owner]
        assert not wrong, f"{method} ran as {wrong[0]!r}, not {owner!r}"


@asynccontextmanager
async def _stdio_streams(server: RunAPIMCPServer) -> AsyncIterator[tuple[Any, Any]]:
    """The streams ``runapi-mcp serve`` hands the server over stdio (``run_streams``), in memory."""
    to_server, server_reads = anyio.create_memory_object_stream[SessionMessage | Exception](16)
    server_writes, to_client = anyio.create_memory_object_stream[SessionMessage](16)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.run_streams, server_reads, server_writes)
        try:
            yield to_client, to_server
        finally:
            tg.cancel_scope.cancel()


async def test_every_handler_runs_as_the_local_user_over_stdio_and_in_process(
    sim: Simulator, home: Path, inputs: Path
) -> None:
    async with open_app(make_settings(sim, home, inputs), policy=FAST_POLICY) as app:
        server = app.server
        methods = sdk.request_methods(sdk.lowlevel(server))
        seen = await call_every_handler(server, lambda mode: Client(_stdio_streams(server), mode=mode), modern=False)
        assert_ran_as(seen, list(HANDSHAKE_CALLS), LOCAL_OWNER)
        # In process: the modern era too (its requests arrive one by one, with no connection).
        seen = await call_every_handler(server, lambda mode: Client(server, mode=mode))
        assert_ran_as(seen, methods, LOCAL_OWNER)


@dataclass
class Served:
    app: App
    starlette: Starlette
    base: str


@asynccontextmanager
async def serving(sim: Simulator, home: Path, inputs: Path, issuer: Issuer | None = None) -> AsyncIterator[Served]:
    """The HTTP app with every route it can have, composed as ``http.serve.http_server`` composes it: webhooks
    on (a public URL), with JWT auth when ``issuer`` is given (and so the protected-resource metadata), else
    without auth on loopback. Served here to keep the Starlette app at hand (its routes get probes)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    auth = {} if issuer is None else {
        "jwt_issuer": issuer.url, "jwt_audience": AUDIENCE, "jwt_jwks_url": issuer.url + JWKS_PATH,
    }  # fmt: skip
    settings = make_settings(sim, home, inputs, public_url=base, **auth)
    options = HttpOptions(port=0, public_url=settings.public_url, jwt_issuer=settings.jwt_issuer)
    verifier = build_verifier(settings)
    try:
        async with open_app(settings, policy=FAST_POLICY) as app:
            starlette = build_http_app(app, options, verifier=verifier, extra_routes=callback_routes(app.manager))
            async with uvicorn_serving(starlette, sock, failure="could not serve", lifespan=True):
                yield Served(app, starlette, base)
    finally:
        if verifier is not None:
            await verifier.aclose()


def http_connect(base: str, token: str | None, transport: str = "streamable-http") -> Connect:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}

    def connect(mode: str) -> AbstractAsyncContextManager[Client]:
        if transport == "sse":
            return Client(sse_client(f"{base}/sse", headers=headers), mode=mode)
        http = httpx2.AsyncClient(headers=headers, timeout=30)
        return Client(streamable_http_client(f"{base}/mcp", http_client=http), mode=mode)

    return connect


async def test_every_handler_runs_as_the_verified_user_over_http(
    sim: Simulator, home: Path, inputs: Path, issuer: Issuer, keys: Keys
) -> None:
    token = mint(keys.rsa, claims(issuer.url, sub="alice"))
    async with serving(sim, home, inputs, issuer) as served:
        methods = sdk.request_methods(sdk.lowlevel(served.app.server))
        seen = await call_every_handler(served.app.server, http_connect(served.base, token))
        assert_ran_as(seen, methods, "alice")
        seen = await call_every_handler(served.app.server, http_connect(served.base, token, "sse"), modern=False)
        assert_ran_as(seen, list(HANDSHAKE_CALLS), "alice")


async def test_every_handler_runs_as_the_local_user_over_http_without_auth(
    sim: Simulator, home: Path, inputs: Path
) -> None:
    async with serving(sim, home, inputs) as served:
        methods = sdk.request_methods(sdk.lowlevel(served.app.server))
        seen = await call_every_handler(served.app.server, http_connect(served.base, None))
        assert_ran_as(seen, methods, LOCAL_OWNER)


# -- every HTTP route ------------------------------------------------------------------------------------------


def probe_routes(app: Starlette) -> tuple[Seen, list[str]]:
    """Wrap every route of ``app`` so that each request it takes records whom it runs as; the routes' paths."""
    seen: Seen = defaultdict(list)
    paths: list[str] = []

    def probe(inner: ASGIApp, path: str) -> ASGIApp:
        async def probed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                seen[path].append(whose())
            await inner(scope, receive, send)

        return probed

    routes: list[BaseRoute] = app.router.routes
    for route in routes:
        assert isinstance(route, Route | Mount), f"a route of a kind this test does not call: {route!r}"
        route.app = probe(route.app, route.path)
        paths.append(route.path)
    return seen, paths


def _method(route: BaseRoute) -> str:
    methods = getattr(route, "methods", None) or {"GET"}
    return "GET" if "GET" in methods else sorted(methods)[0]


async def call_every_route(app: Starlette, http: httpx.AsyncClient, headers: dict[str, str]) -> Seen:
    seen, paths = probe_routes(app)
    for route in app.router.routes:
        assert isinstance(route, Route | Mount)
        url = re.sub(r"\{[^}]+\}", "x", route.path) + ("/" if isinstance(route, Mount) else "")
        # Streamed and closed unread: /sse answers with a stream that never ends by itself.
        async with http.stream(_method(route), url, headers={**headers, "Origin": str(http.base_url)}):
            pass
    for path in paths:
        assert seen.get(path), f"route {path}: never reached"
    return seen


async def test_every_route_runs_as_the_verified_user_and_as_nobody_without_a_token(
    sim: Simulator, home: Path, inputs: Path, issuer: Issuer, keys: Keys
) -> None:
    token = mint(keys.rsa, claims(issuer.url, sub="alice"))
    async with serving(sim, home, inputs, issuer) as served, httpx.AsyncClient(base_url=served.base) as http:
        app = served.starlette
        assert any("callbacks" in getattr(r, "path", "") for r in app.router.routes)  # webhooks are on
        seen = await call_every_route(app, http, {"Authorization": f"Bearer {token}"})
        for path, owners in seen.items():
            assert owners == ["alice"], f"route {path} ran as {owners}"
        # Without a token nobody is verified: a route runs as no one, and a read of the owner there raises
        # (the routes that take such requests check their own credentials: cookie, signed link, task secret).
        seen = await call_every_route(app, http, {})
        for path, owners in seen.items():
            assert len(owners) == 1 and isinstance(owners[0], MissingOwnerError), f"route {path} ran as {owners}"


async def test_every_route_runs_as_the_local_user_without_auth(sim: Simulator, home: Path, inputs: Path) -> None:
    async with serving(sim, home, inputs) as served, httpx.AsyncClient(base_url=served.base) as http:
        seen = await call_every_route(served.starlette, http, {})
        for path, owners in seen.items():
            assert owners == [LOCAL_OWNER], f"route {path} ran as {owners}"


async def test_the_standalone_gallery_runs_as_the_local_user(harness: Harness) -> None:
    app = standalone_app(harness.app.manager.store, harness.app.manager.images, "127.0.0.1")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8765") as http:
        seen = await call_every_route(app, http, {})
    for path, owners in seen.items():
        assert owners == [LOCAL_OWNER], f"gallery route {path} ran as {owners}"


# -- background jobs -------------------------------------------------------------------------------------------


async def test_background_jobs_run_as_the_tasks_owner_also_after_a_restart(
    sim: Simulator, home: Path, inputs: Path
) -> None:
    """Polling and downloads run as the task's owner, also for a task a restart took up with no request behind it
    (no request, no owner from anywhere else)."""
    settings = make_settings(sim, home, inputs)
    seen: list[tuple[str, str | MissingOwnerError]] = []

    async def note(record: TaskRecord) -> None:
        seen.append((record.owner, whose()))

    sim.set_task_outcome(None, "running")
    prepared = get_catalog().prepare("generate", "gpt-image-2", prompt="a lighthouse", options={})
    async with open_app(settings, policy=FAST_POLICY) as app:
        with current_owner.scope("alice"):
            record = await app.manager.submit(prepared, prompt="a lighthouse")
    assert record.upstream_id is not None
    sim.set_task_outcome(record.upstream_id, "completed")
    # The restart takes the task up with no request behind it (and the test reads it as alice only to wait).
    async with open_app(settings, policy=FAST_POLICY) as app:
        app.manager.add_listener(note)
        with anyio.fail_after(10), current_owner.scope("alice"):
            done = await app.manager.wait(record.task_id, 10)
    assert done.status == "completed" and done.images and done.images[0].path
    # The resumed poll and the download ran as alice: nothing of hers ran as nobody or as the local user.
    assert seen and all(owner == who == "alice" for owner, who in seen), seen
