"""MCP prompts: six ready-made jobs, each ending in ONE call of one of our tools with its arguments spelled out.

A prompt is read by a model that then makes the call, so the text names the tool and gives the arguments
as a JSON object to pass as it is. Every call a prompt proposes has passed the same catalog check the
tool makes (model, fields, allowed values, prompt length): a prompt never leads to a call the tool
would refuse for its arguments. Images are the exception: they are checked when the tool reads them.

Prompt arguments are strings (the protocol has no other type); a bad one is refused with -32602 and a
message naming it, a missing or unknown one likewise (the SDK's own refusal hides the reason).

The class knows no session: its prompt methods take plain strings and return the text, and image sizes
come from a lookup function (the library's, owner-scoped, in the server), so tests call them directly.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.prompts.base import Message, Prompt
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, InputRequiredResult
from pydantic import Field

from runapi_mcp.catalog import (
    ALIASES,
    DEFAULT_MODEL,
    DEFAULT_UPSCALE_MODEL,
    Catalog,
    CatalogError,
    ModelSpec,
    RequestKind,
    text_problem,
)
from runapi_mcp.server.icons import icon_for
from runapi_mcp.tasks import IMAGE_URI_PREFIX, TaskManager

# Free text that goes into an image prompt (a product, a scene): long enough for any description.
MAX_TEXT_CHARS = 2000
# An image reference in a prompt is a URI, id, path or URL: a data: URI does not belong in a conversation.
MAX_IMAGE_REF_CHARS = 4096
DEFAULT_DPI = 300

ArgumentKind = Literal["model", "aspect_ratio", "output_resolution", "image", "choice", "text"]
SizeLookup = Callable[[str], Awaitable[tuple[int, int] | None]]

# Print sizes by name, in millimetres (ISO 216 and the North American sheets).
PAPER_MM: dict[str, tuple[float, float]] = {
    "a0": (841, 1189),
    "a1": (594, 841),
    "a2": (420, 594),
    "a3": (297, 420),
    "a4": (210, 297),
    "a5": (148, 210),
    "a6": (105, 148),
    "letter": (215.9, 279.4),
    "legal": (215.9, 355.6),
    "tabloid": (279.4, 431.8),
}
_MM_PER = {"mm": 1.0, "cm": 10.0, "in": 25.4}
_UNITS = {"mm": "mm", "cm": "cm", "in": "in", "inch": "in", "inches": "in", '"': "in", "px": "px"}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[x×*]\s*(\d+(?:\.\d+)?)\s*(mm|cm|inches|inch|in|\"|px)?\s*$", re.IGNORECASE)
# Print sizes and densities offered while typing (any other value works too).
PRINT_SIZES = ("A4", "A3", "A2", "letter", "tabloid", "8x10 in", "12x18 in", "30x40 cm", "50x70 cm")
DPI_CHOICES = ("300", "240", "150")

# The shapes a poster and a banner take, best first: the first one the model allows is used.
_SHAPES = {"poster": ("2:3", "3:4", "4:5", "9:16"), "banner": ("3:1", "21:9", "2:1", "16:9")}


# Quote marks for exact text, tried in order: the first pair the text does not contain is used, so the
# image model never sees an escaped quote (a JSON-style backslash could end up painted on the picture).
_QUOTES = (('"', '"'), ("\u201c", "\u201d"), ("\u00ab", "\u00bb"), ("\u300c", "\u300d"), ("[[", "]]"))


def quote_exactly(text: str) -> str:
    """``text`` between quote marks it does not contain itself."""
    opening, closing = next(((o, c) for o, c in _QUOTES if o not in text and c not in text), _QUOTES[-1])
    return f"{opening}{text}{closing}"


def _bad(message: str) -> MCPError:
    return MCPError(code=INVALID_PARAMS, message=message)


def _arg(description: str) -> Any:
    return Field(description=description)


@dataclass(frozen=True)
class ModelTarget:
    """What a prompt's ``model`` argument means: the tool kind, the default, and (removal) the endpoints."""

    kind: RequestKind
    default: str
    endpoints: tuple[str, ...] | None = None  # only models on these endpoints are offered


