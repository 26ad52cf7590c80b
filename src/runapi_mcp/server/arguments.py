"""Tool arguments: one annotated type per kind of argument, and the one place their errors are worded.

The SDK builds each tool's input schema and argument model from the function signature. Two
things it does not do by default are done here: unknown arguments are refused (``aspect_ratoi``
must not quietly become the default ratio of a paid task) and nothing is coerced (``"true"`` is
not a boolean, NaN is not a timeout). Values whose rules depend on the model (enums, ranges of
``params``) are the catalog's business; this module checks what every call shares.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any

from mcp.server.mcpserver.tools import Tool
from mcp.types import Icon, ToolAnnotations
from pydantic import AfterValidator, ConfigDict, Field, ValidationError, WithJsonSchema

from runapi_mcp.catalog import IMAGE_ARRAY_MAX_ITEMS, MAX_PARAMS, PROMPT_MAX_LENGTH, text_problem
from runapi_mcp.server.icons import tool_icons
from runapi_mcp.server.sdk import rebuild_arguments
from runapi_mcp.tasks import STATES, TaskState

MAX_TIMEOUT_S = 3600.0
# The catalog's limits for what the source leaves open are the tools' limits too.
MAX_PROMPT_CHARS = PROMPT_MAX_LENGTH
MAX_IMAGES = IMAGE_ARRAY_MAX_ITEMS
# A data: URI of the largest input image (20 MiB) is about 28 MB of base64.
MAX_IMAGE_REF_CHARS = 30_000_000

# The annotations of a tool that only reads this server's own state (the catalog, the task history).
READ_LOCAL = ToolAnnotations(readOnlyHint=True, idempotentHint=True, openWorldHint=False)


def plain_text(value: str) -> str:
    """Text that can travel on: no NUL or other control characters, no lone surrogates (the catalog's rule).
    A pydantic ``AfterValidator`` for any text argument."""
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


_PLAIN = AfterValidator(plain_text)
Text = Annotated[str, _PLAIN]

# Length constraints stand before the validator: they apply to the string itself (and read as such).
#
# Every model reads every tools/list answer in full, in every conversation, so the input schemas say what
# choosing a value needs and no more (tests/test_tool_surface.py keeps them all under 5 KB): descriptions in
# a few words, the long explanations in the server's instructions and the README, the per-model rules
# (ratios, resolutions, factors) in list_models. Each type names what its schema shows (``_shows``): its
# JSON type and the limits that guide a choice (up to 16 images, tasks per page). The guards against absurd
# input (a 200-character model name, 32,000 characters of prompt, a timeout past an hour, factor 0) are
# validated all the same, and their errors name the limit, but are not shown; nor is ``null`` for an
# optional argument: leaving it out says the same.


def _shows(json_type: str, **limits: Any) -> WithJsonSchema:
    return WithJsonSchema({"type": json_type, **limits})


PromptArg = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS), _PLAIN, _shows("string")]
ModelArg = Annotated[str, Field(max_length=200, description="See list_models"), _PLAIN, _shows("string")]
GPT_IMAGE_2_RATIOS = "auto, 1:1, 3:2, 2:3, 4:3, 3:4, 5:4, 4:5, 16:9, 9:16, 2:1, 1:2, 3:1, 1:3, 21:9, 9:21"
AspectRatioArg = Annotated[str, Field(max_length=20, description="e.g. 1:1, 16:9, 9:16"), _PLAIN, _shows("string")]
ResolutionArg = Annotated[str, Field(max_length=20, description="1k, 2k or 4k"), _PLAIN, _shows("string")]
ParamsArg = Annotated[
    dict[str, Any] | None,
    Field(max_length=MAX_PARAMS, description="Other model fields (list_models)"),
    _shows("object"),
]
WaitArg = Annotated[bool, Field(description="false: return task_id at once")]
TimeoutArg = Annotated[
    float | None,
    Field(ge=0, le=MAX_TIMEOUT_S, description="Longest wait (s)"),
    _shows("number"),
]
# Every form an image reference takes (tasks.ImageResolver reads them): the same words for both arguments.
IMAGE_FORMS = "runapi://images/..., task_id, absolute path, http(s) URL or data: URI"
ImagesArg = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=MAX_IMAGE_REF_CHARS), _PLAIN]],
    Field(min_length=1, max_length=MAX_IMAGES, description=f"Each: {IMAGE_FORMS}"),
    _shows("array", items={"type": "string"}, maxItems=MAX_IMAGES),
]
ImageArg = Annotated[
    str,
    Field(min_length=1, max_length=MAX_IMAGE_REF_CHARS, description=IMAGE_FORMS),
    _PLAIN,
    _shows("string"),
]
# The model's allowed values (topaz-upscale-image: 1, 2, 4) are the catalog's to check; upscale_image's
# description names them, so the argument needs no words of its own.
FactorArg = Annotated[int, Field(ge=1), _shows("integer")]
TaskIdArg = Annotated[str, Field(min_length=1, max_length=512), _PLAIN, _shows("string")]
_Name = Annotated[str, Field(max_length=200), _PLAIN]


def no_filter(value: str | None) -> bool:
    """Whether a name filter (list_models' model and action, list_tasks' and gallery's model) asks for nothing.

    The one rule for every filter, kept here so the tools and their tests cannot disagree: absent, empty or
    only spaces is a client filling in a default, not a name; anything else (a tab, a control character) is
    checked like any name and refused by name if it is none.
    """
    return value is None or not value.strip(" ")


def _filter_value(value: str | None) -> str | None:
    return None if no_filter(value) else value


# The blank rule runs after the text checks: a control character is refused even among spaces.
_Filter = Annotated[_Name | None, AfterValidator(_filter_value)]
ActionFilterArg = Annotated[
    _Filter,
    Field(description="e.g. text_to_image, or a family: its models' fields"),
    _shows("string"),
]
ModelNameArg = Annotated[_Filter, Field(description="A model: its fields"), _shows("string")]

# save_as: where a copy of the finished picture goes (tasks.saving checks the path before anything is sent).
# Blank is no path, as for the filters: a client filling in a default asks for no copy.
SAVE_AS_DESCRIPTION = "Also copy it to this file (extension follows the image type)"
SaveAsArg = Annotated[
    Annotated[str, Field(max_length=4096), _PLAIN] | None,
    AfterValidator(_filter_value),
    Field(description=SAVE_AS_DESCRIPTION),
    _shows("string"),
]

# list_tasks: filters and paging (the cursor is opaque: only a next_cursor this server handed out works).
MAX_PAGE = 100
TaskStatusArg = Annotated[TaskState | None, _shows("string", enum=list(STATES))]
ModelFilterArg = Annotated[_Filter, _shows("string")]
LimitArg = Annotated[int, Field(ge=1, le=MAX_PAGE, description="Tasks per page")]
CursorArg = Annotated[
    Annotated[str, Field(min_length=1, max_length=1000), _PLAIN] | None,
    Field(description="next_cursor of the previous page"),
    _shows("string"),
]

# Unknown arguments refused, no coercion ("5" is not a number), no NaN or infinity.
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, arbitrary_types_allowed=True)


def _containers_from_text(sent: Mapping[str, Any], parsed: dict[str, Any]) -> dict[str, Any]:
    """The SDK reads JSON text sent for a non-string argument as the value it spells (``parsed``), because
    Claude Desktop sends lists and objects as strings. That is kept for a JSON array or object (``images``,
    ``params``); any other text stays text, so ``"true"`` is no boolean and ``"null"`` no absent value."""
    return {key: value if isinstance(value, list | dict) else sent[key] for key, value in parsed.items()}


def strict_tool(
    fn: Callable[..., Any],
    *,
    name: str,
    title: str,
    annotations: ToolAnnotations,
    icons: list[Icon] | None = None,
) -> Tool:
    """A tool for ``fn`` whose argument model and input schema refuse unknown and coerced arguments.

    The description is ``fn``'s docstring, dedented (clients show it as it is sent). ``icons`` default to the
    tool's kind (``icons.tool_icons``): every tool has some without its registration naming them.
    """
    tool = Tool.from_function(
        fn,
        name=name,
        title=title,
        description=inspect.cleandoc(fn.__doc__ or ""),
        annotations=annotations,
        icons=icons if icons is not None else tool_icons(name),
    )
    strict = rebuild_arguments(tool, _STRICT, _containers_from_text)
    tool.parameters = _lean(strict.model_json_schema(by_alias=True))
    return tool


def _lean(schema: Any) -> Any:
    """``schema`` without pydantic's generated titles ("Timeout S", "generate_imageArguments"),
    ``"default": null`` and the ``{"type": "null"}`` branch of an optional argument's ``anyOf``.

    Titles repeat the property names; a null default and a null branch say what leaving an argument out
    says. Every model reads every tools/list answer in full, and these were a fifth of all the schemas'
    bytes. Keys of ``properties`` are names, not keywords (an argument called ``title`` stays), and values
    (``default``, ``enum``) are data, left as they are. Validation is the argument model's, unchanged:
    an explicit null is still accepted.
    """
    if isinstance(schema, list):
        return [_lean(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    branches = schema.get("anyOf")
    if isinstance(branches, list) and len(branches) == 2 and {"type": "null"} in branches:
        kept = [branch for branch in branches if branch != {"type": "null"}]
        if len(kept) == 1 and isinstance(kept[0], dict):
            schema = {**kept[0], **{k: v for k, v in schema.items() if k != "anyOf"}}
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _VALUE_KEYWORDS:
            if key != "default" or value is not None:
                out[key] = value
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: _lean(sub) for name, sub in value.items()}
        elif key != "title" or not isinstance(value, str):
            out[key] = _lean(value)
    return out


_VALUE_KEYWORDS = frozenset({"default", "enum", "const", "examples"})


def describe_invalid_arguments(tool: str, error: ValidationError, allowed: Sequence[str]) -> str:
    """One sentence per rejected argument, naming it and what it takes (never echoing the value)."""
    takes = f"allowed: {', '.join(allowed)}" if allowed else f"{tool} takes no arguments"
    parts: list[str] = []
    for item in error.errors(include_url=False, include_input=False):
        field = _field_name(item["loc"])
        kind = item["type"]
        message = str(item.get("msg", "is not valid")).removeprefix("Value error, ")
        if kind == "extra_forbidden":
            parts.append(f"{field} is not an argument of {tool}; {takes}")
        elif kind == "missing":
            parts.append(f"{field} is required")
        elif kind in ("finite_number", "float_parsing") or "infinity" in message.lower():
            parts.append(f"{field} must be a finite number")
        elif kind in ("too_short", "string_too_short") and item.get("ctx", {}).get("min_length") == 1:
            parts.append(f"{field} must not be empty")
        elif kind == "string_too_long":
            parts.append(f"{field} is too long: at most {item.get('ctx', {}).get('max_length')} characters")
        elif kind == "too_long":
            parts.append(f"{field} has too many items: at most {item.get('ctx', {}).get('max_length')}")
        else:
            parts.append(f"{field}: {message[:1].lower()}{message[1:]}")
    return f"Invalid arguments for {tool}: " + "; ".join(dict.fromkeys(parts))


def describe_argument_names(tool: str, names: Iterable[object], allowed: Sequence[str]) -> str | None:
    """The error for argument names that are not plain text (a lone surrogate, a control character)."""
    for name in names:
        if not isinstance(name, str) or text_problem(name) is not None:
            shown = ascii(name) if len(ascii(name)) <= 200 else ascii(name)[:196] + "...'"
            return f"Invalid arguments for {tool}: the argument name {shown} is not plain text; allowed: " + (
                ", ".join(allowed) or "none"
            )
    return None


# pydantic names the member of a union it tried after the field: (``timeout_s``, ``float``).
_UNION_TAGS = frozenset({"float", "int", "str", "bool", "list[str]", "dict[str,any]", "none", "function-after"})


def _field_name(loc: tuple[int | str, ...]) -> str:
    """``'images[0]'``, ``'params.seed'``: the argument as the caller wrote it, quoted (a name with quotes or
    unprintable characters as Python's repr writes it, so it can be read and copied back)."""
    if not loc:
        return "the arguments"
    name = str(loc[0])
    for part in loc[1:]:
        if isinstance(part, int):
            name += f"[{part}]"
        elif part not in _UNION_TAGS and not str(part).startswith("function-"):
            name += f".{part}"
    if not name:
        return "'' (an empty name)"
    return f"'{name}'" if name.isprintable() and "'" not in name and "\\" not in name else repr(name)
