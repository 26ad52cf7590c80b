"""Fuzzing every MCP tool through a real MCP client: bad calls are refused by name, nothing crashes.

The issue asks for "0 crashes, 0 upstream creates or uploads for invalid input, every error names a
field". Two hypothesis strategies drive the tools:

* invalid by construction: a valid call of a tool with exactly one thing made wrong. The result must
  be an error that quotes the offending field, and the simulator must see no POST (no create, no
  upload) while it runs;
* anything at all: arbitrary JSON-like arguments for any tool name. Every call must come back, in
  time, as a result; refusals send nothing upstream and name a field; and the server keeps serving.

One server (``open_app`` and an in-process client) runs for the whole module in a background event
loop; the synchronous hypothesis tests call tools through a blocking portal.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import math
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import types
from mcp.client import Client
from mcp.client._memory import InMemoryTransport
from mcp.client._transport import TransportStreams, WriteStream
from mcp.shared.message import SessionMessage
from mcp.types import CallToolResult, JSONRPCRequest

from runapi_mcp.app import open_app
from runapi_mcp.catalog import ALIASES, SOFT_DEFAULTS, CatalogError, FieldSpec, RequestKind, get_catalog
from runapi_mcp.config import Settings
from runapi_mcp.redaction import Redactor
from runapi_mcp.server import RunAPIMCPServer
from runapi_mcp.server.arguments import no_filter
from runapi_mcp.simulator import Simulator
from tests.support import FAST_POLICY, SIM_KEY, make_settings, png_bytes, text_of, upstream_creates

# A tool that takes longer than this to answer counts as a hang. Valid calls finish in about 0.5 s
# against the simulator; refusals in milliseconds.
CALL_TIMEOUT_S = 10.0
# Locally every run draws new examples, many of them; CI (CI=true: the derandomized profile, conftest.py) runs
# the same fixed examples each time, fewer: a fixed set finds nothing new on its second run, and the suite's
# time on 2 cores is bounded. What a local run finds, CI then keeps.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
INVALID_EXAMPLES = 600 if IN_CI else 2000
ANYTHING_EXAMPLES = 300 if IN_CI else 1000
# No example database: it would be written into the working tree (.hypothesis/), and a failure is
# printed with its shrunk arguments anyway. No deadline: a valid call takes about 0.5 s by design.
# too_slow: drawing the large values (32k-character prompts, 80-key params) may be slow on a busy
# machine, which says nothing about the server.
FUZZ = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

PROMPT = "a red fox in snow"
CATALOG = get_catalog()
# The tools' own defaults for GPT Image 2 (sent only where a model takes them): see catalog/defaults.py.
SOFT_OPTIONS = SOFT_DEFAULTS

# Every tool's arguments and the JSON type each takes; test_the_fuzzed_schema_is_the_servers keeps
# this table equal to what the server advertises, so a new argument cannot escape the fuzz.
ARGUMENTS: dict[str, dict[str, str]] = {
    "generate_image": {
        "prompt": "str",
        "model": "str",
        "aspect_ratio": "str",
        "output_resolution": "str",
        "params": "dict?",
        "wait": "bool",
        "timeout_s": "number?",
        "save_as": "str?",
    },
    "edit_image": {
        "prompt": "str",
        "images": "list[str]",
        "model": "str",
        "aspect_ratio": "str",
        "output_resolution": "str",
        "params": "dict?",
        "wait": "bool",
        "timeout_s": "number?",
        "save_as": "str?",
    },
    "upscale_image": {
        "image": "str",
        "factor": "int",
        "model": "str",
        "wait": "bool",
        "timeout_s": "number?",
        "save_as": "str?",
    },
    "get_task": {"task_id": "str", "wait": "bool", "timeout_s": "number?"},
    "list_models": {"model": "str?", "action": "str?"},
    "check_balance": {},
    "list_tasks": {"status": "str?", "model": "str?", "limit": "int", "cursor": "str?"},
    "gallery": {"status": "str?", "model": "str?", "query": "str?", "limit": "int"},
}
REQUIRED = {
    "generate_image": ["prompt"],
    "edit_image": ["prompt", "images"],
    "upscale_image": ["image"],
    "get_task": ["task_id"],
}
TOOLS = sorted(ARGUMENTS)
ALL_ARGUMENT_NAMES = sorted({name for args in ARGUMENTS.values() for name in args})
STRING_ARGUMENTS = [
    (tool, name) for tool, args in ARGUMENTS.items() for name, kind in args.items() if kind in ("str", "str?")
]
# Every field name of every model: what a refusal of a params value quotes.
CATALOG_FIELDS = {name for action in CATALOG.actions for spec in action.models.values() for name in spec.fields}

# The limits the tools state (server/arguments.py), written out rather than imported: a changed limit
# should show up here as a failing case, not be followed silently.
MAX_TIMEOUT_S = 3600
MAX_PROMPT_CHARS = 32_000
MAX_IMAGES = 16
MAX_PARAMS = 64
HUGE_INTS = [10**400, -(10**400), 2**64, -(2**63) - 1]
NON_FINITE = [math.nan, math.inf, -math.inf]
# What the server refuses in any text: C0 controls other than tab, newline and carriage return, DEL
# (server/arguments.py), and lone UTF-16 surrogates (no UTF-8 encoder takes them).
BAD_CHARS = st.one_of(
    st.sampled_from([chr(c) for c in range(0x20) if chr(c) not in "\t\n\r"] + ["\x7f"]),
    st.integers(0xD800, 0xDFFF).map(chr),
)


class Invalid(NamedTuple):
    """A tool call that must be refused, and the field its error must quote."""

    tool: str
    arguments: dict[str, Any]
    field: str


# -- the wire: arguments delivered as a JSON client would send them ------------------------------------


class ExactArguments:
    """An in-process transport that hands the server each ``tools/call``'s arguments object as given.

    Why not the arguments ``Client.call_tool`` serialises: the SDK client dumps them with
    ``model_dump(mode="json")``, which turns NaN and +-inf into null, so a "NaN timeout" sent through
    it reaches the server as "no timeout". A client writing JSON itself can send ``NaN``,
    ``Infinity`` or ``1e400``, and the server's JSON-RPC parser takes them (see
    test_a_json_wire_carries_what_the_sdk_client_would_drop). The client still does the handshake,
    framing and result parsing; only the arguments are swapped in after it framed the request.
    """

    def __init__(self, server: RunAPIMCPServer) -> None:
        self._inner = InMemoryTransport(server)
        self.next_arguments: dict[str, Any] | None = None

    async def __aenter__(self) -> TransportStreams:
        read_stream, write_stream = await self._inner.__aenter__()
        return read_stream, _SwapArguments(write_stream, self)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._inner.__aexit__(exc_type, exc, tb)


class _SwapArguments:
    """The client's write stream, with the pending arguments put into the next tools/call."""

    def __init__(self, inner: WriteStream[SessionMessage], owner: ExactArguments) -> None:
        self._inner = inner
        self._owner = owner

    async def send(self, item: SessionMessage, /) -> None:
        message = item.message
        arguments = self._owner.next_arguments
        if isinstance(message, JSONRPCRequest) and message.method == "tools/call" and arguments is not None:
            self._owner.next_arguments = None
            params = {**(message.params or {}), "arguments": arguments}
            item = dataclasses.replace(item, message=message.model_copy(update={"params": params}))
        await self._inner.send(item)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return await self._inner.__aexit__(exc_type, exc, tb)


