"""MCP Apps (extension ``io.modelcontextprotocol/ui``): the pictures and the gallery, shown in the chat.

One self-contained HTML view (``ui/images.html``, served as ``ui://runapi/images.html`` with the MIME
type ``text/html;profile=mcp-app``) renders whatever result it is handed: one task (its previews large,
its prompt, model, size, price and progress, with edit, upscale, variations, open and refresh actions
that call this server's tools through the host) or the ``gallery`` tool's list of recent tasks (a grid
with model, status and text filters). The host renders it in a sandboxed iframe and speaks to it over
postMessage; the view makes no request of its own, so nothing here is HTTP.

What each client gets:

- The image tools and ``gallery`` carry ``_meta.ui.resourceUri``. ``_meta`` on a tool is reserved
  metadata that a client without Apps ignores, and their results are exactly what they were: the view
  reads the same content blocks and ``structuredContent`` every client gets. A client on 2025-03-26 or
  older has no ``_meta`` on tools (``compat`` takes it out), unless it advertised Apps: then it is put
  back, since that client reads it whatever its version.
- ``_meta.ui`` is not limited to clients that advertise the extension: Claude Desktop rendered Apps for
  months before it advertised any capability, and a host that renders must find the link.
- The ``ui://`` resource is always readable, but listed (``resources/list``) only to clients that
  advertised Apps: others would offer a raw HTML page as something to attach.
- The SDK's ``Apps`` extension advertises ``capabilities.extensions`` to 2026-07-28 clients only (the
  handshake-era schema has no such field, so the SDK drops it); a handshake-era client that advertised
  Apps itself gets it on its ``initialize`` answer too.
- ``gallery`` returns text (one line per task, with saved paths) and ``structuredContent`` for every
  client; only a client that advertised Apps also gets small thumbnails, in the result's ``_meta`` (kept
  out of the model's context by the Apps spec), so no other client pays for bytes it cannot show. Those
  over one answer's byte budget are named there too, so the view can say why a tile is blank and fetch it.

The view follows a running task itself: a clock from ``elapsed_s``, and ``get_task(wait=true)`` in short
steps (``timeout_s``), since a host gives up on a request after a while (the official client after 60 s)
and passes the view no progress notifications. A host time-out only shortens the next step.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any

import anyio
from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID, Apps, client_supports_apps
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from mcp.types import CallToolResult, TextContent
from pydantic import AfterValidator, BaseModel, Field

from runapi_mcp.server.arguments import READ_LOCAL, ModelFilterArg, TaskStatusArg, plain_text, strict_tool
from runapi_mcp.server.compat import mark_tools, with_capability
from runapi_mcp.server.history import model_filter
from runapi_mcp.server.owners import owned_page
from runapi_mcp.server.results import TaskResult, task_result
from runapi_mcp.tasks import Preview, TaskManager, TaskRecord, TaskState
from runapi_mcp.tasks.previews import make_preview
from runapi_mcp.wording import count

UI_URI = "ui://runapi/images.html"
# The tools whose results the view renders (list_models, check_balance, list_tasks stay plain).
UI_TOOLS = frozenset({"generate_image", "edit_image", "upscale_image", "get_task", "gallery"})
UI_META: dict[str, Any] = {"ui": {"resourceUri": UI_URI}}
THUMBNAILS_META_KEY = "runapi-mcp/thumbnails"  # result _meta: task id -> data: URI of its first image
# result _meta, when the budget left some out: {"task_ids": [...], "budget_bytes": n}. The view says why
# those tiles are blank and loads them on request (a gallery call whose query is the task id).
THUMBNAILS_OMITTED_META_KEY = "runapi-mcp/thumbnails-omitted"

GALLERY_DEFAULT = 24
GALLERY_MAX = 48
# A query scans the newest tasks page by page; this bounds the work of one call in a long history.
QUERY_SCAN_MAX = 2000
_SCAN_PAGE = 100
# Thumbnails: small enough that a full gallery stays far below Claude Desktop's 1 MiB result cap
# (base64 adds a third). One size for all, so the preview cache (keyed by edge and bytes) serves repeats.
THUMB_EDGE = 256
THUMB_BYTES = 16_000
THUMB_BUDGET_BYTES = 400_000

QueryArg = Annotated[
    Annotated[str, Field(min_length=1, max_length=200), AfterValidator(plain_text)] | None,
    Field(description="Text the prompt contains"),
]
GalleryLimitArg = Annotated[int, Field(ge=1, le=GALLERY_MAX, description=f"How many, 1..{GALLERY_MAX}")]


def app_html() -> str:
    """The view's HTML, shipped as package data next to this module."""
    return resources.files("runapi_mcp.server").joinpath("ui", "images.html").read_text(encoding="utf-8")


