"""The MCP server object: tools and resources registered on it, and the one place errors are worded.

No HTTP here: the server speaks to the task manager, the manager to RunAPI.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp.types import (
    INVALID_PARAMS,
    CallToolResult,
    GetPromptResult,
    InputRequiredResult,
    ListResourcesResult,
    PaginatedRequestParams,
    TextContent,
)
from pydantic import AnyUrl, ValidationError

from runapi_mcp import __version__
from runapi_mcp.client import RunAPIError
from runapi_mcp.errors import UserError
from runapi_mcp.redaction import Redactor
from runapi_mcp.server import sdk
from runapi_mcp.server.apps_ui import AppsUI
from runapi_mcp.server.arguments import describe_argument_names, describe_invalid_arguments
from runapi_mcp.server.compat import ProtocolCompat
from runapi_mcp.server.completions import Completions
from runapi_mcp.server.history import TaskHistory
from runapi_mcp.server.mcp_tasks import McpTasks
from runapi_mcp.server.owners import owner_scope
from runapi_mcp.server.prompts import ImagePrompts, library_sizes
from runapi_mcp.server.resources import LibraryResources
from runapi_mcp.server.sdk import ReadStream, WriteStream
from runapi_mcp.server.subscriptions import LiveUpdates, OwnerScopedBus
from runapi_mcp.server.tools import ImageTools, ServerDeps
from runapi_mcp.tasks import IMAGE_URI_PREFIX, InvalidCursorError

log = logging.getLogger("runapi_mcp.server")

INSTRUCTIONS = """\
RunAPI image models (GPT Image 2 by default) behind one API key.
- To make a picture: call generate_image with a prompt; it waits (up to about 50 s, or timeout_s), then
  returns the picture as a preview, a runapi://images/... resource link and the saved file path.
- To change a picture: call edit_image with a prompt and images=[...]: a runapi://images/... URI, the task_id
  of an earlier task (its first image), an absolute local path or file:// URI (uploaded for you), an http(s)
  URL or a data: URI.
- To make a picture larger: call upscale_image with image=... (any of those forms) and factor (2 by default;
  topaz-upscale-image takes 1, 2 or 4, recraft-crisp-upscale no factor).
- If a result says the task is still running, call get_task(task_id, wait=true): the task keeps running and
  is never paid for twice. wait=false returns the task_id at once. A failed task is never retried silently.
- To find earlier tasks and their pictures (also from before a restart): call list_tasks (newest first;
  filter by status or model; pass next_cursor back as cursor for more).
- To show the user their recent pictures: call gallery (a grid in clients that render MCP Apps, text elsewhere).
- aspect_ratio (auto, 1:1, 3:2, 2:3, 4:3, 3:4, 5:4, 4:5, 16:9, 9:16, 2:1, 1:2, 3:1, 1:3, 21:9, 9:21) and
  output_resolution (1k, 2k, 4k) shape GPT Image 2 output, and GPT Image 2.5's (model="gpt-image-2.5-flare" or
  "gpt-image-2.5-sunburst"; at 2k or 4k give a ratio other than auto, at 4k not 1:1; edits take up to 16
  images). list_models lists every model in one line each;
  list_models(model=...) shows a model's fields (allowed values, limits), which other fields go in params,
  e.g. model="imagen-4", params={"seed": 7}.
