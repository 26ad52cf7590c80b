"""``completion/complete``: values for our prompts' arguments and our resource templates' variables.

Completion refers to a prompt (``ref/prompt``) or a resource template (``ref/resource``), never to a tool.
What is offered:

- a prompt's ``model``: the catalog's models and aliases that fit the prompt's tool (an edit model for
  an edit, an upscaler for an upscale; a background removal offers the removal models), default first;
- ``aspect_ratio`` and ``output_resolution``: the allowed values of the model named in the request's
  ``context.arguments`` (the prompt's default model when none is named yet);
- image arguments: the caller's recent library images (``runapi://images/...``) and task ids;
- fixed choices (``kind``, ``format``, ``print_size``, ``dpi``);
- ``runapi://tasks/{task_id}`` and ``runapi://images/{image_id}``: the caller's recent task and image ids.

Values match what was typed as a prefix (case-insensitively; an image URI also by its id). At most 100
are returned (the spec's limit); ``total`` is the number of matches and ``hasMore`` says whether there are
more than were returned. "Recent" is the caller's newest :data:`RECENT_TASKS` tasks: with per-user
tokens only the caller's own (the store is asked by owner), so nobody completes another user's ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.types import Completion, CompletionArgument, CompletionContext, PromptReference, ResourceTemplateReference

from runapi_mcp.server.history import IMAGE_TEMPLATE, TASK_TEMPLATE
from runapi_mcp.server.owners import owned_page
from runapi_mcp.server.prompts import ImagePrompts
from runapi_mcp.tasks import IMAGE_URI_PREFIX, TaskRecord, TaskStore

MAX_VALUES = 100  # the spec's cap on one answer
RECENT_TASKS = 500  # how far back ids are offered (each keystroke reads this many records at most)
_PAGE = 100


@dataclass(frozen=True)
class Recent:
    """The caller's recent work, newest first."""

    task_ids: list[str]  # every task
    images: list[tuple[str, str]]  # (image id, task id) of pictures in the library
    finished: list[str]  # completed tasks with a picture: what an image argument takes as a task id


def completion(values: Iterable[str], typed: str, *, by_id: Mapping[str, str] | None = None) -> Completion:
    """The values that start with ``typed`` (or whose id in ``by_id`` does), deduplicated, capped."""
    prefix = typed.lower()
    ids = by_id or {}
    matches = [
        v for v in dict.fromkeys(values) if v.lower().startswith(prefix) or ids.get(v, "").lower().startswith(prefix)
    ]
    return Completion(values=matches[:MAX_VALUES], total=len(matches), has_more=len(matches) > MAX_VALUES)


class Completions:
    """The completion handler over the prompts (which models, values) and the task store (recent ids)."""

    def __init__(self, prompts: ImagePrompts, store: TaskStore, *, recent_tasks: int = RECENT_TASKS) -> None:
        self.prompts = prompts
        self.store = store
        self.recent_tasks = recent_tasks

    def register(self, server: MCPServer[Any]) -> None:
        server.completion()(self.complete)  # type: ignore[no-untyped-call]  # the SDK leaves it unannotated

    async def complete(
        self,
        ref: PromptReference | ResourceTemplateReference,
        argument: CompletionArgument,
        context: CompletionContext | None,
    ) -> Completion:
        arguments = dict(context.arguments or {}) if context is not None else {}
        if isinstance(ref, PromptReference):
            return await self.for_prompt(ref.name, argument.name, argument.value, arguments)
        return await self.for_template(ref.uri, argument.name, argument.value)

    async def for_prompt(self, prompt: str, name: str, typed: str, arguments: Mapping[str, str]) -> Completion:
        kind = ImagePrompts.KINDS.get(prompt, {}).get(name)
        if kind == "image":
            recent = await self.recent()
            uris = [IMAGE_URI_PREFIX + image_id for image_id, _ in recent.images]
            by_id = {IMAGE_URI_PREFIX + image_id: image_id for image_id, _ in recent.images}
            return completion(_newest_first(recent, uris), typed, by_id=by_id)
        if kind == "choice":
            return completion(ImagePrompts.CHOICES.get(prompt, {}).get(name, ()), typed)
        target = self.prompts.target(prompt, arguments)
        if target is None or kind not in ("model", "aspect_ratio", "output_resolution"):
            return completion((), typed)
        if kind == "model":
            return completion(self.prompts.models_for(target), typed)
        model = arguments.get("model", "").strip() or None
        return completion(self.prompts.field_values(target, model, name), typed)

    async def for_template(self, uri: str, name: str, typed: str) -> Completion:
        if uri == TASK_TEMPLATE and name == "task_id":
            return completion((await self.recent()).task_ids, typed)
        if uri == IMAGE_TEMPLATE and name == "image_id":
            return completion([image_id for image_id, _ in (await self.recent()).images], typed)
        return completion((), typed)

    async def recent(self) -> Recent:
        """The current caller's newest tasks (the store is asked for this owner only)."""
        records: list[TaskRecord] = []
        cursor: str | None = None
        while len(records) < self.recent_tasks:
            page = await owned_page(self.store, limit=min(_PAGE, self.recent_tasks - len(records)), cursor=cursor)
            records += page.records
            cursor = page.next_cursor
            if cursor is None:
                break
        images = [(image.id, r.task_id) for r in records for image in r.images if image.path]
        finished = [r.task_id for r in records if r.status == "completed" and any(i.path for i in r.images)]
        return Recent(task_ids=[r.task_id for r in records], images=images, finished=finished)


def _newest_first(recent: Recent, uris: list[str]) -> list[str]:
    """Each finished task's pictures, then its id, task by task: what an image argument takes."""
    by_task: dict[str, list[str]] = {}
    for uri, (_, task_id) in zip(uris, recent.images, strict=True):
        by_task.setdefault(task_id, []).append(uri)
    finished = set(recent.finished)
    out: list[str] = []
    for task_id in recent.task_ids:
        out += by_task.get(task_id, [])
        if task_id in finished:
            out.append(task_id)
    return out
