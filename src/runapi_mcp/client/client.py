"""The async RunAPI HTTP client: auth, retries, error mapping, uploads and downloads.

Everything that comes from upstream is made safe here, at the boundary, so the wire models and every layer
above only ever see clean data: bodies are read with a size cap (``_body``), decoded, depth-limited and
cleaned and redacted string by string (``_text.read_json``), and the few headers the client reads go through
the same cleaning (``_text.header``). Image URLs are fetched only where the :class:`ImageUrlPolicy` allows,
at the very address it approved, with redirects followed by hand and judged hop by hop.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import pathlib
import random
import re
import ssl
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import anyio
import httpx

from runapi_mcp import __version__
from runapi_mcp.client._body import BodyTooLargeError, BodyUndecodableError, iter_body, read_body
from runapi_mcp.client._text import (
    UnusableJSONError,
    clean_text,
    error_details,
    field_of,
    header,
    parse_retry_after,
    read_json,
    request_id_of,
    status_text,
)
from runapi_mcp.client._urls import ImageUrlPolicy, host_header
from runapi_mcp.client.errors import (
    AuthenticationError,
    BadRequestError,
    ImageUrlRefusedError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    RunAPIConnectionError,
    RunAPIError,
    RunAPIResponseError,
    RunAPITimeoutError,
    error_for_status,
)
from runapi_mcp.client.models import (
    MAX_TASK_ID_CHARS,
    Balance,
    DownloadResult,
    PriceQuote,
    PriceSchedules,
    TaskInfo,
    UploadedFile,
    UploadTarget,
)
from runapi_mcp.clock import SYSTEM_CLOCK, Clock
from runapi_mcp.config import DEFAULT_BASE_URL as DEFAULT_BASE_URL  # the client's default is the setting's
from runapi_mcp.redaction import Redactor

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_DOWNLOAD_DEADLINE_S",
    "DEFAULT_DOWNLOAD_READ_TIMEOUT_S",
    "DEFAULT_MAX_ANSWER_BYTES",
    "DEFAULT_MAX_DOWNLOAD_BYTES",
    "DEFAULT_RETRY_POLICY",
    "MAX_REDIRECTS",
    "NO_API_KEY_MESSAGE",
    "RetryPolicy",
    "RunAPIClient",
]

logger = logging.getLogger("runapi_mcp.client")

T = TypeVar("T")

NO_API_KEY_MESSAGE = (
    "No RunAPI API key is set. Set RUNAPI_API_KEY in this server's environment (in Claude Desktop: the "
    '"env" block of its mcpServers entry; in Hermes: env: under mcp_servers), or put {"apiKey": "..."} '
    "in ~/.config/runapi/config.json, then restart the server."
)
# The contract this client speaks: RunAPI's own Python SDK of that version sends the same requests
# (tests/test_oracle.py compares them), and the catalog is built from the image contracts of that era.
SPEAKS = "runapi-core 0.10.1"
# RunAPI names the task an answer concerns in this header, error answers included.
TASK_ID_HEADER = "X-RunAPI-Task-Id"
_TASK_ID = re.compile(rf"[A-Za-z0-9_.:\-]{{1,{MAX_TASK_ID_CHARS}}}")
# A task answer is a few KB; 4 MiB leaves room for a large listing while bounding what one answer costs.
DEFAULT_MAX_ANSWER_BYTES = 4 * 1024 * 1024
# An error body is only mined for one message; past this it is treated as unreadable (status text instead).
MAX_ERROR_BODY_BYTES = 64 * 1024
DEFAULT_MAX_DOWNLOAD_BYTES = 200 * 1024 * 1024
# Per image, across every attempt, redirect and retry wait: a host trickling a byte every few seconds
# would otherwise hold a download slot forever.
DEFAULT_DOWNLOAD_DEADLINE_S = 120.0
# Per network read (and connect): a host that stops sending altogether fails fast, not at the deadline.
DEFAULT_DOWNLOAD_READ_TIMEOUT_S = 30.0
MAX_REDIRECTS = 5
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_EXPIRED_URL = "The image URL has expired or is not reachable"
_GONE_STATUSES = frozenset({401, 403, 404, 410})
_DIGITS = re.compile(r"[0-9]{1,20}")
# What httpx or the standard library raise (beyond httpx.RequestError) on a URL, header or body an upstream
# made strange; each becomes a RunAPIResponseError instead of escaping the client.
_ODDITIES = (httpx.InvalidURL, UnicodeError, ValueError, TypeError, OverflowError, LookupError)


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


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context (httpx's defaults: certifi's CA bundle, SSL_CERT_FILE/SSL_CERT_DIR if set) for every
    connection pool in the process: building one loads the CA bundle, tens of ms of CPU, and each client has
    three pools."""
    return httpx.create_ssl_context()