@dataclass(frozen=True)
class ToolPlan:
    """One call of one tool, and what to say around it."""

    goal: str
    tool: str
    arguments: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        call = json.dumps(self.arguments, ensure_ascii=False, indent=2)
        parts = [
            self.goal,
            f"Call the `{self.tool}` tool once, with exactly these arguments:",
            f"```json\n{call}\n```",
            *self.notes,
            f"Then show the user the result of `{self.tool}`: the picture and where it was saved. If it reports "
            "an error, tell the user what it says instead of guessing other arguments.",
        ]
        return "\n\n".join(parts)


def transparency_option(catalog: Catalog) -> tuple[str, dict[str, Any]] | None:
    """A text-to-image model with a field that makes the background transparent (and the params for it),
    or None when no model in the catalog has one."""
    for slug in catalog.model_names:
        try:
            spec = catalog.resolve(slug, "generate")[1]
        except CatalogError:
            continue
        for name, fspec in spec.fields.items():
            if fspec.enum is not None and "transparent" in fspec.enum:
                params: dict[str, Any] = {name: "transparent"}
                fmt = spec.fields.get("output_format")
                if fmt is not None and fmt.enum is not None and "png" in fmt.enum:
                    params["output_format"] = "png"  # JPEG has no alpha channel
                return slug, params
    return None


def models_on(catalog: Catalog, endpoint: str) -> list[str]:
    return sorted({slug for action in catalog.actions if action.endpoint == endpoint for slug in action.models})


def parse_pixels(text: str, argument: str) -> tuple[int, int]:
    """``'1024x1536'`` (``px`` optional) as whole pixels."""
    match = _SIZE.match(text)
    if match is None or (match.group(3) or "px").lower() != "px":
        raise _bad(f"'{argument}' must be a size in pixels like '1024x1536', got {text[:60]!r}")
    width, height = float(match.group(1)), float(match.group(2))
    if not (width.is_integer() and height.is_integer()) or not (1 <= width <= 100_000 and 1 <= height <= 100_000):
        raise _bad(f"'{argument}' must be whole pixels between 1 and 100000, got {text[:60]!r}")
    return int(width), int(height)


def print_pixels(print_size: str, dpi: int) -> tuple[int, int, str]:
    """The pixels a print needs, and the print size as written back to the user."""
    name = print_size.strip().lower()
    if name in PAPER_MM:
        width_mm, height_mm = PAPER_MM[name]
        shown = f"{print_size.strip()} ({_mm(width_mm)}x{_mm(height_mm)} mm)"
    else:
        match = _SIZE.match(print_size)
        unit = _UNITS.get((match.group(3) or "").lower()) if match else None
        if match is None or unit is None:
            raise _bad(
                "'print_size' must be a paper size ("
                + ", ".join(n.upper() if n[0] == "a" else n for n in PAPER_MM)
                + ") or a size with its unit, like '30x40 cm', '8x10 in' or '7200x4800 px'; "
                f"got {print_size[:60]!r}"
            )
        width, height = float(match.group(1)), float(match.group(2))
        if width <= 0 or height <= 0:
            raise _bad(f"'print_size' must be larger than zero, got {print_size[:60]!r}")
        if unit == "px":
            return math.ceil(width), math.ceil(height), f"{_mm(width)}x{_mm(height)} px"
        width_mm, height_mm = width * _MM_PER[unit], height * _MM_PER[unit]
        shown = f"{_mm(width)}x{_mm(height)} {unit}"
    pixels = (math.ceil(width_mm / 25.4 * dpi), math.ceil(height_mm / 25.4 * dpi))
    if max(pixels) > 1_000_000:
        raise _bad(f"'print_size' at {dpi} dpi needs {pixels[0]}x{pixels[1]} pixels: that is beyond any upscaler")
    return pixels[0], pixels[1], f"{shown} at {dpi} dpi"


