"""Configuration, fault and request-log types of the RunAPI simulator."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from runapi_mcp.simulator import _png

IdStyle = Literal["id", "task_id", "data"]
FaultKind = Literal[
    "status",
    "html",
    "text",
    "malformed_json",
    "slow",
    "lose_response",
    "expired_url",
    "fail_task",
    "not_image",
    "bomb",
    "huge_image",
    "trickle",
    "redirect",
    "invalid_unicode",
    "echo_key",
    "image_urls",
    "odd_json",
    "drop_callback",
    "slow_callback",
    "create_error",
]
FaultWhere = Literal["error", "status", "id", "image_url", "message", "request_id"]
FaultBody = Literal[
    # not_image
    "html",
    "svg",
    "text",
    "json",
    "empty",
    "truncated_png",
    # invalid_unicode
    "mixed",
    "high_surrogate",
    "low_surrogate",
    "nul",
    "bidi",
    # invalid_unicode (a 1 MB string) and odd_json (a 50 MB body)
    "huge",
    # odd_json
    "deep",
    "array",
]
TaskOutcome = Literal["completed", "failed", "running"]
CatalogStatus = Literal["active", "maintenance", "disabled"]
CATALOG_STATUSES: tuple[str, ...] = get_args(CatalogStatus)

FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
DEFAULT_FAIL_REASON = "content policy violation"
# Default status per fault kind when the fault names none.
_DEFAULT_STATUS: dict[str, int] = {
    "status": 500,
    "html": 502,
    "text": 503,
    "lose_response": 502,
    "create_error": 502,
    "expired_url": 403,
    "not_image": 200,
    "bomb": 200,
    "huge_image": 200,
    "redirect": 302,
    "invalid_unicode": 500,
    "echo_key": 401,
}
DOWNLOAD_KINDS = frozenset({"expired_url", "not_image", "bomb", "huge_image", "trickle", "redirect"})
"""Kinds that only hit downloads (GET under ``/images/`` and ``/files/``), whatever else they match."""
_TASK_KINDS = frozenset({"fail_task", "image_urls", "drop_callback", "slow_callback"})
_TASK_WHERES = frozenset({"error", "status", "id", "image_url"})
_WHERES: dict[str, tuple[FaultWhere, ...]] = {
    "invalid_unicode": ("error", "status", "id", "image_url", "message"),
    "echo_key": ("error", "image_url", "message", "request_id"),
}
_BODIES: dict[str, tuple[FaultBody, ...]] = {
    "not_image": ("html", "svg", "text", "json", "empty", "truncated_png"),
    "invalid_unicode": ("mixed", "high_surrogate", "low_surrogate", "nul", "bidi", "huge"),
    "odd_json": ("huge", "deep", "array"),
}
# The fields added for the hostile-upstream kinds, and the kinds each one means something to: setting
# one on another kind is a mistake worth an error (it would be silently ignored).
_KIND_FIELDS: dict[str, frozenset[str]] = {
    "where": frozenset({"invalid_unicode", "echo_key"}),
    "body": frozenset({"not_image", "invalid_unicode", "odd_json"}),
    "content_type": frozenset({"not_image", "bomb", "huge_image"}),
    "width": frozenset({"bomb", "huge_image"}),
    "height": frozenset({"bomb", "huge_image"}),
    "chunk": frozenset({"trickle"}),
    "location": frozenset({"redirect"}),
    "urls": frozenset({"image_urls"}),
    "count": frozenset({"image_urls"}),
    "size": frozenset({"odd_json"}),
}
_DEFAULT_SIZE: dict[str, tuple[int, int]] = {"bomb": (60_000, 60_000), "huge_image": (20_000, 14_000)}
HUGE_JSON_BYTES = 50_000_000
DEEP_JSON_LEVELS = 10_000
MAX_JSON_SIZE = 2**31
_HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
SCHEDULE_KEYS = ("service", "action", "model")
SETTABLE_CONFIG = (
    "legacy",
    "upload_lifetime_s",
    "status_retry_after",
    "report_progress",
    "id_style",
    "extra_schedule_rows",
)
"""The ``SimulatorConfig`` settings ``Simulator.configure`` and ``POST /_sim/config`` may change while running."""


def _default_durations() -> dict[str, float]:
    return {"1k": 12.0, "2k": 18.0, "4k": 25.0}


@dataclass
class SimulatorConfig:
    """How the simulator behaves. Every duration is in seconds and is multiplied by ``time_scale``."""

    api_key: str | None = None
    """The key every ``/api/`` request must carry as ``Authorization: Bearer``. ``None``: any bearer key
    is accepted (a request with no key at all is still refused with 401)."""
    durations: dict[str, float] = field(default_factory=_default_durations)
    """Task duration by output resolution (``1k``/``2k``/``4k``); models without one use ``1k``."""
    model_durations: dict[str, float] = field(default_factory=dict)
    """Per model slug override of ``durations``."""
    duration_jitter: float = 0.0
    """Each task's duration varies by up to +- this fraction (seeded by ``seed``)."""
    time_scale: float = 1.0
    initial_balance_cents: int = 10_000
    status_retry_after: float | None = None
    """When set, status answers of running tasks carry ``Retry-After`` with this many seconds."""
    id_style: IdStyle = "id"
    """How a create answer names the task id: ``{"id"}``, ``{"task_id"}`` or ``{"data": {"id"}}``."""
    max_upload_bytes: int = 20 * 1024 * 1024
    seed: int = 0
    report_progress: bool = False
    """Report ``progress`` on every running task (``gpt-4o-image`` always reports it)."""
    prerender: bool = False
    """Render each new task's pictures at once, in a background thread, instead of on their first download
    (benchmarks: a 4K render takes about half a second, which would otherwise land on the download)."""
    upload_lifetime_s: float = 3600.0
    """How long an uploaded file stays usable (its ``expires_at``), in seconds, NOT scaled by ``time_scale``.
    Afterwards its URL downloads as 403 (expired) and a create or ``source`` upload naming it is refused
    with 422 naming the field."""
    legacy: bool = False
    """Answer the way RunAPI did before 0.10 (for drift detection): price quotes take the create fields
    flat at the top level and refuse a nested ``params``; price schedule rows carry no ``catalog_status``;
    ``POST /api/v1/files/prepare`` and ``/confirm`` answer 404 and ``POST /api/v1/files`` takes multipart
    again; quotes and schedules need a key."""
    extra_schedule_rows: list[dict[str, Any]] = field(default_factory=list)
    """Price schedule rows for models the catalog does not know ("listed upstream but not callable here"):
    each needs ``service``, ``action`` and ``model``; the other row keys get defaults."""

    def __post_init__(self) -> None:
        if self.id_style not in get_args(IdStyle):
            raise ValueError(f"id_style must be one of {get_args(IdStyle)}, got {self.id_style!r}")
        if not (self.time_scale > 0 and math.isfinite(self.time_scale)):
            raise ValueError("time_scale must be a positive number")
        if not 0 <= self.duration_jitter < 1:
            raise ValueError("duration_jitter must be within 0..1")
        if self.max_upload_bytes <= 0:
            raise ValueError("max_upload_bytes must be positive")
        if not (self.upload_lifetime_s > 0 and math.isfinite(self.upload_lifetime_s)):
            raise ValueError("upload_lifetime_s must be a positive number")
        if self.status_retry_after is not None and not (
            self.status_retry_after >= 0 and math.isfinite(self.status_retry_after)
        ):
            raise ValueError("status_retry_after must be a non-negative number or None")
        for row in self.extra_schedule_rows:
            if not isinstance(row, Mapping) or not all(isinstance(row.get(k), str) for k in SCHEDULE_KEYS):
                raise ValueError(f"extra_schedule_rows need string {', '.join(SCHEDULE_KEYS)}, got {row!r}")


