from __future__ import annotations

import difflib
import json
import math
import re
import reprlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

from runapi_mcp.errors import UserError
from runapi_mcp.wording import count as counted

# generate_image, edit_image, upscale_image: which of a model's actions a tool call means.
RequestKind = Literal["generate", "edit", "upscale"]
FieldType = Literal["string", "integer", "number", "boolean", "array"]

# The tool kinds, in the order list_models' index names them (``generate`` is generate_image, ...).
_TOOL_KINDS: tuple[RequestKind, ...] = ("generate", "edit", "upscale")

# Endpoints that work on an existing image, in the order `edit_image` picks them for a model.
EDIT_ENDPOINTS = (
    "edit_image",
    "remix_image",
    "upscale_image",
    "reframe_image",
    "remove_background",
    "decompose_layers",
    "segment_map",
)
# The fields a model takes its input images in, most general first.
IMAGE_FIELDS = ("source_image_urls", "source_image_url", "image_url", "reference_image_urls")
# The field an upscale model takes its multiplier in (topaz: upscale_factor); the others are the names
# the same knob has elsewhere, so a new upscale model using one works with upscale_image's ``factor``.
UPSCALE_FIELDS = ("upscale_factor", "scale_factor", "scale", "factor")
# Names users type from RunAPI's docs page: alias -> (model slug, endpoint).
ALIASES: dict[str, tuple[str, str]] = {
    "gpt-image-2-text-to-image": ("gpt-image-2", "text_to_image"),
    "gpt-image-2-image-to-image": ("gpt-image-2", "edit_image"),
    # Grok Image 2.0 names one model for three routes; its segment map (an image in, a map out) is asked
    # for by this name, as edit_image's model.
    "grok-imagine-segment-map": ("grok-imagine-image-2-0", "segment_map"),
}
_PYTHON_TYPES: dict[str, str] = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
}

# -- limits where RunAPI's contract leaves a field open ----------------------------------------------
# The source facts give many fields no bound at all (a seed with no range, a prompt with no length,
# a list with no item count). Every value is sent upstream and a task is billed when it is created, so
# each open field gets a project limit here instead of reaching RunAPI unchecked. The limits are wide
# enough for any real use; a limit stated by the source always wins over these.

# The largest integer a JSON number carries exactly (IEEE double); beyond it RunAPI would see a
# different number than the one asked for. Floats get the same magnitude cap.
JSON_SAFE_INTEGER = 2**53 - 1
# Prompts without a documented cap: the largest documented prompt cap is 20,000 characters
# (nano-banana-2-lite); 32,000 leaves room above it while stopping a runaway paste.
PROMPT_MAX_LENGTH = 32_000
# Any other string without a cap (URLs, ids, watermark text, ...): longer than any URL browsers take.
STRING_MAX_LENGTH = 8_192
# Lists of image URLs without max_items: more than any documented image list (14, seedream edit).
IMAGE_ARRAY_MAX_ITEMS = 16
# Any other list without max_items.
ARRAY_MAX_ITEMS = 64
# Lists whose item type the source leaves open (wan's bbox_list, color_palette) may hold lists of
# scalars (boxes are lists of coordinates), up to this many levels counting the field itself, and
# at most this many values in all.
UNTYPED_LIST_LEVELS = 3
UNTYPED_MAX_VALUES = 1024
# Keys of the tool's ``params`` argument; more than a model has fields.
MAX_PARAMS = 64
# Fields that set how many images a task returns. Only ``output_count`` occurs in the facts; the
# others are the names the same knob has elsewhere, so a new model using one is still capped.
OUTPUT_COUNT_FIELDS = ("output_count", "n", "num_images", "num_outputs", "batch_size", "max_images")
# A count field with no enum and no max (seedream-4.5 and -5-lite, wan-2.7): 1..15, the upstream
# Seedream limit on images per request and the largest count any documented enum reaches (6) and more.
OUTPUT_COUNT_MAX = 15
# Midjourney's include_split_images returns the 2x2 grid and its four quadrants.
SPLIT_IMAGES_OUTPUTS = 5
# Layer decomposition returns a base image and one PNG per separated layer; the facts state no
# count. 16 (base + 15 layers) bounds what one task may make the server download.
DECOMPOSE_LAYERS_MAX_OUTPUTS = 16

# C0 and C1 control characters other than tab, newline and carriage return (DEL included), and UTF-16
# surrogates: a str decoded from JSON may hold a lone '\ud800', which no UTF-8 encoder (httpx's
# included) accepts. The tool arguments use the same rule (``text_problem``).
_BAD_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_REPR = reprlib.Repr()
_REPR.maxstring = 80
_REPR.maxother = 80