def _mm(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def library_sizes(manager: TaskManager) -> SizeLookup:
    """Image sizes from the library, for the caller only (another user's image is unknown here too)."""

    async def size(reference: str) -> tuple[int, int] | None:
        if reference.startswith(IMAGE_URI_PREFIX):
            image = await manager.find_image(reference[len(IMAGE_URI_PREFIX) :])
        else:
            record = await manager.find(reference)  # a task id: its first image, as the tools read it
            image = record.images[0] if record is not None and record.images else None
        if image is None or not image.width or not image.height:
            return None
        return image.width, image.height

    return size


class _StrictPrompt(Prompt):
    """A prompt that refuses an unknown or missing argument by name (the SDK's refusal hides the reason)."""

    async def render(
        self, arguments: dict[str, Any] | None, context: Context[Any, Any]
    ) -> list[Message] | InputRequiredResult:
        given = dict(arguments or {})
        declared = self.arguments or []
        names = [a.name for a in declared]
        for name in given:
            if name not in names:
                raise _bad(f"'{str(name)[:100]}' is not an argument of prompt {self.name}; allowed: {', '.join(names)}")
        for argument in declared:
            if argument.required and not str(given.get(argument.name, "")).strip():
                raise _bad(f"prompt {self.name} needs '{argument.name}': {argument.description}")
        return await super().render(given, context)


class ImagePrompts:
    """The prompts, over the catalog (models, fields, allowed values) and a lookup of image sizes."""

    def __init__(self, catalog: Catalog, sizes: SizeLookup) -> None:
        self.catalog = catalog
        self.sizes = sizes
        self.transparency = transparency_option(catalog)
        removers = models_on(catalog, "remove_background")
        self.remover = removers[0] if removers else None

    # -- what completions need to know ----------------------------------------------------------------------
    KINDS: Mapping[str, Mapping[str, ArgumentKind]] = {
        "product_shot": {"product": "text", "background": "text", "image": "image", "aspect_ratio": "aspect_ratio",
                         "output_resolution": "output_resolution", "model": "model"},
        "transparent_logo": {"subject": "text", "kind": "choice", "text": "text", "style": "text"},
        "poster_with_text": {"text": "text", "theme": "text", "format": "choice", "aspect_ratio": "aspect_ratio",
                             "output_resolution": "output_resolution", "model": "model"},
        "background_edit": {"image": "image", "new_background": "text", "model": "model"},
        "consistent_character": {"reference_image": "image", "scene": "text", "character": "text",
                                 "aspect_ratio": "aspect_ratio", "model": "model"},
        "upscale_for_print": {"image": "image", "print_size": "choice", "dpi": "choice", "image_size": "text",
                              "model": "model"},
    }  # fmt: skip
    CHOICES: Mapping[str, Mapping[str, Sequence[str]]] = {
        "transparent_logo": {"kind": ("logo", "sticker")},
        "poster_with_text": {"format": ("poster", "banner")},
        "upscale_for_print": {"print_size": PRINT_SIZES, "dpi": DPI_CHOICES},
    }

    def target(self, prompt: str, arguments: Mapping[str, str]) -> ModelTarget | None:
        """Which models a prompt's ``model`` (and so its ratios and resolutions) is chosen from, given the
        other arguments so far; None for a prompt without one."""
        if prompt == "product_shot":
            return ModelTarget("edit" if arguments.get("image", "").strip() else "generate", DEFAULT_MODEL)
        if prompt == "poster_with_text":
            return ModelTarget("generate", DEFAULT_MODEL)
        if prompt == "transparent_logo":
            return ModelTarget("generate", self.transparency[0] if self.transparency else DEFAULT_MODEL)
        if prompt == "background_edit":
            if arguments.get("new_background", "").strip() or self.remover is None:
                return ModelTarget("edit", DEFAULT_MODEL)
            return ModelTarget("edit", self.remover, ("remove_background",))
        if prompt == "consistent_character":
            return ModelTarget("edit", DEFAULT_MODEL)
        if prompt == "upscale_for_print":
            return ModelTarget("upscale", DEFAULT_UPSCALE_MODEL)
        return None

    def models_for(self, target: ModelTarget) -> list[str]:
        """The model names (slugs, then aliases) a target takes, its default first."""
        names = [n for n in self.catalog.model_names + sorted(ALIASES) if self._fits(n, target)]
        return sorted(names, key=lambda n: n != target.default)

    def _fits(self, name: str, target: ModelTarget) -> bool:
        try:
            action = self.catalog.resolve(name, target.kind)[0]
        except CatalogError:
            return False
        return target.endpoints is None or action.endpoint in target.endpoints

    def field_values(self, target: ModelTarget, model: str | None, field_name: str) -> list[str]:
        """The allowed values of ``field_name`` for ``model`` (the target's default when None); none when the
        model is unknown, does not fit, or leaves the field open."""
        spec = self._spec(model or target.default, target)
        fspec = spec.fields.get(field_name) if spec is not None else None
        return [str(v) for v in fspec.enum] if fspec is not None and fspec.enum is not None else []

    def _spec(self, model: str, target: ModelTarget) -> ModelSpec | None:
        if not self._fits(model, target):
            return None
        return self.catalog.resolve(model, target.kind)[1]

    # -- registration -----------------------------------------------------------------------------------------
    def register(self, server: MCPServer[Any]) -> None:
        for fn, title in (
            (self.product_shot, "Product shot on a clean background"),
            (self.transparent_logo, "Logo or sticker with a transparent background"),
            (self.poster_with_text, "Poster or banner with exact text"),
            (self.background_edit, "Remove or replace a background"),
            (self.consistent_character, "Consistent character across scenes"),
            (self.upscale_for_print, "Upscale for print"),
        ):
            server.add_prompt(
                _StrictPrompt.from_function(fn, name=fn.__name__, title=title, icons=icon_for("prompt"))
            )

    # -- the prompts --------------------------------------------------------------------------------------------
    async def product_shot(
        self,
        product: Annotated[
            str, _arg("The product and what matters about it, e.g. 'a matte black ceramic mug with a bamboo lid'")
        ],
        background: Annotated[
            str, _arg("The clean background, e.g. 'light grey seamless studio sweep' (default: seamless pure white)")
        ] = "",
        image: Annotated[
            str,
            _arg(
                "Optional photo of the real product to restage: runapi://images/..., a task id, "
                "a local path or a URL (without one the product is drawn from the text)"
            ),
        ] = "",
        aspect_ratio: Annotated[str, _arg("Shape of the picture (default 1:1; completion lists the model's)")] = "",
        output_resolution: Annotated[str, _arg("1k, 2k or 4k for gpt-image-2 (default 2k)")] = "",
        model: Annotated[str, _arg(f"The model (default {DEFAULT_MODEL}; completion lists the others)")] = "",
    ) -> str:
        """A product photo on a clean studio background: generate_image from a description, or edit_image
        restaging a photo of the real product."""
        target = self.target("product_shot", {"image": image})
        assert target is not None
        product = self._text(product, "product")
        setting = self._text(background, "background", optional=True) or "seamless pure white (#FFFFFF) studio backdrop"
        look = (
            f"on a {setting}. Soft, even studio lighting with a gentle natural shadow under the product, sharp "
            "focus, true-to-life colours and materials, centred with room around it, no props, no text, no watermark."
        )
        images = [self._image(image, "image")] if image.strip() else []
        if images:
            prompt = (
                f"Restage the product in this photo ({product}) as a professional e-commerce product shot {look} "
                "Keep the product itself exactly as it is: shape, colours, labels and logos unchanged."
            )
        else:
            prompt = f"Professional e-commerce product photograph of {product}, {look}"
        model_name = self._model(model, target)
        options = self._shape(model_name, target, aspect_ratio, output_resolution, ratio="1:1", resolution="2k")
        call = self._checked(target.kind, model_name, prompt, images, options)
        goal = f"Make a clean product shot of {product}" + (" from the user's photo." if images else ".")
        return ToolPlan(goal, call.pop("_tool"), call).text()

    async def transparent_logo(
        self,
        subject: Annotated[str, _arg("What the logo or sticker shows, e.g. 'a fox head for a coffee brand'")],
        kind: Annotated[str, _arg("logo (default) or sticker")] = "",
        text: Annotated[str, _arg("Exact text to include, if any (rendered character for character)")] = "",
        style: Annotated[str, _arg("Style, e.g. 'flat vector, two colours' (default: clean flat vector)")] = "",
    ) -> str:
        """A logo or sticker ready to be cut out: a model with a transparency option when the catalog has
        one, else gpt-image-2 on a flat single-colour background."""
        kind = kind.strip().lower() or "logo"
        if kind not in ("logo", "sticker"):
            raise _bad(f"'kind' must be logo or sticker, got {kind[:40]!r}")
        subject = self._text(subject, "subject")
        look = self._text(style, "style", optional=True) or "clean flat vector style, bold simple shapes"
        wording = self._text(text, "text", optional=True)
        design = (
            f"A {look} logo of {subject}, centred, crisp edges, generous empty margin all around"
            if kind == "logo"
            else f"A die-cut sticker of {subject} in {look}, with a thick white outline around the whole design, "
            "centred, generous empty margin all around"
        )
        if wording:
            design += f". It includes the text {quote_exactly(wording)}, spelled exactly so"
        notes: list[str] = []
        params: dict[str, Any] | None = None
        if self.transparency is not None:
            model_name, params = self.transparency
            prompt = f"{design}, on a transparent background, no shadow."
            notes.append(f"`{model_name}` makes the background transparent itself ({json.dumps(params)}).")
        else:
            model_name = DEFAULT_MODEL
            # White would swallow a sticker's white outline: grey keeps the edge visible and easy to cut.
            colour = "pure white (#FFFFFF)" if kind == "logo" else "flat mid-grey (#808080)"
            prompt = (
                f"{design}. Isolated on a plain, solid, evenly lit {colour} background: no texture, gradient, "
                "shadow, frame or scenery, so the background can be removed cleanly."
            )
            notes.append(
                "No image model here has a transparency option, so the picture gets a flat single-colour "
                "background that cuts away cleanly; tell the user so."
            )
            if self.remover is not None:
                notes.append(
                    "If the user needs a real transparent PNG, offer a second step afterwards (a separate paid "
                    f'task, only if they want it): `edit_image` with `"model": "{self.remover}"` and the '
                    "result's runapi://images/... URI in `images`."
                )
        options = {"aspect_ratio": "1:1"} if self._takes("generate", model_name, "aspect_ratio", "1:1") else {}
        call = self._checked("generate", model_name, prompt, [], options, params)
        return ToolPlan(f"Make a {kind} of {subject} with a background that can be transparent.",
                        call.pop("_tool"), call, notes).text()  # fmt: skip

    async def poster_with_text(
        self,
        text: Annotated[
            str, _arg("The exact words to print, e.g. 'GRAND OPENING · MAY 3' (kept character for character)")
        ],
        theme: Annotated[str, _arg("What the design shows and its mood, e.g. 'a bakery at dawn, warm watercolour'")],
        format: Annotated[str, _arg("poster (default, portrait) or banner (wide)")] = "",
        aspect_ratio: Annotated[
            str, _arg("Shape (default: 2:3 for a poster, 3:1 for a banner, or the closest the model has)")
        ] = "",
        output_resolution: Annotated[str, _arg("1k, 2k or 4k for gpt-image-2 (default 2k)")] = "",
        model: Annotated[str, _arg(f"The model (default {DEFAULT_MODEL}, which renders text well)")] = "",
    ) -> str:
        """A poster or banner whose text reads exactly as given: generate_image with the text quoted exactly."""
        target = self.target("poster_with_text", {})
        assert target is not None
        shape = format.strip().lower() or "poster"
        if shape not in _SHAPES:
            raise _bad(f"'format' must be poster or banner, got {shape[:40]!r}")
        wording = self._text(text, "text")
        theme = self._text(theme, "theme")
        quoted = quote_exactly(wording)
        prompt = (
            f"A {shape} design: {theme}. The only text on it reads exactly {quoted}: spelled exactly so, with "
            "the same capital letters, punctuation and line breaks, nothing added, left out or translated. "
            "Large, legible typography with a clear hierarchy and generous margins."
        )
        model_name = self._model(model, target)
        allowed = self.field_values(target, model_name, "aspect_ratio")
        ratio = next((r for r in _SHAPES[shape] if r in allowed), "")
        options = self._shape(model_name, target, aspect_ratio, output_resolution, ratio=ratio, resolution="2k")
        call = self._checked("generate", model_name, prompt, [], options)
        notes = [
            f"Keep the text exactly {quoted} in the prompt: do not retype, translate or correct it. Check the "
            "finished picture for spelling and tell the user if any letter differs."
        ]
        return ToolPlan(f"Make a {shape} that reads exactly {quoted}.", call.pop("_tool"), call, notes).text()

    async def background_edit(
        self,
        image: Annotated[str, _arg("The picture: runapi://images/..., a task id, a local path or a URL")],
        new_background: Annotated[
            str,
            _arg("What to put behind the subject instead, e.g. 'a sunny beach'; leave empty to remove the background"),
        ] = "",
        model: Annotated[
            str, _arg("The edit model (default: recraft-remove-background to remove, gpt-image-2 to replace)")
        ] = "",
    ) -> str:
        """Remove a picture's background (a cut-out) or replace it with another: edit_image on the given image."""
        replacement = self._text(new_background, "new_background", optional=True)
        target = self.target("background_edit", {"new_background": replacement})
        assert target is not None
        images = [self._image(image, "image")]
        model_name = self._model(model, target)
        if replacement:
            prompt = (
                f"Replace the background with {replacement}. Keep the main subject exactly as it is: same shape, "
                "colours, details, pose and position. Match the light, colour and shadows of the subject to the new "
                "background so it looks photographed there."
            )
            goal = f"Put the subject of the user's picture in front of {replacement}."
        else:
            prompt = "Remove the background completely and keep only the main subject, with clean edges."
            goal = "Cut the subject of the user's picture out of its background."
        call = self._checked("edit", model_name, prompt, images, {})
        notes: list[str] = []
        spec = self._spec(model_name, target)
        if spec is not None and not spec.takes_prompt:
            notes.append(f"`{spec.slug}` takes no instructions: the prompt is only a label and is not sent.")
        return ToolPlan(goal, call.pop("_tool"), call, notes).text()

    async def consistent_character(
        self,
        reference_image: Annotated[
            str, _arg("The picture that shows the character: runapi://images/..., a task id, a local path or a URL")
        ],
        scene: Annotated[str, _arg("The new scene, e.g. 'ordering coffee in a rainy Paris cafe, evening'")],
        character: Annotated[
            str,
            _arg(
                "Optional name or short description that helps keep details, e.g. 'Mina, "
                "a red-haired courier in a yellow jacket'"
            ),
        ] = "",
        aspect_ratio: Annotated[str, _arg("Shape of the new picture (default: the model's own choice)")] = "",
        model: Annotated[str, _arg(f"The edit model (default {DEFAULT_MODEL})")] = "",
    ) -> str:
        """The same character in a new scene: edit_image with the reference picture and the scene."""
        target = self.target("consistent_character", {})
        assert target is not None
        images = [self._image(reference_image, "reference_image")]
        scene = self._text(scene, "scene")
        who = self._text(character, "character", optional=True)
        named = f" ({who})" if who else ""
        prompt = (
            f"Show the same character as in the reference image{named} in a new scene: {scene}. Keep their "
            "identity exactly: face, hairstyle, body proportions, clothing, colours and distinctive marks stay as "
            "in the reference; only pose, expression, setting and lighting change to fit the scene."
        )
        model_name = self._model(model, target)
        options = self._shape(model_name, target, aspect_ratio, "", ratio="", resolution="")
        call = self._checked("edit", model_name, prompt, images, options)
        notes = [
            "For more scenes, call again with the same reference image (not the previous scene's result), so "
            "details do not drift from one picture to the next."
        ]
        return ToolPlan("Put the user's character in a new scene, unchanged.", call.pop("_tool"), call, notes).text()

    async def upscale_for_print(
        self,
        image: Annotated[str, _arg("The picture: runapi://images/..., a task id, a local path or a URL")],
        print_size: Annotated[
            str,
            _arg(
                "The print: a paper size (A4, A3, letter, ...) or a size with its unit, "
                "e.g. '30x40 cm', '8x10 in', '7200x4800 px'"
            ),
        ],
        dpi: Annotated[str, _arg(f"Print density in dots per inch (default {DEFAULT_DPI})")] = "",
        image_size: Annotated[
            str,
            _arg(
                "The picture's size in pixels, e.g. '1024x1536' (needed only when it is "
                "not a picture of this server's library)"
            ),
        ] = "",
        model: Annotated[str, _arg(f"The upscale model (default {DEFAULT_UPSCALE_MODEL})")] = "",
    ) -> str:
        """Enlarge a picture enough to print it at a size: upscale_image with the factor the print needs."""
        target = self.target("upscale_for_print", {})
        assert target is not None
        reference = self._image(image, "image")
        density = DEFAULT_DPI
        if dpi.strip():
            if not re.fullmatch(r"[0-9]{1,4}", dpi.strip()) or not 50 <= int(dpi) <= 1200:
                raise _bad(f"'dpi' must be a whole number from 50 to 1200, got {dpi[:40]!r}")
            density = int(dpi)
        needed_w, needed_h, shown = print_pixels(print_size, density)
        if image_size.strip():
            source = parse_pixels(image_size, "image_size")
        else:
            found = await self.sizes(reference)
            if found is None:
                raise _bad(
                    f"upscale_for_print needs the picture's size to choose the factor, and {reference[:200]!r} is "
                    "not a picture of this server's library: give 'image_size', e.g. '1024x1536'"
                )
            source = found
        model_name = self._model(model, target)
        spec = self.catalog.resolve(model_name, "upscale")[1]
        # Long side to long side: a landscape picture printed upright is turned, not stretched.
        need = max(max(needed_w, needed_h) / max(source), min(needed_w, needed_h) / min(source))
        have = f"The picture is {source[0]}x{source[1]} px; {shown} needs {needed_w}x{needed_h} px"
        options: dict[str, Any] = {}
        notes: list[str] = []
        arguments: dict[str, Any] = {"image": reference, "model": spec.slug}
        factor_field = spec.upscale_field
        if factor_field is None:
            notes.append(f"{have}. `{spec.slug}` enlarges by its own fixed factor: check the result's size.")
        else:
            factors = _factors(factor_field.enum, factor_field.min, factor_field.max)
            factor = next((f for f in factors if f >= need - 1e-9), factors[-1])
            options[factor_field.name] = factor
            arguments["factor"] = factor
            result = f"{source[0] * factor}x{source[1] * factor} px"
            if need <= 1:
                notes.append(
                    f"{have}: it is large enough already. Tell the user so; an upscale with factor {factor} "
                    "only sharpens detail, so make the call only if they still want that."
                )
            elif factor + 1e-9 >= need:
                notes.append(f"{have} ({need:.2f}x larger): factor {factor}, the smallest `{spec.slug}` takes "
                             f"that is enough, gives {result}.")  # fmt: skip
            else:
                dots = math.floor(density * factor / need)
                notes.append(f"{have} ({need:.2f}x larger), more than `{spec.slug}` can do: its largest factor, "
                             f"{factor}, gives {result}, about {dots} dpi at that size. Tell the user.")  # fmt: skip
        try:
            self.catalog.validate("upscale", spec.slug, prompt=None, image_count=1, options=options)
        except CatalogError as exc:
            raise _bad(f"prompt upscale_for_print: {exc}") from None
        return ToolPlan(f"Upscale the user's picture for a print of {shown}.", "upscale_image", arguments,
                        notes).text()  # fmt: skip

    # -- checks shared by the prompts -------------------------------------------------------------------------
    @staticmethod
    def _text(value: str, name: str, *, optional: bool = False) -> str:
        value = value.strip()
        if not value and not optional:
            raise _bad(f"'{name}' must not be empty")
        if len(value) > MAX_TEXT_CHARS:
            raise _bad(f"'{name}' is too long: at most {MAX_TEXT_CHARS} characters")
        problem = text_problem(value)
        if problem is not None:
            raise _bad(f"'{name}': {problem}")
        return value

    @staticmethod
    def _image(value: str, name: str) -> str:
        value = value.strip()
        if not value:
            raise _bad(f"'{name}' must not be empty")
        if len(value) > MAX_IMAGE_REF_CHARS or value.lower().startswith("data:"):
            raise _bad(
                f"'{name}' must be a runapi://images/... URI, a task id, a local path or a URL (a data: URI or "
                f"anything over {MAX_IMAGE_REF_CHARS} characters does not belong in a prompt)"
            )
        problem = text_problem(value)
        if problem is not None:
            raise _bad(f"'{name}': {problem}")
        return value

    def _model(self, model: str, target: ModelTarget) -> str:
        name = model.strip() or target.default
        if not self._fits(name, target):
            offered = self.models_for(target)
            raise _bad(f"'model' {name[:100]!r} does not fit this prompt; allowed: {', '.join(offered)}")
        return name

    def _takes(self, kind: RequestKind, model: str, field_name: str, value: str) -> bool:
        fspec = self.catalog.resolve(model, kind)[1].fields.get(field_name)
        return fspec is not None and (fspec.enum is None or value in fspec.enum)

    def _shape(
        self, model: str, target: ModelTarget, aspect_ratio: str, output_resolution: str, *, ratio: str, resolution: str
    ) -> dict[str, str]:
        """aspect_ratio and output_resolution for the call: the user's (checked later with the rest), else
        the prompt's choice where the model takes it."""
        options: dict[str, str] = {}
        chosen: set[str] = set()  # the prompt's own picks, not the user's
        for name, given, preferred in (
            ("aspect_ratio", aspect_ratio.strip(), ratio),
            ("output_resolution", output_resolution.strip(), resolution),
        ):
            if given:
                options[name] = given
            elif preferred and self._takes(target.kind, model, name, preferred):
                options[name] = preferred
                chosen.add(name)
        # A pick of the prompt's own never breaks one of the model's rules (GPT Image 2.5 takes 2k only with an
        # aspect ratio other than auto): it steps aside, and what the user chose is checked as given.
        self.catalog.resolve(model, target.kind)[1].step_aside(options, chosen)
        return options

    def _checked(
        self,
        kind: RequestKind,
        model: str,
        prompt: str,
        images: list[str],
        options: dict[str, str],
        params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The call's arguments after the tool's own catalog check (``_tool`` names the tool)."""
        try:
            self.catalog.validate(kind, model, prompt=prompt, image_count=len(images), options=options, params=params)
        except CatalogError as exc:
            raise _bad(f"{exc}") from None
        call: dict[str, Any] = {"_tool": "generate_image" if kind == "generate" else "edit_image", "prompt": prompt}
        if images:
            call["images"] = images
        call["model"] = model
        call.update(options)
        if params:
            call["params"] = params
        return call


def _factors(enum: tuple[Any, ...] | None, low: float | None, high: float | None) -> list[int]:
    """The whole factors a model takes, smallest first (an open range is capped at 16)."""
    if enum is not None:
        return sorted(int(v) for v in enum if isinstance(v, int | float) and float(v).is_integer() and v >= 1)
    start = max(1, math.ceil(low if low is not None else 1))
    stop = min(16, math.floor(high if high is not None else 16))
    return list(range(start, stop + 1)) or [1]
