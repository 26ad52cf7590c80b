"""Task history: the ``list_tasks`` tool, the ``runapi://tasks`` index and the paged ``resources/list``.

Everything here reads the task store the manager writes (``TaskStore.page``), so what a client lists
is what the server keeps: across restarts too, with a persistent store. Cursors are opaque to
clients and never trusted: a cursor this server did not hand out is refused, naming 'cursor'.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.tools import Tool
from mcp.types import CallToolResult, ListResourcesResult, Resource, TextContent
from pydantic import BaseModel, Field

from runapi_mcp.catalog import ALIASES
from runapi_mcp.server.arguments import READ_LOCAL, CursorArg, LimitArg, ModelFilterArg, TaskStatusArg, strict_tool
from runapi_mcp.server.catalog_view import MODELS_URI
from runapi_mcp.server.owners import owned_page
from runapi_mcp.server.results import TaskResult, task_result
from runapi_mcp.tasks import (
    IMAGE_URI_PREFIX,
    ImageRecord,
    InvalidCursorError,
    TaskManager,
    TaskRecord,
    TaskState,
)
from runapi_mcp.wording import count

TASK_URI_PREFIX = "runapi://tasks/"
TASKS_INDEX_URI = "runapi://tasks"
# The resource templates (a completion names them as registered).
TASK_TEMPLATE = TASK_URI_PREFIX + "{task_id}"
IMAGE_TEMPLATE = IMAGE_URI_PREFIX + "{image_id}"

# resources/list pages: small enough for any client to take in one answer, big enough to be few.
RESOURCE_PAGE_SIZE = 50
_MAX_CURSOR_CHARS = 2000
# How far past a page's last image the next page looks for it again (images made meanwhile come first).
_IMAGE_ANCHOR_SLACK = 200


class TaskList(BaseModel):
    """One page of the task history, newest first."""

    tasks: list[TaskResult] = Field(description="The same fields as get_task's result, without previews")
    next_cursor: str | None = Field(description="Pass as cursor to list_tasks for the next page; null: no more")


def task_uri(task_id: str) -> str:
    return TASK_URI_PREFIX + task_id


def model_filter(model: str | None) -> str | None:
    """A model filter as the store keeps the model: its slug (an alias or another spelling finds the
    same tasks)."""
    if model is None:
        return None
    name = model.strip().lower()
    return ALIASES[name][0] if name in ALIASES else name


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _line(record: TaskRecord) -> str:
    """One task as one line of text: what a client without structured results reads."""
    parts = [record.task_id, record.status, record.model, _when(record.created_at)]
    # A failed task RunAPI did not charge shows no price (as in its result): "3 cents ... failed" reads as a charge.
    if record.price_cents is not None and not (record.status == "failed" and not record.spend_cents):
        parts.append(count(record.price_cents, "cent"))
    saved = [image.path for image in record.images if image.path]
    if saved:
        parts.append(f"{count(len(record.images), 'image')}: {', '.join(saved)}")
    elif record.images:
        parts.append(f"{count(len(record.images), 'image')}, not downloaded")
    if record.status == "failed" and record.error:
        parts.append(f"error: {record.error[:200]}")
    if record.prompt:
        prompt = record.prompt if len(record.prompt) <= 60 else record.prompt[:57] + "..."
        parts.append(repr(prompt))
    return "- " + ", ".join(parts)


class _ResourceCursor:
    """The opaque resources/list cursor: which section comes next and where in it.

    ``("t", store_cursor)`` continues the tasks; ``("i", image_id, offset)`` continues the images after
    ``image_id`` (found again by id, so images made meanwhile neither repeat nor hide one; ``offset`` is
    the fallback when that image is gone)."""

    @staticmethod
    def encode(data: list[Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")

    @staticmethod
    def decode(cursor: str) -> list[Any]:
        if len(cursor) > _MAX_CURSOR_CHARS:  # ours are short; a long one is not worth decoding
            raise InvalidCursorError(cursor[:100])
        try:
            data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise InvalidCursorError(cursor) from None
        if isinstance(data, list) and len(data) == 2 and data[0] == "t" and isinstance(data[1], str):
            return data
        if (
            isinstance(data, list)
            and len(data) == 3
            and data[0] == "i"
            and isinstance(data[1], str)
            and isinstance(data[2], int)
            and not isinstance(data[2], bool)
            and data[2] >= 0
        ):
            return data
        raise InvalidCursorError(cursor)


class TaskHistory:
    """list_tasks, the task index resource and the resource listing, over the manager's store."""

    def __init__(self, manager: TaskManager) -> None:
        self.manager = manager
        self.resource_page_size = RESOURCE_PAGE_SIZE

    def tools(self) -> list[Tool]:
        return [strict_tool(self.list_tasks, name="list_tasks", title="List tasks", annotations=READ_LOCAL)]

    def register(self, server: MCPServer[Any]) -> None:
        server.resource(
            TASKS_INDEX_URI,
            name="tasks",
            mime_type="application/json",
            description="The newest tasks as JSON (list_tasks' first page, with next_cursor for the rest)",
        )(self.index)

    # -- the tool --------------------------------------------------------------------------
    async def list_tasks(
        self,
        status: TaskStatusArg = None,
        model: ModelFilterArg = None,
        limit: LimitArg = 20,
        cursor: CursorArg = None,
    ) -> Annotated[CallToolResult, TaskList]:
        """Tasks made here, newest first: state, price, saved images. Pass next_cursor as cursor for more."""
        records, next_cursor = await self._page(status=status, model=model, limit=limit, cursor=cursor)
        listing = TaskList(tasks=[self._result(r) for r in records], next_cursor=next_cursor)
        filters = ", ".join(f"{k}={v}" for k, v in (("status", status), ("model", model)) if v)
        where = f" ({filters})" if filters else ""
        if not records:
            text = f"No tasks{where}{' after this cursor' if cursor else ''}."
        else:
            head = f"{count(len(records), 'task')}{where}, newest first:"
            text = "\n".join([head, *(_line(r) for r in records)])
        if next_cursor:
            text += f"\nMore: call list_tasks with cursor='{next_cursor}' (and the same filters)."
        return CallToolResult(
            content=[TextContent(type="text", text=text)], structured_content=listing.model_dump(mode="json")
        )

    async def _page(
        self, *, status: TaskState | None, model: str | None, limit: int, cursor: str | None
    ) -> tuple[list[TaskRecord], str | None]:
        store = self.manager.store
        page = await owned_page(store, status=status, model=model_filter(model), limit=limit, cursor=cursor)
        return page.records, page.next_cursor

    def _result(self, record: TaskRecord) -> TaskResult:
        return task_result(record, self.manager.estimated_progress(record))

    # -- resources -------------------------------------------------------------------------
    async def index(self) -> str:
        records, next_cursor = await self._page(status=None, model=None, limit=20, cursor=None)
        listing = TaskList(tasks=[self._result(r) for r in records], next_cursor=next_cursor)
        return listing.model_dump_json(indent=2)

    async def resource_exists(self, uri: str) -> bool:
        """Whether ``uri`` names a resource of this server right now (what a subscription may name)."""
        if uri in (TASKS_INDEX_URI, MODELS_URI):
            return True
        if uri.startswith(TASK_URI_PREFIX):
            return await self.manager.find(uri[len(TASK_URI_PREFIX) :]) is not None
        if uri.startswith(IMAGE_URI_PREFIX):
            return await self.manager.find_image(uri[len(IMAGE_URI_PREFIX) :]) is not None
        return False

    async def list_resources(self, cursor: str | None, fixed: list[Resource]) -> ListResourcesResult:
        """One page of resources: ``fixed`` (the index, the catalog) first, then tasks, newest first,
        then library images, newest first. Raises :class:`InvalidCursorError` for a foreign cursor."""
        size = self.resource_page_size
        listed: list[Resource] = []
        image_after, image_offset = "", 0
        data: list[Any] = ["t", None] if cursor is None else _ResourceCursor.decode(cursor)
        if data[0] == "t":
            page = await owned_page(self.manager.store, limit=size, cursor=data[1])
            listed += [self._task_resource(r) for r in page.records]
            if page.next_cursor is not None:
                more = _ResourceCursor.encode(["t", page.next_cursor])
                return ListResourcesResult(resources=self._first(cursor, fixed) + listed, next_cursor=more)
        else:
            image_after, image_offset = data[1], data[2]
        room = size - len(listed)
        images, start = await self._images_after(image_after, image_offset, room)
        chosen = images[start : start + room]
        listed += [self._image_resource(i) for i in chosen]
        next_cursor: str | None = None
        if len(images) > start + room:
            # With no room left (tasks filled the page) the images start the next page: no anchor yet.
            next_cursor = _ResourceCursor.encode(["i", chosen[-1].id if chosen else "", start + len(chosen)])
        return ListResourcesResult(resources=self._first(cursor, fixed) + listed, next_cursor=next_cursor)

    @staticmethod
    def _first(cursor: str | None, fixed: list[Resource]) -> list[Resource]:
        return list(fixed) if cursor is None else []

    async def _images_after(self, after: str, offset: int, room: int) -> tuple[list[ImageRecord], int]:
        """The newest library images (one more than the page needs, to tell whether more follow) and
        where the page after image ``after`` starts in them: just after it, or at ``offset`` when it
        is gone."""
        wanted = offset + room + 1 + (_IMAGE_ANCHOR_SLACK if after else 0)
        images = await self._visible_images(wanted)
        if not after:
            return images, offset
        ids = [image.id for image in images]
        if after not in ids:
            return images, offset
        start = ids.index(after) + 1
        if len(images) == wanted and len(images) < start + room + 1:
            images = await self._visible_images(start + room + 1)
        return images, start

    async def _visible_images(self, wanted: int) -> list[ImageRecord]:
        """The newest ``wanted`` library images the caller may see (with per-user tokens, the library
        holds other users' images too: look further back until enough are found or none are left)."""
        scanned = wanted
        while True:
            images = await self.manager.images.list_images(scanned)
            visible = await self.manager.visible_images(images)
            if len(visible) >= wanted or len(images) < scanned:
                return visible[:wanted]
            scanned *= 4

    @staticmethod
    def _task_resource(record: TaskRecord) -> Resource:
        about = f"{record.model} {record.action}, {record.status}, created {_when(record.created_at)}"
        if record.prompt:
            about += f": {record.prompt[:200]}"
        return Resource(
            uri=task_uri(record.task_id),
            name=record.task_id,
            title=f"{record.model} task ({record.status})",
            description=about,
            mime_type="application/json",
        )

    @staticmethod
    def _image_resource(image: ImageRecord) -> Resource:
        size = f"{image.width}x{image.height}" if image.width and image.height else "size unknown"
        source = f" from task {image.task_id}" if image.task_id else ""
        return Resource(
            uri=image.uri,
            name=image.id,
            title=f"Image {image.id}",
            description=f"{size}{source}",
            mime_type=image.mime_type or "application/octet-stream",
            size=image.bytes,
        )