class CatalogError(UserError, ValueError):
    """A request the catalog refuses. ``field`` names the argument; ``allowed`` what it takes."""

    def __init__(self, message: str, *, field: str | None = None, allowed: Iterable[Any] | None = None) -> None:
        self.field = field
        self.allowed = list(allowed) if allowed is not None else None
        super().__init__(message)


class ItemSpec(BaseModel):
    # extra="forbid": a constraint the loader does not know must fail loudly, not vanish.
    model_config = ConfigDict(frozen=True, extra="forbid")
    type: FieldType = "string"
    min: float | None = None
    max: float | None = None


class FieldSpec(BaseModel):
    """One field of a model's request body, as RunAPI's contract describes it."""

    # extra="forbid": actions.json holding a key this class has no slot for is a bug to surface.
    model_config = ConfigDict(frozen=True, extra="forbid")

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

    @property
    def is_prompt(self) -> bool:
        return self.name == "prompt" or self.name.endswith("_prompt")

    @property
    def is_output_count(self) -> bool:
        return self.type == "integer" and self.name in OUTPUT_COUNT_FIELDS

    # -- effective limits: the source's, else the project's for open fields ---------------------------
    @property
    def value_bounds(self) -> tuple[float, float]:
        """The range an integer or number must lie in."""
        if self.is_output_count:
            low, high = 1, OUTPUT_COUNT_MAX
        else:
            low, high = -JSON_SAFE_INTEGER, JSON_SAFE_INTEGER
        return (self.min if self.min is not None else low, self.max if self.max is not None else high)

    @property
    def length_limit(self) -> int:
        """The most characters a string may have."""
        if self.max_length is not None:
            return self.max_length
        return PROMPT_MAX_LENGTH if self.is_prompt else STRING_MAX_LENGTH

    @property
    def items_limit(self) -> int:
        """The most items a list may have."""
        if self.max_items is not None:
            return self.max_items
        return IMAGE_ARRAY_MAX_ITEMS if self.is_url else ARRAY_MAX_ITEMS

    @property
    def output_count_max(self) -> int | None:
        """The largest number of images this field can ask for; None when it is no count field."""
        if not self.is_output_count:
            return None
        if self.enum:
            return max(int(v) for v in self.enum)
        return int(self.value_bounds[1])

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
            parts.append(f"default {_json_text(self.default)}")
        if self.required:
            parts.append("required")
        return "; ".join(parts)

    # -- validation ---------------------------------------------------------------------------------
    def check(self, value: Any, *, model: str) -> Any:
        """Return ``value`` if this field accepts it, else raise :class:`CatalogError`."""
        where = f"'{self.name}' for model '{model}'"
        if value is None:
            raise CatalogError(f"{where} must not be null ({self.describe()})", field=self.name)
        if not _type_ok(value, self.type):
            raise CatalogError(f"{where} must be {_PYTHON_TYPES[self.type]}, got {_show(value)}", field=self.name)
        # Finite numbers first, so the enum message never shows a NaN. An enum is checked before
        # the length caps: "not one of these values" tells more than "too long" does.
        if self.type in ("integer", "number"):
            _check_finite(value, where, self.name)
        if self.enum is not None and value not in self.enum:
            raise CatalogError(
                f"{where} does not allow {_show(value)}; allowed values: {', '.join(map(str, self.enum))}",
                field=self.name,
                allowed=self.enum,
            )
        if self.type == "string":
            self._check_string(value, where)
        if self.type in ("integer", "number"):
            low, high = self.value_bounds
            # Say so when the bound broken is the catalog's own, not RunAPI's.
            ours = (value < low and self.min is None) or (value > high and self.max is None)
            _check_range(value, where, self.name, low, high, note=self._bounds_note() if ours else "")
        if self.type == "array":
            self._check_array(value, where)
        return value

    def _bounds_note(self) -> str:
        if self.is_output_count:
            return " (RunAPI states no range; this is the catalog's cap on images per task)"
        return " (RunAPI states no range; the catalog keeps numbers JSON-safe)"

    def _check_string_length(self, value: str, where: str) -> None:
        limit = self.length_limit
        if len(value) > limit:
            note = "" if self.max_length is not None else " (RunAPI states no limit; this is the catalog's)"
            raise CatalogError(f"{where} is {len(value)} characters; at most {limit} allowed{note}", field=self.name)

    def _check_string(self, value: str, where: str) -> None:
        # Length first: it bounds the work the checks after it do.
        self._check_string_length(value, where)
        _check_text(value, where, self.name)
        if self.min_length is not None and len(value.strip()) < self.min_length:
            raise CatalogError(f"{where} needs at least {self.min_length} characters", field=self.name)
        if self.pattern is not None and not re.search(self.pattern, value):
            raise CatalogError(f"{where} must match {self.pattern}", field=self.name)
        if self.is_url and not is_http_url(value):
            raise CatalogError(f"{where} must be an http(s) URL, got {_show(value)}", field=self.name)

    def _check_array(self, value: list[Any], where: str) -> None:
        if self.min_items is not None and len(value) < self.min_items:
            least = counted(self.min_items, "item")
            raise CatalogError(f"{where} needs at least {least}, got {len(value)}", field=self.name)
        limit = self.items_limit
        if len(value) > limit:
            note = "" if self.max_items is not None else " (RunAPI states no limit; this is the catalog's)"
            most = counted(limit, "item")
            raise CatalogError(f"{where} takes at most {most}{note}, got {len(value)}", field=self.name)
        item_type = self.items.type if self.items else ("string" if self.is_url else None)
        budget = [UNTYPED_MAX_VALUES]
        for i, item in enumerate(value):
            item_where = f"{where} item {i}"
            if item_type is None:
                _check_untyped(item, item_where, self.name, level=1, budget=budget)
                continue
            if item is None or not _type_ok(item, item_type):
                raise CatalogError(
                    f"{item_where} must be {_PYTHON_TYPES[item_type]}, got {_show(item)}", field=self.name
                )
            if item_type in ("integer", "number"):
                _check_finite(item, item_where, self.name)
                low = self.items.min if self.items and self.items.min is not None else -JSON_SAFE_INTEGER
                high = self.items.max if self.items and self.items.max is not None else JSON_SAFE_INTEGER
                _check_range(item, item_where, self.name, low, high)
            elif item_type == "string":
                _check_plain_string(item, item_where, self.name)
                if self.is_url and not is_http_url(item):
                    raise CatalogError(f"{item_where} must be an http(s) URL, got {_show(item)}", field=self.name)
            elif item_type == "array":
                _check_untyped(item, item_where, self.name, level=1, budget=budget)


