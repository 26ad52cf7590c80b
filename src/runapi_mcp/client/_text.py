"""Private text helpers: reading error messages out of any body shape, scrubbing secrets, Retry-After."""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

MAX_MESSAGE_CHARS = 500
_BEARER = re.compile(r"(?i)\bbearer\s+[^\s\"',;]+")
_MESSAGE_KEYS = ("message", "detail", "msg", "error_description", "description", "reason", "title")
_CODE_KEYS = ("code", "error_code", "type")
_CODE_LIKE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-amzn-requestid")


def status_text(status_code: int) -> str:
    """The standard reason phrase ("Bad Gateway"), or "HTTP 599" for unknown codes."""
    return httpx.codes.get_reason_phrase(status_code) or f"HTTP {status_code}"


def truncate(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Replace every secret, and anything that looks like a bearer token, with ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _BEARER.sub("Bearer ***", text)


def request_id_of(response: httpx.Response, body: Any = None) -> str | None:
    for name in _REQUEST_ID_HEADERS:
        value = response.headers.get(name)
        if value:
            return truncate(value, 128)
    if isinstance(body, Mapping):
        value = body.get("request_id") or body.get("requestId")
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return truncate(str(value), 128)
    return None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; ``None`` if unusable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def decode_json(response: httpx.Response) -> Any:
    """The body as JSON, or raise ``ValueError``. Never guesses from the content type alone."""
    content = response.content
    if not content.strip():
        raise ValueError("empty body")
    return json.loads(content)


def _looks_like_markup(text: str) -> bool:
    head = text.lstrip()[:200].lower()
    return head.startswith("<") or "<html" in head or "<!doctype" in head


def _text_of(value: Any) -> str | None:
    """A usable message from a scalar, a dict with a message key, or a list of either."""
    if isinstance(value, str):
        value = value.strip()
        return value if value and not _looks_like_markup(value) else None
    if isinstance(value, Mapping):
        located = _located(value)
        if located:
            return located
        for key in _MESSAGE_KEYS:
            text = _text_of(value.get(key))
            if text:
                return text
        return None
    if isinstance(value, list):
        parts = [text for item in value[:5] if (text := _text_of(item))]
        if not parts:
            return None
        more = f" (and {len(value) - 5} more)" if len(value) > 5 else ""
        return "; ".join(parts) + more
    return None


def _located(item: Mapping[str, Any]) -> str | None:
    """FastAPI/pydantic style ``{"loc": [...], "msg": "..."}`` -> ``"prompt: field required"``."""
    loc, msg = item.get("loc"), item.get("msg")
    if not isinstance(msg, str) or not isinstance(loc, list) or not loc:
        return None
    parts = [str(part) for part in loc if isinstance(part, str | int) and part not in ("body", "query")]
    return f"{'.'.join(parts)}: {msg}" if parts else msg


def _code_of(value: Mapping[str, Any]) -> str | None:
    for key in _CODE_KEYS:
        code = value.get(key)
        if isinstance(code, str) and code.strip() and len(code) <= 100:
            return code.strip()
    return None


def _field_errors(value: Any) -> str | None:
    """Rails style ``{"errors": {"prompt": ["is required"]}}`` or ``{"errors": ["..."]}``."""
    if isinstance(value, Mapping):
        parts: list[str] = []
        for field, problems in list(value.items())[:5]:
            text = _text_of(problems)
            if text:
                parts.append(f"{field}: {text}")
        return "; ".join(parts) or None
    return _text_of(value)


def message_and_code(body: Any) -> tuple[str | None, str | None]:
    """Read ``(message, code)`` from any error body shape RunAPI or a proxy in front of it may send."""
    if isinstance(body, str | list):
        return _text_of(body), None
    if not isinstance(body, Mapping):
        return None, None
    message: str | None = None
    code: str | None = None
    error = body.get("error")
    if isinstance(error, Mapping):
        message = _text_of(error) or _field_errors(error.get("errors"))
        code = _code_of(error)
    for key in _MESSAGE_KEYS:
        if message:
            break
        message = _text_of(body.get(key))
    if isinstance(error, str | list):
        error_text = _text_of(error)
        if message is None:
            message = error_text
        elif error_text and _CODE_LIKE.fullmatch(error_text):
            code = error_text  # {"error": "invalid_request", "message": "..."}
    if message is None:
        message = _field_errors(body.get("errors"))
    if message is None and isinstance(body.get("data"), Mapping):
        return message_and_code(body["data"])
    return message, code or _code_of(body)


def error_details(response: httpx.Response) -> tuple[str, str | None, str | None]:
    """``(message, code, request_id)`` for an error response; the message falls back to the status text."""
    try:
        body: Any = decode_json(response)
    except ValueError:
        body = None  # HTML or plain text from a proxy: never shown raw.
    message, code = message_and_code(body)
    if code is not None and code.isdigit():
        code = None  # {"code": "402"} only repeats the status.
    return (
        truncate(message) if message else status_text(response.status_code),
        code,
        request_id_of(response, body),
    )