@dataclass
class Fault:
    """A fault the simulator injects (first match wins, ``times`` uses each).

    Most faults hit *requests*: they are matched per request by ``method`` and ``path_contains``.

    - ``status``: a JSON error answer (``status``, default 500; ``message``; ``retry_after``).
    - ``html``: a proxy error page (default 502; with ``status=200`` a 200 HTML page).
    - ``text``: a plain-text error (default 503).
    - ``malformed_json``: the request is handled, the answer is 200 with truncated JSON.
    - ``slow``: wait ``delay`` seconds, then handle normally.
    - ``lose_response``: handle normally (the task is created, charged), answer 502.
    - ``create_error``: handle normally (a create makes its task, charged and running), then answer
      ``status`` (default 502; ``message``) as a JSON error that still carries the answer's
      ``X-RunAPI-Task-Id``: a client learns the created task's id from the error. With an
      ``Idempotency-Key`` a retry replays the task (``task_replayed: true``).
    - ``odd_json``: handle normally, then answer the JSON in an odd shape (``body``): ``huge`` (the
      answer object with a ``padding`` string first, ``size`` bytes in all, default 50 MB, streamed
      without Content-Length), ``deep`` (a ``detail`` member nested ``size`` arrays deep, default
      10000: ``json.loads`` raises RecursionError), ``array`` (the answer inside a JSON array). For
      status polls: ``method="GET", path_contains="/api/v1/gpt_image_2"`` (the status path).

    Download faults only hit downloads (GET or HEAD under ``/images/`` and ``/files/``), whether or not
    the picture exists; each answers ``status`` if given (defaults: 200; ``expired_url`` 403, ``redirect`` 302):

    - ``expired_url``: 403 with S3-style XML.
    - ``not_image``: a 200 (or ``status``) answer with ``Content-Type: image/png`` (or ``content_type``)
      whose body is not a PNG (``body``): ``html`` (a sign-in page), ``svg`` (an SVG with a script),
      ``text``, ``json``, ``empty``, ``truncated_png`` (the first 100 bytes of a real PNG).
    - ``bomb``: a valid PNG of a few hundred KB declaring ``width`` x ``height`` (default 60000 x
      60000, 1-bit black: 3.6 gigapixels).
    - ``huge_image``: a real, valid PNG of ``width`` x ``height`` (default 20000 x 14000: 280
      megapixels, 16 colours, about 1.3 MB).
    - ``trickle``: the real answer, its headers (with its real Content-Length) at once, then its body
      ``chunk`` bytes (default 1) every ``delay`` seconds, until done or the client goes away (without
      holding up other requests; ``Simulator.open_streams`` counts the ones still going).
    - ``redirect``: ``status`` (default 302; 301/302/303/307/308) with ``Location: location``, verbatim
      (any scheme, host or relative path); no ``location``: the request's own path and query (a loop).

    Answers that plant strings: ``invalid_unicode`` plants ``message`` or, by default, the ``body``
    preset (``mixed`` (default): lone surrogates, NUL, bidi overrides, BOM, U+FFFF; ``high_surrogate``
    ``"\\ud800"``; ``low_surrogate`` ``"\\udfff"``; ``nul``; ``bidi``; ``huge``: 1 MB); ``echo_key``
    plants the caller's own bearer key (the one the answered request carried). JSON is written with
    ASCII escapes, so lone surrogates reach the wire as ``\\ud800``. ``where`` (default ``error``):

    - ``message``: the request answers ``status`` (default 500; ``echo_key``: 401) with the string in
      ``error.message``.
    - ``request_id`` (``echo_key``): the ``x-request-id`` header of the answer is the key (the request
      is handled normally; with ``status``, answered with that error instead).
    - ``error``, ``status``, ``id``, ``image_url``: a task fault, see below.

    Task faults are taken when a task is created (``method`` unset or POST, ``path_contains`` matched
    against the create path, e.g. ``"/gpt_image_2"``) and shape that task's answers, every poll:

    - ``fail_task``: the task ends ``failed`` with ``reason``.
    - ``drop_callback``: the task's ``callback_url`` is never called (recorded as dropped).
    - ``slow_callback``: the task's ``callback_url`` is called ``delay`` seconds after it ends.
    - ``image_urls``: its completed answer lists ``urls`` (verbatim: any scheme, host, length), or
      ``count`` copies of its first real image URL; with both, ``urls`` repeated to ``count`` entries.
    - ``invalid_unicode``/``echo_key`` with ``where``: ``error`` (the task ends ``failed`` with the
      string as ``error``; ``echo_key``: a message quoting ``Authorization: Bearer <key>``), ``status``
      (``invalid_unicode``: its terminal status is the string), ``id`` (``invalid_unicode``: the create
      answer's id and the status answers' id are the string; the task keeps its real id, see
      ``Simulator.task_ids``), ``image_url`` (each image URL gets a query: ``?u=<string>``;
      ``echo_key``: ``?sig=<key>&token=<key, every byte percent-encoded>``; the URLs still download).

    A new task takes the first matching task fault of each kind and ``where`` (so one task can get
    ``image_urls`` and ``echo_key`` at once).

    Examples: ``Fault("not_image", body="svg")``, ``Fault("bomb")``, ``Fault("huge_image", width=30000)``,
    ``Fault("trickle", chunk=1, delay=0.5)``, ``Fault("redirect", status=307, location="file:///etc/passwd")``,
    ``Fault("invalid_unicode", where="error", body="high_surrogate")``,
    ``Fault("echo_key", where="request_id", method="GET", path_contains="/gpt_image_2", times=None)``,
    ``Fault("image_urls", urls=["http://169.254.169.254/latest/meta-data/"])``, ``Fault("image_urls",
    count=1000)``, ``Fault("odd_json", body="deep", method="GET", path_contains="/gpt_image_2")``.
    """

    kind: FaultKind
    status: int | None = None
    retry_after: float | None = None
    """Seconds for a ``Retry-After`` header on the fault's answer."""
    retry_after_date: bool = False
    """Send ``Retry-After`` as an HTTP date instead of seconds."""
    method: str | None = None
    path_contains: str | None = None
    times: int | None = 1
    """How many requests (task faults: tasks) the fault hits; ``None``: forever."""
    delay: float = 1.0
    """Seconds to wait, for ``slow``; seconds between chunks, for ``trickle``; seconds late, for ``slow_callback``."""
    reason: str = DEFAULT_FAIL_REASON
    """The task's ``error``, for ``fail_task``."""
    message: str | None = None
    """The error message, for ``status``/``html``/``text``; the planted string, for ``invalid_unicode``."""
    field: str | None = None
    """The request field a ``status`` fault's error names (``error.field``), as RunAPI's validation errors do."""
    where: FaultWhere | None = None
    """Where ``invalid_unicode``/``echo_key`` plant their string (default ``error``)."""
    body: FaultBody | None = None
    """A named body: for ``not_image`` (default ``html``), ``invalid_unicode`` (default ``mixed``),
    ``odd_json`` (default ``huge``)."""
    content_type: str | None = None
    """The Content-Type of ``not_image``/``bomb``/``huge_image`` (default ``image/png``)."""
    width: int | None = None
    """The picture's width, for ``bomb``/``huge_image``."""
    height: int | None = None
    """The picture's height, for ``bomb``/``huge_image``."""
    chunk: int | None = None
    """Bytes per write, for ``trickle`` (default 1)."""
    location: str | None = None
    """The ``Location`` of a ``redirect`` (default: the request's own URL)."""
    urls: list[str] | None = None
    """The image URLs a task lists, for ``image_urls``."""
    count: int | None = None
    """How many images a task lists, for ``image_urls``."""
    size: int | None = None
    """``odd_json``: total bytes (``huge``) or nesting levels (``deep``)."""

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"Fault kind must be one of {', '.join(FAULT_KINDS)}, got {self.kind!r}")
        if self.method is not None:
            self.method = self.method.upper()
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"Fault status must be an HTTP status, got {self.status!r}")
        if self.times is not None and self.times < 1:
            raise ValueError("Fault times must be at least 1 (or None for forever)")
        if self.delay < 0:
            raise ValueError("Fault delay must not be negative")
        for name, kinds in _KIND_FIELDS.items():
            if getattr(self, name) is not None and self.kind not in kinds:
                raise ValueError(f"Fault field {name!r} is for {', '.join(sorted(kinds))}, not {self.kind}")
        self._check_choices()
        self._check_sizes()
        self._check_strings()
        if self.task_scoped and self.method not in (None, "POST"):
            raise ValueError(
                f"{self.kind} (where={self.where}) is taken when a task is created: method must be POST or unset"
            )

    def _check_choices(self) -> None:
        wheres = _WHERES.get(self.kind)
        if wheres is not None:
            self.where = self.where or "error"
            if self.where not in wheres:
                raise ValueError(f"{self.kind} where must be one of {', '.join(wheres)}, got {self.where!r}")
        bodies = _BODIES.get(self.kind)
        if bodies is not None:
            self.body = self.body or bodies[0]
            if self.body not in bodies:
                raise ValueError(f"{self.kind} body must be one of {', '.join(bodies)}, got {self.body!r}")
        if self.kind == "redirect" and self.status is not None and self.status not in (301, 302, 303, 307, 308):
            raise ValueError(f"redirect status must be 301, 302, 303, 307 or 308, got {self.status}")

    def _check_sizes(self) -> None:
        if self.kind in _DEFAULT_SIZE:
            default_w, default_h = _DEFAULT_SIZE[self.kind]
            self.width = default_w if self.width is None else self.width
            self.height = default_h if self.height is None else self.height
            if not (1 <= self.width <= _png.MAX_DIMENSION and 1 <= self.height <= _png.MAX_DIMENSION):
                raise ValueError(f"{self.kind} width and height must be within 1..{_png.MAX_DIMENSION}")
            if self.kind == "bomb" and _png.bomb_raw_bytes(self.width, self.height) > _png.MAX_BOMB_RAW:
                raise ValueError(f"bomb must inflate to at most {_png.MAX_BOMB_RAW} bytes")
            if self.kind == "huge_image" and _png.huge_raw_bytes(self.width, self.height) > _png.MAX_HUGE_RAW:
                raise ValueError(f"huge_image must inflate to at most {_png.MAX_HUGE_RAW} bytes")
        if self.kind == "trickle":
            self.chunk = 1 if self.chunk is None else self.chunk
            if self.chunk < 1:
                raise ValueError("trickle chunk must be at least 1 byte")
        if self.count is not None and self.count < 0:
            raise ValueError("image_urls count must not be negative")
        if self.kind == "image_urls" and self.urls is None and self.count is None:
            raise ValueError("image_urls needs urls, count or both")
        if self.kind == "odd_json" and self.body == "array" and self.size is not None:
            raise ValueError("odd_json size is for the huge and deep bodies")
        if self.kind == "odd_json" and self.body != "array":
            default = HUGE_JSON_BYTES if self.body == "huge" else DEEP_JSON_LEVELS
            self.size = default if self.size is None else self.size
            if not 1 <= self.size <= MAX_JSON_SIZE:
                raise ValueError(f"odd_json size must be within 1..{MAX_JSON_SIZE}")

    def _check_strings(self) -> None:
        if self.urls is not None:
            if not isinstance(self.urls, list | tuple) or not all(isinstance(u, str) for u in self.urls):
                raise ValueError("image_urls urls must be a list of strings")
            self.urls = list(self.urls)
            if not self.urls and self.count:
                raise ValueError("image_urls cannot repeat an empty urls list")
        # Header values must survive as one line of latin-1: anything else would break the answer
        # itself rather than test the client.
        for name in ("location", "content_type"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, str) or _HEADER_UNSAFE.search(value):
                raise ValueError(f"Fault {name} must be a string without control characters")
            try:
                value.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError(f"Fault {name} must be latin-1 (percent-encode the rest)") from None

    @property
    def http_status(self) -> int:
        return self.status if self.status is not None else _DEFAULT_STATUS.get(self.kind, 500)

    @property
    def task_scoped(self) -> bool:
        """Whether the fault is taken at task creation and shapes that task's answers."""
        return self.kind in _TASK_KINDS or (self.kind in _WHERES and self.where in _TASK_WHERES)

    def matches(self, method: str, path: str) -> bool:
        """Whether this fault applies to a request (task faults: to a task creation, POST ``path``)."""
        if method == "HEAD" and self.kind in ("trickle", "odd_json"):
            return False  # no body to reshape: leave the fault for the GET that follows
        wanted = "GET" if method == "HEAD" else method
        if self.method is not None and self.method != wanted:
            return False
        if self.path_contains is not None and self.path_contains not in path:
            return False
        if self.kind in DOWNLOAD_KINDS:
            return wanted == "GET" and path.startswith(("/images/", "/files/"))
        return True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fault:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown Fault field{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(known))}"
            )
        if "kind" not in data:
            raise ValueError("Fault needs a 'kind'")
        return cls(**dict(data))