def _type_ok(value: Any, type_: FieldType) -> bool:
    # bool is an int subclass in Python but never a number (or an integer) in RunAPI's contract.
    if type_ == "string":
        return isinstance(value, str)
    if type_ in ("integer", "number"):
        if isinstance(value, bool):
            return False
        return isinstance(value, int) if type_ == "integer" else isinstance(value, int | float)
    if type_ == "boolean":
        return isinstance(value, bool)
    return isinstance(value, list)


def _check_finite(value: float, where: str, field_name: str) -> None:
    # Only floats can be NaN or infinite. Never call math.isfinite on an int: it converts to float,
    # and 10**400 raises OverflowError instead of a clear refusal.
    if isinstance(value, float) and not math.isfinite(value):
        raise CatalogError(f"{where} must be a finite number, got {value!r}", field=field_name)


def _check_range(value: float, where: str, field_name: str, low: float, high: float, *, note: str = "") -> None:
    # int/float comparisons are exact in Python (no float conversion), so huge ints compare safely.
    if value < low or value > high:
        raise CatalogError(
            f"{where} must be within {_num(low)}..{_num(high)}{note}, got {_show(value)}", field=field_name
        )


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be sent on as text (a lone surrogate, a control character), or None."""
    bad = _BAD_TEXT.search(value)
    if bad is None:
        return None
    code = ord(bad.group())
    if 0xD800 <= code <= 0xDFFF:
        return (
            f"contains a lone surrogate U+{code:04X} at position {bad.start()}; "
            "text must be valid Unicode (surrogates U+D800..U+DFFF are not allowed)"
        )
    return (
        f"contains the control character U+{code:04X} at position {bad.start()}; "
        "the only control characters allowed are tab, newline and carriage return"
    )


def _check_text(value: str, where: str, field_name: str) -> None:
    problem = text_problem(value)
    if problem is not None:
        raise CatalogError(f"{where} {problem}", field=field_name)


def _check_plain_string(value: str, where: str, field_name: str) -> None:
    """A string nested in a list: the open-string length cap and valid text."""
    if len(value) > STRING_MAX_LENGTH:
        raise CatalogError(f"{where} is {len(value)} characters; at most {STRING_MAX_LENGTH} allowed", field=field_name)
    _check_text(value, where, field_name)


def _check_untyped(value: Any, where: str, field_name: str, *, level: int, budget: list[int]) -> None:
    """An item of a list whose item type the source leaves open: JSON scalars or lists of them.

    ``level`` counts the lists around ``value`` (the field itself is 1); ``budget`` the values left.
    Objects are refused: no field of the contract is declared an object, so none may hide in a list.
    """
    budget[0] -= 1
    if budget[0] < 0:
        raise CatalogError(f"{where}: the list holds more than {UNTYPED_MAX_VALUES} values in all", field=field_name)
    if value is None:
        raise CatalogError(f"{where} must not be null", field=field_name)
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        _check_finite(value, where, field_name)
        _check_range(value, where, field_name, -JSON_SAFE_INTEGER, JSON_SAFE_INTEGER)
        return
    if isinstance(value, str):
        _check_plain_string(value, where, field_name)
        return
    if isinstance(value, list):
        if level + 1 > UNTYPED_LIST_LEVELS:
            raise CatalogError(f"{where} nests lists more than {UNTYPED_LIST_LEVELS} levels deep", field=field_name)
        if len(value) > ARRAY_MAX_ITEMS:
            most = counted(ARRAY_MAX_ITEMS, "item")
            raise CatalogError(f"{where} takes at most {most}, got {len(value)}", field=field_name)
        for i, item in enumerate(value):
            _check_untyped(item, f"{where}[{i}]", field_name, level=level + 1, budget=budget)
        return
    raise CatalogError(
        f"{where} must be a string, a number, true/false or a list of those, got {_show(value)} "
        "(objects are not allowed: RunAPI declares no object field here)",
        field=field_name,
    )


class Presence(BaseModel):
    """A rule's test of whether a field is given at all (``{"present": false}``), not of its value."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    present: bool