class Gallery(BaseModel):
    """The newest tasks for the gallery view, newest first."""

    tasks: list[TaskResult] = Field(description="The same fields as get_task's result, without previews")
    more: bool = Field(description="More tasks match than were returned (list_tasks pages through all)")
    status: TaskState | None = None
    model: str | None = None
    query: str | None = None


def _line(record: TaskRecord) -> str:
    """One task as one line: what a client without the view reads (and the model, in every client)."""
    when = datetime.fromtimestamp(record.created_at, UTC).strftime("%Y-%m-%d %H:%M")
    parts = [record.task_id, record.status, record.model, when]
    saved = [image.path for image in record.images if image.path]
    if saved:
        parts.append(f"{count(len(saved), 'image')}: {', '.join(saved)}")
    if record.prompt:
        prompt = record.prompt if len(record.prompt) <= 80 else record.prompt[:77] + "..."
        parts.append(repr(prompt))
    return "- " + ", ".join(parts)


def _advertises_apps(capabilities: object) -> bool:
    """Whether raw ``initialize`` capabilities declare Apps with the HTML profile (as the SDK's check does)."""
    if not isinstance(capabilities, Mapping):
        return False
    extensions = capabilities.get("extensions")
    settings = extensions.get(EXTENSION_ID) if isinstance(extensions, Mapping) else None
    mime_types = settings.get("mimeTypes") if isinstance(settings, Mapping) else None
    return isinstance(mime_types, list) and APP_MIME_TYPE in mime_types


