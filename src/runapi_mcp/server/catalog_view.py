"""What list_models and the runapi://models resources answer: a small index, or the full fields on request.

The whole catalog with every field is about 17k tokens, near what a client takes from one tool call
(Claude Code: 25k) and paid for in every conversation that merely asks which models exist. So the
answer without a filter is an index, one line per model, kept under ``INDEX_BUDGET_BYTES`` (text and
structured content together, as JSON: tests/test_tool_surface.py measures it); the fields of a model
or an action come when asked for by name.
"""

from __future__ import annotations

from typing import Any

from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel, Field

from runapi_mcp.catalog import ALIASES, Catalog
from runapi_mcp.tasks import Availability
from runapi_mcp.wording import count

INDEX_BUDGET_BYTES = 8_000  # text and structured content together, as JSON (surface.result_bytes)
MODELS_URI = "runapi://models"

_INDEX_HEAD = (
    "{count} RunAPI image models. Each line: model: its actions; the tools that take it "
    "(generate = generate_image, edit = edit_image, upscale = upscale_image).\n"
    "Fields (types, allowed values, limits, defaults): list_models(model=...) or list_models(action=...).\n"
    "Aliases: {aliases}."
)
# How a model's fields are reached from a tool call; said once above the tables, not once per field.
_DETAILS_HEAD = (
    "prompt and the image field come from the tool's prompt and images (upscale_image: image, factor); "
    "aspect_ratio and output_resolution may be arguments; any other field goes in params={...}."
)


class ModelInfo(BaseModel):
    """One model on one action, with every field it takes."""

    model: str
    family: str
    action: str
    route: str
    tool: str = Field(description="The tool that runs this model on this action")
    image_field: str | None
    max_outputs: int | None = None
    fields: dict[str, dict[str, str]] = Field(
        description="Each field: spec (type, allowed values, limits, default, required) and description"
    )
    rules: list[str] = Field(default_factory=list, description="RunAPI's rules across fields, in words")
    availability: str | None = Field(None, description="RunAPI's catalog_status where it is not active")


class ModelList(BaseModel):
    """list_models' answer: the index, and the field tables when a model or an action was named."""

    models: dict[str, str] = Field(description="Each model: its actions; the tools that take it")
    aliases: dict[str, str] = Field(description="Other names accepted for a model")
    details: list[ModelInfo] | None = Field(
        None, description="With model= or action=: each matching model's fields, per action"
    )
    unavailable: dict[str, str] = Field(
        default_factory=dict, description="Models RunAPI has taken out for now (maintenance, disabled): not callable"
    )
    upstream_only: list[str] = Field(
        default_factory=list, description="Models RunAPI lists that this version cannot call yet (no contract)"
    )


def aliases() -> dict[str, str]:
    return {alias: f"{slug} ({endpoint})" for alias, (slug, endpoint) in ALIASES.items()}


def model_index(catalog: Catalog, availability: Availability | None = None) -> ModelList:
    return _with_availability(ModelList(models=catalog.summaries(), aliases=aliases()), availability)


def model_details(
    catalog: Catalog,
    *,
    model: str | None = None,
    action: str | None = None,
    availability: Availability | None = None,
) -> ModelList:
    """The fields of ``model`` (a slug or an alias) and/or of ``action``'s models; a CatalogError naming the
    argument (and, for an unknown model, its close matches) when nothing matches."""
    details = [ModelInfo.model_validate(d) for d in catalog.describe(action, model=model)]
    if availability is not None:
        routes = {(a.endpoint, slug): (a, slug) for a in catalog.actions for slug in a.models}
        for info in details:
            status = availability.status(*routes[(info.action, info.model)])
            if status is not None and status != "active":
                info.availability = status
    listing = ModelList(
        models=catalog.summaries(d.model for d in details),
        aliases={a: s for a, s in aliases().items() if ALIASES[a][0] in {d.model for d in details}},
        details=details,
    )
    return _with_availability(listing, availability, only={d.model for d in details})


def _with_availability(
    listing: ModelList, availability: Availability | None, only: set[str] | None = None
) -> ModelList:
    """The listing with RunAPI's marks: models it has taken out, and (in the index) models it lists that this
    version does not know."""
    if availability is None:
        return listing
    listing.unavailable = {m: why for m, why in availability.unavailable().items() if only is None or m in only}
    if only is None:
        listing.upstream_only = sorted(
            {f"{u.model or u.service} ({u.action})" for u in availability.upstream_only()}
        )
    return listing


def index_text(listing: ModelList) -> str:
    shown = "; ".join(f"{alias} = {means}" for alias, means in listing.aliases.items()) or "none"
    head = _INDEX_HEAD.format(count=len(listing.models), aliases=shown)
    lines = [head]
    for slug, summary in listing.models.items():
        mark = f"; NOT AVAILABLE NOW (RunAPI: {listing.unavailable[slug]})" if slug in listing.unavailable else ""
        lines.append(f"{slug}: {summary}{mark}")
    if listing.upstream_only:
        lines.append(
            "Listed by RunAPI, not callable with this version yet (update runapi-mcp): "
            + ", ".join(listing.upstream_only)
        )
    return "\n".join(lines)


def details_text(listing: ModelList) -> str:
    blocks = [_DETAILS_HEAD]
    for info in listing.details or []:
        # The route stays in the structured content: the tool calls it, the model never needs to.
        about = [f"call {info.tool}"]
        if info.image_field:
            about.append(f"images go in {info.image_field}")
        if info.max_outputs:
            most = info.max_outputs
            about.append("1 image per task" if most == 1 else f"up to {count(most, 'image')} per task")
        if info.availability:
            about.append(f"NOT AVAILABLE NOW: RunAPI marks it {info.availability}")
        lines = [f"\n{info.model}, {info.action} ({info.family}): {'; '.join(about)}"]
        for name, field in info.fields.items():
            doc = f". {field['description']}" if field.get("description") else ""
            lines.append(f"- {name}: {field['spec']}{doc}")
        lines.extend(f"- rule: {rule}" for rule in info.rules)
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def listing_result(listing: ModelList) -> CallToolResult:
    """The tool result: readable text for the model, the same facts as structured content."""
    text = details_text(listing) if listing.details is not None else index_text(listing)
    # ``details`` only when asked for; inside it a null (``image_field``) is a fact and stays.
    data: dict[str, Any] = listing.model_dump(mode="json", exclude={"details"} if listing.details is None else None)
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)