class Rule(BaseModel):
    """One of the contract's rules across fields, checked on the whole request body.

    ``when`` + ``forbidden``: when every ``when`` entry holds (a field equals the value, or is given or
    not per ``Presence``), none of the ``forbidden`` fields may be given. ``required_any``: at least
    one of the fields must be given. (Rules of the form ``when: {model: ...}`` never reach here: the
    build folds them into each model's fields.)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    when: dict[str, Presence | str | int | float | bool] = {}
    forbidden: tuple[str, ...] = ()
    required_any: tuple[str, ...] = ()

    def broken_by(self, body: Mapping[str, Any]) -> str | None:
        """The field this rule refuses in ``body`` (a forbidden one given, or the first of
        ``required_any``), or None when the body keeps the rule."""
        if self.required_any:
            return None if any(name in body for name in self.required_any) else self.required_any[0]
        if all(_holds(body, name, test) for name, test in self.when.items()):
            return next((name for name in self.forbidden if name in body), None)
        return None

    def describe(self) -> str:
        """The rule in words, for list_models."""
        if self.required_any:
            return "one of " + " or ".join(f"'{n}'" for n in self.required_any) + " is required"
        fields = " or ".join(f"'{n}'" for n in self.forbidden)
        return f"when {self.condition('')}: {fields} not allowed"

    def condition(self, leaving_out: str) -> str:
        """The ``when`` part in words, without the entry on ``leaving_out`` itself."""
        parts = [
            (f"'{name}' is given" if test.present else f"no '{name}' is given")
            if isinstance(test, Presence)
            else f"'{name}' is {_json_text(test)}"
            for name, test in self.when.items()
            if name != leaving_out
        ]
        return " and ".join(parts)


def _holds(body: Mapping[str, Any], name: str, test: Presence | str | int | float | bool) -> bool:
    if isinstance(test, Presence):
        return (name in body) == test.present
    return name in body and body[name] == test and type(body[name]) is type(test)


@dataclass(frozen=True)
class ModelSpec:
    """One model slug on one action, with the fields it takes (model rules already applied) and the
    rules across its fields that the contract states."""

    slug: str
    send_model: bool
    fields: Mapping[str, FieldSpec]
    # The action's endpoint (``text_to_image``, ``decompose_layers``, ...): some outputs depend on it.
    endpoint: str = ""
    rules: tuple[Rule, ...] = ()

    def broken_rule(self, body: Mapping[str, Any]) -> tuple[Rule, str] | None:
        """The first rule ``body`` breaks and the field it refuses, or None."""
        for rule in self.rules:
            name = rule.broken_by(body)
            if name is not None:
                return rule, name
        return None

    def step_aside(self, body: dict[str, Any], defaults: set[str]) -> dict[str, Any]:
        """Take out of ``body`` (in place) each of ``defaults`` (fields the caller did not choose) that a broken
        rule names, until no broken rule names one; return what was taken out. What the caller chose stays,
        for :meth:`check_rules` to refuse by name."""
        dropped: dict[str, Any] = {}
        while (broken := self.broken_rule(body)) is not None:
            rule, name = broken
            blamed = [n for n in dict.fromkeys((name, *rule.when)) if n in defaults and n in body]
            if not blamed:
                break
            for n in blamed:
                dropped[n] = body.pop(n)
        return dropped

    def check_rules(self, body: Mapping[str, Any]) -> None:
        """Raise :class:`CatalogError` naming the field and what is allowed instead when ``body``
        (a request body: field -> value) breaks one of the contract's rules."""
        broken = self.broken_rule(body)
        if broken is None:
            return
        rule, name = broken
        where = f"for model '{self.slug}'"
        if rule.required_any:
            names = " or ".join(f"'{n}'" for n in rule.required_any)
            raise CatalogError(f"{names} is required {where} (one of them, not both)", field=name)
        others = {k: v for k, v in body.items() if k != name}
        given = f"'{name}' {_show(body[name])}" if isinstance(rule.when.get(name), str | int | float) else f"'{name}'"
        message = f"{given} is not allowed {where} when {rule.condition(name)}"
        fspec = self.fields.get(name)
        allowed: list[Any] | None = None
        if fspec is not None and fspec.enum is not None:
            allowed = [v for v in fspec.enum if self.broken_rule({**others, name: v}) is None]
            message += f"; allowed then: {', '.join(map(str, allowed)) or 'none'}"
        # A rule on a field left out ("an aspect ratio must be given"): say which values would do.
        for absent, test in rule.when.items():
            if isinstance(test, Presence) and not test.present and absent in self.fields:
                choices = self.fields[absent].enum
                if choices is not None:
                    fits = [v for v in choices if self.broken_rule({**body, absent: v}) is None]
                    message += f"; or give '{absent}', one of: {', '.join(map(str, fits))}"
                else:
                    message += f"; or give '{absent}'"
        raise CatalogError(message, field=name, allowed=allowed)

    @property
    def image_field(self) -> FieldSpec | None:
        for name in IMAGE_FIELDS:
            if name in self.fields:
                return self.fields[name]
        return None

    @property
    def upscale_field(self) -> FieldSpec | None:
        """Where upscale_image's ``factor`` goes for this model; None when it takes no multiplier."""
        if self.endpoint != "upscale_image":
            return None
        return next((self.fields[name] for name in UPSCALE_FIELDS if name in self.fields), None)

    @property
    def takes_prompt(self) -> bool:
        return "prompt" in self.fields

    @property
    def max_outputs(self) -> int:
        """How many images one task of this model can return, at most (to cap downloads by).

        The largest value of its count field (enum or max; ``OUTPUT_COUNT_MAX`` when open), else 1;
        at least the grid and its quadrants with ``include_split_images``, and at least
        ``DECOMPOSE_LAYERS_MAX_OUTPUTS`` for a layer decomposition (its layer count is open).
        """
        counts = [
            n for name in OUTPUT_COUNT_FIELDS if name in self.fields and (n := self.fields[name].output_count_max)
        ]
        most = max(counts, default=1)
        if "include_split_images" in self.fields:
            most = max(most, SPLIT_IMAGES_OUTPUTS)
        if self.endpoint == "decompose_layers":
            most = max(most, DECOMPOSE_LAYERS_MAX_OUTPUTS)
        return most


