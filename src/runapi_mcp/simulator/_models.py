"""Configuration, fault and request-log types of the RunAPI simulator."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

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
]
TaskOutcome = Literal["completed", "failed", "running"]

FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
DEFAULT_FAIL_REASON = "content policy violation"
# Default status per fault kind when the fault names none.
_DEFAULT_STATUS: dict[str, int] = {
    "status": 500,
    "html": 502,
    "text": 503,
    "lose_response": 502,
    "expired_url": 403,
}


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

    def __post_init__(self) -> None:
        if self.id_style not in get_args(IdStyle):
            raise ValueError(f"id_style must be one of {get_args(IdStyle)}, got {self.id_style!r}")
        if not (self.time_scale > 0 and math.isfinite(self.time_scale)):
            raise ValueError("time_scale must be a positive number")
        if not 0 <= self.duration_jitter < 1:
            raise ValueError("duration_jitter must be within 0..1")
        if self.max_upload_bytes <= 0:
            raise ValueError("max_upload_bytes must be positive")


@dataclass
class Fault:
    """A fault the simulator injects into matching requests (first match wins, ``times`` uses each).

    kinds: ``status`` (JSON error), ``html`` (proxy error page), ``text`` (plain-text error),
    ``malformed_json`` (the request is handled, the answer is 200 with truncated JSON), ``slow`` (wait
    ``delay`` seconds, then handle normally), ``lose_response`` (handle normally, answer 502),
    ``expired_url`` (downloads under ``/images/`` and ``/files/`` answer 403 with S3-style XML),
    ``fail_task`` (the next created task(s) end ``failed`` with ``reason``).
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
    """How many requests the fault hits; ``None``: forever."""
    delay: float = 1.0
    """Seconds to wait, for ``slow``."""
    reason: str = DEFAULT_FAIL_REASON
    """The task's ``error``, for ``fail_task``."""
    message: str | None = None
    """The error message, for ``status``/``html``/``text``."""

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

    @property
    def http_status(self) -> int:
        return self.status if self.status is not None else _DEFAULT_STATUS.get(self.kind, 500)

    def matches(self, method: str, path: str) -> bool:
        """Whether this fault applies to a request (``fail_task`` is matched at task creation)."""
        wanted = "GET" if method == "HEAD" else method
        if self.method is not None and self.method != wanted:
            return False
        if self.path_contains is not None and self.path_contains not in path:
            return False
        if self.kind == "expired_url":
            return path.startswith(("/images/", "/files/"))
        return True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fault:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown Fault field(s): {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
