from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

RequestKind = Literal["generate", "edit"]
FieldType = Literal["string", "integer", "number", "boolean", "array"]

# Endpoints that work on an existing image, in the order `edit_image` picks them for a model.
EDIT_ENDPOINTS = (
    "edit_image",
    "remix_image",
    "upscale_image",
    "reframe_image",
    "remove_background",
    "decompose_layers",
)
# The fields a model takes its input image(s) in, most general first.
IMAGE_FIELDS = ("source_image_urls", "source_image_url", "image_url", "reference_image_urls")
# Names users type from RunAPI's docs page: alias -> (model slug, endpoint).
ALIASES: dict[str, tuple[str, str]] = {
    "gpt-image-2-text-to-image": ("gpt-image-2", "text_to_image"),
    "gpt-image-2-image-to-image": ("gpt-image-2", "edit_image"),
}
_PYTHON_TYPES: dict[str, str] = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
}


class CatalogError(ValueError):
    """A request the catalog refuses. ``field`` names the argument; ``allowed`` what it takes."""

    def __init__(self, message: str, *, field: str | None = None, allowed: Iterable[Any] | None = None) -> None:
        self.field = field
        self.allowed = list(allowed) if allowed is not None else None
        super().__init__(message)


class ItemSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    type: FieldType = "string"
    min: float | None = None
    max: float | None = None


class FieldSpec(BaseModel):
    """One field of a model's request body, as RunAPI's contract describes it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    type: FieldType
    required: bool = False
    enum: tuple[Any, ...] | None = None
    default: Any = None
    min: float | None = None
    max: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    min_items: int | None = None
    max_items: int | None = None
    pattern: str | None = None
    items: ItemSpec | None = None
    doc: str = ""

    @property
    def is_url(self) -> bool:
        return self.name.endswith("_url") or self.name.endswith("_urls")

    def describe(self) -> str:
        """A one-line human description: type, allowed values, limits."""
        parts: list[str] = [self.type]
        if self.enum is not None:
            parts.append("one of " + ", ".join(map(str, self.enum)))
        for label, value in (
            ("min", self.min),
            ("max", self.max),
            ("min length", self.min_length),
            ("max length", self.max_length),
            ("min items", self.min_items),
            ("max items", self.max_items),
        ):
            if value is not None:
                parts.append(f"{label} {_num(value)}")
        if self.default is not None:
            parts.append(f"default {self.default}")
        if self.required:
            parts.append("required")
        return "; ".join(parts)

    def check(self, value: Any, *, model: str) -> Any:
        """Return ``value`` if this field accepts it, else raise :class:`CatalogError`."""
        where = f"'{self.name}' for model '{model}'"
        if value is None:
            raise CatalogError(f"{where} must not be null ({self.describe()})", field=self.name)
        self._check_type(value, where, self.type)
        if self.enum is not None and value not in self.enum:
            raise CatalogError(
                f"{where} does not allow {value!r}; allowed values: {', '.join(map(str, self.enum))}",
                field=self.name,
                allowed=self.enum,
            )
        if self.type in ("integer", "number"):
            self._check_range(value, where, self.min, self.max)
        if self.type == "string":
            self._check_string(value, where)
        if self.type == "array":
            self._check_array(value, where)
        return value

    def _check_type(self, value: Any, where: str, type_: FieldType) -> None:
        ok = {
            "string": isinstance(value, str),
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "number": isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value),
            "boolean": isinstance(value, bool),
            "array": isinstance(value, list),
        }[type_]
        if not ok:
            raise CatalogError(f"{where} must be {_PYTHON_TYPES[type_]}, got {value!r}", field=self.name)

    def _check_range(self, value: float, where: str, low: float | None, high: float | None) -> None:
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"{_num(low) if low is not None else '-inf'}..{_num(high) if high is not None else 'inf'}"
            raise CatalogError(f"{where} must be within {bounds}, got {value!r}", field=self.name)

    def _check_string(self, value: str, where: str) -> None:
        if self.min_length is not None and len(value.strip()) < self.min_length:
            raise CatalogError(f"{where} needs at least {self.min_length} characters", field=self.name)
        if self.max_length is not None and len(value) > self.max_length:
            raise CatalogError(
                f"{where} is {len(value)} characters; at most {self.max_length} allowed", field=self.name
            )
        if self.pattern is not None and not re.search(self.pattern, value):
            raise CatalogError(f"{where} must match {self.pattern}", field=self.name)
        if self.is_url and not _is_http_url(value):
            raise CatalogError(f"{where} must be an http(s) URL, got {value[:80]!r}", field=self.name)

    def _check_array(self, value: list[Any], where: str) -> None:
        if self.min_items is not None and len(value) < self.min_items:
            raise CatalogError(f"{where} needs at least {self.min_items} item(s), got {len(value)}", field=self.name)
        if self.max_items is not None and len(value) > self.max_items:
            raise CatalogError(f"{where} takes at most {self.max_items} item(s), got {len(value)}", field=self.name)
        item_type = self.items.type if self.items else ("string" if self.is_url else None)
        for i, item in enumerate(value):
            item_where = f"{where} item {i}"
            if item_type is not None:
                self._check_type(item, item_where, item_type)
            if self.items is not None and item_type in ("integer", "number"):
                self._check_range(item, item_where, self.items.min, self.items.max)
            if self.is_url and not (isinstance(item, str) and _is_http_url(item)):
                raise CatalogError(f"{item_where} must be an http(s) URL, got {str(item)[:80]!r}", field=self.name)


@dataclass(frozen=True)
class ModelSpec:
    """One model slug on one action, with the fields it takes (rules already applied)."""

    slug: str
    send_model: bool
    fields: Mapping[str, FieldSpec]

    @property
    def image_field(self) -> FieldSpec | None:
        for name in IMAGE_FIELDS:
            if name in self.fields:
                return self.fields[name]
        return None

    @property
    def takes_prompt(self) -> bool:
        return "prompt" in self.fields


@dataclass(frozen=True)
class ActionSpec:
    """One RunAPI route: a family (service) and an endpoint, with its models."""

    family: str
    title: str
    service: str
    endpoint: str
    models: Mapping[str, ModelSpec]

    @property
    def key(self) -> str:
        """The contract's name for the action, e.g. ``gpt-image-2/text-to-image``."""
        return f"{self.family}/{self.endpoint.replace('_', '-')}"

    @property
    def path(self) -> str:
        return f"/api/v1/{self.service}/{self.endpoint}"


