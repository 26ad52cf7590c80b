"""How a task looks to an MCP client: the structured result schema and the content blocks."""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from mcp.types import CallToolResult, ContentBlock, ImageContent, ResourceLink, TextContent
from pydantic import BaseModel, Field

from runapi_mcp.server.owners import current_file_link
from runapi_mcp.tasks import ImageRecord, Preview, PreviewSkipped, TaskRecord, TaskState
from runapi_mcp.tasks.saving import extension_note
from runapi_mcp.wording import count

PreviewOutcome = Preview | PreviewSkipped | None

# What a cancelled task's record says (MCP tasks/cancel): the server can only stop following it.
CANCELLED_NOTE = (
    "RunAPI has no cancel: the task may still finish and be billed; this server stopped tracking it"
)

# Everything inline together stays well under Claude Desktop's 1 MiB result cap (base64 adds a third).
PREVIEW_BUDGET_BYTES = 600_000
PREVIEW_MAX_EDGE = 1024


class ImageOut(BaseModel):
    uri: str = Field(description="runapi://images/{id}: read it as an MCP resource")
    path: str | None = Field(description="Absolute path of the full-size file in the local library")
    url: str | None = Field(description="RunAPI's URL for the image (expires after about 7 days)")
    width: int | None
    height: int | None
    mime_type: str | None
    bytes: int | None
    error: str | None = Field(None, description="Why the image is not in the local library (yet)")
    download_url: str | None = Field(
        None, description="Over HTTP: the full-size image at this server (a signed link, valid for a day)"
    )
    saved_as: str | None = Field(None, description="Where its save_as copy was written")
    save_error: str | None = Field(None, description="Why no save_as copy was written")


class TaskResult(BaseModel):
    """The state of one RunAPI image task."""

    task_id: str = Field(description="This server's id of the task (get_task takes it, or runapi_task_id)")
    runapi_task_id: str | None = Field(None, description="RunAPI's id of the task, once RunAPI has confirmed it")
    status: TaskState = Field(description="submitting (RunAPI has not confirmed the create yet), pending, "
                              "processing, completed, failed or cancelled (a client cancelled it: this server "
                              "stopped tracking it)")
    price_cents: int | None = Field(None, description="RunAPI's quote for the task, in cents, where known")
    cost_cents: int | None = Field(None, description="What RunAPI reported the task cost, in cents, once done")
    model: str
    service: str
    action: str
    prompt: str | None
    images: list[ImageOut]
    error: str | None
    progress: float | None = Field(description="0..1 where known")
    elapsed_s: float
    created_at: str
    updated_at: str
    completed_at: str | None
    save_as: str | None = Field(
        None, description="The file asked for (save_as): copies go there when done (-1, -2... for several)"
    )
    next_step: str | None = Field(
        None, description="What to do next: wait with get_task, or why there is nothing to wait for"
    )


def next_step(record: TaskRecord, *, waited_out: bool = False) -> str | None:
    """The one sentence saying what to do next with the task, in the text and the structured result alike:
    some clients (Claude Code) show the model only the structured content when there is one."""
    if record.status == "completed":
        return (
            "Pass a runapi://images/... URI or this task_id to edit_image or upscale_image to keep working on it."
            if any(image.path for image in record.images)
            else f"Call get_task with task_id='{record.task_id}' to download the pictures again."
        )
    if record.status == "failed":
        charged = "" if record.spend_cents else " RunAPI charged nothing for it."
        return f"Nothing to wait for: the task ended.{charged} Change what the error names and call the tool again."
    if record.status == "cancelled":
        return "Nothing to wait for: this server stopped following the task (it may still finish, and be billed)."
    wait = "to keep waiting" if waited_out else "to wait for the image"
    return f"Call get_task with task_id='{record.task_id}' and wait=true {wait}; the task keeps running."


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts is not None else None


def image_out(image: ImageRecord) -> ImageOut:
    out = ImageOut.model_validate(image, from_attributes=True)
    link = current_file_link.get()
    if link is not None and image.path:
        out.download_url = link(image.id)
    return out


def task_result(record: TaskRecord, progress: float | None = None, *, waited_out: bool = False) -> TaskResult:
    end = record.completed_at or time.time()
    return TaskResult(
        task_id=record.task_id,
        runapi_task_id=record.upstream_id,
        # A failed task RunAPI did not charge shows no price: "3 cents ... failed" reads as a charge.
        price_cents=None if record.status == "failed" and not record.spend_cents else record.price_cents,
        cost_cents=record.cost_cents,
        status=record.status,
        model=record.model,
        service=record.service,
        action=record.action,
        prompt=record.prompt,
        images=[image_out(i) for i in record.images],
        error=record.error,
        progress=1.0 if record.status == "completed" else (record.progress if progress is None else progress),
        elapsed_s=round(max(0.0, end - record.created_at), 2),
        created_at=_iso(record.created_at) or "",
        updated_at=_iso(record.updated_at) or "",
        completed_at=_iso(record.completed_at),
        save_as=record.save_as,
        next_step=next_step(record, waited_out=waited_out),
    )


