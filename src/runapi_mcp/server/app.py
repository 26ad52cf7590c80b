"""The MCP surface: tools, resources and instructions over the task manager. No HTTP here."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.shared.subscriptions import ResourceUpdated
from mcp.types import CallToolResult, InputRequiredResult, ToolAnnotations
from pydantic import AnyUrl, BaseModel, Field

from runapi_mcp import __version__
from runapi_mcp.catalog import ALIASES, Catalog, CatalogError, PreparedRequest, RequestKind
from runapi_mcp.client import RunAPIError
from runapi_mcp.server.results import (
    PREVIEW_BUDGET_BYTES,
    PREVIEW_MAX_EDGE,
    TaskResult,
    task_result,
    tool_result,
)
from runapi_mcp.tasks import (
    IMAGE_URI_PREFIX,
    ImageRecord,
    ImageReferenceError,
    ImageResolver,
    Preview,
    TaskManager,
    TaskRecord,
    UnknownTaskError,
)

log = logging.getLogger("runapi_mcp.server")

INSTRUCTIONS = """\
RunAPI image models (GPT Image 2 by default) behind one API key.
- To make a picture: call generate_image with a prompt; it waits (up to about 50 s), then returns the
  picture as a preview, a runapi://images/... resource link and the saved file path.
- To change a picture: call edit_image with a prompt and images=[...]: a runapi://images/... URI, the task_id
  of an earlier task, an absolute local path, an http(s) URL or a data: URI.
- If a result says the task is still running, call get_task(task_id, wait=true): the task keeps running and
  is never paid for twice.
- aspect_ratio (auto, 1:1, 3:2, 2:3, 4:3, 3:4, 5:4, 4:5, 16:9, 9:16, 2:1, 1:2, 3:1, 1:3, 21:9, 9:21) and
  output_resolution (1k, 2k, 4k) shape GPT Image 2 output. Other models (list_models shows them and their
  fields) take extra fields in params, e.g. model="topaz-upscale-image", params={"upscale_factor": 2}.
