"""The mcp SDK's internals we use, checked against the installed SDK; and that only ``server/sdk.py`` uses any.

``server/sdk.py`` lists each internal (numbered there as here). Each test checks one against the SDK directly:
that it exists, its signature, and the behaviour relied on; a failure names the internal, so an SDK upgrade
that moves one says which. The last tests scan ``src/`` for any use of an SDK internal outside the seam.
"""

from __future__ import annotations

import ast
import inspect
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp
import pytest
from mcp.client import Client
from mcp.server.auth.middleware.bearer_auth import AuthorizationContext
from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.prompts import Prompt
from mcp.server.mcpserver.prompts.manager import PromptManager
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.tools.tool_manager import ToolManager
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase, FuncMetadata
from mcp.server.session import ServerSession
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER, EventStore, StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared import _stream_protocols
from mcp.types import CallToolResult, RequestParams, TextContent
from pydantic import ConfigDict, ValidationError

import runapi_mcp
from runapi_mcp.http.sessions import SessionEvents
from runapi_mcp.server import sdk
from tests.support import until

pytestmark = pytest.mark.anyio

SEAM = Path(sdk.__file__).resolve()
SRC = Path(runapi_mcp.__file__).resolve().parent


@contextmanager
def relied_on(internal: str) -> Iterator[None]:
    """Any failure inside names ``internal``: what changed in the SDK, and where we depend on it."""
    try:
        yield
    except Exception as exc:
        pytest.fail(
            f"the mcp SDK's {internal} is no longer what runapi_mcp/server/sdk.py relies on (mcp {version('mcp')} "
            f"installed; checked with 2.3.0): {type(exc).__name__}: {exc}",
        )


def parameters(fn: Any) -> list[str]:
    return list(inspect.signature(fn).parameters)


# -- 1-3: an MCPServer's parts ----------------------------------------------------------------------------------


