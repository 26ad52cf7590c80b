"""One hierarchy for everything that can go wrong talking to RunAPI (or an image host).

Three tiers under :class:`RunAPIError`, as in httpx and the OpenAI SDK:

- :class:`RunAPIStatusError`: an HTTP answer with an error status (one class per status family);
- :class:`RunAPITransportError`: no HTTP answer at all (:class:`RunAPIConnectionError`, :class:`RunAPITimeoutError`);
- :class:`RunAPIResponseError`: a success status whose body cannot be used (malformed JSON, no task id, not an image);
- :class:`ImageUrlRefusedError`: an image URL (or a redirect) this client will not fetch (a private or metadata
  address, credentials in the URL, not http(s)); never retried.

Every error carries ``status_code``, ``code``, ``request_id`` and ``message``; ``str(err)`` is a sentence
a user can read, e.g.
``RunAPI rejected the request (422 validation_error): prompt is required [request id abc]``.

The client builds messages only from text it already cleaned and redacted (see ``_text.clean_text``); the
constructor cleans ``message``, ``code`` and ``request_id`` once more and masks bearer tokens, so an error
built anywhere else cannot carry a lone surrogate or a control character into a tool result either.
"""

from __future__ import annotations

from typing import ClassVar

from runapi_mcp.client._text import MAX_REQUEST_ID_CHARS, scrub, truncate

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "ImageUrlRefusedError",
    "InsufficientCreditsError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RateLimitedError",
    "RunAPIConnectionError",
    "RunAPIError",
    "RunAPIResponseError",
    "RunAPIStatusError",
    "RunAPITimeoutError",
    "RunAPITransportError",
    "ServerError",
]


class RunAPIError(Exception):
    """Base class: RunAPI (or the way to it) did not give a usable answer."""

    default_summary: ClassVar[str] = "The RunAPI request failed"

    status_code: int | None
    code: str | None
    request_id: str | None
    message: str
    summary: str
    # RunAPI's id of the task the answer concerns (its X-RunAPI-Task-Id header), error answers included:
    # how a create whose answer was an error can still be found upstream.
    task_id: str | None = None
    # The request field a validation answer (400/422) names, when it names one.
    field: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        summary: str | None = None,
    ) -> None:
        """``summary`` replaces the class's opening words; ``""`` when ``message`` is a whole sentence."""
        self.message = truncate(scrub(message))
        self.status_code = status_code
        self.code = truncate(scrub(code), 100) if code is not None else None
        self.request_id = truncate(scrub(request_id), MAX_REQUEST_ID_CHARS) if request_id is not None else None
        self.summary = self.default_summary if summary is None else scrub(summary)
        super().__init__(self.message)

    def __str__(self) -> str:
        label = " ".join(str(part) for part in (self.status_code, self.code) if part is not None)
        head = f"{self.summary} ({label})" if self.summary and label else self.summary
        text = f"{head}: {self.message}" if head and self.message else (head or self.message)
        text += self._detail()
        return f"{text} [request id {self.request_id}]" if self.request_id else text

    def _detail(self) -> str:
        return ""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status_code={self.status_code!r}, code={self.code!r}, "
            f"request_id={self.request_id!r}, message={self.message!r})"
        )


class RunAPIStatusError(RunAPIError):
    """RunAPI (or an image host) answered with an error status; ``status_code`` says which."""


class RunAPITransportError(RunAPIError):
    """The request never got an HTTP answer (connection refused or reset, DNS failure, timeout)."""


class AuthenticationError(RunAPIStatusError):
    """401/403, or no API key configured at all."""

    default_summary = "RunAPI rejected the API key"


class BadRequestError(RunAPIStatusError):
    """400/422: RunAPI refused the request's content."""

    default_summary = "RunAPI rejected the request"


class InsufficientCreditsError(RunAPIStatusError):
    """402: the account cannot pay for the request."""

    default_summary = "The RunAPI account does not have enough credits"


class NotFoundError(RunAPIStatusError):
    """404 (and 410): no such task, file or route; for downloads, the image URL has expired."""

    default_summary = "RunAPI could not find it"


class ConflictError(RunAPIStatusError):
    """409: the idempotency key was already used with a different body."""

    default_summary = "RunAPI refused a reused idempotency key"


class PayloadTooLargeError(RunAPIStatusError):
    """413, or a download larger than allowed."""

    default_summary = "RunAPI refused the request as too large"


class RateLimitedError(RunAPIStatusError):
    """429: too many requests; ``retry_after`` is how long RunAPI asked to wait, in seconds."""

    default_summary = "RunAPI is rate limiting requests"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        summary: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, code=code, request_id=request_id, summary=summary)
        self.retry_after = retry_after

    def _detail(self) -> str:
        return f"; retry after {self.retry_after:g} s" if self.retry_after is not None else ""


class ServerError(RunAPIStatusError):
    """5xx: RunAPI failed on its side."""

    default_summary = "RunAPI had a server error"


class RunAPIConnectionError(RunAPITransportError):
    """The request never got an HTTP answer: connection refused, reset, DNS failure, ..."""

    default_summary = "Could not reach RunAPI"


class RunAPITimeoutError(RunAPITransportError):
    """The request timed out."""

    default_summary = "RunAPI did not answer in time"


class RunAPIResponseError(RunAPIError):
    """A success status with a body that cannot be used: malformed JSON, no task id, ..."""

    default_summary = "RunAPI sent an answer that could not be understood"


class ImageUrlRefusedError(RunAPIError):
    """An image URL, or a redirect from one, that the image-URL policy will not fetch; never retried.

    The message names the host or address and the reason, never the URL's path or query (signed URLs
    carry credentials there).
    """

    default_summary = ""


_BY_STATUS: dict[int, type[RunAPIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: InsufficientCreditsError,
    403: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    410: NotFoundError,
    413: PayloadTooLargeError,
    422: BadRequestError,
    429: RateLimitedError,
}
_SUMMARY_BY_STATUS: dict[int, str] = {
    403: "RunAPI refused access with this API key",
    410: "RunAPI no longer has it",
    503: "RunAPI is temporarily unavailable",
}


def error_class_for_status(status_code: int) -> type[RunAPIStatusError]:
    """The error class for an HTTP status (``RunAPIStatusError`` itself for unlisted 4xx codes)."""
    if status_code >= 500:
        return ServerError
    return _BY_STATUS.get(status_code, RunAPIStatusError)


def error_for_status(
    status_code: int,
    message: str,
    *,
    code: str | None = None,
    request_id: str | None = None,
    retry_after: float | None = None,
    summary: str | None = None,
) -> RunAPIStatusError:
    """Build the right error for an HTTP error status."""
    cls = error_class_for_status(status_code)
    summary = summary if summary is not None else _SUMMARY_BY_STATUS.get(status_code)
    if cls is RateLimitedError:
        return RateLimitedError(
            message,
            status_code=status_code,
            code=code,
            request_id=request_id,
            summary=summary,
            retry_after=retry_after,
        )
    return cls(message, status_code=status_code, code=code, request_id=request_id, summary=summary)