def summary_text(
    record: TaskRecord,
    previews: Sequence[PreviewOutcome] = (),
    *,
    waited_out: bool = False,
    download_urls: Sequence[str | None] | None = None,
) -> str:
    """What a person (and the model) reads about the task. ``download_urls``, one per image, are the
    links the structured result carries (``tool_result`` passes them, so both say the same); without
    them each saved image is linked afresh through ``current_file_link``."""
    elapsed = max(0.0, (record.completed_at or time.time()) - record.created_at)
    # What it costs: RunAPI's settlement, else the quote; a failed task RunAPI did not charge shows none.
    cents = record.cost_cents if record.cost_cents is not None else record.price_cents
    if record.status == "failed" and not record.spend_cents:
        cents = None
    price = f", {count(cents, 'cent')}" if cents is not None else ""
    head = f"Task {record.task_id} ({record.model}, {record.action}{price})"
    if record.status == "completed":
        saved = [i for i in record.images if i.path]
        lines = [f"{head} completed in {elapsed:.0f}s: {count(len(record.images), 'image')}."]
        skipped = {n: p.reason for n, p in enumerate(previews) if isinstance(p, PreviewSkipped)}
        link = current_file_link.get() if download_urls is None else None
        for n, image in enumerate(record.images):
            if image.path:
                line = f"- {image.uri}: {image.width}x{image.height} {image.mime_type}, saved to {image.path}"
                url = download_urls[n] if download_urls is not None else link(image.id) if link is not None else None
                if url is not None:
                    line += f" (full size over HTTP: {url})"
                if n in skipped:
                    line += f" (no preview: {skipped[n]})"
                line += _copy_text(record, image)
                lines.append(line)
            else:
                reason = f" ({image.error})" if image.error else ""
                lines.append(f"- {image.uri}: not downloaded{reason}; RunAPI URL {image.url}")
        if record.error:
            lines.append(f"Note: {record.error}")
        if saved:
            lines.append(next_step(record) or "")
        return "\n".join(lines)
    if record.status == "failed":
        return f"{head} failed after {elapsed:.0f}s: {record.error or 'no reason given'}. {next_step(record)}"
    if record.status == "cancelled":
        return f"{head} was cancelled after {elapsed:.0f}s: {record.error or CANCELLED_NOTE}"
    text = f"{head} is {record.status} ({elapsed:.0f}s so far)."
    if record.save_as:
        text += f" When done, a copy goes to {record.save_as}."
    if record.status == "submitting":
        text += " RunAPI has not confirmed the create yet; it is sent again with the same key until it does."
    elif record.error:
        text += f" Last polling problem: {record.error}."
    return f"{text} {next_step(record, waited_out=waited_out)}"


def _copy_text(record: TaskRecord, image: ImageRecord) -> str:
    """What became of an image's save_as copy, for its line of the summary ("" when none was asked for)."""
    if image.saved_as:
        note = extension_note(record.save_as, image.saved_as)
        return f"; copied to {image.saved_as}" + (f" ({note})" if note else "")
    if image.save_error:
        return f"; not copied to save_as: {image.save_error}"
    return ""


def tool_result(
    record: TaskRecord,
    previews: Sequence[PreviewOutcome],
    *,
    waited_out: bool = False,
    progress: float | None = None,
    resource_links: bool = True,
) -> CallToolResult:
    """Text, then per image its preview and a link to the full file (older clients: see ``compat``).

    Without ``resource_links`` (RUNAPI_MCP_RESOURCE_LINKS=off) the links are left out: LangChain's MCP
    adapters turn each one into an image URL (runapi://...) that no model provider can fetch, failing the
    whole model call. The text names each image's URI and path either way, and the structured result is
    the same."""
    # The structured result first: its signed links are the ones the text shows (made once, so the two
    # never differ across a second boundary).
    structured = task_result(record, progress, waited_out=waited_out)
    download_urls = [image.download_url for image in structured.images]
    text = summary_text(record, previews, waited_out=waited_out, download_urls=download_urls)
    content: list[ContentBlock] = [TextContent(type="text", text=text)]
    for image, preview in zip(record.images, previews, strict=True):
        if isinstance(preview, Preview):
            content.append(
                ImageContent(type="image", data=base64.b64encode(preview.data).decode(), mime_type=preview.mime_type)
            )
        if image.path and resource_links:
            content.append(
                ResourceLink(
                    type="resource_link",
                    uri=image.uri,
                    name=image.id,
                    title=f"{record.model} image {image.index + 1}",
                    description=f"{image.width}x{image.height}, saved to {image.path}",
                    mime_type=image.mime_type,
                    size=image.bytes,
                )
            )
    return CallToolResult(
        content=content,
        structured_content=structured.model_dump(mode="json"),
        is_error=record.status == "failed",
    )