async def _passing(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    return await call_next(ctx)


def test_1_lowlevel_server() -> None:
    with relied_on("MCPServer._lowlevel_server"):
        server: MCPServer[Any] = MCPServer("probe", middleware=[_passing])
        lowlevel = sdk.lowlevel(server)
        assert isinstance(lowlevel, Server)
        assert _passing in lowlevel.middleware, "the middleware given to MCPServer is not on the low-level server"
        assert {"tools/call", "resources/list", "prompts/get"} <= set(sdk.request_methods(lowlevel))
        assert parameters(Server.run) == [
            "self", "read_stream", "write_stream", "initialization_options", "raise_exceptions"
        ]  # fmt: skip


def _double(n: int) -> int:
    return n * 2


def test_2_tool_manager() -> None:
    with relied_on("MCPServer._tool_manager (get_tool, list_tools)"):
        registered = Tool.from_function(_double, name="double")
        server: MCPServer[Any] = MCPServer("probe", tools=[registered])
        assert sdk.tool(server, "double") is registered
        assert sdk.tool(server, "nothing") is None
        assert sdk.tool_names(server) == ["double"]
        assert parameters(ToolManager.get_tool) == ["self", "name"]
        assert parameters(ToolManager.list_tools) == ["self"]


def _greeting(name: str) -> str:
    return f"Hello {name}"


def test_3_prompt_manager() -> None:
    with relied_on("MCPServer._prompt_manager (get_prompt, list_prompts)"):
        server: MCPServer[Any] = MCPServer("probe")
        server.add_prompt(Prompt.from_function(_greeting, name="greeting"))
        assert sdk.has_prompt(server, "greeting") and not sdk.has_prompt(server, "nothing")
        assert sdk.prompt_names(server) == ["greeting"]
        assert parameters(PromptManager.get_prompt) == ["self", "name"]
        assert parameters(PromptManager.list_prompts) == ["self"]


# -- 4-7: the low-level server, its sessions and streams --------------------------------------------------------


async def _empty(ctx: ServerRequestContext[Any, Any], params: RequestParams) -> dict[str, Any]:
    return {}


def test_4_request_handlers() -> None:
    with relied_on("Server._request_handlers"):
        lowlevel: Server[Any] = Server("probe")
        before = sdk.request_methods(lowlevel)
        assert "ping" in before and "initialize" not in before
        lowlevel.add_request_handler("probe/method", RequestParams, _empty)
        assert sdk.request_methods(lowlevel) == [*before, "probe/method"]


async def test_5_session_connection() -> None:
    with relied_on("ServerSession._connection"):
        assert "connection" in parameters(ServerSession.__init__)
        connections: list[Connection | None] = []
        closed = anyio.Event()

        async def capture(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
            connection = sdk.connection_of(ctx)
            if connection is not None and not connections:
                connection.exit_stack.callback(closed.set)
            connections.append(connection)
            return await call_next(ctx)

        server: MCPServer[Any] = MCPServer("probe", middleware=[capture])
        async with Client(server, mode="legacy") as client:
            await client.list_tools()
            await client.list_tools()
            assert not closed.is_set()
        with anyio.fail_after(5):
            await closed.wait()  # its exit stack ran when the client went
        assert connections and isinstance(connections[0], Connection)
        assert all(c is connections[0] for c in connections), "one connection for the whole client session"


async def test_6_initialization_options() -> None:
    with relied_on("Server.create_initialization_options"):
        assert parameters(Server.create_initialization_options) == [
            "self", "notification_options", "experimental_capabilities", "extensions"
        ]  # fmt: skip
        server: MCPServer[Any] = MCPServer("probe")
        async with Client(server, mode="legacy") as client:
            resources = client.server_capabilities.resources
            assert resources is not None and not resources.list_changed  # the transports pass no options
        sdk.default_notification_options(sdk.lowlevel(server), NotificationOptions(resources_changed=True))
        async with Client(server, mode="legacy") as client:
            resources = client.server_capabilities.resources
            assert resources is not None and resources.list_changed


def test_7_stream_protocols() -> None:
    with relied_on("mcp.shared._stream_protocols (ReadStream, WriteStream)"):
        assert sdk.ReadStream is _stream_protocols.ReadStream and sdk.WriteStream is _stream_protocols.WriteStream
        hints = typing.get_type_hints(Server.run)
        assert typing.get_origin(hints["read_stream"]) is sdk.ReadStream
        assert typing.get_origin(hints["write_stream"]) is sdk.WriteStream
        for name in ("receive", "aclose", "__aiter__", "__anext__", "__aenter__", "__aexit__"):
            assert hasattr(sdk.ReadStream, name), f"ReadStream.{name}"
        for name in ("send", "aclose", "__aenter__", "__aexit__"):
            assert hasattr(sdk.WriteStream, name), f"WriteStream.{name}"


# -- 8: the streamable-HTTP session manager ---------------------------------------------------------------------


@dataclass
class _Recorded:
    admitted: list[tuple[bool, StreamableHTTPServerTransport | None]] = field(default_factory=list)
    discarded: list[str] = field(default_factory=list)
    stores: list[EventStore] = field(default_factory=list)


class _Recording(sdk.SessionManagerHooks):
    def __init__(self, app: Server[Any], seen: _Recorded) -> None:
        super().__init__(app=app, json_response=True)
        self.seen = seen

    def admit_session(self, requestor: AuthorizationContext | None) -> StreamableHTTPServerTransport | None:
        # The SDK's creation lock held (admissions one at a time), and the store set here is the new session's.
        self.event_store = SessionEvents()
        self.seen.stores.append(self.event_store)
        transport = super().admit_session(requestor)
        self.seen.admitted.append((self._session_creation_lock.locked(), transport))
        return transport

    async def discard_session(self, session_id: str, transport: StreamableHTTPServerTransport) -> None:
        self.seen.discarded.append(session_id)
        await super().discard_session(session_id, transport)


_INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "probe", "version": "0"}},
}
_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def test_8_session_admission_and_discard() -> None:
    with relied_on("StreamableHTTPSessionManager._admit_session / _discard_session"):
        assert parameters(StreamableHTTPSessionManager._admit_session) == ["self", "requestor"]
        assert parameters(StreamableHTTPSessionManager._discard_session) == ["self", "session_id", "transport"]
        seen = _Recorded()
        manager = _Recording(Server("probe"), seen)
        transport = httpx.ASGITransport(app=manager.handle_request)
        async with manager.run(), httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            opened = await http.post("/mcp", json=_INITIALIZE, headers=_HEADERS)
            assert opened.status_code == 200, opened.text
            session_id = opened.headers[MCP_SESSION_ID_HEADER]
            (locked, admitted), = seen.admitted  # fmt: skip
            assert locked, "admission no longer runs under the session creation lock"
            assert admitted is not None and admitted.mcp_session_id == session_id
            assert admitted._event_store is seen.stores[0], "the new session did not take the manager's event_store"
            assert not seen.discarded
            ended = await http.delete("/mcp", headers={**_HEADERS, MCP_SESSION_ID_HEADER: session_id})
            assert ended.status_code == 200, ended.text
            await until(lambda: session_id in seen.discarded, "the ended session discarded", 5)


