"""Wire models: tolerant readers of RunAPI's answers (unknown fields are kept, never rejected).

The client hands these readers JSON it already size-capped, depth-limited, cleaned and redacted (see
``_text.read_json``). The readers still take any shape without raising anything but
:class:`RunAPIResponseError`: a hostile answer must not be able to crash the caller with a TypeError or an
OverflowError, nor make a reader do quadratic work.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from runapi_mcp.client.errors import RunAPIResponseError

__all__ = [
    "MAX_TASK_ID_CHARS",
    "Balance",
    "CatalogStatus",
    "DownloadResult",
    "PriceQuote",
    "PriceSchedule",
    "PriceSchedules",
    "RemoteImage",
    "TaskInfo",
    "TaskStatus",
    "UploadTarget",
    "UploadedFile",
    "normalize_status",
]

TaskStatus = Literal["pending", "processing", "completed", "failed"]

NO_IMAGES_ERROR = "RunAPI reported the task completed but returned no images"

# What RunAPI's SDK knows: pending and processing run, completed is done, failed failed; any other status
# ends its poll as a failure ("Unknown task status"). RunAPI's MCP core adds the done and failure words below.
# A status outside all of these ends the task as failed too: polling it until our own deadline (the
# earlier reading) kept a user waiting for a task RunAPI had given up on.
_COMPLETED = frozenset({"completed", "complete", "succeeded", "success", "finished"})
_FAILED = frozenset({"failed", "timeout", "canceled", "cancelled", "error"})
_RUNNING = frozenset({"pending", "processing"})

_ID_KEYS = ("id", "task_id", "taskId")
_STATUS_KEYS = ("status", "state", "task_status")
_IMAGE_KEYS = (
    "images",
    "image_urls",
    "output",
    "outputs",
    "result_urls",
    "urls",
    "image_url",
    "result",
    "results",
)
_URL_KEYS = ("url", "image_url", "uri", "href")
_ORIGIN_KEYS = ("origin_url", "original_url", "originUrl")
_ERROR_KEYS = ("error", "error_message", "errorMessage", "fail_reason", "failure_reason", "failMsg")
_PROGRESS_KEYS = ("progress", "percent", "percentage")
# Longer is no id RunAPI issues: it would be a hostile answer, and it goes into every poll's URL.
MAX_TASK_ID_CHARS = 256
# A task makes a handful of images; more is no answer worth downloading (and bounds the dedup work).
MAX_IMAGES = 64


@contextmanager
def _reading(what: str) -> Iterator[None]:
    """Turn anything but RunAPIResponseError raised while reading ``what`` into one."""
    try:
        yield
    except RunAPIResponseError:
        raise
    except Exception as exc:  # a hostile shape must never escape as anything else
        raise RunAPIResponseError(f"{what} could not be read ({type(exc).__name__})") from None


def normalize_status(raw: str | None) -> TaskStatus:
    """Map RunAPI's status words onto four (case-insensitive); an unknown word is a failure, as RunAPI's SDK
    has it. An answer naming no status at all (a create acknowledged with its id only) is pending."""
    value = (raw or "").strip().lower()
    if not value or value == "pending":
        return "pending"
    if value in _COMPLETED:
        return "completed"
    if value == "processing":
        return "processing"
    return "failed"


def _failure_text(raw_status: str | None, error: str | None) -> str:
    """A failed task's error in RunAPI's own words, saying which status ended it when it was not "failed"."""
    status = (raw_status or "failed").strip()
    if status.lower() == "failed":
        return error or "RunAPI reported the task failed without giving a reason"
    known = status.lower() in _FAILED
    what = f"RunAPI reported the task as {status!r}" if known else f"RunAPI reported an unknown task status {status!r}"
    return f"{what}: {error}" if error else what


def _usage_cents(value: Any) -> int | None:
    """``usage.cost`` (US dollars, a float: RunAPI's settlement for the task) in whole cents, rounded up so
    that spend is never under-counted; None when absent or not a usable amount."""
    if not isinstance(value, Mapping):
        return None
    cost = value.get("cost")
    if isinstance(cost, bool) or not isinstance(cost, int | float):
        return None
    cents = float(cost) * 100
    if not math.isfinite(cents) or cents < 0 or cents > 2**53:
        return None
    return math.ceil(round(cents, 6))


def _envelope(
    body: Any, what: str, own_keys: tuple[str, ...], wrappers: tuple[str, ...] = ("data",)
) -> Mapping[str, Any]:
    """The object that describes the thing: ``body`` itself, or what it wraps (``{"data": {...}}``).

    A wrapper is opened only while the object in hand has none of ``own_keys`` of its own.
    """
    if not isinstance(body, Mapping):
        raise RunAPIResponseError(f"expected a JSON object describing {what}, got {type(body).__name__}")
    payload: Mapping[str, Any] = body
    for key in wrappers:
        inner = payload.get(key)
        if isinstance(inner, Mapping) and not any(_present(payload.get(own)) for own in own_keys):
            payload = inner
    return payload


def _present(value: Any) -> bool:
    return value is not None and value != "" and not isinstance(value, bool)


def _lookup(key: str, *sources: Mapping[str, Any]) -> Any:
    for source in sources:
        value = source.get(key)
        if value is not None:
            return value
    return None


def _string(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str | int):
        text = str(value).strip()
        return text or None
    return None


def _image_of(item: Any) -> RemoteImage | None:
    if isinstance(item, str):
        url = item.strip()
        return RemoteImage(url=url) if url else None
    if isinstance(item, Mapping):
        found = next((u for key in _URL_KEYS if (u := _string(item.get(key)))), None)
        if found is None:
            return None
        origin = next((o for key in _ORIGIN_KEYS if (o := _string(item.get(key)))), None)
        return RemoteImage.model_validate({**item, "url": found, "origin_url": origin})
    return None


def _images_of(value: Any, depth: int = 0) -> tuple[list[RemoteImage], int]:
    """The distinct images in ``value`` (at most MAX_IMAGES), and how many entries it listed in all."""
    if isinstance(value, str | Mapping):
        image = _image_of(value)
        if image is not None:
            return [image], 1
        if isinstance(value, Mapping) and depth < 2:
            return _images_in(value, depth + 1)
        return [], 0
    if isinstance(value, list):
        images: list[RemoteImage] = []
        seen: set[str] = set()
        listed = 0
        for item in value:
            image = _image_of(item)
            if image is None:
                continue
            listed += 1
            if image.url not in seen and len(images) < MAX_IMAGES:
                seen.add(image.url)
                images.append(image)
        return images, listed
    return [], 0


def _images_in(source: Mapping[str, Any], depth: int = 0) -> tuple[list[RemoteImage], int]:
    for key in _IMAGE_KEYS:
        images, listed = _images_of(source.get(key), depth)
        if images:
            return images, listed
    return [], 0


def _error_of(value: Any, depth: int = 0) -> str | None:
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, Mapping) and depth < 4:
        for key in ("message", "detail", "msg", "reason"):
            text = _error_of(value.get(key), depth + 1)
            if text:
                return text
    return None


def _progress_of(value: Any) -> float | None:
    """0..1 from ``0.45``, ``45``, ``"45"`` or ``"45%"``; ``None`` when it is not a number."""
    if isinstance(value, bool) or value is None:
        return None
    percent = False
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            percent, text = True, text[:-1].strip()
        try:
            number = float(text)
        except ValueError:
            return None
    elif isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            return None
    else:
        return None
    if math.isnan(number) or math.isinf(number):
        return None
    if percent or number > 1:
        number /= 100
    return min(1.0, max(0.0, number))


class RemoteImage(BaseModel):
    """An output image RunAPI keeps for about 7 days."""

    model_config = ConfigDict(extra="allow")

    url: str
    origin_url: str | None = None


class TaskInfo(BaseModel):
    """What RunAPI says about a task, whatever shape the answer had."""

    model_config = ConfigDict(extra="allow")

    id: str
    status: TaskStatus
    raw_status: str | None = None
    images: list[RemoteImage] = Field(default_factory=list)
    # How many image entries the answer listed, duplicates and those past MAX_IMAGES included:
    # ``images`` keeps each distinct URL once, and the caller says so when they differ.
    listed_images: int = 0
    error: str | None = None
    progress: float | None = None
    model: str | None = None
    retry_after: float | None = None
    # The create matched an earlier one by its idempotency key: the same task, not a second charge.
    replayed: bool = False
    # What RunAPI says the task cost (its ``usage.cost``, in whole cents), once it says so: completed tasks.
    cost_cents: int | None = None
    raw: dict[str, Any] = Field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        return self.status in ("completed", "failed")

    @classmethod
    def from_response(cls, body: Any, *, retry_after: float | None = None, header_id: str | None = None) -> Self:
        """Read a create or status answer: ``{"id"}``, ``{"task_id"}`` or ``{"data": {...}}``; ``header_id`` (the
        ``X-RunAPI-Task-Id`` header) names the task where the body does not."""
        with _reading("the task answer"):
            return cls._read(body, retry_after, header_id)

    @classmethod
    def _read(cls, body: Any, retry_after: float | None, header_id: str | None = None) -> Self:
        payload = _envelope(body, "a task", _ID_KEYS)
        sources = (payload, body) if payload is not body else (body,)
        task_id = next((i for key in _ID_KEYS if (i := _string(_lookup(key, *sources)))), None) or header_id
        if task_id is None:
            raise RunAPIResponseError("the answer has no task id")
        if len(task_id) > MAX_TASK_ID_CHARS:
            raise RunAPIResponseError(f"the answer's task id is longer than {MAX_TASK_ID_CHARS} characters")
        raw_status = next((s for key in _STATUS_KEYS if (s := _string(_lookup(key, *sources)))), None)
        status = normalize_status(raw_status)
        images, listed = _images_in(payload)
        if not images and payload is not body:
            images, listed = _images_in(body)
        error = next((e for key in _ERROR_KEYS if (e := _error_of(_lookup(key, *sources)))), None)
        if status == "completed" and not images:
            status, error = "failed", error or NO_IMAGES_ERROR
        elif status == "failed":
            error = _failure_text(raw_status, error)
        progress = next(
            (p for key in _PROGRESS_KEYS if (p := _progress_of(_lookup(key, *sources))) is not None), None
        )
        if status == "completed":
            progress = 1.0
        model = _lookup("model", *sources)
        return cls(
            id=task_id,
            status=status,
            raw_status=raw_status,
            images=images,
            listed_images=listed,
            error=error,
            progress=progress,
            model=model if isinstance(model, str) else None,
            retry_after=retry_after,
            replayed=_lookup("task_replayed", *sources) is True,
            cost_cents=_usage_cents(_lookup("usage", *sources)),
            raw=dict(body),
        )


def _optional_int(value: Any) -> int | None:
    """An int from a number or numeric string; ``None`` for anything else (never a validation error)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else None  # no count of cents or bytes is that large
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else _optional_int(round(value))
    if isinstance(value, str):
        try:
            return _optional_int(float(value.strip()))
        except (ValueError, OverflowError):
            return None
    return None


_OptionalInt = Annotated[int | None, BeforeValidator(_optional_int)]


class UploadedFile(BaseModel):
    """A file uploaded to RunAPI; put ``url`` into ``source_image_urls``. Temporary, like outputs."""

    model_config = ConfigDict(extra="allow")

    url: str
    file_name: str | None = None
    size_bytes: _OptionalInt = None
    mime_type: str | None = None
    expires_at: str | None = None

    @classmethod
    def from_response(cls, body: Any) -> Self:
        with _reading("the upload answer"):
            payload = _envelope(body, "the upload", ("url",), wrappers=("data", "file"))
            url = _string(payload.get("url")) or _string(payload.get("file_url"))
            if url is None:
                raise RunAPIResponseError("the upload answer has no file url")
            fields = dict(payload)
            fields["url"] = url
            for key in ("file_name", "mime_type", "expires_at"):
                fields[key] = _string(fields.get(key)) if key in fields else None
            return cls.model_validate(fields)


class UploadTarget(BaseModel):
    """Where an upload's bytes go (``POST /api/v1/files/prepare``): a storage URL and the headers it wants."""

    model_config = ConfigDict(extra="allow")

    signed_id: str
    upload_url: str
    headers: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def from_response(cls, body: Any) -> Self:
        with _reading("the upload preparation answer"):
            payload = _envelope(body, "the upload target", ("signed_id",), wrappers=("data", "direct_upload"))
            signed_id, url = _string(payload.get("signed_id")), _string(payload.get("upload_url"))
            if signed_id is None or url is None:
                raise RunAPIResponseError("the upload preparation answer has no signed_id or upload_url")
            raw_headers = payload.get("headers")
            headers = raw_headers if isinstance(raw_headers, Mapping) else {}
            if len(headers) > 32:
                raise RunAPIResponseError("the upload preparation answer asks for more than 32 headers")
            kept = {str(k): v for k, v in headers.items() if isinstance(v, str)}
            return cls(signed_id=signed_id, upload_url=url, headers=kept)


# A model RunAPI marks so is not called: the create would be refused, or worse, run on a degraded route.
CatalogStatus = Literal["active", "maintenance", "disabled"]


class PriceSchedule(BaseModel):
    """One model/action's row of ``GET /api/v1/price_schedules``: its price and whether it can be called."""

    model_config = ConfigDict(extra="allow")

    service: str
    action: str
    model: str | None = None
    catalog_status: str = "active"
    pricing_status: str | None = None
    unit_price_cents: _OptionalInt = None
    currency: str | None = None

    @property
    def available(self) -> bool:
        """Callable now: RunAPI marks it active (an unknown word is taken as callable: RunAPI validates)."""
        return self.catalog_status.strip().lower() not in ("maintenance", "disabled")


class PriceSchedules(BaseModel):
    """The price schedules answer, and its ``ETag`` for the next conditional read."""

    as_of: str | None = None
    rows: list[PriceSchedule] = Field(default_factory=list)
    etag: str | None = None
    # Rows that named no catalog_status (taken as active): an answer of the earlier contract, for the doctor.
    rows_without_status: int = 0

    @classmethod
    def from_response(cls, body: Any, *, etag: str | None = None) -> Self:
        with _reading("the price schedules answer"):
            payload = _envelope(body, "the price schedules", ("price_schedules",))
            listed = payload.get("price_schedules")
            if not isinstance(listed, list):
                raise RunAPIResponseError("the price schedules answer has no price_schedules list")
            rows = []
            without = 0
            for item in listed[:5000]:  # RunAPI lists a few hundred; more is no answer to keep in memory
                if not isinstance(item, Mapping):
                    continue
                service, action = _string(item.get("service")), _string(item.get("action"))
                if service is None or action is None:
                    continue
                status = _string(item.get("catalog_status"))
                if status is None:
                    without += 1
                    status = "active"
                rows.append(
                    PriceSchedule.model_validate(
                        {
                            **item,
                            "service": service,
                            "action": action,
                            "model": _string(item.get("model")),
                            "catalog_status": status,
                            "pricing_status": _string(item.get("pricing_status")),
                            "currency": _string(item.get("currency")),
                        }
                    )
                )
            return cls(as_of=_string(payload.get("as_of")), rows=rows, etag=etag, rows_without_status=without)


class Balance(BaseModel):
    """The account balance, in cents. Every field is optional: RunAPI may leave any out."""

    model_config = ConfigDict(extra="allow")

    balance_cents: _OptionalInt = None
    paid_balance_cents: _OptionalInt = None
    bonus_balance_cents: _OptionalInt = None
    spent_cents_today: _OptionalInt = None
    spent_cents_total: _OptionalInt = None

    @classmethod
    def from_response(cls, body: Any) -> Self:
        with _reading("the balance answer"):
            return cls.model_validate(dict(_envelope(body, "the balance", ("balance_cents",))))


# Where an answer may name the amount: the contract's name first, then names other pricing answers use.
_AMOUNT_KEYS = ("reservation_amount_cents", "amount_cents", "price_cents")


class PriceQuote(BaseModel):
    """What RunAPI would reserve for a task (``POST /api/v1/price_quotes``), in cents.

    ``reservation_amount_cents`` is None when the answer named no usable amount (missing, not a number,
    negative): a caller must treat that as "no quote", never as free.
    """

    model_config = ConfigDict(extra="allow")

    reservation_amount_cents: _OptionalInt = None
    currency: str | None = None

    @classmethod
    def from_response(cls, body: Any) -> Self:
        """Read ``{"price_quote": {...}}``, ``{"data": {...}}`` (either nesting) or the quote itself."""
        with _reading("the price quote answer"):
            payload = _envelope(body, "a price quote", _AMOUNT_KEYS, wrappers=("data", "price_quote", "quote"))
            fields = dict(payload)
            amount = next((a for key in _AMOUNT_KEYS if (a := _optional_int(payload.get(key))) is not None), None)
            fields["reservation_amount_cents"] = amount if amount is not None and amount >= 0 else None
            fields["currency"] = _string(payload.get("currency"))
            return cls.model_validate(fields)


@dataclass(frozen=True, slots=True)
class DownloadResult:
    """Where a downloaded image landed."""

    path: pathlib.Path
    bytes_written: int
    content_type: str | None