@dataclass(frozen=True)
class LoggedRequest:
    """One request the simulator answered (control requests under ``/_sim/`` are not logged).

    The Authorization header is never stored: only whether one was sent and whether it was accepted.
    """

    method: str
    path: str
    status: int
    idempotency_key: str | None
    authorized: bool
    json: dict[str, Any] | None
    time: float
    """``time.monotonic()`` when the request arrived."""
    sent_auth: bool = False
    """Whether the request carried an Authorization header at all (downloads should not)."""
    fault: str | None = None
    """The kind of the injected fault that hit this request, if any."""
    request_id: str = ""
    query: str = ""
    """The query string as sent, except that a key an ``echo_key`` fault planted in a URL is replaced by
    ``[key]`` (the log never stores a key)."""
    carried_key: bool = False
    """Whether the query carried a key an ``echo_key`` fault planted (a client followed such a URL)."""
    user_agent: str = ""
    """The User-Agent header (which of several server instances sent the request: runapi-mcp names itself)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SentCallback:
    """One completion callback the simulator made (or dropped) to a task's ``callback_url``."""

    task_id: str
    url: str
    """The ``callback_url`` as the create gave it (its query included: tests compare it)."""
    task_status: str
    """The status the callback's body reported (``completed``, ``failed``, or a fault's string)."""
    time: float
    """``time.monotonic()`` when it was sent (or dropped)."""
    status: int | None = None
    """The HTTP status the callback got; None when it was dropped or not answered."""
    error: str | None = None
    """Why there is no status: ``dropped`` (a ``drop_callback`` fault) or the transport error."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