class RunAPIClient:
    """An async client for RunAPI's HTTP API. Use it as ``async with RunAPIClient(key) as client: ...``.

    It knows nothing of MCP. The API key is only ever sent to ``base_url``; every string read from upstream
    passes ``redactor`` (built from the key unless given; the upper layers reuse it as ``client.redactor``),
    so the key never appears in a returned model, an error message, a repr or a log line.

    API calls and image downloads use separate connection pools (``max_connections`` and
    ``max_download_connections``): slow image hosts can never take the connections creates and polls need.
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
        clock: Clock = SYSTEM_CLOCK,
        redactor: Redactor | None = None,
        image_policy: ImageUrlPolicy | None = None,
        download_transport: httpx.AsyncBaseTransport | None = None,
        max_download_connections: int = 16,
        download_read_timeout: float = DEFAULT_DOWNLOAD_READ_TIMEOUT_S,
        download_deadline_s: float = DEFAULT_DOWNLOAD_DEADLINE_S,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
    ) -> None:
        """``clock`` times the waits between retries and reads the time a ``Retry-After`` date is measured
        from (tests pass one they move by hand).

        ``transport`` serves the API calls, and the downloads too unless ``download_transport`` is given
        (tests pass one mock for both). ``image_policy`` defaults to one built from ``base_url``.
        """
        key = (api_key or "").strip()
        self._api_key: str | None = key or None
        url = httpx.URL(base_url.strip().rstrip("/"))
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if download_deadline_s <= 0 or download_read_timeout <= 0 or max_answer_bytes <= 0:
            raise ValueError("download_deadline_s, download_read_timeout and max_answer_bytes must be > 0")
        self._base_url = str(url).rstrip("/")
        self._retry = retry
        self._clock = clock
        self._timeout = timeout
        self._redactor = redactor if redactor is not None else Redactor([self._api_key])
        self._image_policy = image_policy if image_policy is not None else ImageUrlPolicy(self._base_url)
        self._download_deadline_s = download_deadline_s
        self._download_read_timeout = download_read_timeout
        self._max_answer_bytes = max_answer_bytes
        # No Authorization here: it is added per request, only to requests for base_url. Only encodings
        # _body can inflate piece by piece are asked for.
        self._http = httpx.AsyncClient(
            headers={"User-Agent": user_agent, "Accept": "application/json", "Accept-Encoding": "gzip, deflate"},
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
            follow_redirects=False,
            verify=_tls_context(),
        )
        # The upload's second step goes to storage, not RunAPI: a bare client, so no header of ours (the key
        # above all) goes with the bytes; the same transport, so tests and proxies see it as they see the rest.
        self._storage = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout), transport=transport, follow_redirects=False, verify=_tls_context()
        )
        # Downloads connect to the address the policy approved (see _open_pinned). They go straight to a
        # transport of their own rather than through an httpx client, because the client would parse
        # every Location itself (raising on odd ones before the policy can judge them) and keep the image
        # hosts' cookies. The transport has:
        # - its own pool: slow image hosts can never take the connections API calls need;
        # - no keep-alive: a pooled connection is keyed by the address, and one verified for one host name
        #   must not carry a request for another name on the same address;
        # - no proxy: a proxy would connect wherever it likes (environment proxies are an httpx client
        #   feature, so none apply here).
        self._owns_download_transport = download_transport is None and transport is None
        self._http_transport = transport
        self._download_transport: httpx.AsyncBaseTransport = (
            download_transport
            or transport
            or httpx.AsyncHTTPTransport(
                verify=_tls_context(),
                limits=httpx.Limits(max_connections=max_download_connections, max_keepalive_connections=0),
            )
        )
        self._download_headers = {
            "User-Agent": user_agent,
            "Accept": "image/*,*/*;q=0.8",
            "Accept-Encoding": "identity",  # images are compressed already
        }
        # No pool time-out: waiting for a free download connection counts against the per-image deadline.
        self._download_timeouts = httpx.Timeout(download_read_timeout, pool=None).as_dict()

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
        try:
            await self._http.aclose()
            await self._storage.aclose()
        finally:
            if self._owns_download_transport or self._download_transport is not self._http_transport:
                await self._download_transport.aclose()

    def __repr__(self) -> str:
        return f"RunAPIClient(base_url={self._redactor(self._base_url)!r}, has_key={self.has_key})"

    @property
    def has_key(self) -> bool:
        return self._api_key is not None

    @property
    def base_url(self) -> str:
        return self._base_url

    @property
    def redactor(self) -> Redactor:
        """The redactor every upstream string passed; the MCP layer reuses it for what it emits."""
        return self._redactor

    @property
    def image_policy(self) -> ImageUrlPolicy:
        return self._image_policy

    # -- public API --------------------------------------------------------------------------------

    async def create_task(self, path: str, body: dict[str, Any], *, idempotency_key: str) -> TaskInfo:
        """``POST path`` (e.g. ``/api/v1/gpt_image_2/text_to_image``); retried with the same key.

        An error raised here carries ``task_id`` when RunAPI named the task in its answer's
        ``X-RunAPI-Task-Id`` header: the task exists upstream although the create answered with an error.
        """
        _check_idempotency_key(idempotency_key)
        return await self._call(
            "POST",
            _check_path(path),
            json=body,
            headers={"Idempotency-Key": idempotency_key},
            retryable=True,
            parse=self._task_info,
        )

    async def get_task(self, path: str, task_id: str) -> TaskInfo:
        """``GET {path}/{task_id}``; on 404, ``GET /api/v1/{service}/{task_id}`` once before giving up."""
        path = _check_path(path).rstrip("/")
        if not task_id or not task_id.strip():
            raise ValueError("task_id must not be empty")
        # A lone surrogate cannot be UTF-8 encoded; replaced ("?") it simply names no task (404), not a crash.
        quoted = quote(task_id.strip(), safe="", errors="replace")
        try:
            return await self._call("GET", f"{path}/{quoted}", retryable=True, parse=self._task_info)
        except NotFoundError as not_found:
            fallback = _service_path(path)
            if fallback is None:
                raise
            try:
                return await self._call("GET", f"{fallback}/{quoted}", retryable=True, parse=self._task_info)
            except NotFoundError:
                raise not_found from None

    def _task_info(self, response: httpx.Response, data: Any) -> TaskInfo:
        """A create or status answer, with what its headers add: the next poll's floor (``Retry-After``) and
        the task's id (``X-RunAPI-Task-Id``) where the body names none."""
        return TaskInfo.from_response(
            data,
            retry_after=parse_retry_after(header(response, "Retry-After", self._redactor), now=self._clock.time()),
            header_id=_task_id(response, self._redactor),
        )

    async def upload_file(self, data: bytes, *, filename: str, mime_type: str) -> UploadedFile:
        """Upload local bytes the way RunAPI's SDK does: three steps, the bytes going straight to storage.

        1. ``POST /api/v1/files/prepare`` ``{filename, byte_size, checksum}`` (checksum: base64 of the MD5
           digest) answers where to put them: ``{signed_id, upload_url, headers}``;
        2. ``PUT upload_url`` with exactly those headers and no Authorization (it is storage, not RunAPI);
           not retried, as the SDK does not: the URL is single-use;
        3. ``POST /api/v1/files/confirm`` ``{signed_id}`` answers the file: ``{url, expires_at, ...}``.

        Preparing and confirming create nothing billable, so both are retried like reads.
        """
        checksum = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")
        target = await self._call(
            "POST",
            "/api/v1/files/prepare",
            json={"filename": filename, "byte_size": len(data), "checksum": checksum},
            retryable=True,
            parse=lambda response, body: UploadTarget.from_response(body),
        )
        await self._put_to_storage(target, data)
        return await self._call(
            "POST",
            "/api/v1/files/confirm",
            json={"signed_id": target.signed_id},
            retryable=True,
            parse=lambda response, body: UploadedFile.from_response(body),
        )

    async def upload_source(self, source: Mapping[str, str], *, file_name: str | None = None) -> UploadedFile:
        """``POST /api/v1/files`` with ``{source: {type: "url", url} | {type: "base64", data}, file_name?}``:
        RunAPI fetches (or decodes) the image itself. Retried like a read: it makes a temporary file only."""
        kind = source.get("type")
        if kind not in ("url", "base64") or not isinstance(source.get("url" if kind == "url" else "data"), str):
            raise ValueError("source must be {'type': 'url', 'url': ...} or {'type': 'base64', 'data': ...}")
        body: dict[str, Any] = {"source": dict(source)}
        if file_name:
            body["file_name"] = file_name
        return await self._call(
            "POST",
            "/api/v1/files",
            json=body,
            retryable=True,
            parse=lambda response, data: UploadedFile.from_response(data),
        )

    async def _put_to_storage(self, target: UploadTarget, data: bytes) -> None:
        """The upload's second step: the bytes to the storage URL RunAPI prepared, without our key.

        The URL must be https, or share RunAPI's own origin (a simulator, a proxy in front of both): the key
        never goes there, but an answer pointing the bytes at a plain-http stranger is refused all the same.
        """
        try:
            url = httpx.URL(target.upload_url)
        except (httpx.InvalidURL, ValueError, TypeError):
            raise RunAPIResponseError("the upload answer's upload_url is not a URL") from None
        base = httpx.URL(self._base_url)
        if url.scheme != "https" and (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
            raise RunAPIResponseError("the upload answer's upload_url is neither https nor RunAPI's own origin")
        headers = {k: v for k, v in target.headers.items() if k.lower() != "authorization"}
        try:
            request = httpx.Request("PUT", url, headers=headers, content=data)
        except _ODDITIES as exc:
            raise RunAPIResponseError(f"the upload answer's headers cannot be sent ({type(exc).__name__})") from None
        shown = self._safe(f"{url.scheme}://{url.host}{url.path}", 300)
        try:
            response = await self._storage.send(request, stream=True)
        except httpx.RequestError as exc:
            raise self._transport_failure(exc, what="RunAPI's file storage").error from None
        try:
            logger.debug("PUT %s -> %d", shown, response.status_code)
            if not response.is_success:
                body = await self._error_body(response)
                message, code = error_details(response.status_code, body)
                raise error_for_status(
                    response.status_code,
                    message,
                    code=code,
                    request_id=request_id_of(response, self._redactor, body),
                    summary="RunAPI's file storage refused the upload",
                )
        finally:
            await response.aclose()

    async def get_balance(self) -> Balance:
        """``GET /api/v1/me/balance``."""
        return await self._call(
            "GET",
            "/api/v1/me/balance",
            retryable=True,
            parse=lambda response, body: Balance.from_response(body),
        )

    async def quote_price(
        self, service: str, action: str, *, model: str | None, params: Mapping[str, Any]
    ) -> PriceQuote:
        """``POST /api/v1/price_quotes`` with ``{service, action, model, params}``: what RunAPI would reserve.

        ``params`` are the create's fields, nested (never flat: RunAPI reads the fields under ``params``).
        Retried like a GET: a quote creates nothing and charges nothing, so asking again is safe without an
        idempotency key.
        """
        if not service or not action:
            raise ValueError("service and action must not be empty")
        body: dict[str, Any] = {"service": service, "action": action}
        if model:
            body["model"] = model
        body["params"] = dict(params)
        return await self._call(
            "POST",
            "/api/v1/price_quotes",
            json=body,
            retryable=True,
            parse=lambda response, data: PriceQuote.from_response(data),
        )

    async def price_schedules(self, *, etag: str | None = None, **filters: str) -> PriceSchedules | None:
        """``GET /api/v1/price_schedules`` (``service``, ``action``, ``model`` filters): every model/action's
        price and ``catalog_status``. With the ``etag`` of an earlier answer, ``None`` means "not modified"
        (304): that answer still holds."""
        unknown = set(filters) - {"service", "action", "model"}
        if unknown:
            raise ValueError(f"unknown filter{'s' if len(unknown) > 1 else ''}: {sorted(unknown)}")
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in filters.items() if v)
        headers = {"If-None-Match": etag} if etag else {}
        return await self._call(
            "GET",
            "/api/v1/price_schedules" + (f"?{query}" if query else ""),
            headers=headers,
            retryable=True,
            parse=lambda response, data: (
                None
                if response.status_code == 304
                else PriceSchedules.from_response(data, etag=header(response, "ETag", self._redactor, limit=512))
            ),
        )

    async def download(
        self,
        url: str,
        dest: pathlib.Path,
        *,
        max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
        chunk_size: int = 1 << 16,
        deadline_s: float | None = None,
    ) -> DownloadResult:
        """Stream ``url`` to ``dest`` (via a temp file beside it, renamed into place at the end).

        Only URLs the image policy allows are fetched, at the address it approved; redirects are followed
        by hand (at most :data:`MAX_REDIRECTS`), each hop judged again. Sends no Authorization header:
        output URLs live on other hosts. Retried on transport errors and 5xx/429, all within
        ``deadline_s`` (default: the client's ``download_deadline_s``), past which it raises
        :class:`RunAPITimeoutError`. 401/403/404/410 raise :class:`NotFoundError` (the URL has expired);
        a refused URL raises :class:`ImageUrlRefusedError`. The temp file never outlives the call.
        """
        deadline = self._download_deadline_s if deadline_s is None else deadline_s
        if deadline <= 0:
            raise ValueError("deadline_s must be > 0")
        try:
            target = httpx.URL(url)
        except _ODDITIES as exc:
            raise RunAPIResponseError(
                f"RunAPI returned an image URL that is not valid ({self._safe(str(exc), 200)})", summary=""
            ) from None
        host = self._safe(target.host, 100) or "?"
        dest = pathlib.Path(dest)
        await anyio.Path(dest.parent).mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.part")
        try:
            with anyio.move_on_after(deadline):
                return await self._download_with_retries(target, dest, tmp, max_bytes, chunk_size)
            raise RunAPITimeoutError(f"The image host {host} did not deliver within {deadline:g} s", summary="")
        finally:
            # Shielded: a cancelled download must still not leave its partial file behind.
            with anyio.CancelScope(shield=True):
                await anyio.Path(tmp).unlink(missing_ok=True)

    # -- internals ---------------------------------------------------------------------------------

    def _safe(self, text: str, limit: int = 500) -> str:
        """Text for a message or log line that did not come through read_json (exception texts, URLs)."""
        return clean_text(text, self._redactor, limit=limit)

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
            # Built afresh for every attempt: a request body stream is not guaranteed to be re-readable.
            try:
                request = self._http.build_request(
                    method, self._base_url + path, headers=request_headers, json=json, files=files, data=data
                )
            except _ODDITIES as exc:
                # Text that cannot be sent (a lone surrogate in a prompt or a file name, NaN in the body).
                raise BadRequestError(
                    f"the request cannot be encoded ({type(exc).__name__}: {self._safe(str(exc), 200)})",
                    summary="Could not send the request to RunAPI",
                ) from None
            outcome = await self._call_once(request, path, parse, retry + 1)
            if not isinstance(outcome, _Attempt):
                return outcome
            may_retry = outcome.retryable
            if isinstance(outcome.error, RunAPIResponseError):
                may_retry, protocol_retried = may_retry and not protocol_retried, True
            if not may_retry or retry >= max_retries:
                raise outcome.error
            status = outcome.error.status_code
            await self._clock.sleep(self._retry.delay(retry, status_code=status, retry_after=outcome.retry_after))
            retry += 1

    async def _call_once(
        self, request: httpx.Request, path: str, parse: Callable[[httpx.Response, Any], T], attempt: int
    ) -> T | _Attempt:
        method, shown = request.method, self._safe(path, 300)
        try:
            response = await self._http.send(request, stream=True)
        except httpx.RequestError as exc:
            logger.debug("%s %s -> %s (attempt %d)", method, shown, type(exc).__name__, attempt)
            return self._transport_failure(exc, what="RunAPI")
        except _ODDITIES as exc:  # a request body that failed to encode while streaming, or the like
            error: RunAPIError = BadRequestError(
                f"the request cannot be sent ({type(exc).__name__})", summary="Could not send the request to RunAPI"
            )
            return _Attempt(error, retryable=False)
        try:
            return await self._answer(response, parse, method, shown, attempt)
        except httpx.RequestError as exc:  # the connection broke while the body was read
            logger.debug("%s %s -> %s (attempt %d)", method, shown, type(exc).__name__, attempt)
            return self._transport_failure(exc, what="RunAPI")
        except _ODDITIES as exc:
            error = RunAPIResponseError(
                f"the answer could not be read ({type(exc).__name__})", status_code=response.status_code
            )
            return _Attempt(error, retryable=False)
        finally:
            await response.aclose()

    async def _answer(
        self,
        response: httpx.Response,
        parse: Callable[[httpx.Response, Any], T],
        method: str,
        shown: str,
        attempt: int,
    ) -> T | _Attempt:
        """Read, clean and parse one streamed answer (the one place API bodies are read)."""
        status = response.status_code
        request_id = request_id_of(response, self._redactor)
        logger.debug(
            "%s %s -> %d (attempt %d, request id %s)", method, shown, status, attempt, request_id or "-"
        )
        error: RunAPIError
        if status == 304:  # "not modified": only a conditional read asks for it, and its parse knows it
            try:
                return parse(response, None)
            except RunAPIResponseError as exc:
                return _Attempt(exc, retryable=False)
        if not response.is_success:
            body = await self._error_body(response)
            message, code = error_details(status, body)
            retry_after = parse_retry_after(header(response, "Retry-After", self._redactor), now=self._clock.time())
            error = error_for_status(
                status,
                message,
                code=code,
                request_id=request_id_of(response, self._redactor, body),
                retry_after=retry_after,
            )
            error.task_id = _task_id(response, self._redactor)
            error.field = field_of(body)
            return _Attempt(error, retryable=status in self._retry.retry_statuses, retry_after=retry_after)
        try:
            content = await read_body(response, self._max_answer_bytes)
        except BodyTooLargeError as exc:
            # Asking again would only fetch the same flood.
            error = RunAPIResponseError(
                f"the answer is larger than {exc.limit:,} bytes", status_code=status, request_id=request_id
            )
            return _Attempt(error, retryable=False)
        except BodyUndecodableError as exc:
            error = RunAPIResponseError(str(exc), status_code=status, request_id=request_id)
            return _Attempt(error, retryable=True)
        try:
            body = read_json(content, self._redactor)
        except UnusableJSONError as exc:
            error = RunAPIResponseError(str(exc), status_code=status, request_id=request_id)
            return _Attempt(error, retryable=exc.transient)
        try:
            return parse(response, body)
        except RunAPIResponseError as exc:
            exc.status_code = exc.status_code or status
            exc.request_id = exc.request_id or request_id
            return _Attempt(exc, retryable=True)

    async def _error_body(self, response: httpx.Response) -> Any:
        """An error answer's cleaned JSON body, or ``None`` when it has none worth reading."""
        try:
            return read_json(await read_body(response, MAX_ERROR_BODY_BYTES), self._redactor)
        except (BodyTooLargeError, BodyUndecodableError, UnusableJSONError, httpx.RequestError):
            return None  # the status alone still says what went wrong

    def _transport_failure(self, exc: httpx.RequestError, *, what: str) -> _Attempt:
        detail = self._safe(str(exc).strip(), 300) or type(exc).__name__
        if isinstance(exc, httpx.TimeoutException):
            seconds = self._timeout if what == "RunAPI" else self._download_read_timeout
            message = f"no answer within {seconds:g} s ({type(exc).__name__})"
            summary = None if what == "RunAPI" else f"{what[:1].upper()}{what[1:]} did not answer in time"
            return _Attempt(RunAPITimeoutError(message, summary=summary), retryable=True)
        if isinstance(exc, httpx.UnsupportedProtocol | httpx.TooManyRedirects):
            return _Attempt(RunAPIConnectionError(detail, summary=f"Could not reach {what}"), retryable=False)
        if isinstance(exc, httpx.DecodingError):
            return _Attempt(RunAPIResponseError(f"the body could not be decoded ({detail})"), retryable=True)
        if detail != type(exc).__name__:
            detail = f"{detail} ({type(exc).__name__})"
        return _Attempt(RunAPIConnectionError(detail, summary=f"Could not reach {what}"), retryable=True)

    # -- downloads ---------------------------------------------------------------------------------

    async def _download_with_retries(
        self, target: httpx.URL, dest: pathlib.Path, tmp: pathlib.Path, max_bytes: int, chunk_size: int
    ) -> DownloadResult:
        """Attempts (each from the original URL) until one succeeds: 1 + max_retries requests at most."""
        retry = 0
        while True:
            outcome = await self._download_once(target, dest, tmp, max_bytes, chunk_size, retry + 1)
            if isinstance(outcome, DownloadResult):
                return outcome
            if not outcome.retryable or retry >= self._retry.max_retries:
                raise outcome.error
            status = outcome.error.status_code
            await self._clock.sleep(self._retry.delay(retry, status_code=status, retry_after=outcome.retry_after))
            retry += 1

    async def _download_once(
        self,
        target: httpx.URL,
        dest: pathlib.Path,
        tmp: pathlib.Path,
        max_bytes: int,
        chunk_size: int,
        attempt: int,
    ) -> DownloadResult | _Attempt:
        """One attempt: the URL and each redirect judged by the policy, then fetched at a pinned address."""
        url = target
        for _hop in range(MAX_REDIRECTS + 1):
            host = self._safe(url.host, 100)
            where = self._safe(f"{url.host}{url.path}", 300)  # never the query: signed URLs carry credentials
            try:
                addresses = await self._image_policy.check(url, redactor=self._redactor)
            except RunAPIConnectionError as exc:  # the name did not resolve: maybe a DNS hiccup
                return _Attempt(exc, retryable=True)
            try:
                response = await self._open_pinned(url, addresses)
            except httpx.RequestError as exc:
                logger.debug("GET %s -> %s (download attempt %d)", where, type(exc).__name__, attempt)
                return self._transport_failure(exc, what=f"the image host {host}")
            except _ODDITIES as exc:
                raise RunAPIResponseError(
                    f"could not request the image from {host} ({type(exc).__name__})", summary=""
                ) from None
            try:
                status = response.status_code
                logger.debug("GET %s -> %d (download attempt %d)", where, status, attempt)
                if status in _REDIRECT_STATUSES:
                    url = self._redirect_target(url, response, host)
                    continue
                if not response.is_success:
                    return self._download_failure(response, host)
                return await self._save(response, dest, tmp, max_bytes, chunk_size, host)
            except httpx.RequestError as exc:  # the connection broke mid-body
                logger.debug("GET %s -> %s (download attempt %d)", where, type(exc).__name__, attempt)
                return self._transport_failure(exc, what=f"the image host {host}")
            except _ODDITIES as exc:
                raise RunAPIResponseError(
                    f"the answer from the image host {host} could not be read ({type(exc).__name__})", summary=""
                ) from None
            finally:
                await response.aclose()
        error = RunAPIConnectionError(
            f"the image host redirected more than {MAX_REDIRECTS} times", summary="Could not download the image"
        )
        return _Attempt(error, retryable=False)

    async def _open_pinned(self, url: httpx.URL, addresses: Sequence[str]) -> httpx.Response:
        """GET ``url`` from one of ``addresses`` (the checked ones), never from a fresh DNS answer.

        The URL's host is replaced by the address; the host name travels in the Host header and, for
        https, as the TLS server name (SNI and certificate check). The next address is tried only when
        connecting to one fails.
        """
        headers = {**self._download_headers, "Host": host_header(url)}
        extensions: dict[str, Any] = {"timeout": self._download_timeouts}
        if url.scheme == "https":
            extensions["sni_hostname"] = url.raw_host.decode("ascii")
        last = len(addresses) - 1
        for n, address in enumerate(addresses):
            request = httpx.Request("GET", url.copy_with(host=address), headers=headers, extensions=extensions)
            try:
                response = await self._download_transport.handle_async_request(request)
            except httpx.ConnectError:
                if n == last:
                    raise
                continue
            response.request = request
            return response
        raise RunAPIConnectionError("the image host has no address", summary="Could not reach the image host")

    def _redirect_target(self, url: httpx.URL, response: httpx.Response, host: str) -> httpx.URL:
        """Where a redirect points (relative Locations resolved against ``url``); only http(s) is followed."""
        location = header(response, "Location", self._redactor, limit=8192)
        if location is None:
            raise RunAPIResponseError(
                f"the image host {host} redirected without saying where to", status_code=response.status_code
            )
        try:
            target = url.join(location)
        except _ODDITIES:
            raise RunAPIResponseError(
                f"the image host {host} redirected to a URL that is not valid",
                status_code=response.status_code,
                summary="",
            ) from None
        if target.scheme not in ("http", "https"):
            raise ImageUrlRefusedError(f"refused to follow a redirect from {host} to a URL that is not http(s)")
        return target

    async def _save(
        self,
        response: httpx.Response,
        dest: pathlib.Path,
        tmp: pathlib.Path,
        max_bytes: int,
        chunk_size: int,
        host: str,
    ) -> DownloadResult | _Attempt:
        status = response.status_code
        declared = header(response, "Content-Length", self._redactor, limit=64)
        if declared is not None and _DIGITS.fullmatch(declared) and int(declared) > max_bytes:
            return _Attempt(_too_large(host, max_bytes), retryable=False)
        content_type = header(response, "Content-Type", self._redactor, limit=200)
        written = 0
        try:
            async with await anyio.open_file(tmp, "wb") as file, aclosing(
                iter_body(response, max_bytes, chunk_size=chunk_size)
            ) as body:
                async for piece in body:
                    written += len(piece)
                    await file.write(piece)
        except BodyTooLargeError:
            return _Attempt(_too_large(host, max_bytes), retryable=False)
        except BodyUndecodableError as exc:
            error = RunAPIResponseError(f"The image from {host}: {exc}", status_code=status, summary="")
            return _Attempt(error, retryable=False)
        if written == 0:
            error = RunAPIResponseError(f"The image download from {host} was empty", status_code=status, summary="")
            return _Attempt(error, retryable=True)
        await anyio.Path(tmp).replace(dest)
        mime = content_type.split(";", 1)[0].strip().lower() if content_type else None
        return DownloadResult(path=dest, bytes_written=written, content_type=mime or None)

    def _download_failure(self, response: httpx.Response, host: str) -> _Attempt:
        status = response.status_code
        reason = f"{status_text(status)} from {host}"
        retry_after = parse_retry_after(header(response, "Retry-After", self._redactor), now=self._clock.time())
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


def _task_id(response: httpx.Response, redactor: Redactor) -> str | None:
    """An ``X-RunAPI-Task-Id`` header worth tracking a task by, exactly as sent: an id's characters only, and
    not the key echoed back (it would be stored and shown as the task's id).

    Checked raw, not cleaned: an id with control characters stripped (or the key masked) would name
    another task, or none."""
    value = response.headers.get(TASK_ID_HEADER, "").strip()
    return value if _TASK_ID.fullmatch(value) and redactor(value) == value else None


def _check_idempotency_key(key: str) -> None:
    if not 1 <= len(key) <= 512 or not key.isascii() or not key.isprintable():
        raise ValueError("idempotency_key must be 1..512 printable ASCII characters")
