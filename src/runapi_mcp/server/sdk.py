"""The one module of ours that reaches into the mcp SDK's internals: every other module uses the SDK's public
API and what this module exports (``tests/test_sdk_seam.py`` scans ``src/`` for any other use).

The SDK is pinned to the minor version these were checked against (``mcp>=2.3.0,<2.4`` in pyproject.toml).
``tests/test_sdk_seam.py`` checks each item below against the installed SDK (that it exists, its signature,
the behaviour relied on) and names the one that changed. On an upgrade, re-check:

1. ``MCPServer._lowlevel_server``: the low-level ``Server`` an ``MCPServer`` drives (its request handlers,
   its middleware, ``run()``; the HTTP transports serve it). -> :func:`lowlevel`
2. ``MCPServer._tool_manager`` (``get_tool``, ``list_tools``): the registered ``Tool`` objects, whose input
   schemas word argument errors. -> :func:`tool`, :func:`tool_names`
3. ``MCPServer._prompt_manager`` (``get_prompt``, ``list_prompts``): which prompts exist, to refuse an
   unknown one as a bad parameter. -> :func:`has_prompt`, :func:`prompt_names`
4. ``Server._request_handlers``: the request methods a low-level server serves (the tests enumerate them to
   check that each runs as its caller). -> :func:`request_methods`
5. ``ServerSession._connection``: the client connection behind a request's per-request session; it lives as
   long as the client and its exit stack runs when the client goes. -> :func:`connection_of`
6. ``Server.create_initialization_options``: what every transport (stdio, SSE, streamable HTTP, in-process)
   calls, with no arguments, for the handshake's capabilities; wrapped so its default notification options
   are ours. -> :func:`default_notification_options`
7. ``mcp.shared._stream_protocols`` (``ReadStream``, ``WriteStream``): the stream types ``Server.run`` takes.
   -> :data:`ReadStream`, :data:`WriteStream`
8. ``StreamableHTTPSessionManager._admit_session(requestor)`` (called under its session creation lock; the
   new transport takes the manager's ``event_store`` as it is then) and ``_discard_session(session_id,
   transport)`` (called at every session's end). -> :class:`SessionManagerHooks`
9. ``Tool.fn_metadata`` (``FuncMetadata``: ``arg_model``, ``pre_parse_json``, the other fields copied over): the
   argument model a tool call is validated with, and the pre-parse of JSON sent as text. A subclass of the
   SDK's ``ArgModelBase`` keeps its ``model_dump_one_level``, which the call uses. -> :func:`rebuild_arguments`
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from mcp.server.auth.middleware.bearer_auth import AuthorizationContext
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase, FuncMetadata
from mcp.server.models import InitializationOptions
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared._stream_protocols import ReadStream as ReadStream
from mcp.shared._stream_protocols import WriteStream as WriteStream
from pydantic import BaseModel, ConfigDict, PrivateAttr

# -- 1-3: an MCPServer's parts ------------------------------------------------------------------------------


def lowlevel(server: MCPServer[Any]) -> Server[Any]:
    """The low-level server ``server`` drives."""
    return server._lowlevel_server


def tool(server: MCPServer[Any], name: str) -> Tool | None:
    """The registered tool called ``name``, or None."""
    return server._tool_manager.get_tool(name)


def tool_names(server: MCPServer[Any]) -> list[str]:
    """The names of the registered tools, in registration order."""
    return [registered.name for registered in server._tool_manager.list_tools()]


def has_prompt(server: MCPServer[Any], name: str) -> bool:
    return server._prompt_manager.get_prompt(name) is not None


def prompt_names(server: MCPServer[Any]) -> list[str]:
    """The names of the registered prompts, in registration order."""
    return [prompt.name for prompt in server._prompt_manager.list_prompts()]


# -- 4-6: the low-level server and its sessions ---------------------------------------------------------------


def request_methods(server: Server[Any]) -> list[str]:
    """Every request method ``server`` has a handler for (``initialize`` is the runner's, never a handler)."""
    return list(server._request_handlers)


def connection_of(ctx: ServerRequestContext[Any, Any]) -> Connection | None:
    """The client connection a request came on (None where there is none to notify later)."""
    # The SDK hands handlers a per-request ServerSession, which sends connection-wide notifications
    # through its Connection but does not expose it.
    connection = getattr(ctx.session, "_connection", None)
    return connection if isinstance(connection, Connection) else None


def default_notification_options(server: Server[Any], defaults: NotificationOptions) -> None:
    """Make ``defaults`` what ``server`` advertises when a transport asks for its initialization options
    without any (every transport does: none passes NotificationOptions, so ``listChanged`` would be false)."""
    build = server.create_initialization_options

    def options(
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return build(notification_options or defaults, experimental_capabilities, extensions)

    server.create_initialization_options = options  # type: ignore[method-assign]


# -- 8: the streamable-HTTP session manager -------------------------------------------------------------------


class SessionManagerHooks(StreamableHTTPSessionManager):
    """The SDK's streamable-HTTP session manager with its session admission and discard as hooks of ours:
    override :meth:`admit_session` and :meth:`discard_session`, calling ``super()``."""

    def admit_session(self, requestor: AuthorizationContext | None) -> StreamableHTTPServerTransport | None:
        """Register a new session for ``requestor`` and return its transport (None at the SDK's session limit).

        Runs under the SDK's session creation lock, so concurrent openings are admitted one at a time; the
        new transport takes ``self.event_store`` as it is when this runs."""
        return super()._admit_session(requestor)

    async def discard_session(self, session_id: str, transport: StreamableHTTPServerTransport) -> None:
        """Forget a session: called at every session's end (DELETE, idle expiry, crash, a refused opening)."""
        await super()._discard_session(session_id, transport)

    # The SDK's own names for the two, which it calls.
    def _admit_session(self, requestor: AuthorizationContext | None) -> StreamableHTTPServerTransport | None:
        return self.admit_session(requestor)

    async def _discard_session(self, session_id: str, transport: StreamableHTTPServerTransport) -> None:
        await self.discard_session(session_id, transport)


# -- 9: a tool's argument model -------------------------------------------------------------------------------

PreParse = Callable[[Mapping[str, Any], dict[str, Any]], dict[str, Any]]
"""(the arguments as sent, the SDK's pre-parse of them) -> the arguments to validate."""


class _ArgumentsMetadata(FuncMetadata):
    _pre_parse: PreParse | None = PrivateAttr(default=None)

    def pre_parse_json(self, data: dict[str, Any]) -> dict[str, Any]:
        parsed = super().pre_parse_json(data)
        return parsed if self._pre_parse is None else self._pre_parse(data, parsed)


def rebuild_arguments(tool: Tool, config: ConfigDict, pre_parse: PreParse) -> type[BaseModel]:
    """Make ``tool`` validate its calls with its argument model subclassed with ``config``, after
    ``pre_parse``; the new model is returned (its JSON schema is the tool's input schema to publish)."""
    metadata = tool.fn_metadata
    base = metadata.arg_model
    model = cast(
        type[ArgModelBase],
        type(base.__name__, (base,), {"model_config": {**base.model_config, **config}, "__module__": __name__}),
    )
    fields = {name: getattr(metadata, name) for name in FuncMetadata.model_fields}
    rebuilt = _ArgumentsMetadata(**{**fields, "arg_model": model})
    rebuilt._pre_parse = pre_parse
    tool.fn_metadata = rebuilt
    return model
