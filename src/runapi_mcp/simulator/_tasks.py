"""Request validation and task planning: what a create request asks for, and what it will produce."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from runapi_mcp.catalog import ALIASES, ActionSpec, CatalogError, ModelSpec

OutputRole = Literal["generate", "edit", "upscale", "cutout", "layer_background", "segment"]
SourceKind = Literal["file", "image", "remote", "task"]

MAX_OUTPUTS = 10
UPSCALE_CAP = 3840 * 2
REMOTE_SOURCE_SIZE = (1024, 1024)
PRICE_BY_LONG_SIDE = ((1024, 3), (2048, 6), (10**9, 12))
PRICE_DEFAULT = 4
_RES_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*k\s*$", re.IGNORECASE)


class ApiError(Exception):
    """An HTTP error answer: ``{"error": {"message", "code", "field"?}}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


def validation_error(message: str, field: str | None) -> ApiError:
    return ApiError(422, "validation_error", message, field=field)


# -- validation ----------------------------------------------------------------------------------
def validate_body(action: ActionSpec, body: Mapping[str, Any], *, image_optional: bool = False) -> ModelSpec:
    """The model spec a create body names, after checking every field against the catalog.

    ``image_optional``: the model's input image may be left out (a price quote: what a task costs does
    not depend on where its source image lives, and a client asks before it uploads anything).
    """
    allowed_models = sorted(action.models)
    raw_model = body.get("model")
    if raw_model is not None:
        if not isinstance(raw_model, str):
            raise validation_error(f"'model' must be a string, got {raw_model!r}", "model")
        name = raw_model.strip().lower()
        alias = ALIASES.get(name)
        if alias is not None and alias[0] in action.models:
            name = alias[0]
        spec = action.models.get(name)
        if spec is None:
            raise validation_error(
                f"'model' {raw_model!r} is not available on POST {action.path}; "
                f"allowed: {', '.join(allowed_models)}",
                "model",
            )
    elif len(action.models) == 1:
        spec = next(iter(action.models.values()))
    else:
        raise validation_error(
            f"'model' is required on POST {action.path}; allowed: {', '.join(allowed_models)}", "model"
        )

    for key, value in body.items():
        if key == "model":
            continue  # checked above (models that are not sent may still be named)
        fspec = spec.fields.get(key)
        if fspec is None:
            allowed = ", ".join(sorted(n for n in spec.fields if n != "model")) or "none"
            raise validation_error(
                f"'{key}' is not a field of model '{spec.slug}'; allowed fields: {allowed}", key
            )
        try:
            fspec.check(value, model=spec.slug)
        except CatalogError as exc:
            raise validation_error(str(exc), exc.field or key) from None
    image_field = spec.image_field.name if image_optional and spec.image_field is not None else None
    for name, fspec in spec.fields.items():
        if fspec.required and name not in body and name != image_field:
            raise validation_error(f"'{name}' is required for model '{spec.slug}' ({fspec.describe()})", name)
    # The contract's rules across fields (``ModelSpec.check_rules``, where the catalog has it).
    check_rules: Callable[[Mapping[str, Any]], None] | None = getattr(spec, "check_rules", None)
    if check_rules is not None:
        try:
            check_rules(body)
        except CatalogError as exc:
            raise validation_error(str(exc), exc.field) from None
    return spec


# -- planning ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutputSpec:
    index: int
    width: int
    height: int
    fmt: Literal["png", "jpeg"]
    role: OutputRole

    @property
    def ext(self) -> str:
        return "jpg" if self.fmt == "jpeg" else "png"

    @property
    def media_type(self) -> str:
        return "image/jpeg" if self.fmt == "jpeg" else "image/png"

    @property
    def filename(self) -> str:
        return f"{self.index}.{self.ext}"


@dataclass(frozen=True)
class SourceRef:
    """Where a task's input picture comes from: an upload, another task's output, or a remote URL."""

    kind: SourceKind
    name: str
    index: int = 0
    size: tuple[int, int] = REMOTE_SOURCE_SIZE


@dataclass
class TaskPlan:
    outputs: list[OutputSpec]
    source: SourceRef | None
    prompt: str
    long_side: int
    duration_key: str
    price_cents: int
    fail_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# (url) -> ("file", name, 0) | ("image", task_id, index) | None when the URL is not this simulator's.
LocalResolver = Callable[[str], tuple[Literal["file", "image"], str, int] | None]
# (ref) -> (width, height), or an error text when the source cannot be had.
SourceSizer = Callable[[SourceRef], tuple[int, int] | str]


def long_side_for(value: Any) -> int | None:
    """``1k`` -> 1024, ``2k`` -> 2048, ``4k`` -> 3840 (``1.5K`` -> 1536); None when not a resolution."""
    if not isinstance(value, str):
        return None
    match = _RES_RE.match(value)
    if match is None:
        return None
    k = float(match.group(1))
    return 3840 if k >= 4 else max(256, round(k * 1024))


def parse_ratio(value: Any) -> tuple[int, int] | None:
    if not isinstance(value, str) or ":" not in value:
        return None
    left, _, right = value.partition(":")
    try:
        w, h = int(left), int(right)
    except ValueError:
        return None
    return (w, h) if w > 0 and h > 0 else None


