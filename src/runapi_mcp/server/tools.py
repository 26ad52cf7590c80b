"""The image tools: methods of one small class over the task manager, registered on the server.

Each tool takes its arguments as the client sent them (the SDK validates them against the
signature, strictly: see ``arguments``), turns a generate, edit or upscale call into one ``TaskRequest``,
and leaves errors to the server's one place that words them (``server.RunAPIMCPServer``): a
method raises the domain's own exception (CatalogError, ImageReferenceError, UnknownTaskError, SpendLimitError,
RunAPIError) and never builds an error result itself. A new tool is a new method and a line in
``tools()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from mcp.types import CallToolResult, InputRequiredResult, ToolAnnotations
from pydantic import BaseModel, Field

from runapi_mcp.catalog import (
    DEFAULT_MODEL,
    DEFAULT_UPSCALE_MODEL,
    SOFT_DEFAULTS,
    Catalog,
    CatalogError,
    RequestKind,
    ValidatedRequest,
)
from runapi_mcp.client import NO_API_KEY_MESSAGE
from runapi_mcp.errors import UserError
from runapi_mcp.server.arguments import (
    READ_LOCAL,
    ActionFilterArg,
    AspectRatioArg,
    FactorArg,
    ImageArg,
    ImagesArg,
    ModelArg,
    ModelNameArg,
    ParamsArg,
    PromptArg,
    ResolutionArg,
    SaveAsArg,
    TaskIdArg,
    TimeoutArg,
    WaitArg,
    strict_tool,
)
from runapi_mcp.server.catalog_view import ModelList, listing_result, model_details, model_index
from runapi_mcp.server.confirm import SpendConfirmation
from runapi_mcp.server.cost import SpendGuard
from runapi_mcp.server.progress import ProgressReporter
from runapi_mcp.server.results import PREVIEW_BUDGET_BYTES, PREVIEW_MAX_EDGE, TaskResult, tool_result
from runapi_mcp.tasks import Availability, ImageResolver, TaskManager, TaskRecord, make_previews
from runapi_mcp.tasks.saving import check_save_as, expected_outputs, requested_path

TICK_S = 1.0  # progress at least this often while waiting (the spec asks for nothing; users for <= 2 s)

_WRITE = ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=False, openWorldHint=True)
_READ_REMOTE = ToolAnnotations(readOnlyHint=True, idempotentHint=True, openWorldHint=True)

# upscale_image's default factor: sent where the model takes a factor, dropped for one that has none.
_DEFAULT_FACTOR = 2


class MissingKeyError(UserError, ValueError):
    """The server has no RunAPI key: nothing can be created or read upstream."""

    def __init__(self) -> None:
        super().__init__(NO_API_KEY_MESSAGE)


@dataclass
class ServerDeps:
    """What the MCP layer needs from below; built by ``runapi_mcp.app``."""

    manager: TaskManager
    resolver: ImageResolver
    catalog: Catalog
    wait_s: float
    has_key: bool
    max_spend_cents: int | None = None  # RUNAPI_MCP_MAX_SPEND_CENTS: per UTC day, None for no cap
    user_spend_cents: Mapping[str, int] = field(default_factory=dict)  # per-user caps (per-user tokens)
    confirm_above_cents: int | None = None  # RUNAPI_MCP_CONFIRM_ABOVE_CENTS: ask the user above it; None: never
    availability: Availability | None = None  # RunAPI's model statuses; None: every model taken as callable
    resource_links: bool = True  # RUNAPI_MCP_RESOURCE_LINKS: a resource_link block per saved image in results


@dataclass(frozen=True)
class TaskRequest:
    """One generate, edit or upscale call, as one object from the tool's arguments to the upstream request."""

    kind: RequestKind
    prompt: str | None
    model: str
    options: dict[str, Any]  # the caller's explicit choices (an error if the model lacks them)
    soft_options: dict[str, Any]  # the tool's defaults, sent only where the model takes them
    params: dict[str, Any] | None
    images: list[str] = field(default_factory=list)
    wait: bool = True
    timeout_s: float | None = None
    images_argument: str = "images"  # the tool argument the images came in, for errors about them
    save_as: str | None = None  # where a copy of the pictures goes (tasks.saving), as the caller gave it

    @classmethod
    def from_arguments(
        cls,
        kind: RequestKind,
        *,
        prompt: str,
        model: str,
        aspect_ratio: str,
        output_resolution: str,
        params: dict[str, Any] | None,
        images: list[str] | None = None,
        wait: bool,
        timeout_s: float | None,
        save_as: str | None = None,
    ) -> TaskRequest:
        options: dict[str, Any] = {}
        soft: dict[str, Any] = {}
        for name, value in (("aspect_ratio", aspect_ratio), ("output_resolution", output_resolution)):
            (soft if value == SOFT_DEFAULTS[name] else options)[name] = value
        return cls(kind, prompt, model, options, soft, params, list(images or []), wait, timeout_s, save_as=save_as)


