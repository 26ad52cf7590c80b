"""Private text helpers: sanitising everything read from upstream, error messages out of any body shape,
Retry-After.

Every string that comes from RunAPI or an image host (JSON bodies, keys included, and the headers the client
reads) passes :func:`clean_text` before anything else sees it: lone surrogates would crash the MCP writer
(they cannot be encoded as UTF-8), control and bidi-override characters can hide or reorder text in a
terminal, a megabyte-long string bloats every result it lands in, and RunAPI may echo the API key back.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from collections.abc import Mapping
from typing import Any

import httpx

from runapi_mcp.redaction import Redactor

MAX_MESSAGE_CHARS = 500
# Big enough for any signed URL or error text seen in practice, small enough that one hostile string
# cannot bloat a tool result.
MAX_STRING_CHARS = 8192
# RunAPI's answers nest 3 or 4 levels; 64 leaves room for odd proxies while bounding the recursion below.
MAX_JSON_DEPTH = 64
# Integers outside this range are of no use to any consumer and make float() overflow.
_INT_LIMIT = 2**63
_SURROGATES = re.compile("[\ud800-\udfff]")
# C0 controls except \t \n \r, DEL, C1 controls (\x9b is a terminal escape), and the bidi embedding,
# override and isolate characters ("Trojan Source").
_INVISIBLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# Only bearer-shaped tokens: what any error message gets scrubbed of, whoever built it.
_BEARER_ONLY = Redactor()
_MESSAGE_KEYS = ("message", "detail", "msg", "error_description", "description", "reason", "title")
_CODE_KEYS = ("code", "error_code", "type")
_CODE_LIKE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-amzn-requestid")
# A request field's name as RunAPI's validation errors give it (``source_image_urls``, ``source.url``).
_FIELD_LIKE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\[\]]{0,63}")
MAX_REQUEST_ID_CHARS = 128


class UnusableJSONError(ValueError):
    """:func:`read_json` could not make a usable value of a body; the client turns it into RunAPIResponseError.

    ``transient`` is true when asking again may help (a body cut short), false when the answer is hostile
    (nested too deeply) and asking again would only repeat it.
    """

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def clean_text(text: str, redactor: Redactor | None = None, *, limit: int = MAX_STRING_CHARS) -> str:
    """``text`` safe to pass on: lone surrogates -> U+FFFD, invisible controls removed, secrets masked, capped.

    Redaction runs after the controls are gone (a key with a NUL spliced in is still the key) and before
    the cap (so a cut can never leave half a key behind).
    """
    text = _INVISIBLE.sub("", _SURROGATES.sub("\ufffd", text))
    if redactor is not None:
        text = redactor(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clean_json(value: Any, redactor: Redactor, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A copy of decoded JSON with every string, keys included, passed through :func:`clean_text`.

    Numbers no consumer can use (NaN, infinities, integers beyond 64 bits) become ``None``. Nesting deeper
    than ``max_depth`` raises :class:`UnusableJSONError`, so the recursion here stays shallow.
    """

    def walk(item: Any, depth: int) -> Any:
        if isinstance(item, str):
            return clean_text(item, redactor)
        if item is None or isinstance(item, bool):
            return item
        if isinstance(item, int):
            return item if -_INT_LIMIT <= item < _INT_LIMIT else None
        if isinstance(item, float):
            return item if math.isfinite(item) else None
        if depth >= max_depth:
            raise UnusableJSONError(f"the answer is nested more than {max_depth} levels deep", transient=False)
        if isinstance(item, Mapping):
            return {clean_text(str(key), redactor): walk(inner, depth + 1) for key, inner in item.items()}
        if isinstance(item, list | tuple):
            return [walk(inner, depth + 1) for inner in item]
        return None  # not a JSON type: nothing downstream could use it

    return walk(value, 0)


def read_json(content: bytes, redactor: Redactor) -> Any:
    """Decode a (size-capped) body and :func:`clean_json` it; :class:`UnusableJSONError` if it is no JSON.

    Invalid UTF-8 becomes U+FFFD rather than an error: the answer may still be usable.
    """
    if not content.strip():
        raise UnusableJSONError("the body is empty", transient=True)
    text = content.decode("utf-8-sig", errors="replace")
    try:
        value = json.loads(text)
    except RecursionError:
        # The C decoder gives up cleanly at the interpreter's recursion limit; turn that into a refusal.
        raise UnusableJSONError("the answer is nested too deeply", transient=False) from None
    except ValueError:
        raise UnusableJSONError("the body is not valid JSON", transient=True) from None
    return clean_json(value, redactor)


def status_text(status_code: int) -> str:
    """The standard reason phrase ("Bad Gateway"), or "HTTP 599" for unknown codes."""
    return httpx.codes.get_reason_phrase(status_code) or f"HTTP {status_code}"


def truncate(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def scrub(text: str) -> str:
    """Clean ``text`` and mask anything that looks like a bearer token (errors apply this to every message)."""
    return clean_text(text, _BEARER_ONLY)


def header(response: httpx.Response, name: str, redactor: Redactor, *, limit: int = 1024) -> str | None:
    """A response header as :func:`clean_text` leaves it; ``None`` when absent or blank."""
    value = response.headers.get(name)
    if value is None:
        return None
    value = clean_text(value, redactor, limit=limit).strip()
    return value or None


def request_id_of(response: httpx.Response, redactor: Redactor, body: Any = None) -> str | None:
    """The request id from a header, or from a (cleaned) body's ``request_id``."""
    for name in _REQUEST_ID_HEADERS:
        value = header(response, name, redactor)
        if value:
            return truncate(value, MAX_REQUEST_ID_CHARS)
    if isinstance(body, Mapping):
        value = body.get("request_id") or body.get("requestId")
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return truncate(clean_text(str(value), redactor), MAX_REQUEST_ID_CHARS)
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
            if when.tzinfo is None:
                return None
            seconds = when.timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError, IndexError, OverflowError):  # a year 99999 and the like
            return None
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


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


def field_of(body: Any) -> str | None:
    """The request field a validation answer names (``{"error": {"field": "aspect_ratio"}}``, a pydantic
    ``loc``, or a Rails ``errors`` object with one key), when it names exactly one; else ``None``."""
    if not isinstance(body, Mapping):
        return None
    error = body.get("error")
    places = [error, body] if isinstance(error, Mapping) else [body]
    for place in places:
        assert isinstance(place, Mapping)
        name = place.get("field") or place.get("param")
        if isinstance(name, str) and _FIELD_LIKE.fullmatch(name):
            return name
        errors = place.get("errors") or place.get("detail")
        if isinstance(errors, Mapping) and len(errors) == 1:
            (name,) = errors
            if isinstance(name, str) and _FIELD_LIKE.fullmatch(name):
                return name
        if isinstance(errors, list) and len(errors) == 1 and isinstance(errors[0], Mapping):
            loc = [p for p in errors[0].get("loc") or () if isinstance(p, str) and p not in ("body", "query")]
            if len(loc) == 1 and _FIELD_LIKE.fullmatch(loc[0]):
                return loc[0]
    return None


def error_details(status_code: int, body: Any) -> tuple[str, str | None]:
    """``(message, code)`` for an error answer whose body :func:`read_json` cleaned (``None`` if it was no
    JSON: HTML or plain text from a proxy is never shown raw); the message falls back to the status text."""
    message, code = message_and_code(body)
    if code is not None and code.isdigit():
        code = None  # {"code": "402"} only repeats the status.
    return (truncate(message) if message else status_text(status_code), code)