# -- the server under test ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Files:
    """A valid input image, and files that look like images to a careless reader but are not usable."""

    inputs: Path
    png: Path
    outside_png: Path  # a real PNG, outside the allowed directory
    text_file: Path
    empty_file: Path
    truncated: Path  # the first bytes of a PNG: a signature and no header
    folder: Path
    fifo: Path  # opening it to read would block forever
    symlink: Path  # to the valid PNG: links are not followed

    @classmethod
    def make(cls, inputs: Path, outside: Path) -> Files:
        files = cls(
            inputs=inputs,
            png=inputs / "source.png",
            outside_png=outside / "elsewhere.png",
            text_file=inputs / "notes.png",
            empty_file=inputs / "empty.png",
            truncated=inputs / "cut.png",
            folder=inputs / "folder.png",
            fifo=inputs / "pipe.png",
            symlink=inputs / "link.png",
        )
        files.png.write_bytes(png_bytes((48, 32)))
        files.outside_png.write_bytes(png_bytes((48, 32)))
        files.text_file.write_text("not a picture\n")
        files.empty_file.write_bytes(b"")
        files.truncated.write_bytes(png_bytes((48, 32))[:12])
        files.folder.mkdir()
        os.mkfifo(files.fifo)
        files.symlink.symlink_to(files.png)
        return files


@dataclass(repr=False)  # failure reports show the case, not the portal and client
class Served:
    portal: BlockingPortal
    client: Client
    transport: ExactArguments
    sim: Simulator
    files: Files
    redact: Redactor
    task_id: str = ""  # a completed task, for get_task's valid call

    def call(self, tool: str, arguments: dict[str, Any]) -> CallToolResult:
        """One tools/call with exactly these arguments; a call that does not answer in time fails the test."""

        async def call() -> CallToolResult:
            self.transport.next_arguments = arguments
            try:
                with anyio.fail_after(CALL_TIMEOUT_S):
                    return await self.client.call_tool(tool, {})
            finally:
                self.transport.next_arguments = None

        return self.portal.call(call)

    def base(self, tool: str) -> dict[str, Any]:
        """A valid call of ``tool``: the starting point every invalid case changes one thing of."""
        calls: dict[str, dict[str, Any]] = {
            "generate_image": {"prompt": PROMPT},
            "edit_image": {"prompt": PROMPT, "images": [str(self.files.png)]},
            "upscale_image": {"image": str(self.files.png)},
            "get_task": {"task_id": self.task_id},
            "list_models": {},
            "check_balance": {},
            "list_tasks": {},
            "gallery": {},
        }
        return calls[tool]

    def quotes_field(self, text: str, field: str) -> bool:
        """Whether an error text quotes ``field``: as it is, or escaped the way repr or ascii would write it.

        Each form as the server's redactor lets it out, too: every text it returns loses anything shaped
        like a secret (an argument named "Bearer x" comes back as 'Bearer ***').
        """
        forms = (f"'{field}'", repr(field), ascii(field))
        return any(form in text or self.redact(form) in text for form in forms)

    def posts(self) -> list[str]:
        """The POSTs the simulator logged (creates and uploads are POSTs; polls and downloads are not)."""
        return [r.path for r in self.sim.requests if r.method == "POST"]

    def assert_refused(self, case: Invalid) -> None:
        self.sim.clear_log()
        result = self.call(case.tool, case.arguments)
        text = text_of(result)
        assert result.is_error, f"accepted: {text[:300]}"
        assert self.quotes_field(text, case.field), f"the error does not name {case.field!r}: {text[:500]}"
        assert_no_crash(result)
        assert self.posts() == [], f"sent upstream for a refused call: {self.posts()}"

    def assert_generates(self) -> str:
        """A normal generate_image call runs to completion with one create; its task id."""
        self.sim.clear_log()
        result = self.call("generate_image", {"prompt": PROMPT})
        assert not result.is_error, text_of(result)
        data = result.structured_content
        assert data is not None and data["status"] == "completed", data
        assert len(data["images"]) == 1 and Path(data["images"][0]["path"]).is_file()
        assert len(upstream_creates(self.sim)) == 1
        assert_no_crash(result)
        return str(data["task_id"])