# -- 9: a tool's argument model -----------------------------------------------------------------------------------


def _counted(n: int, items: list[str] | None = None) -> str:
    return f"{n} {items}"


async def test_9_tool_argument_model() -> None:
    with relied_on("Tool.fn_metadata (FuncMetadata: arg_model, pre_parse_json)"):
        assert "fn_metadata" in Tool.model_fields and "arg_model" in FuncMetadata.model_fields
        assert parameters(FuncMetadata.pre_parse_json) == ["self", "data"]
        assert callable(getattr(ArgModelBase, "model_dump_one_level", None))
        registered = Tool.from_function(_counted, name="counted")
        calls: list[tuple[dict[str, Any], dict[str, Any]]] = []

        def pre_parse(sent: Any, parsed: dict[str, Any]) -> dict[str, Any]:
            calls.append((dict(sent), dict(parsed)))
            return parsed

        model = sdk.rebuild_arguments(registered, ConfigDict(extra="forbid", strict=True), pre_parse)
        assert registered.fn_metadata.arg_model is model and issubclass(model, ArgModelBase)
        server: MCPServer[Any] = MCPServer("probe", tools=[registered])
        result = await server.call_tool("counted", {"n": 1, "items": '["a"]'})
        assert isinstance(result, CallToolResult) and isinstance(result.content[0], TextContent)
        assert result.content[0].text == "1 ['a']"
        assert calls == [({"n": 1, "items": '["a"]'}, {"n": 1, "items": ["a"]})], "our pre-parse did not run"
        for refused in ({"n": 1, "extra": 2}, {"n": "1"}):  # an unknown argument; a coerced one
            with pytest.raises(ToolError) as caught:
                await server.call_tool("counted", refused)
            assert isinstance(caught.value.__cause__, ValidationError), "the rebuilt model did not validate"


# -- nobody else touches the SDK's internals ------------------------------------------------------------------------

_SDK_PACKAGES = ("mcp", "mcp_types")


def _defined_underscore_names(trees: list[ast.Module]) -> set[str]:
    """The single-underscore names the code in ``trees`` defines: functions, classes, attributes assigned,
    module names, import aliases, parameters."""
    names: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            found: str | None = None
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                found = node.name
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                found = node.attr
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                found = node.id
            elif isinstance(node, ast.alias):
                found = node.asname or node.name.split(".")[-1]
            elif isinstance(node, ast.arg):
                found = node.arg
            if found is not None and _private(found):
                names.add(found)
    return names


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@cache
def _sdk_private_names() -> frozenset[str]:
    """The private names the SDK's own code defines (``mcp_types``, generated protocol models, has none of
    ours to reach: its private modules are caught by the import check)."""
    return frozenset(_defined_underscore_names([_parse(path) for path in Path(mcp.__file__ or "").parent.rglob("*.py")]))