def dims(long_side: int, ratio_w: float, ratio_h: float) -> tuple[int, int]:
    if ratio_w >= ratio_h:
        return long_side, max(1, round(long_side * ratio_h / ratio_w))
    return max(1, round(long_side * ratio_w / ratio_h)), long_side


def cap(size: tuple[int, int], long_side: int) -> tuple[int, int]:
    w, h = size
    if max(w, h) <= long_side:
        return w, h
    return dims(long_side, w, h)


def duration_key(long_side: int) -> str:
    return "1k" if long_side <= 1024 else "2k" if long_side <= 2048 else "4k"


def price_per_image(spec: ModelSpec, long_side: int) -> int:
    if "output_resolution" not in spec.fields and "size" not in spec.fields:
        return PRICE_DEFAULT
    for limit, cents in PRICE_BY_LONG_SIDE:
        if long_side <= limit:
            return cents
    return PRICE_DEFAULT  # pragma: no cover


def _first_url(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[0], str):
        return value[0]
    return None


def plan_task(
    action: ActionSpec,
    spec: ModelSpec,
    body: Mapping[str, Any],
    *,
    resolve_local: LocalResolver,
    size_of: SourceSizer,
) -> TaskPlan:
    endpoint = action.endpoint
    prompt = body.get("prompt") if isinstance(body.get("prompt"), str) else ""
    assert isinstance(prompt, str)

    # Resolution: the body's, else the field's default, else 1k.
    res_value = body.get("output_resolution", body.get("size"))
    if res_value is None:
        for name in ("output_resolution", "size"):
            if name in spec.fields and spec.fields[name].default is not None:
                res_value = spec.fields[name].default
    long_side = long_side_for(res_value) or 1024

    # The input picture, if any.
    source: SourceRef | None = None
    fail_reason: str | None = None
    image_field = spec.image_field
    url: str | None = None
    # Reference pictures of a text-to-image request guide it; they are not its source.
    if image_field is not None and image_field.name in body:
        is_reference = image_field.name == "reference_image_urls" and endpoint == "text_to_image"
        url = None if is_reference else _first_url(body[image_field.name])
    if url is not None:
        local = resolve_local(url)
        source = SourceRef("remote", url) if local is None else SourceRef(local[0], local[1], local[2])
    elif isinstance(body.get("source_task_id"), str):
        source = SourceRef("task", body["source_task_id"])
    if source is not None:
        sized = size_of(source)
        if isinstance(sized, str):
            fail_reason = sized
        else:
            source = SourceRef(source.kind, source.name, source.index, sized)

    # What comes out.
    fmt: Literal["png", "jpeg"] = "jpeg" if body.get("output_format") in ("jpeg", "jpg") else "png"
    count = body.get("output_count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        count = 1
        if spec.slug.startswith("midjourney") and body.get("include_split_images") is True:
            count = 5
    count = min(count, MAX_OUTPUTS)
    ratio = parse_ratio(body.get("aspect_ratio"))
    if ratio is None and "aspect_ratio" not in body and "aspect_ratio" in spec.fields:
        ratio = parse_ratio(spec.fields["aspect_ratio"].default)
    src_size = source.size if source is not None else None

    outputs: list[OutputSpec]
    if endpoint == "upscale_image":
        factor = body.get("upscale_factor", 2)
        factor = factor if isinstance(factor, int | float) and factor > 0 else 2
        base = src_size or REMOTE_SOURCE_SIZE
        size = cap((max(1, round(base[0] * factor)), max(1, round(base[1] * factor))), UPSCALE_CAP)
        outputs = [OutputSpec(0, size[0], size[1], fmt, "upscale")]
        prompt = prompt or f"upscaled x{factor:g}"
        long_side = max(size)
    elif endpoint == "remove_background":
        size = cap(src_size or REMOTE_SOURCE_SIZE, 3840)
        outputs = [OutputSpec(0, size[0], size[1], "png", "cutout")]
        long_side = max(size)
    elif endpoint == "segment_map":
        # One map of the source's segments (the catalog says one image per task).
        size = cap(src_size or REMOTE_SOURCE_SIZE, 2048)
        outputs = [OutputSpec(0, size[0], size[1], "png", "segment")]
        long_side = max(size)
    elif endpoint == "decompose_layers":
        if res_value in (None, "auto"):
            size = cap(src_size or REMOTE_SOURCE_SIZE, 2048)
        else:
            base = src_size or REMOTE_SOURCE_SIZE
            size = dims(long_side, base[0], base[1])
        outputs = [
            OutputSpec(0, size[0], size[1], fmt, "layer_background"),
            OutputSpec(1, size[0], size[1], "png", "cutout"),
        ]
        long_side = max(size)
    else:
        if ratio is not None:
            size = dims(long_side, *ratio)
        elif src_size is not None:
            size = dims(long_side, *src_size)
        else:
            size = dims(long_side, 1, 1)
        role: OutputRole = "edit" if source is not None else "generate"
        outputs = [OutputSpec(i, size[0], size[1], fmt, role) for i in range(count)]

    price = price_per_image(spec, long_side) * len(outputs)
    return TaskPlan(
        outputs=outputs,
        source=source,
        prompt=prompt,
        long_side=long_side,
        duration_key=duration_key(long_side),
        price_cents=price,
        fail_reason=fail_reason,
    )