@dataclass(frozen=True)
class PreparedRequest:
    """A request body that passed validation, and where it goes."""

    action: ActionSpec
    model: ModelSpec
    body: dict[str, Any]

    @property
    def path(self) -> str:
        return self.action.path


@dataclass
class Catalog:
    actions: tuple[ActionSpec, ...]
    _by_model: dict[str, list[ActionSpec]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for action in self.actions:
            for slug in action.models:
                self._by_model.setdefault(slug, []).append(action)

    # -- look-ups --------------------------------------------------------------------------
    @property
    def model_names(self) -> list[str]:
        return sorted(self._by_model)

    def find_route(self, service: str, endpoint: str) -> ActionSpec | None:
        for action in self.actions:
            if action.service == service and action.endpoint == endpoint:
                return action
        return None

    def actions_for(self, endpoint_or_key: str | None = None) -> list[ActionSpec]:
        """Actions filtered by endpoint (``edit_image``), key, family or model slug; all when None."""
        if not endpoint_or_key:
            return list(self.actions)
        wanted = endpoint_or_key.strip().lower()
        norm = wanted.replace("-", "_")
        alias = ALIASES.get(wanted)
        hits = [
            a
            for a in self.actions
            if wanted in (a.key, a.family)
            or a.endpoint == norm
            or wanted in a.models
            or (alias is not None and a.endpoint == alias[1] and alias[0] in a.models)
        ]
        if not hits:
            raise CatalogError(
                f"'action' {endpoint_or_key!r} matches nothing; allowed: an endpoint "
                f"({', '.join(sorted({a.endpoint for a in self.actions}))}), a family or a model name",
                field="action",
                allowed=sorted({a.endpoint for a in self.actions}),
            )
        return hits

    def resolve(self, model: str, kind: RequestKind) -> tuple[ActionSpec, ModelSpec]:
        """Which action and model spec a tool call means by ``model``."""
        name = model.strip().lower()
        forced_endpoint: str | None = None
        if name in ALIASES:
            name, forced_endpoint = ALIASES[name]
        candidates = self._by_model.get(name)
        if candidates is None:
            raise CatalogError(
                f"'model' {model!r} is not a RunAPI image model; allowed: "
                f"{', '.join(self.model_names + sorted(ALIASES))} (list_models shows each one's fields)",
                field="model",
                allowed=self.model_names + sorted(ALIASES),
            )
        if forced_endpoint is not None:
            candidates = [a for a in candidates if a.endpoint == forced_endpoint]
        chosen = self._pick(candidates, name, kind)
        if chosen is None:
            other = "edit_image (it works on an existing image)" if kind == "generate" else "generate_image"
            raise CatalogError(
                f"'model' {model!r} cannot be used with {'generate_image' if kind == 'generate' else 'edit_image'}"
                f"; use {other}",
                field="model",
            )
        return chosen, chosen.models[name]

    @staticmethod
    def _pick(candidates: list[ActionSpec], slug: str, kind: RequestKind) -> ActionSpec | None:
        if kind == "generate":
            for action in candidates:
                if action.endpoint == "text_to_image":
                    return action
            # Actions that need no image input (e.g. an upscale by task id) are "generate" too.
            for action in candidates:
                spec = action.models[slug]
                if spec.image_field is None or not spec.image_field.required:
                    return action
            return None
        for endpoint in EDIT_ENDPOINTS:
            for action in candidates:
                if action.endpoint == endpoint and action.models[slug].image_field is not None:
                    return action
        for action in candidates:
            if action.models[slug].image_field is not None:
                return action
        return None

    # -- validation ------------------------------------------------------------------------
    def prepare(
        self,
        kind: RequestKind,
        model: str,
        *,
        prompt: str | None,
        image_urls: list[str] | None = None,
        options: Mapping[str, Any] | None = None,
        soft_options: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> PreparedRequest:
        """Validate a tool call against the catalog and build the upstream request body.

        ``options`` are explicit choices (an error if the model lacks them); ``soft_options``
        are the tool's defaults, sent only where the model accepts that value; ``params`` are
        extra model fields. ``image_urls`` must already be public URLs (uploads are done).
        """
        action, spec = self.resolve(model, kind)
        body: dict[str, Any] = {}
        if spec.send_model:
            body["model"] = spec.slug

        if spec.takes_prompt:
            if prompt is None or not prompt.strip():
                if spec.fields["prompt"].required:
                    raise CatalogError(f"'prompt' is required for model '{spec.slug}'", field="prompt")
            else:
                body["prompt"] = spec.fields["prompt"].check(prompt, model=spec.slug)

        reserved = {"model", "prompt"}
        image_field = spec.image_field
        if image_field is not None:
            reserved.add(image_field.name)
        for key in params or {}:
            if key in reserved:
                hint = "images" if image_field is not None and key == image_field.name else key
                raise CatalogError(
                    f"'params.{key}' is not allowed; pass it as the tool argument '{hint}'", field=f"params.{key}"
                )

        merged: dict[str, tuple[Any, bool]] = {}
        for key, value in (soft_options or {}).items():
            if value is not None:
                merged[key] = (value, True)
        for key, value in (options or {}).items():
            if value is not None:
                merged[key] = (value, False)
        for key, value in (params or {}).items():
            if key in merged and not merged[key][1] and merged[key][0] != value:
                raise CatalogError(
                    f"'{key}' is given twice (argument {merged[key][0]!r}, params {value!r}); give it once",
                    field=key,
                )
            merged[key] = (value, False)

        for key, (value, soft) in merged.items():
            fspec = spec.fields.get(key)
            if fspec is None:
                if soft:
                    continue
                raise CatalogError(
                    f"'{key}' is not a field of model '{spec.slug}' ({action.key}); allowed fields: "
                    f"{', '.join(sorted(set(spec.fields) - reserved)) or 'none'}",
                    field=key,
                    allowed=sorted(set(spec.fields) - reserved),
                )
            if soft and fspec.enum is not None and value not in fspec.enum:
                continue  # the tool's default does not fit this model: let RunAPI apply its own
            body[key] = fspec.check(value, model=spec.slug)

        if image_field is not None:
            urls = list(image_urls or [])
            if kind == "edit" and not urls:
                raise CatalogError(f"'images' needs at least one image for model '{spec.slug}'", field="images")
            if urls:
                if image_field.type == "array":
                    body[image_field.name] = image_field.check(urls, model=spec.slug)
                elif len(urls) > 1:
                    raise CatalogError(
                        f"'images' takes exactly one image for model '{spec.slug}', got {len(urls)}",
                        field="images",
                    )
                else:
                    body[image_field.name] = image_field.check(urls[0], model=spec.slug)
        elif image_urls:
            raise CatalogError(f"model '{spec.slug}' takes no input images ('images')", field="images")

        for name, fspec in spec.fields.items():
            if fspec.required and name not in body:
                allowed = f"; allowed: {', '.join(map(str, fspec.enum))}" if fspec.enum else ""
                raise CatalogError(
                    f"'{name}' is required for model '{spec.slug}' ({fspec.describe()}){allowed}",
                    field=name,
                    allowed=fspec.enum,
                )
        return PreparedRequest(action=action, model=spec, body=body)

    def describe(self, action_filter: str | None = None) -> list[dict[str, Any]]:
        """The catalog as plain data, for ``list_models`` and ``runapi://models``."""
        out: list[dict[str, Any]] = []
        for action in self.actions_for(action_filter):
            for slug, spec in action.models.items():
                out.append(
                    {
                        "model": slug,
                        "family": action.title,
                        "action": action.endpoint,
                        "route": f"POST {action.path}",
                        "tool": "generate_image" if self._pick([action], slug, "generate") else "edit_image",
                        "image_field": spec.image_field.name if spec.image_field else None,
                        "fields": {
                            name: {"description": f.doc, "spec": f.describe()}
                            for name, f in spec.fields.items()
                            if name != "model"
                        },
                    }
                )
        return out


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _is_http_url(value: str) -> bool:
    return bool(re.match(r"^https?://[^\s/]+", value, re.IGNORECASE))


@cache
def get_catalog() -> Catalog:
    """The catalog shipped with the package (built by ``scripts/build_catalog.py``)."""
    raw = json.loads(resources.files("runapi_mcp.catalog").joinpath("actions.json").read_text("utf-8"))
    actions = []
    for entry in raw["actions"]:
        models = {
            slug: ModelSpec(
                slug=slug,
                send_model=m["send_model"],
                fields={name: FieldSpec(name=name, **f) for name, f in m["fields"].items()},
            )
            for slug, m in entry["models"].items()
        }
        actions.append(
            ActionSpec(
                family=entry["family"],
                title=entry["title"],
                service=entry["service"],
                endpoint=entry["endpoint"],
                models=models,
            )
        )
    return Catalog(tuple(actions))