def assert_no_crash(result: CallToolResult) -> None:
    """No result may be the SDK's or the server's wording of an unexpected exception, or hold the key."""
    text = text_of(result)
    assert "Error executing tool" not in text, text[:500]
    assert "internal error" not in text.lower(), text[:500]
    # repr, not JSON: a refused argument may hold a lone surrogate, which JSON encoders reject.
    assert SIM_KEY not in repr(result.model_dump())


@asynccontextmanager
async def _connected(settings: Settings) -> AsyncIterator[tuple[Client, ExactArguments, Redactor]]:
    async with open_app(settings, policy=FAST_POLICY) as app:
        transport = ExactArguments(app.server)
        async with Client(transport, mode="legacy") as client:
            yield client, transport, app.server.redactor


@pytest.fixture(scope="module")
def served(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server for the module, in a background event loop the synchronous tests reach by portal."""
    root = tmp_path_factory.mktemp("fuzz")
    home, inputs, outside = root / "home", root / "inputs", root / "outside"
    for path in (home, inputs, outside):
        path.mkdir()
    files = Files.make(inputs, outside)
    simulator.reset()
    settings = make_settings(simulator, home, inputs)
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(_connected(settings)) as connected:
        client, transport, redact = connected
        served = Served(portal=portal, client=client, transport=transport, sim=simulator, files=files, redact=redact)
        served.task_id = served.assert_generates()  # the server works before any fuzzing starts
        try:
            yield served
        finally:
            _release_fifo_readers(files.fifo)
    simulator.reset()


def _release_fifo_readers(fifo: Path) -> None:
    """Unblock a read of the FIFO the server should never have started (a hang fails one test, not teardown)."""
    with contextlib.suppress(OSError):  # ENXIO: nobody is reading it, as it should be
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


# -- strategies: one thing wrong -------------------------------------------------------------------

_SMALL_TEXT = st.text(max_size=12)
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _SMALL_TEXT)
_LISTS = st.lists(_SCALARS, max_size=3)
_DICTS = st.dictionaries(_SMALL_TEXT, _SCALARS, max_size=3)


def _spells_a_container(text: str) -> bool:
    """Whether the SDK would read ``text`` as a JSON array or object (it does for list and dict arguments)."""
    try:
        return isinstance(json.loads(text), list | dict)
    except (ValueError, RecursionError):
        return False


# Text that stays text for any argument: ``"{}"`` sent as params is an empty object, by design.
_PLAIN_SMALL_TEXT = _SMALL_TEXT.filter(lambda t: not _spells_a_container(t))
_NUMBERS = st.one_of(st.integers(), st.sampled_from(HUGE_INTS), st.floats())  # NaN and +-inf included

# Values of the wrong JSON type for each kind of argument (strict: "5" is no number, 1 no boolean).
WRONG_TYPE: dict[str, st.SearchStrategy[Any]] = {
    "str": st.one_of(st.none(), st.booleans(), _NUMBERS, _LISTS, _DICTS),
    "str?": st.one_of(st.booleans(), _NUMBERS, _LISTS, _DICTS),
    "bool": st.one_of(st.none(), _NUMBERS, _SMALL_TEXT, _LISTS, _DICTS),
    "number?": st.one_of(st.booleans(), _SMALL_TEXT, _LISTS, _DICTS),
    "int": st.one_of(st.none(), st.booleans(), st.floats(), _SMALL_TEXT, _LISTS, _DICTS),
    "dict?": st.one_of(st.booleans(), _NUMBERS, _PLAIN_SMALL_TEXT, _LISTS),
    "list[str]": st.one_of(st.none(), st.booleans(), _NUMBERS, _PLAIN_SMALL_TEXT, _DICTS),
}
# Params values of the wrong type for a catalog field of each type.
WRONG_FIELD_TYPE: dict[str, st.SearchStrategy[Any]] = {
    "string": st.one_of(st.none(), st.booleans(), _NUMBERS, _LISTS, _DICTS),
    "integer": st.one_of(st.none(), st.booleans(), st.floats(), _SMALL_TEXT, _LISTS, _DICTS),
    "number": st.one_of(st.none(), st.booleans(), _SMALL_TEXT, _LISTS, _DICTS),
    "boolean": st.one_of(st.none(), _NUMBERS, _SMALL_TEXT, _LISTS, _DICTS),
    "array": st.one_of(st.none(), st.booleans(), _NUMBERS, _SMALL_TEXT, _DICTS),
}
IDENTIFIERS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,24}", fullmatch=True)
# Argument names beyond identifiers: JSON allows any key, and some look like something the SDK,
# pydantic (its union tags: none, str, int, ...) or Python may treat specially.
ANY_NAMES = st.one_of(
    IDENTIFIERS,
    st.text(max_size=24),
    st.sampled_from(["ctx", "context", "self", "_meta", "__proto__", "arguments", "kwargs", "Prompt", "prompt "]),
    st.sampled_from(["none", "str", "int", "float", "bool", "list[str]", "dict[str,any]"]),
)
# Out of 0..3600, finite: any negative number (but -0.0, which equals 0), or more than an hour.
OUT_OF_RANGE_TIMEOUTS = st.one_of(
    st.floats(max_value=0, exclude_max=True, allow_infinity=False),
    st.floats(min_value=MAX_TIMEOUT_S, exclude_min=True, allow_infinity=False),
    st.integers(max_value=-1),
    st.integers(min_value=MAX_TIMEOUT_S + 1),
)
BAD_TIMEOUTS = st.one_of(st.sampled_from([*NON_FINITE, *HUGE_INTS]), OUT_OF_RANGE_TIMEOUTS)


def with_bad_char(base: str) -> st.SearchStrategy[str]:
    """``base`` with one refused character put anywhere in it."""
    return st.tuples(st.integers(0, len(base)), BAD_CHARS).map(lambda t: base[: t[0]] + t[1] + base[t[0] :])


def _model_names() -> set[str]:
    return {name.lower() for name in [*CATALOG.model_names, *ALIASES]}


def _is_known_model(name: str) -> bool:
    return name.strip().lower() in _model_names()


def _is_known_action(name: str) -> bool:
    try:
        CATALOG.actions_for(name)
    except CatalogError:
        return False
    return True


def _kind(tool: str) -> RequestKind:
    return "edit" if tool == "edit_image" else "generate"


def _takes_cleanly(kind: RequestKind, slug: str) -> bool:
    """Whether the plain call (prompt, the tool's defaults, one image for an edit) is valid for ``slug``."""
    try:
        CATALOG.validate(kind, slug, prompt=PROMPT, image_count=int(kind == "edit"), soft_options=SOFT_OPTIONS)
    except CatalogError:
        return False
    return True


def _reserved(kind: RequestKind, slug: str) -> set[str]:
    """Fields the tool fills itself: params may not name them."""
    spec = CATALOG.resolve(slug, kind)[1]
    return {"model", "prompt"} | ({spec.image_field.name} if spec.image_field else set())


def _param_fields(kind: RequestKind, slug: str) -> list[FieldSpec]:
    spec = CATALOG.resolve(slug, kind)[1]
    return [f for name, f in sorted(spec.fields.items()) if name not in _reserved(kind, slug)]


# Every (kind, model) whose plain call is valid, so one bad param is the call's only fault.
PARAM_MODELS: list[tuple[RequestKind, str]] = [
    (kind, slug)
    for kind in ("generate", "edit")
    for slug in CATALOG.model_names
    if _takes_cleanly(kind, slug) and _param_fields(kind, slug)
]


def refused_values(field: FieldSpec) -> st.SearchStrategy[Any]:
    """Values the catalog must refuse for ``field``: wrong type, null, non-finite, out of range, bad text."""
    allowed: tuple[Any, ...] = field.enum or ()

    def not_allowed(value: Any) -> bool:
        return value not in allowed

    options: list[st.SearchStrategy[Any]] = [WRONG_FIELD_TYPE[field.type]]
    if field.type in ("integer", "number"):
        options.append(st.sampled_from(NON_FINITE))
        low, high = field.value_bounds
        outside = st.one_of(
            st.integers(max_value=math.ceil(low) - 1),
            st.integers(min_value=math.floor(high) + 1),
            st.sampled_from(HUGE_INTS),
        )
        if field.enum is not None:
            outside = st.one_of(outside, st.integers().filter(not_allowed))
        options.append(outside)
    if field.type == "string":
        options.append(with_bad_char("abc"))
        if field.enum is None:
            options.append(st.integers(field.length_limit + 1, field.length_limit + 50).map(lambda n: "x" * n))
        else:
            options.append(st.text(max_size=20).filter(not_allowed))
    if field.type == "array":
        options.append(st.lists(st.none(), min_size=1, max_size=3))  # null items
    return st.one_of(options)


def _model_base(served: Served, kind: RequestKind, slug: str) -> tuple[str, dict[str, Any]]:
    tool = "edit_image" if kind == "edit" else "generate_image"
    return tool, {**served.base(tool), "model": slug}


@st.composite
def bad_params(draw: st.DrawFn, served: Served) -> Invalid:
    """params with one refused value, unknown or reserved key, for any model whose plain call is valid."""
    kind, slug = draw(st.sampled_from(PARAM_MODELS))
    tool, base = _model_base(served, kind, slug)
    fields = {f.name: f for f in _param_fields(kind, slug)}
    choice = draw(st.sampled_from(["value", "unknown", "reserved"]))
    if choice == "value":
        field = draw(st.sampled_from(sorted(fields)))
        return Invalid(tool, {**base, "params": {field: draw(refused_values(fields[field]))}}, field)
    if choice == "unknown":
        spec_fields = set(CATALOG.resolve(slug, kind)[1].fields)
        key = draw(st.one_of(IDENTIFIERS, st.text(max_size=20)).filter(lambda k: k not in spec_fields))
        return Invalid(tool, {**base, "params": {key: draw(_SCALARS)}}, key)
    key = draw(st.sampled_from(sorted(_reserved(kind, slug))))
    return Invalid(tool, {**base, "params": {key: draw(_SCALARS)}}, f"params.{key}")


def bad_image_refs(files: Files) -> st.SearchStrategy[str]:
    """``images`` entries that name no usable image (each a kind the resolver must refuse by itself)."""
    relative = st.from_regex(r"[A-Za-z0-9_.][A-Za-z0-9_./ -]{0,40}", fullmatch=True).filter(lambda v: v.strip())
    return st.one_of(
        relative,  # not absolute, and no task has that id
        IDENTIFIERS.map(lambda n: str(files.inputs / f"missing-{n}.png")),
        st.sampled_from(
            [
                str(files.outside_png),
                files.outside_png.as_uri(),
                "/etc/hostname",
                "/etc/passwd",
                "/proc/self/environ",
                "/dev/zero",
                "/dev/urandom",
                "/",
                "~/x.png",
                "C:\\pictures\\x.png",
                "file://otherhost/x.png",
                "file:///no/such/file.png",
                str(files.inputs),
                str(files.folder),
                files.folder.as_uri(),
                str(files.fifo),
                str(files.symlink),
                str(files.text_file),
                str(files.empty_file),
                str(files.truncated),
                "/" + "a" * 5000,
                " ",
                "",
            ]
        ),
        # data: URIs that are not base64, not valid base64, or base64 of something not an image.
        st.sampled_from(
            ["data:", "data:,hello", "data:image/png,hello", "data:image/png;base64", "data:image/png;base64,!!!"]
        ),
        st.binary(max_size=64).map(lambda b: "data:image/png;base64," + base64.b64encode(b"no image" + b).decode()),
        # http(s) URLs with no host.
        st.sampled_from(
            [
                "http://",
                "https://",
                "HTTP://",
                "http:///x.png",
                "https:///a/b.png",
                "http://?x=1",
                "http://#x",
                "http://:80/x.png",
                "http://@/x.png",
                "https://user:pw@/x.png",
                "http://[/x.png",
                "http://[::1/x.png",
            ]
        ),
        IDENTIFIERS.map(lambda n: f"runapi://images/{n}"),
        st.sampled_from(["runapi://images/", "runapi://images/../../etc/passwd", "RUNAPI://IMAGES/x"]),
    )


@st.composite
def bad_images(draw: st.DrawFn, served: Served) -> Invalid:
    """One bad entry at any position among valid ones: nothing may be uploaded, not even the valid ones."""
    count = draw(st.integers(1, 4))
    index = draw(st.integers(0, count - 1))
    entries: list[Any] = [str(served.files.png)] * count
    entries[index] = draw(
        st.one_of(
            bad_image_refs(served.files),
            with_bad_char(str(served.files.png)),
            st.one_of(st.none(), st.booleans(), _NUMBERS, _LISTS, _DICTS),  # not a string at all
        )
    )
    return Invalid("edit_image", {**served.base("edit_image"), "images": entries}, f"images[{index}]")


def invalid_calls(served: Served) -> st.SearchStrategy[Invalid]:
    """A valid call of some tool with exactly one thing made wrong, and the field that thing is."""
    task_tools = ["generate_image", "edit_image"]
    timeout_tools = ["generate_image", "edit_image", "get_task"]
    gpt = {kind: CATALOG.resolve("gpt-image-2", kind)[1].fields for kind in ("generate", "edit")}

    def replace(tool: str, name: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[Invalid]:
        return values.map(lambda v: Invalid(tool, {**served.base(tool), name: v}, name))

    def each(
        pairs: Sequence[tuple[str, str]], make: Callable[[str, str], st.SearchStrategy[Invalid]]
    ) -> st.SearchStrategy[Invalid]:
        return st.sampled_from(list(pairs)).flatmap(lambda pair: make(*pair))

    def missing(tool: str, name: str) -> st.SearchStrategy[Invalid]:
        return st.just(Invalid(tool, {k: v for k, v in served.base(tool).items() if k != name}, name))

    def enum_misses(tool: str, name: str) -> st.SearchStrategy[Invalid]:
        allowed = gpt[_kind(tool)][name].enum or ()
        return replace(tool, name, st.text(max_size=25).filter(lambda v: v not in allowed))

    unknown_argument = st.sampled_from(TOOLS).flatmap(
        lambda tool: ANY_NAMES.filter(lambda n: n not in ARGUMENTS[tool]).flatmap(
            lambda name: _SCALARS.map(lambda v: Invalid(tool, {**served.base(tool), name: v}, name))
        )
    )
    wrong_type = each(
        [(tool, name) for tool, args in ARGUMENTS.items() for name in args],
        lambda tool, name: replace(tool, name, WRONG_TYPE[ARGUMENTS[tool][name]]),
    )
    text_bases = {
        "prompt": PROMPT,
        "model": "gpt-image-2",
        "aspect_ratio": "16:9",
        "output_resolution": "2k",
        "task_id": served.task_id,
        "action": "edit_image",
        "image": str(served.files.png),
        "status": "completed",
        "cursor": "bm90LWEtY3Vyc29y",
        "query": "fox",
        "save_as": "fuzz-copy.png",
    }
    bad_text = each(
        STRING_ARGUMENTS,
        lambda tool, name: replace(tool, name, with_bad_char(text_bases[name])),
    )
    qwen = "qwen-3-text-to-image"
    qwen_prompt = CATALOG.resolve(qwen, "generate")[1].fields["prompt"].length_limit
    bad_prompt = st.sampled_from(task_tools).flatmap(
        lambda tool: st.one_of(
            replace(tool, "prompt", st.sampled_from(["", " ", "\t\n "])),
            replace(tool, "prompt", st.integers(MAX_PROMPT_CHARS + 1, MAX_PROMPT_CHARS + 100).map(lambda n: "p" * n)),
        )
    )
    qwen_long_prompt = st.integers(qwen_prompt + 1, qwen_prompt + 300).map(
        lambda n: Invalid("generate_image", {"prompt": "q" * n, "model": qwen}, "prompt")
    )
    too_many_images = st.integers(MAX_IMAGES + 1, MAX_IMAGES + 8).map(
        lambda n: Invalid("edit_image", {**served.base("edit_image"), "images": [str(served.files.png)] * n}, "images")
    )
    unknown_model = st.sampled_from(task_tools).flatmap(
        lambda tool: replace(
            tool,
            "model",
            st.one_of(st.text(max_size=40), st.integers(201, 400).map(lambda n: "m" * n)).filter(
                lambda m: not _is_known_model(m)
            ),
        )
    )
    gpt_options = each([(t, n) for t in task_tools for n in ("aspect_ratio", "output_resolution")], enum_misses)
    bad_timeout = st.sampled_from(timeout_tools).flatmap(lambda tool: replace(tool, "timeout_s", BAD_TIMEOUTS))
    too_many_params = st.integers(MAX_PARAMS + 1, MAX_PARAMS + 16).map(
        lambda n: Invalid("generate_image", {"prompt": PROMPT, "params": {f"k{i}": i for i in range(n)}}, "params")
    )
    bad_task_id = st.one_of(
        replace("get_task", "task_id", st.just("")),
        replace("get_task", "task_id", st.integers(513, 700).map(lambda n: "t" * n)),
        replace("get_task", "task_id", st.text(min_size=1, max_size=80).filter(lambda t: t != served.task_id)),
    )
    bad_action = st.one_of(
        replace(
            "list_models", "action", st.text(max_size=40).filter(lambda a: not no_filter(a) and not _is_known_action(a))
        ),
        replace("list_models", "action", st.integers(201, 300).map(lambda n: "a" * n)),
    )
    return st.one_of(
        unknown_argument,
        wrong_type,
        each([(t, n) for t, required in REQUIRED.items() for n in required], missing),
        bad_text,
        bad_prompt,
        qwen_long_prompt,
        too_many_images,
        unknown_model,
        gpt_options,
        bad_timeout,
        bad_params(served),
        too_many_params,
        bad_images(served),
        bad_task_id,
        bad_action,
    )


# -- strategy: anything at all -------------------------------------------------------------------------


def json_values(served: Served) -> st.SearchStrategy[Any]:
    """Any JSON-like value, with huge integers, NaN, infinities, NUL and lone surrogates in strings.

    Some strings are ones the tools take (a prompt, a model, a real image), so the fuzz also reaches
    the checks behind the argument types and, now and then, makes a valid call.
    """
    files = served.files
    meaningful = [
        PROMPT,
        "gpt-image-2",
        "qwen-3-text-to-image",
        "topaz-upscale-image",
        "16:9",
        "4k",
        "auto",
        "edit_image",
        served.task_id,
        str(files.png),
        files.png.as_uri(),
        str(files.fifo),
        str(files.truncated),
        "/dev/zero",
        "runapi://images/x",
        "data:image/png;base64," + base64.b64encode(png_bytes((4, 4))).decode(),
        "http://",
    ]
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from([*HUGE_INTS, 2**53, -1, 0, 1, MAX_TIMEOUT_S + 1]),
        st.floats(),
        st.text(st.characters(exclude_categories=()), max_size=40),
        st.sampled_from(meaningful),
    )
    keys = st.one_of(st.sampled_from([*ALL_ARGUMENT_NAMES, "seed", "upscale_factor"]), st.text(max_size=12))
    return st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
        max_leaves=12,
    )


def any_calls(served: Served) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    """Any tool name with any arguments; half the time a tool's valid call with a few arguments laid over it.

    Arguments drawn from nothing rarely get past the argument types; laid over a valid call they also
    reach the catalog, the image resolver and the task manager (and sometimes stay valid).
    """
    values = json_values(served)
    arg_names = st.one_of(
        st.sampled_from(ALL_ARGUMENT_NAMES), st.text(st.characters(exclude_categories=()), max_size=16)
    )
    tools = st.one_of(st.sampled_from(TOOLS), st.text(st.characters(exclude_categories=()), max_size=20))
    free = st.tuples(tools, st.dictionaries(arg_names, values, max_size=6))

    def over_base(tool: str) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
        own = st.sampled_from(sorted(ARGUMENTS[tool])) if ARGUMENTS[tool] else arg_names
        overlay = st.dictionaries(st.one_of(own, arg_names), values, min_size=1, max_size=3)
        return overlay.map(lambda extra: (tool, {**served.base(tool), **extra}))

    return st.one_of(free, st.sampled_from(TOOLS).flatmap(over_base))


def _field_candidates(tool: str, arguments: dict[str, Any]) -> set[str]:
    """Names an error about this call may quote: its arguments and their items, params keys, catalog fields."""
    found = set(ARGUMENTS[tool]) | set(arguments)  # an unknown argument's own name
    found |= {f"images[{i}]" for i in range(MAX_IMAGES + 1)}
    params = arguments.get("params")
    if isinstance(params, dict):
        found |= set(params) | {f"params.{key}" for key in params}
    return found | CATALOG_FIELDS


# -- the tests -----------------------------------------------------------------------------------------


def test_a_json_wire_carries_what_the_sdk_client_would_drop() -> None:
    """Why ExactArguments exists: the server's parser takes NaN, Infinity and 1e400; the SDK client sends null."""
    line = (
        '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"generate_image","arguments":'
        '{"a":NaN,"b":Infinity,"c":-Infinity,"d":1e400,"e":1' + "0" * 400 + "}}}"
    )
    message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
    assert isinstance(message, JSONRPCRequest) and message.params is not None
    parsed = message.params["arguments"]
    assert math.isnan(parsed["a"]) and parsed["b"] == math.inf and parsed["c"] == -math.inf
    assert parsed["d"] == math.inf and parsed["e"] == 10**400
    dumped = types.CallToolRequestParams(name="x", arguments={"t": math.nan}).model_dump(mode="json")
    assert dumped["arguments"] == {"t": None}


def test_the_fuzzed_schema_is_the_servers(served: Served) -> None:
    listed = served.portal.call(served.client.list_tools)
    schemas = {tool.name: tool.input_schema for tool in listed.tools}
    assert {name: set(schema.get("properties", {})) for name, schema in schemas.items()} == {
        name: set(args) for name, args in ARGUMENTS.items()
    }
    assert {name: sorted(schema.get("required", [])) for name, schema in schemas.items()} == {
        name: sorted(REQUIRED.get(name, [])) for name in ARGUMENTS
    }
    # The qwen-3 models are the ones with a bounded seed (0..2**31-1); the seed cases below rely on it.
    qwen = CATALOG.resolve("qwen-3-text-to-image", "generate")[1].fields["seed"]
    assert (qwen.min, qwen.max) == (0, 2147483647)
    assert ("generate", "qwen-3-text-to-image") in PARAM_MODELS and ("generate", "imagen-4") in PARAM_MODELS


# The named cases, each its own test so a regression reports exactly which one.
NAMED_CASES: dict[str, Callable[[Served], Invalid]] = {
    "timeout-nan": lambda s: Invalid("generate_image", {"prompt": PROMPT, "timeout_s": math.nan}, "timeout_s"),
    "timeout-inf": lambda s: Invalid("generate_image", {"prompt": PROMPT, "timeout_s": math.inf}, "timeout_s"),
    "timeout-minus-inf": lambda s: Invalid("get_task", {"task_id": s.task_id, "timeout_s": -math.inf}, "timeout_s"),
    "timeout-10**400": lambda s: Invalid("generate_image", {"prompt": PROMPT, "timeout_s": 10**400}, "timeout_s"),
    "timeout-minus-10**400": lambda s: Invalid(
        "edit_image", {**s.base("edit_image"), "timeout_s": -(10**400)}, "timeout_s"
    ),
    "timeout-over-an-hour": lambda s: Invalid("generate_image", {"prompt": PROMPT, "timeout_s": 3600.5}, "timeout_s"),
    "prompt-nul": lambda s: Invalid("generate_image", {"prompt": "a\x00b"}, "prompt"),
    "prompt-surrogate": lambda s: Invalid("generate_image", {"prompt": "a\ud800b"}, "prompt"),
    "prompt-empty": lambda s: Invalid("generate_image", {"prompt": ""}, "prompt"),
    "prompt-too-long": lambda s: Invalid("generate_image", {"prompt": "p" * (MAX_PROMPT_CHARS + 1)}, "prompt"),
    "task-id-nul": lambda s: Invalid("get_task", {"task_id": "\x00"}, "task_id"),
    "model-unknown": lambda s: Invalid("generate_image", {"prompt": PROMPT, "model": "dall-e-9"}, "model"),
    "aspect-ratio-7:3": lambda s: Invalid("generate_image", {"prompt": PROMPT, "aspect_ratio": "7:3"}, "aspect_ratio"),
    "resolution-8k": lambda s: Invalid(
        "edit_image", {**s.base("edit_image"), "output_resolution": "8k"}, "output_resolution"
    ),
    "seed-10**400": lambda s: Invalid(
        "generate_image", {"prompt": PROMPT, "model": "imagen-4", "params": {"seed": 10**400}}, "seed"
    ),
    "seed-nan": lambda s: Invalid(
        "generate_image", {"prompt": PROMPT, "model": "imagen-4", "params": {"seed": math.nan}}, "seed"
    ),
    "qwen-3-seed-minus-1": lambda s: Invalid(
        "generate_image", {"prompt": PROMPT, "model": "qwen-3-text-to-image", "params": {"seed": -1}}, "seed"
    ),
    "params-nul-value": lambda s: Invalid(
        "generate_image",
        {"prompt": PROMPT, "model": "imagen-4", "params": {"negative_prompt": "a\x00"}},
        "negative_prompt",
    ),
    # DEL is refused in every tool argument ("NUL or other control characters"); a params value is text
    # sent upstream just the same.
    "params-del-value": lambda s: Invalid(
        "generate_image",
        {"prompt": PROMPT, "model": "imagen-4", "params": {"negative_prompt": "a\x7f"}},
        "negative_prompt",
    ),
    "params-unknown-key": lambda s: Invalid("generate_image", {"prompt": PROMPT, "params": {"sead": 1}}, "sead"),
    "params-65-keys": lambda s: Invalid(
        "generate_image", {"prompt": PROMPT, "params": {f"k{i}": i for i in range(65)}}, "params"
    ),
    "17-images": lambda s: Invalid("edit_image", {"prompt": PROMPT, "images": [str(s.files.png)] * 17}, "images"),
    "image-relative-path": lambda s: Invalid(
        "edit_image", {"prompt": PROMPT, "images": ["pictures/cat.png"]}, "images[0]"
    ),
    "image-outside": lambda s: Invalid(
        "edit_image", {"prompt": PROMPT, "images": [str(s.files.outside_png)]}, "images[0]"
    ),
    "image-missing": lambda s: Invalid(
        "edit_image", {"prompt": PROMPT, "images": [str(s.files.inputs / "nope.png")]}, "images[0]"
    ),
    "image-directory": lambda s: Invalid(
        "edit_image", {"prompt": PROMPT, "images": [str(s.files.folder)]}, "images[0]"
    ),
    "image-dev-zero": lambda s: Invalid("edit_image", {"prompt": PROMPT, "images": ["/dev/zero"]}, "images[0]"),
    "image-fifo": lambda s: Invalid("edit_image", {"prompt": PROMPT, "images": [str(s.files.fifo)]}, "images[0]"),
    "image-data-not-base64": lambda s: Invalid(
        "edit_image", {"prompt": PROMPT, "images": ["data:image/png,hello"]}, "images[0]"
    ),
    "image-data-not-an-image": lambda s: Invalid(
        "edit_image", {"prompt": PROMPT, "images": ["data:image/png;base64,aGVsbG8="]}, "images[0]"
    ),
    "image-http-no-host": lambda s: Invalid("edit_image", {"prompt": PROMPT, "images": ["http:///x.png"]}, "images[0]"),
    "image-http-port-no-host": lambda s: Invalid(
        "edit_image", {"prompt": PROMPT, "images": ["http://:80/x.png"]}, "images[0]"
    ),
    "image-http-userinfo-no-host": lambda s: Invalid(
        "edit_image", {"prompt": PROMPT, "images": ["http://@/x.png"]}, "images[0]"
    ),
    "image-http-bad-ipv6": lambda s: Invalid(
        "edit_image", {"prompt": PROMPT, "images": ["http://[/x.png"]}, "images[0]"
    ),
    "image-unknown-library-uri": lambda s: Invalid(
        "edit_image", {"prompt": PROMPT, "images": ["runapi://images/nope-0"]}, "images[0]"
    ),
    "image-second-entry-bad": lambda s: Invalid(
        "edit_image", {"prompt": PROMPT, "images": [str(s.files.png), "/etc/passwd"]}, "images[1]"
    ),
    # JSON text is read as the value it spells only for a JSON array or object where a list or object
    # is wanted (Claude Desktop's habit, server/arguments.py); the wrong container, or any other text,
    # stays text.
    "params-json-array-text": lambda s: Invalid("generate_image", {"prompt": PROMPT, "params": "[1]"}, "params"),
    "images-json-object-text": lambda s: Invalid(
        "edit_image", {"prompt": PROMPT, "images": json.dumps({"a": str(s.files.png)})}, "images"
    ),
    "wait-bool-text": lambda s: Invalid("generate_image", {"prompt": PROMPT, "wait": "false"}, "wait"),
    "timeout-null-text": lambda s: Invalid("generate_image", {"prompt": PROMPT, "timeout_s": "null"}, "timeout_s"),
    "action-null-text": lambda s: Invalid("list_models", {"action": "null"}, "action"),
    "unknown-argument-empty-name": lambda s: Invalid("generate_image", {"prompt": PROMPT, "": 1}, ""),
    "unknown-argument-named-none": lambda s: Invalid("generate_image", {"prompt": PROMPT, "none": 1}, "none"),
    # The key the server holds, sent back to it: refused, and never shown (see assert_no_crash).
    "unknown-argument-named-like-the-key": lambda s: Invalid("generate_image", {"prompt": PROMPT, SIM_KEY: 1}, SIM_KEY),
    "image-ref-holding-the-key": lambda s: Invalid(
        "edit_image", {"prompt": PROMPT, "images": [f"runapi://images/{SIM_KEY}"]}, "images[0]"
    ),
    "unknown-argument-surrogate-name": lambda s: Invalid("generate_image", {"prompt": PROMPT, "\ud800": 1}, "\ud800"),
    "list-models-unknown-argument": lambda s: Invalid("list_models", {"zzz": 1}, "zzz"),
    "check-balance-unknown-argument": lambda s: Invalid("check_balance", {"verbose": True}, "verbose"),
    # upscale_image's factor is checked against the model's own field; a model that upscales nothing is named.
    "upscale-factor-not-allowed": lambda s: Invalid(
        "upscale_image", {"image": str(s.files.png), "factor": 3}, "factor"
    ),
    "upscale-factor-zero": lambda s: Invalid("upscale_image", {"image": str(s.files.png), "factor": 0}, "factor"),
    "upscale-with-a-generator": lambda s: Invalid(
        "upscale_image", {"image": str(s.files.png), "model": "gpt-image-2"}, "model"
    ),
    "upscale-bad-image": lambda s: Invalid("upscale_image", {"image": str(s.files.text_file)}, "image"),
    # save_as is checked on the disk before anything is quoted, uploaded or created (test_save_as.py has more).
    "save-as-outside": lambda s: Invalid(
        "generate_image", {"prompt": PROMPT, "save_as": str(s.files.outside_png.with_name("copy.png"))}, "save_as"
    ),
    "save-as-existing-file": lambda s: Invalid(
        "edit_image", {**s.base("edit_image"), "save_as": str(s.files.png)}, "save_as"
    ),
    "save-as-fifo": lambda s: Invalid("upscale_image", {**s.base("upscale_image"), "save_as": str(s.files.fifo)}, "save_as"),
    "save-as-missing-directory": lambda s: Invalid(
        "generate_image", {"prompt": PROMPT, "save_as": "no/such/dir/copy.png"}, "save_as"
    ),
    "save-as-dot-dot-out": lambda s: Invalid(
        "generate_image", {"prompt": PROMPT, "save_as": "/dev/shm/../../etc/copy.png"}, "save_as"
    ),
}


@pytest.mark.parametrize("name", list(NAMED_CASES))
def test_named_invalid_case_is_refused(served: Served, name: str) -> None:
    served.assert_refused(NAMED_CASES[name](served))


def test_invalid_calls_are_refused_by_name(served: Served) -> None:
    @settings(FUZZ, max_examples=INVALID_EXAMPLES)
    @given(case=invalid_calls(served))
    def refused(case: Invalid) -> None:
        served.assert_refused(case)

    refused()
    served.assert_generates()


def test_any_arguments_never_crash_the_server(served: Served) -> None:
    """Arbitrary arguments for any tool name: always an answer in time, never a crash.

    A call that happens to be valid is made as it is (no ``wait: false`` forced in): it creates one
    task, and a waiting call must then end completed, or still running when its own timeout_s ran out.
    """

    @settings(FUZZ, max_examples=ANYTHING_EXAMPLES)
    @given(call=any_calls(served))
    def answered(call: tuple[str, dict[str, Any]]) -> None:
        tool, arguments = call
        served.sim.clear_log()
        result = served.call(tool, arguments)
        text = text_of(result)
        assert_no_crash(result)
        data = result.structured_content
        is_task = isinstance(data, dict) and "task_id" in data and "status" in data
        if result.is_error and not is_task:  # refused
            assert served.posts() == [], f"a refused call sent {served.posts()}: {text[:300]}"
            if tool in ARGUMENTS:
                candidates = _field_candidates(tool, arguments)
                assert any(served.quotes_field(text, name) for name in candidates), f"no field named: {text[:500]}"
            else:
                assert text.startswith("Unknown tool"), text[:300]
        elif tool in ("generate_image", "edit_image", "upscale_image"):  # a valid call: it made one task
            assert isinstance(data, dict) and is_task, text[:300]
            assert len(upstream_creates(served.sim)) == 1, [r.path for r in served.sim.requests]
            if not result.is_error:  # (an error here is the task's own failure upstream, with its reason)
                assert data["status"] in ("completed", "pending", "processing"), data
                if arguments.get("wait", True) is True and arguments.get("timeout_s") is None:
                    assert data["status"] == "completed", data

    answered()
    listed = served.call("list_models", {})
    assert not listed.is_error and listed.structured_content is not None
    assert "gpt-image-2" in listed.structured_content["models"]
    served.assert_generates()