"""


class RunAPIMCPServer(MCPServer[Any]):
    """MCPServer with strict tools, redacted results and errors that always say what went wrong."""

    def __init__(self, deps: ServerDeps, redactor: Redactor) -> None:
        self.deps = deps
        self.redactor = redactor
        self.image_tools = ImageTools(deps)
        self.history = TaskHistory(deps.manager)
        self.bus = OwnerScopedBus()
        self.live = LiveUpdates(self.bus, self.history.resource_exists)
        # MCP Apps: the picture viewer and gallery hosts render in the chat (others get plain results).
        self.apps = AppsUI(deps.manager)
        # MCP Tasks (2025-11-25 clients only): task-augmented image tool calls, tasks/*, status notifications.
        self.tasks = McpTasks(
            deps.manager,
            self.image_tools,
            finish=self._redacted,
            has_tool=lambda name: sdk.tool(self, name) is not None,
        )
        super().__init__(
            "runapi-mcp",
            title="RunAPI images",
            instructions=INSTRUCTIONS,
            version=__version__,
            subscriptions=self.bus,
            tools=self.apps.bind(self.image_tools.tools()) + self.history.tools() + self.apps.tools(),
            extensions=[self.apps.extension],
            middleware=[owner_scope, self.apps.middleware, ProtocolCompat(), self.live.track, self.tasks.middleware],
        )
        LibraryResources(deps.manager, deps.catalog).register(self)
        self.history.register(self)
        # Prompts (each one call of our tools) and completion of their arguments and of our resource templates.
        self.prompts = ImagePrompts(deps.catalog, library_sizes(deps.manager))
        self.prompts.register(self)
        Completions(self.prompts, deps.manager.store).register(self)
        lowlevel = sdk.lowlevel(self)
        # resources/list pages over tasks and library images: the SDK's own handler lists only fixed
        # resources, all at once.
        lowlevel.add_request_handler("resources/list", PaginatedRequestParams, self._list_resources)
        self.live.install(lowlevel)
        self.tasks.install(lowlevel)
        # Every change of a task reaches listen streams (2026 era) and resources/subscribe clients (2025 era).
        deps.manager.add_listener(self.live.task_changed)

    async def run_streams(
        self, read_stream: ReadStream[SessionMessage | Exception], write_stream: WriteStream[SessionMessage]
    ) -> None:
        """Serve one connection over these streams (``runapi_mcp.stdio`` wraps the SDK's stdio transport's)."""
        lowlevel = sdk.lowlevel(self)
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        """Run a tool; every failure becomes a ToolError whose text names the field or the reason."""
        tool = sdk.tool(self, name)
        if tool is not None and isinstance(arguments, dict):
            problem = describe_argument_names(name, arguments, list(tool.parameters.get("properties", {})))
            if problem is not None:
                raise ToolError(self.redactor(problem))
        try:
            result = await super().call_tool(name, arguments, context)
        except ToolError as exc:
            raise ToolError(self.redactor(self._explain(name, exc))) from None
        if isinstance(result, CallToolResult):
            result = self._redacted(result)
        return result

    async def get_prompt(
        self, name: str, arguments: dict[str, Any] | None = None, context: Context[Any, Any] | None = None
    ) -> GetPromptResult | InputRequiredResult:
        """An unknown prompt is a bad parameter (-32602) naming the prompts there are (the SDK's own refusal
        is a plain error, code 0); a bad argument is refused by the prompt itself, also -32602."""
        if not sdk.has_prompt(self, name):
            known = ", ".join(sdk.prompt_names(self))
            raise MCPError(code=INVALID_PARAMS, message=f"Unknown prompt {name[:100]!r}; this server has: {known}")
        return await super().get_prompt(name, arguments, context)

    def _explain(self, name: str, exc: ToolError) -> str:
        cause = exc.__cause__
        tool = sdk.tool(self, name)
        if tool is None:
            known = ", ".join(sdk.tool_names(self))
            return f"Unknown tool {name[:100]!r}; this server has: {known}"
        if isinstance(cause, ValidationError):
            allowed = list(tool.parameters.get("properties", {}))
            return describe_invalid_arguments(name, cause, allowed)
        if isinstance(cause, UserError):  # the caller's to fix: its text is the whole answer
            return str(cause)
        if isinstance(cause, RunAPIError):
            return _upstream_refusal(cause)
        if cause is None or isinstance(cause, ToolError):
            return str(cause or exc).removeprefix(f"Error executing tool {name}: ")
        log.error("tool %s failed unexpectedly", name, exc_info=cause)
        return (
            f"{name} failed: internal error ({type(cause).__name__}). The server log has the details; "
            "a task it created, if any, keeps running: get_task finds it."
        )

    def _redacted(self, result: CallToolResult) -> CallToolResult:
        """The key out of every text and structured field (image data is left alone: it is pixels)."""
        content = [
            TextContent(type="text", text=self.redactor(block.text)) if isinstance(block, TextContent) else block
            for block in result.content
        ]
        structured = self.redactor.data(result.structured_content) if result.structured_content else None
        return result.model_copy(update={"content": content, "structured_content": structured})

    async def read_resource(
        self, uri: AnyUrl | str, context: Context[Any, Any] | None = None
    ) -> Iterable[ReadResourceContents] | InputRequiredResult:
        """Library images are served with their own MIME type (a template fixes one for all)."""
        result = await super().read_resource(uri, context)
        text = str(uri)
        if isinstance(result, InputRequiredResult) or not text.startswith(IMAGE_URI_PREFIX):
            return result
        image = await self.deps.manager.images.lookup(text[len(IMAGE_URI_PREFIX) :])
        mime = image.mime_type if image and image.mime_type else "application/octet-stream"
        return [ReadResourceContents(content=item.content, mime_type=mime, meta=item.meta) for item in result]

    async def _list_resources(
        self, ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListResourcesResult:
        """``resources/list``: tasks and library images, paged."""
        cursor = params.cursor if params is not None else None
        try:
            return await self.history.list_resources(cursor, await self.list_resources())
        except InvalidCursorError as exc:
            raise MCPError(code=INVALID_PARAMS, message=str(exc)) from None


def _upstream_refusal(error: RunAPIError) -> str:
    """RunAPI's own words for an error; a validation refusal (400/422) is worded as a field error.

    RunAPI validates every request on its side (its SDKs stopped checking locally in September 2026), so a
    rule this release's catalog does not know yet comes back as a 400/422. Nothing was created or charged,
    and nothing is retried: the same body would be refused again."""
    if error.status_code not in (400, 422):
        return str(error)
    named = f"'{error.field}': " if error.field else ""
    return f"{named}{error} (RunAPI refused the request: nothing was created or charged; list_models shows the fields)"


def build_server(deps: ServerDeps, redactor: Redactor | None = None) -> RunAPIMCPServer:
    return RunAPIMCPServer(deps, redactor or Redactor())