"""

GPT_IMAGE_2_RATIOS = "auto, 1:1, 3:2, 2:3, 4:3, 3:4, 5:4, 4:5, 16:9, 9:16, 2:1, 1:2, 3:1, 1:3, 21:9, 9:21"
MAX_TIMEOUT_S = 3600.0
TICK_S = 1.0  # progress notifications at least this often while waiting (the brief asks for <= 2 s)

# Arguments generate_image and edit_image share.
ModelArg = Annotated[str, Field(description="RunAPI model; list_models shows all")]
AspectRatioArg = Annotated[str, Field(description=f"For gpt-image-2: {GPT_IMAGE_2_RATIOS}")]
ResolutionArg = Annotated[str, Field(description="For gpt-image-2: 1k, 2k or 4k")]
ParamsArg = Annotated[dict[str, Any] | None, Field(description="Extra model fields (list_models shows each model's)")]
WaitArg = Annotated[bool, Field(description="Wait for the image (true) or return the task id at once")]
TimeoutArg = Annotated[float | None, Field(description="Longest wait in seconds before returning 'still running'")]

_WRITE = ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=False, openWorldHint=True)
_READ_REMOTE = ToolAnnotations(readOnlyHint=True, idempotentHint=True, openWorldHint=True)
_READ_LOCAL = ToolAnnotations(readOnlyHint=True, idempotentHint=True, openWorldHint=False)

NO_KEY = (
    "No RunAPI API key is set. Set RUNAPI_API_KEY in this server's environment (in Claude Desktop: the "
    '"env" block of its mcpServers entry; in Hermes: env: under mcp_servers), or put {"apiKey": "..."} '
    "in ~/.config/runapi/config.json, then restart the server."
)


@dataclass
class ServerDeps:
    """What the MCP layer needs from below; built by ``runapi_mcp.app``."""

    manager: TaskManager
    resolver: ImageResolver
    catalog: Catalog
    wait_s: float
    has_key: bool
    redact: Callable[[str], str]


class ModelInfo(BaseModel):
    model: str
    family: str
    action: str
    route: str
    tool: str
    image_field: str | None
    fields: dict[str, dict[str, str]]


class ModelList(BaseModel):
    models: list[ModelInfo]
    aliases: dict[str, str] = Field(description="Other names accepted for a model")


class BalanceResult(BaseModel):
    balance_cents: int | None
    paid_balance_cents: int | None = None
    bonus_balance_cents: int | None = None
    spent_cents_today: int | None = None
    spent_cents_total: int | None = None


class RunAPIMCPServer(MCPServer[Any]):
    """MCPServer that serves each library image with its own MIME type (templates fix one type)."""

    deps: ServerDeps

    async def read_resource(
        self, uri: AnyUrl | str, context: Context[Any, Any] | None = None
    ) -> Iterable[ReadResourceContents] | InputRequiredResult:
        result = await super().read_resource(uri, context)
        text = str(uri)
        if isinstance(result, InputRequiredResult) or not text.startswith(IMAGE_URI_PREFIX):
            return result
        image = self.deps.manager.images.find(text[len(IMAGE_URI_PREFIX) :])
        mime = image.mime_type if image and image.mime_type else "application/octet-stream"
        return [ReadResourceContents(content=item.content, mime_type=mime, meta=item.meta) for item in result]


def build_server(deps: ServerDeps) -> RunAPIMCPServer:
    bus = InMemorySubscriptionBus()
    mcp = RunAPIMCPServer(
        "runapi-mcp", title="RunAPI images", instructions=INSTRUCTIONS, version=__version__, subscriptions=bus
    )
    mcp.deps = deps
    manager, catalog = deps.manager, deps.catalog

    def fail(message: str) -> ToolError:
        return ToolError(deps.redact(message))

    def check_timeout(timeout_s: float | None) -> float:
        if timeout_s is None:
            return deps.wait_s
        if not 0 <= timeout_s <= MAX_TIMEOUT_S:
            raise fail(f"'timeout_s' must be between 0 and {MAX_TIMEOUT_S:.0f} seconds, got {timeout_s}")
        return float(timeout_s)

    async def previews_for(record: TaskRecord) -> list[Preview | None]:
        saved = [i for i in record.images if i.path]
        budget = PREVIEW_BUDGET_BYTES // max(1, len(saved))
        out: list[Preview | None] = [None] * len(record.images)

        async def make(n: int, image: ImageRecord) -> None:
            try:
                out[n] = await anyio.to_thread.run_sync(manager.images.preview, image, PREVIEW_MAX_EDGE, budget)
            except OSError:
                log.warning("could not make a preview of %s", image.id)

        async with anyio.create_task_group() as tg:  # several outputs: decode them side by side
            for n, image in enumerate(record.images):
                if image.path is not None:
                    tg.start_soon(make, n, image)
        return out

    async def finish(record: TaskRecord, *, waited_out: bool) -> CallToolResult:
        progress = None if record.terminal else manager.estimated_progress(record)
        return tool_result(record, await previews_for(record), waited_out=waited_out, progress=progress)

    async def wait_for(ctx: Context[Any, Any], record: TaskRecord, timeout_s: float) -> CallToolResult:
        started = time.monotonic()
        last = 0.0

        async def report(current: TaskRecord) -> None:
            nonlocal last
            last = max(last, round(manager.estimated_progress(current) * 100, 1))
            waited = time.monotonic() - started
            note = ""
            if current.progress is not None and not current.terminal:
                note = f" ({current.progress * 100:.0f}% by the model)"
            await ctx.report_progress(last, 100, f"{current.status}{note}, {waited:.0f}s elapsed")

        await report(record)
        final = await manager.wait(record.task_id, timeout_s, on_tick=report, tick_s=TICK_S)
        if final.terminal and last < 100:
            await report(final)
        return await finish(final, waited_out=not final.terminal)

    async def run_task(
        ctx: Context[Any, Any],
        kind: RequestKind,
        prompt: str,
        model: str,
        aspect_ratio: str,
        output_resolution: str,
        params: dict[str, Any] | None,
        images: list[str] | None,
        wait: bool,
        timeout_s: float | None,
    ) -> CallToolResult:
        timeout = check_timeout(timeout_s)
        soft: dict[str, str] = {}
        explicit: dict[str, str] = {}
        for name, value, default in (
            ("aspect_ratio", aspect_ratio, "auto"),
            ("output_resolution", output_resolution, "1k"),
        ):
            (soft if value == default else explicit)[name] = value
        def prepare(image_urls: list[str] | None) -> PreparedRequest:
            return catalog.prepare(
                kind, model, prompt=prompt, image_urls=image_urls, options=explicit, soft_options=soft, params=params
            )

        try:
            # Every field is checked before anything is uploaded or created: images stand in as placeholders.
            prepared = prepare([f"https://placeholder.invalid/{i}.png" for i in range(len(images))] if images else None)
            if not deps.has_key:
                raise fail(NO_KEY)
            if kind == "edit":
                prepared = prepare(await deps.resolver.resolve(images or []))
            record = await manager.submit(prepared, prompt=prompt)
        except (CatalogError, ImageReferenceError) as exc:
            raise fail(str(exc)) from None
        except RunAPIError as exc:
            raise fail(f"RunAPI refused the request: {exc}") from None
        if not wait or record.terminal:
            return await finish(record, waited_out=False)
        return await wait_for(ctx, record, timeout)

    @mcp.tool(title="Generate an image", annotations=_WRITE)
    async def generate_image(
        prompt: Annotated[str, Field(description="What to draw. Be specific: subject, style, text to render.")],
        ctx: Context[Any, Any],
        model: ModelArg = "gpt-image-2",
        aspect_ratio: AspectRatioArg = "auto",
        output_resolution: ResolutionArg = "1k",
        params: ParamsArg = None,
        wait: WaitArg = True,
        timeout_s: TimeoutArg = None,
    ) -> Annotated[CallToolResult, TaskResult]:
        """Create an image from a text prompt and return it (preview, resource link, saved file path).

        Waits for RunAPI to finish (about 10-30 s for gpt-image-2); if the wait runs out, the result says the
        task is still running: call get_task(task_id, wait=true). Failed tasks are never retried silently.
        """
        return await run_task(
            ctx, "generate", prompt, model, aspect_ratio, output_resolution, params, None, wait, timeout_s
        )

    @mcp.tool(title="Edit an image", annotations=_WRITE)
    async def edit_image(
        prompt: Annotated[str, Field(description="The change to make, e.g. 'make the sky purple'")],
        images: Annotated[
            list[str],
            Field(
                description="Source images: runapi://images/{id}, an earlier task_id, an absolute local path "
                "or file:// URI, an http(s) URL, or a data: URI"
            ),
        ],
        ctx: Context[Any, Any],
        model: ModelArg = "gpt-image-2",
        aspect_ratio: AspectRatioArg = "auto",
        output_resolution: ResolutionArg = "1k",
        params: ParamsArg = None,
        wait: WaitArg = True,
        timeout_s: TimeoutArg = None,
    ) -> Annotated[CallToolResult, TaskResult]:
        """Edit or transform existing images with an instruction (also upscale, remix, background removal).

        Local files are uploaded for you; library images and earlier task ids are reused. Returns the new
        image like generate_image does.
        """
        return await run_task(
            ctx, "edit", prompt, model, aspect_ratio, output_resolution, params, images, wait, timeout_s
        )

    @mcp.tool(title="Get a task", annotations=_READ_REMOTE)
    async def get_task(
        task_id: Annotated[str, Field(description="The task_id from generate_image or edit_image")],
        ctx: Context[Any, Any],
        wait: Annotated[bool, Field(description="Wait for the task to finish")] = False,
        timeout_s: Annotated[float | None, Field(description="Longest wait in seconds")] = None,
    ) -> Annotated[CallToolResult, TaskResult]:
        """The status of an image task, with its pictures once it has completed."""
        timeout = check_timeout(timeout_s)
        try:
            record = await manager.get(task_id)
        except UnknownTaskError as exc:
            raise fail(str(exc)) from None
        if wait and not record.terminal:
            return await wait_for(ctx, record, timeout)
        return await finish(record, waited_out=False)

    @mcp.tool(title="List image models", annotations=_READ_LOCAL)
    async def list_models(
        action: Annotated[
            str | None,
            Field(
                description="Filter: an action (text_to_image, edit_image, upscale_image, remix_image, ...), "
                "a family (flux-kontext) or a model name"
            ),
        ] = None,
    ) -> ModelList:
        """Every RunAPI image model with its action, route and fields (types, allowed values, limits)."""
        try:
            models = catalog.describe(action)
        except CatalogError as exc:
            raise fail(str(exc)) from None
        return ModelList(
            models=[ModelInfo.model_validate(m) for m in models],
            aliases={alias: f"{slug} ({endpoint})" for alias, (slug, endpoint) in ALIASES.items()},
        )

    @mcp.tool(title="Check RunAPI balance", annotations=_READ_REMOTE)
    async def check_balance() -> BalanceResult:
        """The RunAPI account balance in cents."""
        if not deps.has_key:
            raise fail(NO_KEY)
        try:
            balance = await manager.client.get_balance()
        except RunAPIError as exc:
            raise fail(f"Could not read the balance: {exc}") from None
        return BalanceResult.model_validate(balance.model_dump())

    @mcp.resource(
        "runapi://tasks/{task_id}",
        name="task",
        mime_type="application/json",
        description="A task's state as JSON (the same fields as the task tools' results)",
    )
    async def task_resource(task_id: str) -> str:
        try:
            record = await manager.get(task_id)
        except UnknownTaskError as exc:
            raise ResourceNotFoundError(str(exc)) from None
        return task_result(record, manager.estimated_progress(record)).model_dump_json(indent=2)

    @mcp.resource(
        IMAGE_URI_PREFIX + "{image_id}",
        name="image",
        mime_type="image/png",
        description="A picture from the local library, full size",
    )
    async def image_resource(image_id: str) -> bytes:
        image = manager.images.find(image_id)
        if image is None or image.path is None:
            raise ResourceNotFoundError(f"no image {image_id!r} in the library")
        return await anyio.Path(image.path).read_bytes()

    @mcp.resource(
        "runapi://models",
        name="models",
        mime_type="application/json",
        description="The catalog of RunAPI image models and their fields",
    )
    def models_resource() -> str:
        return json.dumps(catalog.describe(), indent=1)

    async def publish(record: TaskRecord) -> None:
        # 2026-era clients listening with subscriptions/listen hear about every change of a task.
        await bus.publish(ResourceUpdated(uri=f"runapi://tasks/{record.task_id}"))

    manager.add_listener(publish)
    return mcp
