"""The async RunAPI HTTP client: auth, retries, error mapping, uploads and downloads."""

from __future__ import annotations

import logging
import pathlib
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import anyio
import httpx

from runapi_mcp import __version__
from runapi_mcp.client._text import (
    decode_json,
    error_details,
    parse_retry_after,
    request_id_of,
    scrub,
    status_text,
)
from runapi_mcp.client.errors import (
    AuthenticationError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    RunAPIConnectionError,
    RunAPIError,
    RunAPIResponseError,
    RunAPITimeoutError,
    error_for_status,
)
from runapi_mcp.client.models import Balance, DownloadResult, TaskInfo, UploadedFile

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_RETRY_POLICY", "NO_API_KEY_MESSAGE", "RetryPolicy", "RunAPIClient"]

logger = logging.getLogger("runapi_mcp.client")

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

DEFAULT_BASE_URL = "https://runapi.ai"
NO_API_KEY_MESSAGE = (
    "No RunAPI API key is set: set RUNAPI_API_KEY (or apiKey in ~/.config/runapi/config.json)"
)
_EXPIRED_URL = "The image URL has expired or is not reachable"
_GONE_STATUSES = frozenset({401, 403, 404, 410})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """RunAPI's SDK retry policy: GETs and keyed POSTs, on 429/5xx and transport errors.

    Delay before retry ``n`` (0-based) is ``min(backoff_max, backoff_base * 2**n)`` plus ``0..jitter``
    of that; a ``Retry-After`` header on a 429 or 503 replaces it, capped at ``retry_after_max``.
    """

    max_retries: int = 2
    backoff_base: float = 0.5
    backoff_max: float = 5.0
    jitter: float = 0.5
    retry_statuses: frozenset[int] = frozenset({429, 500, 502, 503, 504})
    retry_after_statuses: frozenset[int] = frozenset({429, 503})
    retry_after_max: float = 60.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if min(self.backoff_base, self.backoff_max, self.jitter, self.retry_after_max) < 0:
            raise ValueError("backoff_base, backoff_max, jitter and retry_after_max must be >= 0")

    def backoff(self, retry: int, *, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first retry), jitter included."""
        base = min(self.backoff_max, self.backoff_base * 2.0**retry)
        return base * (1.0 + self.jitter * float(rand()))

    def delay(self, retry: int, *, status_code: int | None = None, retry_after: float | None = None) -> float:
        """The wait before a retry: ``Retry-After`` (capped) when the status allows it, else the backoff."""
        if retry_after is not None and status_code in self.retry_after_statuses:
            return min(retry_after, self.retry_after_max)
        return self.backoff(retry)


DEFAULT_RETRY_POLICY = RetryPolicy()


class _Attempt:
    """The outcome of one try that did not succeed: the error, and whether trying again may help."""

    __slots__ = ("error", "retry_after", "retryable")

    def __init__(self, error: RunAPIError, *, retryable: bool, retry_after: float | None = None) -> None:
        self.error = error
        self.retryable = retryable
        self.retry_after = retry_after


class RunAPIClient:
    """An async client for RunAPI's HTTP API. Use it as ``async with RunAPIClient(key) as client: ...``.

    It knows nothing of MCP. The API key is only ever sent to ``base_url``, and never appears in an
    error message, a repr or a log line.
    """

    def __init__(
        self,
        api_key: str | None,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy = DEFAULT_RETRY_POLICY,
        user_agent: str = f"runapi-mcp/{__version__}",
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 20,
        sleep: Sleep | None = None,
    ) -> None:
        """``sleep`` replaces ``anyio.sleep`` between retries (tests pass a recorder)."""
        key = (api_key or "").strip()
        self._api_key: str | None = key or None
        url = httpx.URL(base_url.strip().rstrip("/"))
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        self._base_url = str(url).rstrip("/")
        self._retry = retry
        self._sleep: Sleep = sleep or anyio.sleep
        self._timeout = timeout
        # No Authorization here: it is added per request, only to requests for base_url.
        self._http = httpx.AsyncClient(
            headers={"User-Agent": user_agent, "Accept": "application/json"},
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
            follow_redirects=False,
        )

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def __repr__(self) -> str:
        return f"RunAPIClient(base_url={self._base_url!r}, has_key={self.has_key})"

    @property
    def has_key(self) -> bool:
        return self._api_key is not None

    @property
    def base_url(self) -> str:
        return self._base_url

    # -- public API --------------------------------------------------------------------------------

    async def create_task(self, path: str, body: dict[str, Any], *, idempotency_key: str) -> TaskInfo:
        """``POST path`` (e.g. ``/api/v1/gpt_image_2/text_to_image``); retried with the same key."""
        _check_idempotency_key(idempotency_key)
        return await self._call(
            "POST",
            _check_path(path),
            json=body,
            headers={"Idempotency-Key": idempotency_key},
            retryable=True,
            parse=lambda response, data: TaskInfo.from_response(data),
        )

    async def get_task(self, path: str, task_id: str) -> TaskInfo:
        """``GET {path}/{task_id}``; on 404, ``GET /api/v1/{service}/{task_id}`` once before giving up."""
        path = _check_path(path).rstrip("/")
        if not task_id or not task_id.strip():
            raise ValueError("task_id must not be empty")
        quoted = quote(task_id.strip(), safe="")

        def parse(response: httpx.Response, data: Any) -> TaskInfo:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return TaskInfo.from_response(data, retry_after=retry_after)

        try:
            return await self._call("GET", f"{path}/{quoted}", retryable=True, parse=parse)
        except NotFoundError as not_found:
            fallback = _service_path(path)
            if fallback is None:
                raise
            try:
                return await self._call("GET", f"{fallback}/{quoted}", retryable=True, parse=parse)
            except NotFoundError:
                raise not_found from None

    async def upload_file(
        self,
        data: bytes,
        *,
        filename: str,
        mime_type: str,
        idempotency_key: str | None = None,
    ) -> UploadedFile:
        """Multipart ``POST /api/v1/files``; retried only when it carries an idempotency key."""
        headers: dict[str, str] = {}
        if idempotency_key is not None:
            _check_idempotency_key(idempotency_key)
            headers["Idempotency-Key"] = idempotency_key
        return await self._call(
            "POST",
            "/api/v1/files",
            files={"file": (filename, data, mime_type)},
            data={"file_name": filename},
            headers=headers,
            retryable=idempotency_key is not None,
            parse=lambda response, body: UploadedFile.from_response(body),
        )

    async def get_balance(self) -> Balance:
        """``GET /api/v1/me/balance``."""
        return await self._call(
            "GET",
            "/api/v1/me/balance",
            retryable=True,
            parse=lambda response, body: Balance.from_response(body),
        )

    async def download(
        self,
        url: str,
        dest: pathlib.Path,
        *,
        max_bytes: int = 200 * 1024 * 1024,
        chunk_size: int = 1 << 16,
    ) -> DownloadResult:
        """Stream ``url`` to ``dest`` (via a temp file beside it, renamed into place at the end).

        Sends no Authorization header: output URLs live on other hosts. Retried on transport errors
        and 5xx/429. 401/403/404/410 raise :class:`NotFoundError` (the URL has expired).
        """
        try:
            target = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise RunAPIResponseError(
                f"RunAPI returned an image URL that is not valid: {exc}", summary=""
            ) from None
        if target.scheme not in ("http", "https") or not target.host:
            raise RunAPIResponseError("RunAPI returned an image URL that is not an http(s) URL", summary="")
        dest = pathlib.Path(dest)
        await anyio.Path(dest.parent).mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.part")
        try:
            retry = 0
            while True:
                outcome = await self._download_once(target, dest, tmp, max_bytes, chunk_size, retry + 1)
                if isinstance(outcome, DownloadResult):
                    return outcome
                status = outcome.error.status_code
                if not outcome.retryable or retry >= self._retry.max_retries:
                    raise outcome.error
                await self._sleep(
                    self._retry.delay(retry, status_code=status, retry_after=outcome.retry_after)
                )
                retry += 1
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.Path(tmp).unlink(missing_ok=True)

    # -- internals ---------------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return scrub(text, (self._api_key,))

    def _auth_headers(self) -> dict[str, str]:
        key = self._api_key
        if key is None:
            raise AuthenticationError(NO_API_KEY_MESSAGE, summary="")
        if not key.isascii() or not key.isprintable() or " " in key:
            raise AuthenticationError(
                "The RunAPI API key contains characters that cannot be sent in a header "
                "(spaces, line breaks or non-ASCII): check RUNAPI_API_KEY",
                summary="",
            )
        return {"Authorization": f"Bearer {key}"}

    async def _call(
        self,
        method: str,
        path: str,
        *,
        parse: Callable[[httpx.Response, Any], T],
        retryable: bool,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        files: Any = None,
        data: Mapping[str, str] | None = None,
    ) -> T:
        """Send an authenticated request, retrying per policy, and parse the 2xx answer."""
        request_headers = {**(headers or {}), **self._auth_headers()}
        max_retries = self._retry.max_retries if retryable else 0
        protocol_retried = False
        retry = 0
        while True:
            outcome = await self._call_once(
                method, path, request_headers, json, files, data, parse, retry + 1
            )
            if not isinstance(outcome, _Attempt):
                return outcome
            may_retry = outcome.retryable
            if isinstance(outcome.error, RunAPIResponseError):
                may_retry, protocol_retried = may_retry and not protocol_retried, True
            if not may_retry or retry >= max_retries:
                raise outcome.error
            status = outcome.error.status_code
            await self._sleep(self._retry.delay(retry, status_code=status, retry_after=outcome.retry_after))
            retry += 1

    async def _call_once(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        json: Any,
        files: Any,
        data: Mapping[str, str] | None,
        parse: Callable[[httpx.Response, Any], T],
        attempt: int,
    ) -> T | _Attempt:
        try:
            response = await self._http.request(
                method, self._base_url + path, headers=headers, json=json, files=files, data=data
            )
        except httpx.RequestError as exc:
            logger.debug("%s %s -> %s (attempt %d)", method, path, type(exc).__name__, attempt)
            return self._transport_failure(exc, what="RunAPI")
        status = response.status_code
        request_id = request_id_of(response)
        logger.debug(
            "%s %s -> %d (attempt %d, request id %s)", method, path, status, attempt, request_id or "-"
        )
        if not response.is_success:
            message, code, request_id = error_details(response)
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            error = error_for_status(
                status,
                self._scrub(message),
                code=self._scrub(code) if code else None,
                request_id=request_id,
                retry_after=retry_after,
            )
            return _Attempt(error, retryable=status in self._retry.retry_statuses, retry_after=retry_after)
        try:
            body: Any = decode_json(response)
        except ValueError:
            error = RunAPIResponseError("the body is not valid JSON", status_code=status, request_id=request_id)
            return _Attempt(error, retryable=True)
        try:
            return parse(response, body)
        except RunAPIResponseError as exc:
            exc.message = self._scrub(exc.message)
            exc.status_code = exc.status_code or status
            exc.request_id = exc.request_id or request_id
            return _Attempt(exc, retryable=True)

    def _transport_failure(self, exc: httpx.RequestError, *, what: str) -> _Attempt:
        detail = self._scrub(str(exc).strip()) or type(exc).__name__
        if isinstance(exc, httpx.TimeoutException):
            message = f"no answer within {self._timeout:g} s ({type(exc).__name__})"
            summary = None if what == "RunAPI" else f"{what[:1].upper()}{what[1:]} did not answer in time"
            return _Attempt(RunAPITimeoutError(message, summary=summary), retryable=True)
        if isinstance(exc, httpx.UnsupportedProtocol | httpx.TooManyRedirects):
            return _Attempt(RunAPIConnectionError(detail, summary=f"Could not reach {what}"), retryable=False)
        if isinstance(exc, httpx.DecodingError):
            return _Attempt(RunAPIResponseError(f"the body could not be decoded ({detail})"), retryable=True)
        if detail != type(exc).__name__:
            detail = f"{detail} ({type(exc).__name__})"
        return _Attempt(RunAPIConnectionError(detail, summary=f"Could not reach {what}"), retryable=True)

    async def _download_once(
        self,
        url: httpx.URL,
        dest: pathlib.Path,
        tmp: pathlib.Path,
        max_bytes: int,
        chunk_size: int,
        attempt: int,
    ) -> DownloadResult | _Attempt:
        where = f"{url.host}{url.path}"  # never the query: signed URLs carry credentials there
        host = url.host
        try:
            async with self._http.stream(
                "GET", url, headers={"Accept": "image/*,*/*;q=0.8"}, follow_redirects=True
            ) as response:
                status = response.status_code
                logger.debug("GET %s -> %d (download attempt %d)", where, status, attempt)
                if not response.is_success:
                    return self._download_failure(response, host)
                declared = response.headers.get("Content-Length")
                if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                    return _Attempt(_too_large(host, max_bytes), retryable=False)
                content_type = response.headers.get("Content-Type")
                written = 0
                async with await anyio.open_file(tmp, "wb") as file:
                    async for chunk in response.aiter_bytes(chunk_size):
                        written += len(chunk)
                        if written > max_bytes:
                            return _Attempt(_too_large(host, max_bytes), retryable=False)
                        await file.write(chunk)
        except httpx.RequestError as exc:
            logger.debug("GET %s -> %s (download attempt %d)", where, type(exc).__name__, attempt)
            return self._transport_failure(exc, what=f"the image host {host}")
        if written == 0:
            error = RunAPIResponseError(f"The image download from {host} was empty", status_code=status, summary="")
            return _Attempt(error, retryable=True)
        await anyio.Path(tmp).replace(dest)
        mime = content_type.split(";", 1)[0].strip().lower() if content_type else None
        return DownloadResult(path=dest, bytes_written=written, content_type=mime or None)

    def _download_failure(self, response: httpx.Response, host: str) -> _Attempt:
        status = response.status_code
        reason = f"{status_text(status)} from {host}"
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        error: RunAPIError
        if status in _GONE_STATUSES:
            error = NotFoundError(reason, status_code=status, summary=_EXPIRED_URL)
        elif status == 429:
            error = RateLimitedError(
                reason, status_code=status, retry_after=retry_after, summary="The image host is rate limiting"
            )
        else:
            summary = "The image host failed" if status >= 500 else "Could not download the image"
            error = error_for_status(status, reason, summary=summary)
        return _Attempt(error, retryable=status in self._retry.retry_statuses, retry_after=retry_after)


def _too_large(host: str, max_bytes: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"The image from {host} is larger than the {max_bytes:,} byte limit", summary=""
    )


def _check_path(path: str) -> str:
    if not path.startswith("/") or "://" in path or "?" in path or "#" in path:
        raise ValueError(
            f"path must be an absolute API path like '/api/v1/gpt_image_2/text_to_image': {path!r}"
        )
    return path


def _service_path(path: str) -> str | None:
    """``/api/v1/{service}/{endpoint}`` -> ``/api/v1/{service}``; ``None`` when there is nothing shorter."""
    parts = path.strip("/").split("/")
    if len(parts) >= 4 and parts[0] == "api" and parts[1] == "v1":
        return f"/api/v1/{parts[2]}"
    return None


def _check_idempotency_key(key: str) -> None:
    if not 1 <= len(key) <= 512 or not key.isascii() or not key.isprintable():
        raise ValueError("idempotency_key must be 1..512 printable ASCII characters")