class AppsUI:
    """The view resource, the ``_meta.ui`` links, the ``gallery`` tool and the per-client middleware."""

    def __init__(self, manager: TaskManager) -> None:
        self.manager = manager
        self.extension = Apps()
        self.extension.add_html_resource(
            UI_URI,
            app_html(),
            name="runapi-images",
            title="RunAPI images",
            description="The picture viewer and gallery MCP Apps hosts show for the image tools",
            prefers_border=True,
        )

    # -- tools -------------------------------------------------------------------------------------
    def bind(self, tools: Sequence[Tool]) -> list[Tool]:
        """``tools`` with ``_meta.ui.resourceUri`` on the ones whose results the view renders."""
        for tool in tools:
            if tool.name in UI_TOOLS:
                tool.meta = {**(tool.meta or {}), **UI_META}
        return list(tools)

    def tools(self) -> list[Tool]:
        return self.bind([strict_tool(self.gallery, name="gallery", title="Image gallery", annotations=READ_LOCAL)])

    async def gallery(
        self,
        ctx: Context[Any, Any],
        status: TaskStatusArg = None,
        model: ModelFilterArg = None,
        query: QueryArg = None,
        limit: GalleryLimitArg = GALLERY_DEFAULT,
    ) -> Annotated[CallToolResult, Gallery]:
        """Show the user their newest image tasks as a picture grid (a text list where MCP Apps are not shown)."""
        records, more = await self._select(status, model, query, limit)
        listing = Gallery(
            tasks=[task_result(r, self.manager.estimated_progress(r)) for r in records],
            more=more,
            status=status,
            model=model,
            query=query,
        )
        filters = ", ".join(f"{k}={v!r}" for k, v in (("status", status), ("model", model), ("query", query)) if v)
        where = f" ({filters})" if filters else ""
        if records:
            lines = [f"Gallery: {count(len(records), 'task')}{where}, newest first:", *(_line(r) for r in records)]
            if more:
                lines.append(f"More tasks match: raise limit (up to {GALLERY_MAX}) or page with list_tasks.")
            text = "\n".join(lines)
        else:
            text = f"No tasks{where} yet." if not filters else f"No tasks match{where}."
        meta: dict[str, Any] | None = None
        if client_supports_apps(ctx):
            thumbnails, omitted = await self._thumbnails(records)
            meta = {THUMBNAILS_META_KEY: thumbnails}
            if omitted:
                meta[THUMBNAILS_OMITTED_META_KEY] = {"task_ids": omitted, "budget_bytes": THUMB_BUDGET_BYTES}
        return CallToolResult(
            content=[TextContent(type="text", text=text)],
            structured_content=listing.model_dump(mode="json"),
            meta=meta,
        )

    async def _select(
        self, status: TaskState | None, model: str | None, query: str | None, limit: int
    ) -> tuple[list[TaskRecord], bool]:
        """The newest ``limit`` tasks that match, and whether more match."""
        model = model_filter(model)
        if query is None:
            page = await owned_page(self.manager.store, status=status, model=model, limit=limit)
            return page.records, page.next_cursor is not None
        needle = query.casefold()
        found: list[TaskRecord] = []
        cursor: str | None = None
        scanned = 0
        while len(found) <= limit and scanned < QUERY_SCAN_MAX:
            page = await owned_page(self.manager.store, status=status, model=model, limit=_SCAN_PAGE, cursor=cursor)
            scanned += len(page.records)
            found += [
                r for r in page.records if needle in (r.prompt or "").casefold() or needle in r.task_id.casefold()
            ]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        return found[:limit], len(found) > limit

    async def _thumbnails(self, records: Sequence[TaskRecord]) -> tuple[dict[str, str], list[str]]:
        """A data: URI of each task's first saved image, newest first, while the byte budget lasts; and the
        tasks whose thumbnail the budget left out."""
        firsts = [(r.task_id, image) for r in records for image in r.images[:1] if image.path]
        made: dict[str, Preview] = {}

        async def make(task_id: str, n: int) -> None:
            preview = await make_preview(self.manager.images, firsts[n][1], THUMB_EDGE, THUMB_BYTES)
            if isinstance(preview, Preview):
                made[task_id] = preview

        async with anyio.create_task_group() as tg:  # each decode waits for the process-wide pixel budget
            for n, (task_id, _) in enumerate(firsts):
                tg.start_soon(make, task_id, n)
        out: dict[str, str] = {}
        omitted: list[str] = []
        spent = 0
        for task_id, _ in firsts:
            preview = made.get(task_id)
            if preview is None:
                continue
            if spent + len(preview.data) > THUMB_BUDGET_BYTES:
                omitted.append(task_id)
                continue
            spent += len(preview.data)
            out[task_id] = f"data:{preview.mime_type};base64,{base64.b64encode(preview.data).decode()}"
        return out, omitted

    # -- per-client shaping ------------------------------------------------------------------------
    async def middleware(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """Server middleware, placed outside ``ProtocolCompat`` so it sees what the client will get."""
        result = await call_next(ctx)
        if not isinstance(result, dict):
            return result
        if ctx.method == "initialize":
            capabilities = ctx.params.get("capabilities") if isinstance(ctx.params, Mapping) else None
            return _advertise(result) if _advertises_apps(capabilities) else result
        if ctx.method == "tools/list" and client_supports_apps(ctx):
            return _relink_tools(result)
        if ctx.method == "resources/list" and not client_supports_apps(ctx):
            return _without_views(result)
        return result


def _advertise(result: dict[str, Any]) -> dict[str, Any]:
    return with_capability(result, "extensions", {EXTENSION_ID: {}})


def _relink_tools(result: dict[str, Any]) -> dict[str, Any]:
    """``_meta.ui`` back on the view's tools where an older version's answer lost it."""
    return mark_tools(result, UI_TOOLS, "_meta", UI_META)


def _without_views(result: dict[str, Any]) -> dict[str, Any]:
    resources_ = result.get("resources")
    if not isinstance(resources_, list):
        return result
    kept = [r for r in resources_ if not (isinstance(r, Mapping) and str(r.get("uri", "")).startswith("ui://"))]
    return {**result, "resources": kept}