@dataclass(frozen=True)
class ActionSpec:
    """One RunAPI route: a family (service) and an endpoint, with its models."""

    family: str
    title: str
    service: str
    endpoint: str
    models: Mapping[str, ModelSpec]
    # Where RunAPI published this action's contract: repo, commit, sdk_version (scripts/build_catalog.py).
    source: Mapping[str, Any] = field(default_factory=dict)

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


@dataclass(frozen=True)
class ValidatedRequest:
    """A tool call that passed every check except its image URLs, which do not exist yet.

    The server validates first, so a bad argument costs no upload, then uploads ``image_count``
    images and turns this into the request body with :meth:`with_images`.
    """

    action: ActionSpec
    model: ModelSpec
    # The body without the image field, read-only: with_images copies it.
    body: Mapping[str, Any]
    image_count: int

    @property
    def path(self) -> str:
        return self.action.path

    @property
    def image_field(self) -> FieldSpec | None:
        return self.model.image_field

    def with_images(self, urls: Sequence[str]) -> PreparedRequest:
        """The request body with the uploaded images' URLs, each checked as an http(s) URL."""
        if isinstance(urls, str):
            raise CatalogError("'images' must be a list of URLs, not one string", field="images")
        urls = list(urls)
        if len(urls) != self.image_count:
            # The count was checked against the model's limits; a different number skips that check.
            raise CatalogError(
                f"'images' was validated as {counted(self.image_count, 'image')} but {counted(len(urls), 'URL')} "
                f"{'was' if len(urls) == 1 else 'were'} given",
                field="images",
            )
        body = dict(self.body)
        image_field = self.model.image_field
        if urls and image_field is not None:  # validate() allows images only with an image field
            value: Any = urls if image_field.type == "array" else urls[0]
            body[image_field.name] = image_field.check(value, model=self.model.slug)
        return PreparedRequest(action=self.action, model=self.model, body=body)


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
        if not isinstance(model, str):
            raise CatalogError(f"'model' must be a string, got {_show(model)}", field="model")
        name = model.strip().lower()
        forced_endpoint: str | None = None
        if name in ALIASES:
            name, forced_endpoint = ALIASES[name]
        candidates = self._by_model.get(name)
        if candidates is None:
            close = self.close_matches(name, limit=3)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise CatalogError(
                f"'model' {_show(model)} is not a RunAPI image model; {hint}allowed: "
                f"{', '.join(self.model_names + sorted(ALIASES))} (list_models shows each one's fields)",
                field="model",
                allowed=self.model_names + sorted(ALIASES),
            )
        if forced_endpoint is not None:
            candidates = [a for a in candidates if a.endpoint == forced_endpoint]
        chosen = self._pick(candidates, name, kind)
        if chosen is None:
            if kind == "upscale":
                upscalers = self.upscale_models()
                raise CatalogError(
                    f"'model' {model!r} cannot be used with upscale_image; upscale models: {', '.join(upscalers)}",
                    field="model",
                    allowed=upscalers,
                )
            other = "edit_image (it works on an existing image)" if kind == "generate" else "generate_image"
            raise CatalogError(
                f"'model' {model!r} cannot be used with {'generate_image' if kind == 'generate' else 'edit_image'}"
                f"; use {other}",
                field="model",
            )
        return chosen, chosen.models[name]

    def upscale_models(self) -> list[str]:
        """The models upscale_image takes: an upscale action that takes an input image."""
        return sorted({slug for a in self.actions for slug in a.models if self._pick([a], slug, "upscale")})

    @staticmethod
    def _pick(candidates: list[ActionSpec], slug: str, kind: RequestKind) -> ActionSpec | None:
        if kind == "upscale":
            # Only the upscale action itself: upscale_image must never quietly run an edit or a remix.
            return next(
                (a for a in candidates if a.endpoint == "upscale_image" and a.models[slug].image_field is not None),
                None,
            )
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
    def validate(
        self,
        kind: RequestKind,
        model: str,
        *,
        prompt: str | None,
        image_count: int,
        options: Mapping[str, Any] | None = None,
        soft_options: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> ValidatedRequest:
        """Check a tool call against the catalog before anything is uploaded or sent.

        ``options`` are explicit choices (an error if the model lacks them); ``soft_options``
        are the tool's defaults, sent only where the model accepts that value; ``params`` are
        extra model fields. ``image_count`` is how many input images the call brings: it is
        checked against the model's image field now, their URLs come with
        :meth:`ValidatedRequest.with_images`.
        """
        action, spec = self.resolve(model, kind)
        if isinstance(image_count, bool) or not isinstance(image_count, int) or image_count < 0:
            raise CatalogError(f"'images' count must be a whole number >= 0, got {_show(image_count)}", field="images")
        body: dict[str, Any] = {}
        if spec.send_model:
            body["model"] = spec.slug

        if spec.takes_prompt:
            prompt_field = spec.fields["prompt"]
            if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
                if prompt_field.required:
                    raise CatalogError(f"'prompt' is required for model '{spec.slug}'", field="prompt")
            else:
                body["prompt"] = prompt_field.check(prompt, model=spec.slug)

        reserved = {"model", "prompt"}
        image_field = spec.image_field
        if image_field is not None:
            reserved.add(image_field.name)
        params = self._check_params(params, reserved, image_field)

        merged: dict[str, tuple[Any, bool]] = {}
        for key, value in (soft_options or {}).items():
            if value is not None:
                merged[key] = (value, True)
        for key, value in (options or {}).items():
            if value is not None:
                merged[key] = (value, False)
        for key, value in params.items():
            if key in merged and not merged[key][1] and merged[key][0] != value:
                raise CatalogError(
                    f"'{key}' is given twice (argument {_show(merged[key][0])}, params {_show(value)}); give it once",
                    field=key,
                )
            merged[key] = (value, False)

        defaults_sent: set[str] = set()
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
            if soft:
                defaults_sent.add(key)

        self._check_image_count(kind, spec, image_count)

        for name, fspec in spec.fields.items():
            if not fspec.required or name in body:
                continue
            if image_field is not None and name == image_field.name and image_count > 0:
                continue  # filled by with_images
            allowed = f"; allowed: {', '.join(map(str, fspec.enum))}" if fspec.enum else ""
            raise CatalogError(
                f"'{name}' is required for model '{spec.slug}' ({fspec.describe()}){allowed}",
                field=name,
                allowed=fspec.enum,
            )
        self._apply_rules(spec, body, defaults_sent, image_count)
        return ValidatedRequest(action=action, model=spec, body=MappingProxyType(body), image_count=image_count)

    @staticmethod
    def _apply_rules(spec: ModelSpec, body: dict[str, Any], defaults_sent: set[str], image_count: int) -> None:
        """Check the contract's rules across fields on ``body`` (changed in place).

        A default the tool filled in never takes the blame: one that a broken rule names (GPT Image 2.5
        refuses the tool's ``aspect_ratio`` auto at 2k) is left out, for RunAPI to apply its own, and the
        rules are read again; whatever is still broken is the caller's own choice, and is refused.
        """
        if not spec.rules:
            return
        view = dict(body)
        image_field = spec.image_field
        if image_field is not None and image_count > 0:
            view[image_field.name] = "<image>"  # filled by with_images; only its presence matters to a rule
        dropped = spec.step_aside(view, defaults_sent)
        for name in dropped:
            del body[name]
        try:
            spec.check_rules(view)
        except CatalogError as exc:
            # The default left out may be what the caller typed too (aspect_ratio "auto" is both): say so.
            broken = spec.broken_rule(view)
            named = [n for n in (broken[0].when if broken else ()) if n in dropped]
            if not named:
                raise
            also = "; ".join(f"'{n}' {_show(dropped[n])}, the default, is not allowed here either" for n in named)
            raise CatalogError(f"{exc} ({also})", field=exc.field, allowed=exc.allowed) from None

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
        """Validate a tool call and build the upstream request body in one step.

        ``image_urls`` must already be public URLs (uploads are done). Prefer :meth:`validate`
        then :meth:`ValidatedRequest.with_images` when images still need uploading.
        """
        urls = list(image_urls or [])
        validated = self.validate(
            kind,
            model,
            prompt=prompt,
            image_count=len(urls),
            options=options,
            soft_options=soft_options,
            params=params,
        )
        return validated.with_images(urls)

    @staticmethod
    def _check_params(
        params: Mapping[str, Any] | None, reserved: set[str], image_field: FieldSpec | None
    ) -> Mapping[str, Any]:
        if params is None:
            return {}
        if not isinstance(params, Mapping):
            raise CatalogError(
                f"'params' must be an object of field names to values, got {_show(params)}", field="params"
            )
        if len(params) > MAX_PARAMS:
            raise CatalogError(f"'params' has {len(params)} keys; at most {MAX_PARAMS} allowed", field="params")
        for key in params:
            if not isinstance(key, str):
                raise CatalogError(f"'params' keys must be field names (strings), got {_show(key)}", field="params")
            if key in reserved:
                hint = "images" if image_field is not None and key == image_field.name else key
                raise CatalogError(
                    f"'params.{key}' is not allowed; pass it as the tool argument '{hint}'", field=f"params.{key}"
                )
        return params

    @staticmethod
    def _check_image_count(kind: RequestKind, spec: ModelSpec, count: int) -> None:
        image_field = spec.image_field
        if image_field is None:
            if count:
                raise CatalogError(f"model '{spec.slug}' takes no input images ('images'), got {count}", field="images")
            return
        if kind != "generate" and count == 0:
            raise CatalogError(f"'images' needs at least one image for model '{spec.slug}'", field="images")
        if count == 0:
            return  # an optional image field is left out (a required one is reported as missing)
        if image_field.type != "array":
            if count > 1:
                raise CatalogError(
                    f"'images' takes exactly one image for model '{spec.slug}', got {count}", field="images"
                )
            return
        where = f"for model '{spec.slug}' (field '{image_field.name}')"
        if image_field.min_items is not None and count < image_field.min_items:
            least = counted(image_field.min_items, "image")
            raise CatalogError(f"'images' needs at least {least} {where}, got {count}", field="images")
        if count > image_field.items_limit:
            most = counted(image_field.items_limit, "image")
            raise CatalogError(f"'images' takes at most {most} {where}, got {count}", field="images")

    def find_model(self, name: str) -> tuple[str, str | None]:
        """The slug ``name`` means (a slug or an alias, in any case) and, for an alias, its endpoint.

        An unknown name is a CatalogError on 'model' naming the closest slugs: a typo's fix should not
        need the whole list (which is what the index is for).
        """
        wanted = name.strip().lower()
        if wanted in ALIASES:
            return ALIASES[wanted]
        if wanted in self._by_model:
            return wanted, None
        close = self.close_matches(name)
        hint = f"close matches: {', '.join(close)}" if close else f"none of the {len(self._by_model)} is close"
        raise CatalogError(
            f"'model' {_show(name)} is not a RunAPI image model; {hint} (list_models lists them all)",
            field="model",
            allowed=close,
        )

    def close_matches(self, name: str, limit: int = 5) -> list[str]:
        """Slugs and aliases spelled like ``name``, best first; then those containing it (``banana``)."""
        wanted = name.strip().lower()[:200]  # difflib is quadratic: a long name is no one's typo
        names = self.model_names + sorted(ALIASES)
        close = difflib.get_close_matches(wanted, names, n=limit, cutoff=0.6)
        if len(wanted) >= 3:
            close += [n for n in names if wanted in n]
        return list(dict.fromkeys(close))[:limit]

    def summaries(self, slugs: Iterable[str] | None = None) -> dict[str, str]:
        """Each model in a few words, for ``list_models``' index: its actions, then what takes it.

        ``nano-banana: text_to_image; generate, edit``: ``generate``, ``edit`` and ``upscale`` name the
        tools (generate_image, edit_image, upscale_image) that accept the model. The tools are worked
        out as a call would pick the action (``_pick``), so the index cannot promise what a call refuses.
        """
        wanted = self.model_names if slugs is None else sorted(set(slugs))
        out: dict[str, str] = {}
        for slug in wanted:
            actions = self._by_model[slug]
            verbs = [kind for kind in _TOOL_KINDS if self._pick(actions, slug, kind) is not None]
            endpoints = ", ".join(sorted({a.endpoint for a in actions}))
            out[slug] = f"{endpoints}; {', '.join(verbs) or 'no tool takes it'}"
        return out

    def describe(self, action_filter: str | None = None, *, model: str | None = None) -> list[dict[str, Any]]:
        """The catalog as plain data (every field's type, allowed values, limits, default), for
        ``list_models(model=...)``/``(action=...)`` and ``runapi://models/{model}``; ``model`` is a slug or
        an alias (an unknown one is an error naming close matches)."""
        slug: str | None = None
        endpoint: str | None = None
        if model is not None:
            slug, endpoint = self.find_model(model)
        out: list[dict[str, Any]] = []
        for action in self.actions_for(action_filter):
            if endpoint is not None and action.endpoint != endpoint:
                continue
            for name, spec in action.models.items():
                if slug is not None and name != slug:
                    continue
                out.append(
                    {
                        "model": name,
                        "family": action.title,
                        "action": action.endpoint,
                        "route": f"POST {action.path}",
                        "tool": self._tool_for(action, name),
                        "image_field": spec.image_field.name if spec.image_field else None,
                        "max_outputs": spec.max_outputs,
                        # An empty description is left out: it says nothing and is sent once per field.
                        "fields": {
                            field_name: {"spec": f.describe(), **({"description": f.doc} if f.doc else {})}
                            for field_name, f in spec.fields.items()
                            if field_name != "model"
                        },
                        "rules": [rule.describe() for rule in spec.rules],
                    }
                )
        if slug is not None and not out:
            raise CatalogError(
                f"'model' {slug!r} has no action matching 'action' {action_filter!r}; its actions: "
                f"{', '.join(a.endpoint for a in self._by_model[slug])}",
                field="action",
                allowed=[a.endpoint for a in self._by_model[slug]],
            )
        return out

    def _tool_for(self, action: ActionSpec, slug: str) -> str:
        """The tool to call a model with (edit_image also takes upscale models, through params)."""
        if self._pick([action], slug, "generate"):
            return "generate_image"
        return "upscale_image" if self._pick([action], slug, "upscale") else "edit_image"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _json_text(value: Any) -> str:
    """A value as the contract (JSON) writes it: ``false``, not Python's ``False``."""
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _show(value: Any) -> str:
    """A short, safe rendering of a user's value for an error message."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        # repr() of a huge int is slow and, past 4300 digits, raises ValueError.
        digits = math.floor(value.bit_length() * math.log10(2)) + 1
        return f"{'a negative' if value < 0 else 'an'} integer of about {digits} digits"
    try:
        return _REPR.repr(value)
    except ValueError:  # a huge int nested in a list
        return f"a {type(value).__name__}"


def is_http_url(value: str) -> bool:
    """An absolute http(s) URL with a host (``http://:80/``, ``http://@/`` and ``http://[/`` have none)."""
    if not re.match(r"^https?://", value, re.IGNORECASE) or any(c.isspace() for c in value):
        return False
    try:
        return bool(urlsplit(value).hostname)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False


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
                endpoint=entry["endpoint"],
                rules=tuple(Rule.model_validate(r) for r in m.get("rules", ())),
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
                source=MappingProxyType(dict(entry.get("source", {}))),
            )
        )
    return Catalog(tuple(actions))