class BalanceResult(BaseModel):
    balance_cents: int | None
    paid_balance_cents: int | None = None
    bonus_balance_cents: int | None = None
    spent_cents_today: int | None = None
    spent_cents_total: int | None = None
    spent_cents_today_here: int = Field(
        description="What this server's tasks of today (UTC) cost: RunAPI's reported cost, else the quote"
    )
    max_spend_cents: int | None = Field(
        None, description="The daily spend cap (RUNAPI_MCP_MAX_SPEND_CENTS), when one is set"
    )


class ImageTools:
    """generate_image, edit_image, upscale_image, get_task, list_models and check_balance over one task manager."""

    def __init__(self, deps: ServerDeps) -> None:
        self.deps = deps
        self.manager = deps.manager
        self.catalog = deps.catalog
        self.spend = SpendGuard(
            deps.manager.client,
            deps.manager.store,
            deps.max_spend_cents,
            user_caps=deps.user_spend_cents,
            clock=deps.manager.clock,
        )
        self.confirm = SpendConfirmation(deps.confirm_above_cents)

    def tools(self) -> list[Tool]:
        """The tools to register, each with strict arguments."""
        return [
            strict_tool(self.generate_image, name="generate_image", title="Generate an image", annotations=_WRITE),
            strict_tool(self.edit_image, name="edit_image", title="Edit an image", annotations=_WRITE),
            strict_tool(self.upscale_image, name="upscale_image", title="Upscale an image", annotations=_WRITE),
            strict_tool(self.get_task, name="get_task", title="Get a task", annotations=_READ_REMOTE),
            strict_tool(self.list_models, name="list_models", title="List image models", annotations=READ_LOCAL),
            strict_tool(
                self.check_balance, name="check_balance", title="Check RunAPI balance", annotations=_READ_REMOTE
            ),
        ]

    # -- the tools -------------------------------------------------------------------------
    async def generate_image(
        self,
        prompt: Annotated[PromptArg, Field(description="Subject, style, any text to render")],
        ctx: Context[Any, Any],
        model: ModelArg = DEFAULT_MODEL,
        aspect_ratio: AspectRatioArg = SOFT_DEFAULTS["aspect_ratio"],
        output_resolution: ResolutionArg = SOFT_DEFAULTS["output_resolution"],
        params: ParamsArg = None,
        wait: WaitArg = True,
        timeout_s: TimeoutArg = None,
        save_as: SaveAsArg = None,
    ) -> Annotated[CallToolResult, TaskResult] | InputRequiredResult:
        """Make an image from a prompt: a preview, its runapi://images/ URI and file path. Waits ~10-30 s;
        if still running, call get_task(task_id, wait=true)."""
        request = TaskRequest.from_arguments(
            "generate", prompt=prompt, model=model, aspect_ratio=aspect_ratio,
            output_resolution=output_resolution, params=params, wait=wait, timeout_s=timeout_s, save_as=save_as,
        )  # fmt: skip
        return await self.run(ctx, request)

    async def edit_image(
        self,
        prompt: Annotated[PromptArg, Field(description="The change, e.g. 'make the sky purple'")],
        images: ImagesArg,
        ctx: Context[Any, Any],
        model: ModelArg = DEFAULT_MODEL,
        aspect_ratio: AspectRatioArg = SOFT_DEFAULTS["aspect_ratio"],
        output_resolution: ResolutionArg = SOFT_DEFAULTS["output_resolution"],
        params: ParamsArg = None,
        wait: WaitArg = True,
        timeout_s: TimeoutArg = None,
        save_as: SaveAsArg = None,
    ) -> Annotated[CallToolResult, TaskResult] | InputRequiredResult:
        """Edit images by instruction (other models: remix, reframe, remove background). Returns like
        generate_image."""
        request = TaskRequest.from_arguments(
            "edit", prompt=prompt, model=model, aspect_ratio=aspect_ratio, output_resolution=output_resolution,
            params=params, images=images, wait=wait, timeout_s=timeout_s, save_as=save_as,
        )  # fmt: skip
        return await self.run(ctx, request)

    async def upscale_image(
        self,
        image: ImageArg,
        ctx: Context[Any, Any],
        factor: FactorArg = _DEFAULT_FACTOR,
        model: ModelArg = DEFAULT_UPSCALE_MODEL,
        wait: WaitArg = True,
        timeout_s: TimeoutArg = None,
        save_as: SaveAsArg = None,
    ) -> Annotated[CallToolResult, TaskResult] | InputRequiredResult:
        """Enlarge an image (topaz-upscale-image: factor 1, 2 or 4). Returns like generate_image."""
        spec = self.catalog.resolve(model, "upscale")[1]
        options: dict[str, Any] = {}
        target = spec.upscale_field
        if target is not None:
            # Checked here as well as in validate(), so the error names the argument the caller gave.
            try:
                target.check(factor, model=spec.slug)
            except CatalogError as exc:
                allowed = f"must be one of {', '.join(map(str, exc.allowed))}" if exc.allowed else f"is refused: {exc}"
                raise CatalogError(
                    f"'factor' {allowed} for model '{spec.slug}' (its field '{target.name}')",
                    field="factor",
                    allowed=exc.allowed,
                ) from None
            options[target.name] = factor
        elif factor != _DEFAULT_FACTOR:
            raise CatalogError(
                f"'factor' cannot be chosen for model '{spec.slug}': it takes no upscale factor "
                f"(leave factor at {_DEFAULT_FACTOR}, or use {DEFAULT_UPSCALE_MODEL})",
                field="factor",
            )
        request = TaskRequest(
            "upscale", None, model, options, {}, None, [image], wait, timeout_s, images_argument="image",
            save_as=save_as,
        )  # fmt: skip
        return await self.run(ctx, request)

    async def get_task(
        self,
        task_id: TaskIdArg,
        ctx: Context[Any, Any],
        wait: Annotated[bool, Field(description="Wait until it finishes")] = False,
        timeout_s: TimeoutArg = None,
    ) -> Annotated[CallToolResult, TaskResult]:
        """A task's status, and its images once completed."""
        record = await self.manager.get(task_id)
        if wait and not record.terminal:
            return await self.wait_for(ctx, record, self._timeout(timeout_s))
        return await self.result(record)

    async def list_models(
        self, model: ModelNameArg = None, action: ActionFilterArg = None
    ) -> Annotated[CallToolResult, ModelList]:
        """All models, one line each. With model= or action=: their fields (types, allowed values, limits)."""
        # The index alone by default: every field of every model is ~17k tokens (catalog_view says why). A blank
        # filter is no filter (arguments.no_filter): the argument types hand it over as None.
        availability = self.deps.availability
        if availability is not None:
            await availability.refresh()
        if model is None and action is None:
            return listing_result(model_index(self.catalog, availability))
        return listing_result(model_details(self.catalog, model=model, action=action, availability=availability))

    async def check_balance(self) -> BalanceResult:
        """Account balance (cents), spend here today (UTC) and the daily cap."""
        if not self.deps.has_key:
            raise MissingKeyError
        balance = await self.manager.client.get_balance()
        # Ours last: an upstream answer naming these fields must not stand in for this server's own count.
        here = {"spent_cents_today_here": await self.spend.spent_today(), "max_spend_cents": self.spend.cap_cents}
        return BalanceResult.model_validate({**balance.model_dump(), **here})

    # -- the shared path of generate, edit and upscale --------------------------------------
    async def run(self, ctx: Context[Any, Any], request: TaskRequest) -> CallToolResult | InputRequiredResult:
        """Validate everything, quote, then upload, create, and wait as asked.

        Nothing is sent for a bad call (a ``save_as`` that cannot take the copy included), and nothing is
        uploaded or created for one the spend cap refuses or the user does not confirm
        (``RUNAPI_MCP_CONFIRM_ABOVE_CENTS``).
        """
        timeout = self._timeout(request.timeout_s)
        validated = self.catalog.validate(
            request.kind,
            request.model,
            prompt=request.prompt,
            image_count=len(request.images),
            options=request.options,
            soft_options=request.soft_options,
            params=request.params,
        )
        save_as = await self._check_save_as(request.save_as, validated)
        if not self.deps.has_key:
            raise MissingKeyError
        if self.deps.availability is not None:  # a model RunAPI has taken out: refused before any quote
            await self.deps.availability.check(validated.action, validated.model.slug)
        resolver = self.deps.resolver
        plan = await resolver.plan(request.images, argument=request.images_argument) if request.images else None
        # The quote comes before any upload. It prices the very body to be created where the images' URLs
        # exist already (URLs, earlier outputs, bytes uploaded within the hour); an image still to be
        # uploaded is left out rather than faked: what a task costs does not depend on where its source
        # image lives.
        known = resolver.known_urls(plan) if plan is not None else []
        priced = dict(validated.with_images(known).body) if known is not None else dict(validated.body)
        quote = await self.spend.quote(validated.action.service, validated.action.endpoint, priced)
        async with self.spend.admit(quote) as hold:
            # Above RUNAPI_MCP_CONFIRM_ABOVE_CENTS the user says yes first. Inside the cap's block: a task the
            # cap refuses is never asked about, and the budget the user is asked to spend stays reserved.
            question = await self.confirm.check(ctx, validated, quote.cents)
            if question is not None:
                return question  # 2026 era: the client asks and calls again with the answer
            urls = await resolver.upload(plan) if plan is not None else []
            record = await self.manager.submit(
                validated.with_images(urls),
                prompt=request.prompt,
                price_cents=quote.cents,
                save_as=save_as,
                spend_hold=hold,
            )
        if not request.wait or record.terminal:
            return await self.result(record)
        return await self.wait_for(ctx, record, timeout)

    async def _check_save_as(self, value: str | None, validated: ValidatedRequest) -> str | None:
        """The absolute path of ``save_as``, refused (naming it) where no copy could be written: checked on the
        disk in a worker thread, before anything is quoted, uploaded or created."""
        if value is None:
            return None
        dirs = self.manager.save_dirs
        path = requested_path(value, dirs)
        count_field = validated.model.fields.get("output_count")
        outputs = expected_outputs(
            validated.body, validated.model.max_outputs, count_field.default if count_field else None
        )
        await anyio.to_thread.run_sync(check_save_as, path, outputs, dirs)
        return path

    async def wait_for(self, ctx: Context[Any, Any], record: TaskRecord, timeout_s: float) -> CallToolResult:
        """Wait for a task with progress notifications; a result either way (done, failed, still running)."""
        started = self.manager.clock.monotonic()
        progress = ProgressReporter(ctx, record.task_id)

        async def report(current: TaskRecord) -> None:
            note = ""
            if current.progress is not None and not current.terminal:
                note = f" ({current.progress * 100:.0f}% by the model)"
            message = f"{current.status}{note}, {self.manager.clock.monotonic() - started:.0f}s elapsed"
            await progress.report(self.manager.estimated_progress(current), message, done=current.terminal)

        await report(record)
        final = await self.manager.wait(record.task_id, timeout_s, on_tick=report, tick_s=TICK_S)
        if final.terminal:
            await report(final)
        return await self.result(final, waited_out=not final.terminal)

    async def result(self, record: TaskRecord, *, waited_out: bool = False) -> CallToolResult:
        previews = await make_previews(self.manager.images, record, PREVIEW_MAX_EDGE, PREVIEW_BUDGET_BYTES)
        progress = None if record.terminal else self.manager.estimated_progress(record)
        return tool_result(
            record, previews, waited_out=waited_out, progress=progress, resource_links=self.deps.resource_links
        )

    def _timeout(self, timeout_s: float | None) -> float:
        return self.deps.wait_s if timeout_s is None else float(timeout_s)