def _sdk_names(tree: ast.Module) -> set[str]:
    """The names a module imports from the SDK (its classes, to tell which of our classes subclass one)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _SDK_PACKAGES:
            names |= {alias.asname or alias.name for alias in node.names}
    return names


def sdk_internals_used(tree: ast.Module, sdk_private: frozenset[str], ours: set[str]) -> list[str]:
    """Each use of an SDK internal in ``tree``: an import of a private SDK module or name; an attribute or
    ``getattr`` name the SDK defines as private and our code does not; in a subclass of an SDK class, an
    override of an SDK private method or a private attribute the class does not define itself."""
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            for alias in node.names:
                dotted = f"{module}.{alias.name}" if module else alias.name
                parts = dotted.split(".")
                if parts[0] in _SDK_PACKAGES and any(_private(part) for part in parts):
                    found.append(f"line {node.lineno}: imports {dotted}")
        elif isinstance(node, ast.Attribute) and node.attr in sdk_private and node.attr not in ours:
            found.append(f"line {node.lineno}: .{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in sdk_private
            and node.args[1].value not in ours
        ):
            found.append(f"line {node.lineno}: {node.func.id}(..., {node.args[1].value!r})")
    from_sdk = _sdk_names(tree)
    for cls in (node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)):
        bases = {base.id if isinstance(base, ast.Name) else getattr(base, "attr", "") for base in cls.bases}
        if not bases & from_sdk:
            continue
        own = _defined_underscore_names([ast.Module(body=cls.body, type_ignores=[])])
        for node in ast.walk(cls):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in sdk_private:
                found.append(f"line {node.lineno}: {cls.name} overrides the SDK's {node.name}")
            elif isinstance(node, ast.Attribute) and node.attr in sdk_private and node.attr not in own:
                found.append(f"line {node.lineno}: {cls.name} uses the SDK's .{node.attr}")
    return found


def _our_modules() -> dict[Path, ast.Module]:
    return {path: _parse(path) for path in sorted(SRC.rglob("*.py")) if path.resolve() != SEAM}


def test_no_module_but_the_seam_touches_an_sdk_internal() -> None:
    modules = _our_modules()
    ours = _defined_underscore_names(list(modules.values()))
    sdk_private = _sdk_private_names()
    assert {"_lowlevel_server", "_tool_manager", "_admit_session", "_connection"} <= sdk_private
    problems = {
        str(path.relative_to(SRC)): used
        for path, tree in modules.items()
        if (used := sdk_internals_used(tree, sdk_private, ours))
    }
    assert not problems, f"SDK internals used outside runapi_mcp/server/sdk.py (move them there): {problems}"


_VIOLATIONS = '''
from mcp.shared._stream_protocols import ReadStream
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

def lowlevel(server):
    return server._lowlevel_server

def connection(ctx):
    return getattr(ctx.session, "_connection", None)

class Sessions(StreamableHTTPSessionManager):
    def _admit_session(self, requestor):
        return self._server_instances
'''


def test_the_scan_finds_each_kind_of_use() -> None:
    """The scan can fail: each kind of use it looks for, in a module written to have them, is found."""
    found = sdk_internals_used(ast.parse(_VIOLATIONS), _sdk_private_names(), ours=set())
    assert any("imports mcp.shared._stream_protocols.ReadStream" in f for f in found), found
    assert any(f.endswith("._lowlevel_server") for f in found), found
    assert any("getattr(..., '_connection')" in f for f in found), found
    assert any("overrides the SDK's _admit_session" in f for f in found), found
    assert any("uses the SDK's ._server_instances" in f for f in found), found
    # The seam itself has them all: it is the one module excluded from the scan.
    seam = sdk_internals_used(_parse(SEAM), _sdk_private_names(), ours=set())
    assert any("_lowlevel_server" in f for f in seam) and any("_admit_session" in f for f in seam), seam
