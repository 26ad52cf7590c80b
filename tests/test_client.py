"""Unit tests for the RunAPI client: retry policy, headers, error parsing, tolerant models, downloads,
sanitising of everything upstream sends, redaction of echoed keys, and the image-URL policy; and today's
RunAPI contract: nested price quotes, the three-step upload (prepare, PUT to storage, confirm), the SDK's
task statuses, task_replayed, usage.cost, X-RunAPI-Task-Id, validation fields and the price schedules.

Most cases run against ``httpx.MockTransport`` with a fake resolver; a few drive the session simulator
(``sim``), whose storage and quotes check what RunAPI's do; where real connections matter
(pinning to the checked address, redirects, trickling hosts, pool separation) a tiny HTTP/1.1 server runs
on 127.0.0.1 in the test's own event loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import gzip
import hashlib
import ipaddress
import json
import logging
import pathlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest

from runapi_mcp.client import (
    NO_API_KEY_MESSAGE,
    AuthenticationError,
    BadRequestError,
    Balance,
    ConflictError,
    ImageUrlPolicy,
    ImageUrlRefusedError,
    InsufficientCreditsError,
    NotFoundError,
    PayloadTooLargeError,
    PriceQuote,
    PriceSchedules,
    RateLimitedError,
    RetryPolicy,
    RunAPIClient,
    RunAPIConnectionError,
    RunAPIError,
    RunAPIResponseError,
    RunAPIStatusError,
    RunAPITimeoutError,
    ServerError,
    TaskInfo,
    UploadedFile,
    address_class,
    normalize_status,
)
from runapi_mcp.redaction import Redactor
from runapi_mcp.simulator import Simulator
from tests.support import SIM_KEY, FakeClock, png_bytes, until

pytestmark = pytest.mark.anyio

KEY = "sk-test-SECRET-0123456789"
BASE = "https://api.test"
CREATE = "/api/v1/gpt_image_2/text_to_image"
PNG = b"\x89PNG\r\n\x1a\n" + b"x" * 1000

Handler = Callable[[httpx.Request], httpx.Response]
Resolve = Callable[[str, int], Awaitable[Sequence[str]]]
PUBLIC_IP = "93.184.216.34"


def fake_dns(table: dict[str, list[str]] | None = None, *, calls: list[str] | None = None) -> Resolve:
    """A resolver: IP literals resolve to themselves, names per ``table``, any other name to PUBLIC_IP."""

    async def resolve(host: str, port: int) -> Sequence[str]:
        if calls is not None:
            calls.append(host)
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            return (table or {}).get(host, [PUBLIC_IP])

    return resolve


class Recorder:
    """A MockTransport handler that answers from a script and keeps every request."""

    def __init__(self, *responses: httpx.Response | Exception | Handler) -> None:
        self.script = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, Exception):
            raise item
        if isinstance(item, httpx.Response):
            return item
        return item(request)


class Sleeps(FakeClock):
    """The client's clock: a retry's wait returns at once, and its length is kept in ``delays``."""

    def __init__(self) -> None:
        super().__init__(autojump=True)
        self.delays = self.slept


def make_client(
    handler: Handler, *, key: str | None = KEY, sleeps: Sleeps | None = None, **kwargs: Any
) -> RunAPIClient:
    kwargs.setdefault("image_policy", ImageUrlPolicy(BASE, resolver=fake_dns()))
    return RunAPIClient(key, BASE, transport=httpx.MockTransport(handler), clock=sleeps or Sleeps(), **kwargs)


def listing(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def task_json(**fields: Any) -> httpx.Response:
    return httpx.Response(200, json={"id": "t1", "status": "pending", **fields})


# The three-step upload: prepare (RunAPI), PUT (storage, a foreign https origin here), confirm (RunAPI).
PREPARE = "/api/v1/files/prepare"
CONFIRM = "/api/v1/files/confirm"
UPLOAD_URL = "https://storage.test/bucket/up-1?X-Amz-Signature=sig"


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")


def prepared(url: str = UPLOAD_URL, headers: dict[str, str] | None = None) -> httpx.Response:
    target = {"signed_id": "sid-1", "upload_url": url, "headers": {} if headers is None else headers}
    return httpx.Response(200, json=target)


def file_answer(**fields: Any) -> httpx.Response:
    return httpx.Response(200, json={"url": "https://files.test/x.png", "file_name": "x.png", **fields})


# -- headers, idempotency, auth --------------------------------------------------------------------


async def test_create_task_sends_auth_and_idempotency_headers() -> None:
    recorder = Recorder(task_json())
    async with make_client(recorder) as client:
        task = await client.create_task(CREATE, {"prompt": "a cat"}, idempotency_key="key-1")
    assert task.id == "t1" and task.status == "pending"
    (request,) = recorder.requests
    assert request.method == "POST"
    assert str(request.url) == BASE + CREATE
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["User-Agent"].startswith("runapi-mcp/")
    assert request.headers["Idempotency-Key"] == "key-1"
    assert json.loads(request.content) == {"prompt": "a cat"}


async def test_create_task_retries_with_the_same_idempotency_key() -> None:
    recorder = Recorder(httpx.Response(503), httpx.Response(502), task_json())
    sleeps = Sleeps()
    async with make_client(recorder, sleeps=sleeps) as client:
        task = await client.create_task(CREATE, {"prompt": "a cat"}, idempotency_key="same-key")
    assert task.id == "t1"
    assert [r.headers["Idempotency-Key"] for r in recorder.requests] == ["same-key"] * 3
    assert len(sleeps.delays) == 2
    assert 0.5 <= sleeps.delays[0] <= 0.75
    assert 1.0 <= sleeps.delays[1] <= 1.5


async def test_retries_stop_after_two() -> None:
    recorder = Recorder(httpx.Response(500, json={"error": "boom"}))
    sleeps = Sleeps()
    async with make_client(recorder, sleeps=sleeps) as client:
        with pytest.raises(ServerError) as info:
            await client.get_balance()
    assert len(recorder.requests) == 3
    assert len(sleeps.delays) == 2
    assert info.value.status_code == 500
    assert "boom" in str(info.value)


async def test_no_retry_on_client_errors() -> None:
    recorder = Recorder(httpx.Response(422, json={"error": {"message": "prompt is required"}}))
    async with make_client(recorder) as client:
        with pytest.raises(BadRequestError):
            await client.create_task(CREATE, {}, idempotency_key="k")
    assert len(recorder.requests) == 1


async def test_missing_key_sends_nothing() -> None:
    recorder = Recorder(task_json())
    async with make_client(recorder, key=None) as client:
        assert not client.has_key
        for call in (
            client.create_task(CREATE, {}, idempotency_key="k"),
            client.get_task(CREATE, "t1"),
            client.get_balance(),
            client.upload_file(b"x", filename="a.png", mime_type="image/png"),
        ):
            with pytest.raises(AuthenticationError) as info:
                await call
            assert str(info.value) == NO_API_KEY_MESSAGE
    assert recorder.requests == []


async def test_blank_key_counts_as_missing() -> None:
    async with make_client(Recorder(task_json()), key="  ") as client:
        assert not client.has_key


async def test_unsendable_key_is_refused_without_echoing_it() -> None:
    recorder = Recorder(task_json())
    async with make_client(recorder, key="sk-caf\u00e9 secret") as client:
        with pytest.raises(AuthenticationError) as info:
            await client.get_balance()
    assert "secret" not in str(info.value) and "cannot be sent" in str(info.value)
    assert recorder.requests == []


async def test_bad_idempotency_key_and_path_are_rejected_locally() -> None:
    recorder = Recorder(task_json())
    async with make_client(recorder) as client:
        with pytest.raises(ValueError):
            await client.create_task(CREATE, {}, idempotency_key="")
        with pytest.raises(ValueError):
            await client.create_task(CREATE, {}, idempotency_key="x" * 513)
        with pytest.raises(ValueError):
            await client.create_task("https://evil.test/x", {}, idempotency_key="k")
    assert recorder.requests == []


# -- Retry-After and backoff -----------------------------------------------------------------------


async def test_retry_after_seconds_overrides_backoff() -> None:
    recorder = Recorder(httpx.Response(429, headers={"Retry-After": "7"}), task_json())
    sleeps = Sleeps()
    async with make_client(recorder, sleeps=sleeps) as client:
        await client.get_task(CREATE, "t1")
    assert sleeps.delays == [7.0]


async def test_retry_after_http_date_and_cap() -> None:
    sleeps = Sleeps()
    date = email.utils.formatdate(sleeps.time() + 30, usegmt=True)  # read from the client's clock
    recorder = Recorder(
        httpx.Response(503, headers={"Retry-After": date}),
        httpx.Response(429, headers={"Retry-After": "3600"}),
        task_json(),
    )
    async with make_client(recorder, sleeps=sleeps) as client:
        await client.get_task(CREATE, "t1")
    assert sleeps.delays[0] == 30.0
    assert sleeps.delays[1] == 60.0


async def test_rate_limited_error_carries_retry_after() -> None:
    recorder = Recorder(httpx.Response(429, headers={"Retry-After": "12"}, json={"error": "slow down"}))
    async with make_client(recorder, retry=RetryPolicy(max_retries=0)) as client:
        with pytest.raises(RateLimitedError) as info:
            await client.get_balance()
    assert info.value.retry_after == 12.0
    assert "retry after 12 s" in str(info.value)


def test_backoff_bounds() -> None:
    policy = RetryPolicy()
    assert [policy.backoff(n, rand=lambda: 0.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert [policy.backoff(n, rand=lambda: 1.0) for n in range(5)] == [0.75, 1.5, 3.0, 6.0, 7.5]
    for _ in range(200):
        assert 0.5 <= policy.backoff(0) <= 0.75
    assert policy.delay(0, status_code=500, retry_after=9.0) <= 0.75  # Retry-After only on 429/503
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=-1)


async def test_get_task_returns_retry_after_header() -> None:
    answer = {"id": "t1", "status": "processing"}
    recorder = Recorder(httpx.Response(200, headers={"Retry-After": "3"}, json=answer))
    async with make_client(recorder) as client:
        task = await client.get_task(CREATE, "t1")
    assert task.retry_after == 3.0
    assert str(recorder.requests[0].url) == f"{BASE}{CREATE}/t1"


# -- transport errors ------------------------------------------------------------------------------


async def test_connect_error_becomes_network_error_after_retries() -> None:
    recorder = Recorder(httpx.ConnectError("[Errno 111] Connection refused"))
    async with make_client(recorder) as client:
        with pytest.raises(RunAPIConnectionError) as info:
            await client.get_balance()
    assert len(recorder.requests) == 3
    assert "Connection refused" in str(info.value)
    assert str(info.value).startswith("Could not reach RunAPI")


async def test_timeout_becomes_timeout_error() -> None:
    recorder = Recorder(httpx.ReadTimeout("timed out"), httpx.ReadTimeout("timed out"), task_json())
    async with make_client(recorder) as client:
        assert (await client.get_task(CREATE, "t1")).id == "t1"
    recorder = Recorder(httpx.ReadTimeout("timed out"))
    async with make_client(recorder, retry=RetryPolicy(max_retries=0)) as client:
        with pytest.raises(RunAPITimeoutError, match="did not answer in time"):
            await client.get_task(CREATE, "t1")


async def test_transport_error_is_retried_except_on_the_storage_put() -> None:
    recorder = Recorder(httpx.ReadError("reset"), task_json())
    async with make_client(recorder) as client:
        await client.create_task(CREATE, {}, idempotency_key="k")
    assert len(recorder.requests) == 2

    # Preparing an upload creates nothing: asked again like a read. The PUT to its single-use URL is not,
    # and nothing is confirmed after it failed.
    recorder = Recorder(httpx.ReadError("reset"), prepared(), httpx.ReadError("reset"), file_answer())
    async with make_client(recorder) as client:
        with pytest.raises(RunAPIConnectionError, match="file storage"):
            await client.upload_file(b"x", filename="a.png", mime_type="image/png")
    assert [(r.method, r.url.path) for r in recorder.requests] == [
        ("POST", PREPARE),
        ("POST", PREPARE),
        ("PUT", "/bucket/up-1"),
    ]


# -- protocol errors -------------------------------------------------------------------------------


async def test_malformed_json_is_retried_once_then_protocol_error() -> None:
    bad = httpx.Response(200, content=b"{not json", headers={"x-request-id": "req-9"})
    recorder = Recorder(bad)
    async with make_client(recorder) as client:
        with pytest.raises(RunAPIResponseError) as info:
            await client.get_task(CREATE, "t1")
    assert len(recorder.requests) == 2
    assert info.value.status_code == 200 and info.value.request_id == "req-9"
    assert "not valid JSON" in str(info.value) and "[request id req-9]" in str(info.value)

    recorder = Recorder(bad, task_json())
    async with make_client(recorder) as client:
        assert (await client.create_task(CREATE, {}, idempotency_key="k")).id == "t1"


async def test_answer_without_id_is_protocol_error() -> None:
    recorder = Recorder(httpx.Response(200, json={"status": "pending"}))
    async with make_client(recorder) as client:
        with pytest.raises(RunAPIResponseError, match="no task id"):
            await client.create_task(CREATE, {}, idempotency_key="k")


# -- error parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message", "code"),
    [
        ({"error": "prompt is required"}, "prompt is required", None),
        (
            {"error": {"message": "prompt is required", "code": "validation_error"}},
            "prompt is required",
            "validation_error",
        ),
        ({"message": "prompt is required"}, "prompt is required", None),
        ({"detail": "prompt is required"}, "prompt is required", None),
        ({"msg": "prompt is required", "code": "bad_prompt"}, "prompt is required", "bad_prompt"),
        (
            {"detail": [{"loc": ["body", "prompt"], "msg": "field required", "type": "missing"}]},
            "prompt: field required",
            None,
        ),
        (
            {"error": "invalid_request", "message": "prompt is required"},
            "prompt is required",
            "invalid_request",
        ),
        ({"errors": {"prompt": ["is required"]}}, "prompt: is required", None),
        ({"code": 422, "data": {"message": "prompt is required"}}, "prompt is required", None),
        ("prompt is required", "prompt is required", None),
        ({"unrelated": 1}, "Unprocessable Entity", None),
    ],
)
async def test_error_body_shapes(body: Any, message: str, code: str | None) -> None:
    response = httpx.Response(422, json=body, headers={"x-request-id": "abc"})
    async with make_client(Recorder(response)) as client:
        with pytest.raises(BadRequestError) as info:
            await client.create_task(CREATE, {}, idempotency_key="k")
    err = info.value
    assert (err.message, err.code, err.request_id, err.status_code) == (message, code, "abc", 422)


async def test_error_sentence_format() -> None:
    body = {"error": {"message": "prompt is required", "code": "validation_error"}}
    response = httpx.Response(422, json=body, headers={"x-request-id": "abc"})
    async with make_client(Recorder(response)) as client:
        with pytest.raises(BadRequestError) as info:
            await client.create_task(CREATE, {}, idempotency_key="k")
    assert str(info.value) == (
        "RunAPI rejected the request (422 validation_error): prompt is required [request id abc]"
    )


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"<html><head><title>502</title></head><body><h1>Bad Gateway</h1>nginx</body></html>", "text/html"),
        (b"upstream connect error or disconnect/reset before headers", "text/plain"),
        (b'"<html>oops</html>"', "application/json"),
        (b"", "text/plain"),
    ],
)
async def test_html_and_plain_text_fall_back_to_status_text(content: bytes, content_type: str) -> None:
    response = httpx.Response(502, content=content, headers={"Content-Type": content_type})
    async with make_client(Recorder(response), retry=RetryPolicy(max_retries=0)) as client:
        with pytest.raises(ServerError) as info:
            await client.get_balance()
    assert info.value.message == "Bad Gateway"
    assert str(info.value) == "RunAPI had a server error (502): Bad Gateway"


async def test_long_messages_are_truncated() -> None:
    response = httpx.Response(400, json={"error": "x" * 5000})
    async with make_client(Recorder(response)) as client:
        with pytest.raises(BadRequestError) as info:
            await client.get_balance()
    assert len(info.value.message) <= 500
    assert info.value.message.endswith("…")


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (402, InsufficientCreditsError),
        (403, AuthenticationError),
        (404, NotFoundError),
        (409, ConflictError),
        (413, PayloadTooLargeError),
        (418, RunAPIStatusError),
        (422, BadRequestError),
        (429, RateLimitedError),
        (500, ServerError),
        (503, ServerError),
    ],
)
async def test_status_mapping(status: int, cls: type[RunAPIError]) -> None:
    async with make_client(Recorder(httpx.Response(status)), retry=RetryPolicy(max_retries=0)) as client:
        with pytest.raises(RunAPIError) as info:
            await client.create_task(CREATE, {}, idempotency_key="k")
    assert type(info.value) is cls
    assert info.value.status_code == status


async def test_key_never_leaks(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="runapi_mcp.client")
    echo = {"error": {"message": f"invalid key {KEY} (Authorization: Bearer {KEY})", "code": KEY}}
    recorder = Recorder(httpx.Response(401, json=echo, headers={"x-request-id": "r1"}))
    client = make_client(recorder)
    async with client:
        with pytest.raises(AuthenticationError) as info:
            await client.get_balance()
        with pytest.raises(RunAPIConnectionError) as net:
            recorder.script = [httpx.ConnectError(f"failed for {KEY}")]
            await client.get_balance()
    for text in (
        str(info.value),
        repr(info.value),
        str(net.value),
        repr(net.value),
        repr(client),
        caplog.text,
    ):
        assert KEY not in text
    assert "***" in str(info.value)
    assert "Authorization" not in caplog.text
    assert "GET /api/v1/me/balance -> 401" in caplog.text and "r1" in caplog.text


def test_bearer_tokens_are_scrubbed_from_any_error() -> None:
    err = ServerError("echo Bearer abc.def-ghi", status_code=500)
    assert "abc.def" not in str(err)


# -- get_task fallback -----------------------------------------------------------------------------


async def test_get_task_falls_back_to_service_route_on_404() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.raw_path == b"/api/v1/gpt_image_2/t%2F1":
            return httpx.Response(
                200, json={"task_id": "t/1", "status": "success", "images": ["https://o/1.png"]}
            )
        return httpx.Response(404, json={"error": "no such route"})

    recorder = Recorder(handler)
    async with make_client(recorder) as client:
        task = await client.get_task(CREATE, "t/1")
    assert task.status == "completed" and task.images[0].url == "https://o/1.png"
    assert [r.url.raw_path for r in recorder.requests] == [
        b"/api/v1/gpt_image_2/text_to_image/t%2F1",
        b"/api/v1/gpt_image_2/t%2F1",
    ]


async def test_get_task_raises_not_found_when_both_routes_404() -> None:
    recorder = Recorder(httpx.Response(404, json={"error": "task not found"}))
    async with make_client(recorder) as client:
        with pytest.raises(NotFoundError, match="task not found"):
            await client.get_task(CREATE, "nope")
    assert len(recorder.requests) == 2


# -- upload and balance ----------------------------------------------------------------------------


async def test_upload_file_prepares_puts_and_confirms() -> None:
    """RunAPI's three steps: the prepare names size and MD5; the bytes go to the prepared URL with exactly
    the prepared headers and no key; the confirm names the signed id and answers the file."""
    data = PNG
    storage_headers = {"Content-Type": "image/png", "Content-MD5": md5_b64(data), "x-amz-meta-owner": "u-1"}
    confirmed = {
        "data": {
            "url": "https://files/x.png",
            "file_name": "x.png",
            "size_bytes": len(data),
            "mime_type": "image/png",
            "expires_at": "2030-01-01T00:00:00Z",
            "created_at": "now",
        }
    }

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            return httpx.Response(200, headers={"ETag": '"abc"'})
        if request.url.path == PREPARE:
            return prepared(headers=storage_headers)
        return httpx.Response(201, json=confirmed)

    recorder = Recorder(handler)
    async with make_client(recorder) as client:
        uploaded = await client.upload_file(data, filename="x.png", mime_type="image/png")
    assert isinstance(uploaded, UploadedFile)
    assert (uploaded.url, uploaded.size_bytes, uploaded.mime_type) == ("https://files/x.png", len(data), "image/png")
    assert uploaded.model_extra == {"created_at": "now"}
    prepare, put, confirm = recorder.requests
    assert (prepare.method, str(prepare.url)) == ("POST", BASE + PREPARE)
    assert json.loads(prepare.content) == {"filename": "x.png", "byte_size": len(data), "checksum": md5_b64(data)}
    assert (confirm.method, str(confirm.url)) == ("POST", BASE + CONFIRM)
    assert json.loads(confirm.content) == {"signed_id": "sid-1"}
    for request in (prepare, confirm):
        assert request.headers["Authorization"] == f"Bearer {KEY}"
        assert request.headers["Content-Type"] == "application/json"
        assert "Idempotency-Key" not in request.headers  # nothing billable is created
    # The PUT: to the prepared URL (its signature kept), the bytes as they are, exactly the prepared headers
    # (plus what HTTP itself needs), and nothing of ours: no key, no client headers.
    assert (put.method, str(put.url)) == ("PUT", UPLOAD_URL)
    assert put.content == data
    sent = {k.lower(): v for k, v in put.headers.items() if k.lower() not in ("host", "content-length")}
    assert sent == {k.lower(): v for k, v in storage_headers.items()}
    assert put.headers["Host"] == "storage.test" and put.headers["Content-Length"] == str(len(data))
    assert "authorization" not in sent and "user-agent" not in sent
    assert_no_key(str(put.headers.raw), str(put.url))


async def test_the_storage_put_never_carries_an_authorization() -> None:
    """Not even one the prepare answer asks for: the PUT goes to storage, never with a credential."""
    asked = {"Authorization": f"Bearer {KEY}", "Content-MD5": md5_b64(b"x")}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            return httpx.Response(200)
        return prepared(headers=asked) if request.url.path == PREPARE else file_answer()

    recorder = Recorder(handler)
    async with make_client(recorder) as client:
        await client.upload_file(b"x", filename="a.png", mime_type="image/png")
    put = recorder.requests[1]
    assert put.method == "PUT" and "Authorization" not in put.headers
    assert put.headers["Content-MD5"] == md5_b64(b"x")
    assert_no_key(str(put.headers.raw))


@pytest.mark.parametrize(
    "upload_url",
    [
        "http://storage.evil.test/bucket/up-1",  # plain http on a stranger
        "http://api.test/bucket/up-1",  # RunAPI's host, but not its origin (https)
        "ftp://storage.test/bucket/up-1",
        "file:///etc/passwd",
        "/relative/up-1",
    ],
)
async def test_an_upload_url_neither_https_nor_runapis_origin_is_refused_before_any_put(upload_url: str) -> None:
    recorder = Recorder(prepared(url=upload_url), httpx.Response(200), file_answer())
    async with make_client(recorder) as client:
        with pytest.raises(RunAPIResponseError, match="neither https nor RunAPI's own origin"):
            await client.upload_file(b"x", filename="a.png", mime_type="image/png")
    assert [(r.method, r.url.path) for r in recorder.requests] == [("POST", PREPARE)]  # no PUT, no confirm


async def test_a_plain_http_upload_url_on_runapis_own_origin_is_used() -> None:
    """A local RunAPI (a simulator, a proxy in front of both) may hand out plain-http storage on its origin."""
    base = "http://127.0.0.1:8000"
    recorder = Recorder(prepared(url=f"{base}/storage/tok"), httpx.Response(200), file_answer())
    client = RunAPIClient(KEY, base, transport=httpx.MockTransport(recorder), clock=Sleeps())
    async with client:
        assert (await client.upload_file(b"x", filename="a.png", mime_type="image/png")).url
    assert [(r.method, str(r.url)) for r in recorder.requests] == [
        ("POST", base + PREPARE),
        ("PUT", f"{base}/storage/tok"),
        ("POST", base + CONFIRM),
    ]
    assert "Authorization" not in recorder.requests[1].headers


async def test_a_storage_refusal_is_not_retried_and_nothing_is_confirmed() -> None:
    xml = b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>"
    recorder = Recorder(prepared(), httpx.Response(503, content=xml, headers={"Content-Type": "application/xml"}))
    sleeps = Sleeps()
    async with make_client(recorder, sleeps=sleeps) as client:
        with pytest.raises(ServerError) as info:
            await client.upload_file(b"x", filename="a.png", mime_type="image/png")
    assert [r.method for r in recorder.requests] == ["POST", "PUT"]
    assert sleeps.delays == []
    assert "file storage" in str(info.value) and "<Error>" not in str(info.value)


async def test_prepare_and_confirm_are_retried_like_reads() -> None:
    recorder = Recorder(httpx.Response(503), prepared(), httpx.Response(200), httpx.Response(502), file_answer())
    async with make_client(recorder) as client:
        uploaded = await client.upload_file(b"x", filename="a.png", mime_type="image/png")
    assert uploaded.url == "https://files.test/x.png"
    assert [(r.method, r.url.path) for r in recorder.requests] == [
        ("POST", PREPARE),
        ("POST", PREPARE),
        ("PUT", "/bucket/up-1"),
        ("POST", CONFIRM),
        ("POST", CONFIRM),
    ]


@pytest.mark.parametrize(
    "answer",
    [
        {"upload_url": UPLOAD_URL},  # no signed id
        {"signed_id": "sid-1"},  # nowhere to put the bytes
        {"signed_id": "sid-1", "upload_url": UPLOAD_URL, "headers": {f"h{n}": "v" for n in range(33)}},
        ["not", "an", "object"],
    ],
)
async def test_an_unusable_prepare_answer_sends_no_bytes(answer: Any) -> None:
    recorder = Recorder(httpx.Response(200, json=answer))
    async with make_client(recorder, retry=RetryPolicy(max_retries=0)) as client:
        with pytest.raises(RunAPIResponseError):
            await client.upload_file(b"x", filename="a.png", mime_type="image/png")
    assert all(r.method == "POST" and r.url.path == PREPARE for r in recorder.requests)


async def test_upload_source_posts_a_json_source() -> None:
    recorder = Recorder(file_answer())
    async with make_client(recorder) as client:
        await client.upload_source({"type": "url", "url": "https://example.test/cat.png"}, file_name="cat.png")
        await client.upload_source({"type": "base64", "data": "iVBORw0KGgo="})
        for bad in ({"type": "url"}, {"type": "path", "url": "/etc/passwd"}, {"type": "base64", "url": "x"}):
            with pytest.raises(ValueError):
                await client.upload_source(bad)
    first, second = recorder.requests
    for request in (first, second):
        assert (request.method, request.url.path) == ("POST", "/api/v1/files")
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert json.loads(first.content) == {
        "source": {"type": "url", "url": "https://example.test/cat.png"},
        "file_name": "cat.png",
    }
    assert json.loads(second.content) == {"source": {"type": "base64", "data": "iVBORw0KGgo="}}


async def test_upload_against_the_simulator(sim: Simulator) -> None:
    """The simulator's storage checks what RunAPI's does: the prepared headers exactly, the prepared size
    and MD5, and no Authorization on the PUT."""
    data = png_bytes((4, 4))
    async with RunAPIClient(SIM_KEY, sim.base_url, clock=Sleeps()) as client:
        uploaded = await client.upload_file(data, filename="teal.png", mime_type="image/png")
    assert uploaded.url.startswith(f"{sim.base_url}/files/") and uploaded.expires_at
    prepare, put, confirm = sim.requests
    assert (prepare.method, prepare.path, prepare.status) == ("POST", PREPARE, 200)
    assert prepare.json == {"filename": "teal.png", "byte_size": len(data), "checksum": md5_b64(data)}
    assert (put.method, put.status) == ("PUT", 200) and put.path.startswith("/storage/")
    assert not put.sent_auth
    assert (confirm.method, confirm.path, confirm.status) == ("POST", CONFIRM, 200)
    assert prepare.authorized and confirm.authorized


async def test_get_balance() -> None:
    answer = {
        "balance_cents": 1234,
        "paid_balance_cents": "1000",
        "bonus_balance_cents": 234.0,
        "tier": "pro",
    }
    async with make_client(Recorder(httpx.Response(200, json=answer))) as client:
        balance = await client.get_balance()
    assert isinstance(balance, Balance)
    assert (balance.balance_cents, balance.paid_balance_cents, balance.bonus_balance_cents) == (
        1234,
        1000,
        234,
    )
    assert balance.spent_cents_today is None
    assert balance.model_extra == {"tier": "pro"}
    assert Balance.from_response({"data": {"balance_cents": 5}}).balance_cents == 5


# -- price quotes ----------------------------------------------------------------------------------


async def test_quote_price_nests_the_fields_under_params() -> None:
    answer = {"price_quote": {"reservation_amount_cents": 12, "currency": "USD", "image_count": 1}}
    recorder = Recorder(httpx.Response(200, json=answer))
    async with make_client(recorder) as client:
        quote = await client.quote_price(
            "topaz", "upscale_image", model="topaz-upscale-image", params={"upscale_factor": 4}
        )
    assert isinstance(quote, PriceQuote)
    assert (quote.reservation_amount_cents, quote.currency) == (12, "USD")
    assert quote.model_extra == {"image_count": 1}
    (request,) = recorder.requests
    assert request.method == "POST" and request.url.path == "/api/v1/price_quotes"
    assert request.headers["Authorization"] == f"Bearer {KEY}" and "Idempotency-Key" not in request.headers
    # Today's contract: the create's fields under "params", never flat beside service and action.
    assert json.loads(request.content) == {
        "service": "topaz",
        "action": "upscale_image",
        "model": "topaz-upscale-image",
        "params": {"upscale_factor": 4},
    }


async def test_quote_price_without_a_model_and_with_nested_params() -> None:
    recorder = Recorder(httpx.Response(200, json={"price_quote": {"reservation_amount_cents": 5}}))
    params = {"prompt": "a cat", "source_image_urls": ["https://f/1.png"], "aspect_ratio": "1:1"}
    async with make_client(recorder) as client:
        await client.quote_price("gpt_image_2", "edit_image", model=None, params=params)
        with pytest.raises(ValueError):
            await client.quote_price("", "edit_image", model=None, params={})
    (request,) = recorder.requests
    assert json.loads(request.content) == {"service": "gpt_image_2", "action": "edit_image", "params": params}


async def test_quote_price_against_the_simulator(sim: Simulator) -> None:
    async with RunAPIClient(SIM_KEY, sim.base_url, clock=Sleeps()) as client:
        low = await client.quote_price(
            "gpt_image_2", "text_to_image", model="gpt-image-2", params={"prompt": "a cat", "output_resolution": "1k"}
        )
        high = await client.quote_price(
            "gpt_image_2", "text_to_image", model="gpt-image-2", params={"prompt": "a cat", "output_resolution": "4k"}
        )
    assert low.reservation_amount_cents and high.reservation_amount_cents
    assert high.reservation_amount_cents > low.reservation_amount_cents  # the simulator read the nested fields
    first = sim.requests[0]
    assert (first.method, first.path, first.status) == ("POST", "/api/v1/price_quotes", 200)
    assert first.json == {
        "service": "gpt_image_2",
        "action": "text_to_image",
        "model": "gpt-image-2",
        "params": {"prompt": "a cat", "output_resolution": "1k"},
    }


async def test_quote_price_is_retried_like_a_get() -> None:
    """A quote creates and charges nothing: retried on 5xx and transport errors without an idempotency key."""
    ok = httpx.Response(200, json={"price_quote": {"reservation_amount_cents": 3}})
    recorder = Recorder(httpx.Response(503), httpx.ConnectError("down"), ok)
    sleeps = Sleeps()
    async with make_client(recorder, sleeps=sleeps) as client:
        quote = await client.quote_price("gpt_image_2", "text_to_image", model="gpt-image-2", params={})
    assert quote.reservation_amount_cents == 3 and quote.currency is None
    assert len(recorder.requests) == 3 and len(sleeps.delays) == 2
    refusal = {"error": {"message": "No action y on service x", "code": "validation_error", "field": "action"}}
    refused = Recorder(httpx.Response(422, json=refusal))
    async with make_client(refused) as client:
        with pytest.raises(BadRequestError, match="No action") as info:
            await client.quote_price("x", "y", model=None, params={})
    assert info.value.field == "action"
    assert len(refused.requests) == 1  # a refusal is not asked again


# -- price schedules (availability) ----------------------------------------------------------------


SCHEDULES = {
    "as_of": "2026-12-07T00:00:00Z",
    "price_schedules": [
        {
            "service": "gpt_image_2",
            "action": "text_to_image",
            "model": "gpt-image-2",
            "catalog_status": "active",
            "pricing_status": "priced",
            "unit_price_cents": 3,
            "currency": "USD",
            "billing_unit": "image",
        },
        {
            "service": "topaz",
            "action": "upscale_image",
            "model": "topaz-upscale-image",
            "catalog_status": "maintenance",
        },
        {"service": "flux_kontext", "action": "edit_image", "catalog_status": "disabled"},
        {"service": "wan", "action": "text_to_image"},  # no catalog_status: active
        {"action": "nameless"},  # no service: not a row
        "junk",
    ],
}


async def test_price_schedules_with_etag_then_not_modified() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers.get("If-None-Match") == '"v1"':
            return httpx.Response(304, headers={"ETag": '"v1"'})
        return httpx.Response(200, json=SCHEDULES, headers={"ETag": '"v1"'})

    recorder = Recorder(handler)
    async with make_client(recorder) as client:
        table = await client.price_schedules()
        assert isinstance(table, PriceSchedules)
        again = await client.price_schedules(etag=table.etag)
    assert again is None  # 304: the table in hand still holds
    assert table.etag == '"v1"' and table.as_of == "2026-12-07T00:00:00Z"
    rows = {(row.service, row.action): row for row in table.rows}
    assert list(rows) == [
        ("gpt_image_2", "text_to_image"),
        ("topaz", "upscale_image"),
        ("flux_kontext", "edit_image"),
        ("wan", "text_to_image"),
    ]
    first = rows["gpt_image_2", "text_to_image"]
    assert (first.model, first.unit_price_cents, first.currency, first.available) == ("gpt-image-2", 3, "USD", True)
    assert first.model_extra == {"billing_unit": "image"}
    assert not rows["topaz", "upscale_image"].available and not rows["flux_kontext", "edit_image"].available
    assert rows["wan", "text_to_image"].catalog_status == "active" and rows["wan", "text_to_image"].available
    plain, conditional = recorder.requests
    assert (plain.method, plain.url.path) == ("GET", "/api/v1/price_schedules")
    assert "If-None-Match" not in plain.headers and conditional.headers["If-None-Match"] == '"v1"'


async def test_price_schedules_filters_and_refusals() -> None:
    recorder = Recorder(httpx.Response(200, json={"price_schedules": []}))
    async with make_client(recorder) as client:
        table = await client.price_schedules(service="gpt_image_2", model="gpt image/2")
        with pytest.raises(ValueError, match="unknown filter"):
            await client.price_schedules(region="eu")
    assert table is not None and table.rows == [] and table.etag is None
    (request,) = recorder.requests
    assert request.url.query == b"service=gpt_image_2&model=gpt%20image%2F2"
    bad = Recorder(httpx.Response(200, json={"as_of": "now"}))
    async with make_client(bad) as client:
        with pytest.raises(RunAPIResponseError, match="no price_schedules list"):
            await client.price_schedules()


async def test_price_schedules_against_the_simulator(sim: Simulator) -> None:
    async with RunAPIClient(SIM_KEY, sim.base_url, clock=Sleeps()) as client:
        table = await client.price_schedules()
        assert table is not None and table.etag and table.rows
        assert await client.price_schedules(etag=table.etag) is None
        only = await client.price_schedules(service="gpt_image_2", etag=table.etag)  # another body, another tag
    assert only is not None and only.rows and {row.service for row in only.rows} == {"gpt_image_2"}
    assert [(r.path, r.status) for r in sim.requests] == [("/api/v1/price_schedules", s) for s in (200, 304, 200)]


@pytest.mark.parametrize(
    ("body", "cents"),
    [
        ({"price_quote": {"reservation_amount_cents": 7}}, 7),
        ({"data": {"price_quote": {"reservation_amount_cents": "8"}}}, 8),
        ({"data": {"reservation_amount_cents": 9.0}}, 9),
        ({"reservation_amount_cents": 10, "currency": "USD"}, 10),
        ({"price_quote": {"amount_cents": 11}}, 11),
        ({"price_quote": {"reservation_amount_cents": -5}}, None),  # never a credit
        ({"price_quote": {"reservation_amount_cents": "lots"}}, None),
        ({"price_quote": {"reservation_amount_cents": 10**400}}, None),
        ({"price_quote": {"reservation_amount_cents": True}}, None),
        ({"price_quote": {}}, None),
        ({"price_quote": "free"}, None),
    ],
)
def test_price_quote_reads_any_shape(body: Any, cents: int | None) -> None:
    assert PriceQuote.from_response(body).reservation_amount_cents == cents


@pytest.mark.parametrize("body", [[1, 2], "12", None, 12])
def test_price_quote_that_is_no_object_is_a_response_error(body: Any) -> None:
    with pytest.raises(RunAPIResponseError):
        PriceQuote.from_response(body)


# -- downloads -------------------------------------------------------------------------------------


async def test_download_streams_to_dest_without_authorization(tmp_path: pathlib.Path) -> None:
    recorder = Recorder(
        httpx.Response(200, content=PNG, headers={"Content-Type": "image/png; charset=binary"})
    )
    dest = tmp_path / "sub" / "out.png"
    async with make_client(recorder) as client:
        result = await client.download("https://cdn.other.test/img/1.png?sig=abc", dest)
    assert result.path == dest and result.bytes_written == len(PNG) and result.content_type == "image/png"
    assert dest.read_bytes() == PNG
    assert listing(dest.parent) == ["out.png"]
    request = recorder.requests[0]
    assert "Authorization" not in request.headers
    assert KEY not in str(request.headers)


async def test_download_follows_redirects_without_authorization(tmp_path: pathlib.Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers["Host"] == "a.test":
            return httpx.Response(302, headers={"Location": "https://b.test/final.png"})
        return httpx.Response(200, content=PNG)

    recorder = Recorder(handler)
    async with make_client(recorder) as client:
        result = await client.download("https://a.test/1.png", tmp_path / "x.png")
    assert result.bytes_written == len(PNG)
    assert [r.headers["Host"] for r in recorder.requests] == ["a.test", "b.test"]
    assert all("Authorization" not in r.headers for r in recorder.requests)


@pytest.mark.parametrize("status", [403, 404, 410])
async def test_download_expired_url(tmp_path: pathlib.Path, status: int) -> None:
    recorder = Recorder(httpx.Response(status, content=b"<html>AccessDenied</html>"))
    async with make_client(recorder) as client:
        with pytest.raises(NotFoundError) as info:
            await client.download("https://cdn.test/1.png?X-Amz-Signature=s3cr3t", tmp_path / "x.png")
    assert len(recorder.requests) == 1
    text = str(info.value)
    assert text.startswith("The image URL has expired or is not reachable")
    assert "s3cr3t" not in text and "<html>" not in text
    assert listing(tmp_path) == []


async def test_download_retries_5xx_and_broken_streams(tmp_path: pathlib.Path) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise httpx.ReadError("connection reset")

    recorder = Recorder(
        httpx.Response(502),
        httpx.Response(200, content=broken()),
        httpx.Response(200, content=PNG),
    )
    sleeps = Sleeps()
    dest = tmp_path / "x.png"
    async with make_client(recorder, sleeps=sleeps) as client:
        result = await client.download("https://cdn.test/1.png", dest)
    assert len(recorder.requests) == 3 and len(sleeps.delays) == 2
    assert result.bytes_written == len(PNG) and dest.read_bytes() == PNG
    assert listing(tmp_path) == ["x.png"]


async def test_download_enforces_max_bytes(tmp_path: pathlib.Path) -> None:
    async def stream() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"y" * 100

    declared = Recorder(httpx.Response(200, content=PNG))
    undeclared = Recorder(httpx.Response(200, content=stream()))
    for recorder in (declared, undeclared):
        async with make_client(recorder) as client:
            with pytest.raises(PayloadTooLargeError, match="larger than"):
                await client.download("https://cdn.test/1.png", tmp_path / "x.png", max_bytes=500)
        assert len(recorder.requests) == 1
    assert listing(tmp_path) == []


async def test_download_rejects_non_http_urls(tmp_path: pathlib.Path) -> None:
    recorder = Recorder(httpx.Response(200, content=PNG))
    async with make_client(recorder) as client:
        with pytest.raises(ImageUrlRefusedError, match="not http"):
            await client.download("file:///etc/passwd", tmp_path / "x.png")
        with pytest.raises(RunAPIResponseError, match="not valid"):
            await client.download("http://[::1/x.png", tmp_path / "x.png")
    assert recorder.requests == []


async def test_download_keeps_existing_file_on_failure(tmp_path: pathlib.Path) -> None:
    dest = tmp_path / "x.png"
    dest.write_bytes(b"old")
    async with make_client(Recorder(httpx.Response(404))) as client:
        with pytest.raises(NotFoundError):
            await client.download("https://cdn.test/1.png", dest)
    assert dest.read_bytes() == b"old"


# -- tolerant models -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        # RunAPI's SDK: pending and processing run, completed is done, failed failed.
        ("pending", "pending"),
        ("processing", "processing"),
        ("completed", "completed"),
        ("failed", "failed"),
        # RunAPI's MCP core: more words for done and for failed (compared case-insensitively).
        ("complete", "completed"),
        ("SUCCESS", "completed"),
        ("succeeded", "completed"),
        ("Finished", "completed"),
        ("timeout", "failed"),
        ("canceled", "failed"),
        ("CANCELLED", "failed"),
        ("Error", "failed"),
        (" Processing ", "processing"),
        # Any other word ends the task as failed, as the SDK's poller does ("Unknown task status").
        ("exploded", "failed"),
        ("queued", "failed"),
        ("running", "failed"),
        ("done", "failed"),
        ("generate_failed", "failed"),
        # No status at all: a create acknowledged with its id only.
        ("", "pending"),
        ("   ", "pending"),
        (None, "pending"),
    ],
)
def test_normalize_status(raw: str | None, status: str) -> None:
    assert normalize_status(raw) == status


@pytest.mark.parametrize(
    "body",
    [
        {"id": "abc", "status": "pending"},
        {"task_id": "abc", "status": "pending", "model": "gpt-image-2"},
        {"code": 200, "msg": "ok", "data": {"id": "abc", "status": "pending"}},
        {"data": {"task_id": "abc", "status": "pending"}},
        {"taskId": "abc"},
    ],
)
def test_task_id_shapes(body: dict[str, Any]) -> None:
    task = TaskInfo.from_response(body)
    assert task.id == "abc"
    assert task.raw == body


def test_images_in_every_shape() -> None:
    dicts = TaskInfo.from_response(
        {
            "id": "a",
            "status": "completed",
            "images": [{"url": "https://o/1", "origin_url": "https://x/1", "w": 1}],
        }
    )
    assert dicts.images[0].url == "https://o/1" and dicts.images[0].origin_url == "https://x/1"
    assert dicts.images[0].model_extra == {"w": 1}
    assert dicts.progress == 1.0
    strings = TaskInfo.from_response(
        {"id": "a", "status": "success", "images": ["https://o/1", "https://o/2"]}
    )
    assert [i.url for i in strings.images] == ["https://o/1", "https://o/2"]
    urls = TaskInfo.from_response({"id": "a", "status": "completed", "image_urls": ["https://o/1"]})
    assert urls.images[0].url == "https://o/1"
    output = TaskInfo.from_response({"id": "a", "status": "completed", "output": "https://o/1"})
    assert output.images[0].url == "https://o/1"
    nested = TaskInfo.from_response(
        {"data": {"id": "a", "status": "completed", "result": {"images": ["https://o/1"]}}}
    )
    assert nested.images[0].url == "https://o/1"


def test_completed_without_images_is_failed() -> None:
    task = TaskInfo.from_response({"id": "a", "status": "completed", "images": []})
    assert task.status == "failed" and task.raw_status == "completed"
    assert task.error == "RunAPI reported the task completed but returned no images"


@pytest.mark.parametrize(
    ("answer", "status", "error"),
    [
        ({"status": "failed", "error": {"message": "nsfw"}}, "failed", "nsfw"),
        ({"status": "FAILED", "error": "nsfw"}, "failed", "nsfw"),
        ({"status": "failed"}, "failed", "RunAPI reported the task failed without giving a reason"),
        (
            {"status": "timeout", "error": "the model did not answer within 600 s"},
            "failed",
            "RunAPI reported the task as 'timeout': the model did not answer within 600 s",
        ),
        ({"status": "canceled"}, "failed", "RunAPI reported the task as 'canceled'"),
        (
            {"status": "error", "error_message": "upstream busy"},
            "failed",
            "RunAPI reported the task as 'error': upstream busy",
        ),
        ({"status": "exploded"}, "failed", "RunAPI reported an unknown task status 'exploded'"),
        (
            {"status": "generate_failed", "error": {"message": "nsfw"}},
            "failed",
            "RunAPI reported an unknown task status 'generate_failed': nsfw",
        ),
        ({"status": ""}, "pending", None),
        ({}, "pending", None),
        ({"status": "processing", "error": "transient note"}, "processing", "transient note"),
    ],
)
def test_failed_task_error_text(answer: dict[str, Any], status: str, error: str | None) -> None:
    task = TaskInfo.from_response({"id": "a", **answer})
    assert (task.status, task.error) == (status, error)
    assert task.is_terminal == (status == "failed")
    if answer.get("status"):
        assert task.raw_status == answer["status"]


async def test_an_unknown_status_from_upstream_ends_the_task_in_cleaned_redacted_words() -> None:
    """An unknown word ends the poll (RunAPI's SDK does so) and is quoted to the user: never raw, never the key."""
    hostile = f"bro\u202eken\x00 \ud800 \x1b[2J{KEY} " + "z" * 20_000
    body = json.dumps({"id": "t1", "status": hostile, "error": f"bad token {KEY}"}).encode()
    async with make_client(Recorder(httpx.Response(200, content=body))) as client:
        task = await client.get_task(CREATE, "t1")
    assert task.status == "failed" and task.is_terminal
    assert task.error is not None and task.error.startswith("RunAPI reported an unknown task status 'broken")
    assert "***" in task.error and "bad token ***" in task.error
    assert len(task.error) < 20_000  # the 20 KB word is not quoted whole
    assert_no_key(task.error, task.raw_status or "", task.model_dump_json(), repr(task))
    assert_clean(task.error)
    assert_clean(task.model_dump_json())


@pytest.mark.parametrize(
    ("answer", "replayed"),
    [
        ({"task_replayed": True}, True),
        ({"data": {"id": "t1", "status": "pending", "task_replayed": True}}, True),
        ({"task_replayed": False}, False),
        ({"task_replayed": "true"}, False),  # only RunAPI's boolean counts
        ({}, False),
    ],
)
async def test_a_replayed_create_is_marked(answer: dict[str, Any], replayed: bool) -> None:
    body = answer if "data" in answer else {"id": "t1", "status": "pending", **answer}
    recorder = Recorder(httpx.Response(200, json=body))
    async with make_client(recorder) as client:
        task = await client.create_task(CREATE, {"prompt": "a cat"}, idempotency_key="same-key")
    assert (task.id, task.status, task.replayed) == ("t1", "pending", replayed)


@pytest.mark.parametrize(
    ("usage", "cents"),
    [
        ({"cost": 0.03, "generated_images": 1}, 3),
        ({"cost": 0.031}, 4),  # rounded up: spend is never under-counted
        ({"cost": 0.07}, 7),  # 7.000000000000001 in binary: not 8
        ({"cost": 1.1}, 110),
        ({"cost": 2}, 200),
        ({"cost": 0}, 0),
        ({"cost": -0.05}, None),
        ({"cost": "0.03"}, None),
        ({"cost": True}, None),
        ({"cost": float("inf")}, None),
        ({"cost": 1e300}, None),
        ({"generated_images": 1}, None),
        ("0.03", None),
        (None, None),
    ],
)
def test_usage_cost_is_the_tasks_spend_in_cents(usage: Any, cents: int | None) -> None:
    body: dict[str, Any] = {"id": "a", "status": "completed", "images": ["https://o/1"]}
    if usage is not None:
        body["usage"] = usage
    assert TaskInfo.from_response(body).cost_cents == cents


async def test_usage_cost_read_from_a_status_answer() -> None:
    answer = {"id": "t1", "status": "completed", "images": ["https://o/1"], "usage": {"cost": 0.031}}
    async with make_client(Recorder(httpx.Response(200, json=answer))) as client:
        assert (await client.get_task(CREATE, "t1")).cost_cents == 4


async def test_the_task_id_header_names_a_task_the_body_does_not() -> None:
    headers = {"X-RunAPI-Task-Id": "t-from-header"}
    recorder = Recorder(
        httpx.Response(200, json={"status": "pending"}, headers=headers),
        httpx.Response(200, json={"id": "t-body", "status": "pending"}, headers=headers),
        httpx.Response(200, json={"data": {"status": "processing"}}, headers={"x-runapi-task-id": "t-lower"}),
    )
    async with make_client(recorder) as client:
        from_header = await client.create_task(CREATE, {}, idempotency_key="k1")
        from_body = await client.create_task(CREATE, {}, idempotency_key="k2")
        polled = await client.get_task(CREATE, "t-lower")
    assert (from_header.id, from_header.status) == ("t-from-header", "pending")
    assert from_body.id == "t-body"  # the body's own id wins
    assert (polled.id, polled.status) == ("t-lower", "processing")
    no_id = Recorder(httpx.Response(200, json={"status": "pending"}, headers={"X-RunAPI-Task-Id": "x" * 300}))
    async with make_client(no_id) as client:
        with pytest.raises(RunAPIResponseError, match="no task id"):  # an overlong header names no task
            await client.create_task(CREATE, {}, idempotency_key="k")


@pytest.mark.parametrize(
    ("status", "cls"),
    [(500, ServerError), (402, InsufficientCreditsError), (409, ConflictError), (422, BadRequestError)],
)
async def test_an_error_answer_names_its_task(status: int, cls: type[RunAPIError]) -> None:
    """RunAPI names the task in X-RunAPI-Task-Id on error answers too: a create that answered with an error
    may still exist upstream, and can be found by that id."""
    response = httpx.Response(status, json={"error": "boom"}, headers={"X-RunAPI-Task-Id": "t-42"})
    async with make_client(Recorder(response), retry=RetryPolicy(max_retries=0)) as client:
        with pytest.raises(cls) as info:
            await client.create_task(CREATE, {"prompt": "a cat"}, idempotency_key="k")
    assert info.value.task_id == "t-42"


@pytest.mark.parametrize(
    ("value", "task_id"),
    [
        ("", None),
        ("\x01\x02", None),
        ("a/b", None),
        ("x" * 257, None),
        ("t\x01-\u202e9", None),
        (KEY, None),
        ("task_01:ab-9.x", "task_01:ab-9.x"),
    ],
)
async def test_the_task_id_header_of_an_error_is_taken_as_sent_or_dropped(value: str, task_id: str | None) -> None:
    """An id is taken exactly as sent, or not at all: empty, path-like, overlong or garbled ids name no task
    (cleaned, ``t\x01-9`` would name another task than RunAPI's), nor does the key echoed back."""
    headers = [(b"X-RunAPI-Task-Id", value.encode())]
    response = httpx.Response(500, json={"error": "boom"}, headers=headers)
    async with make_client(Recorder(response), retry=RetryPolicy(max_retries=0)) as client:
        with pytest.raises(ServerError) as info:
            await client.create_task(CREATE, {}, idempotency_key="k")
    assert info.value.task_id == task_id


async def test_an_error_without_the_header_names_no_task() -> None:
    async with make_client(Recorder(httpx.Response(500)), retry=RetryPolicy(max_retries=0)) as client:
        with pytest.raises(ServerError) as info:
            await client.get_balance()
    assert (info.value.task_id, info.value.field) == (None, None)


@pytest.mark.parametrize(
    ("status", "body", "field"),
    [
        (
            422,
            {"error": {"message": "is not one of 1k 2k 4k", "code": "validation_error", "field": "output_resolution"}},
            "output_resolution",
        ),
        (400, {"error": {"message": "bad", "param": "source_image_urls"}}, "source_image_urls"),
        (422, {"errors": {"prompt": ["is required"]}}, "prompt"),
        (
            422,
            {"detail": [{"loc": ["body", "aspect_ratio"], "msg": "not allowed", "type": "value_error"}]},
            "aspect_ratio",
        ),
        (422, {"error": {"message": "bad", "field": "source.url"}}, "source.url"),
        (422, {"errors": {"prompt": ["is required"], "model": ["unknown"]}}, None),  # two fields: none named
        (422, {"error": {"message": "bad", "field": "no spaces <b>"}}, None),  # no field's name
        (422, {"error": "prompt is required"}, None),
    ],
)
async def test_a_validation_answer_names_its_field(status: int, body: Any, field: str | None) -> None:
    async with make_client(Recorder(httpx.Response(status, json=body))) as client:
        with pytest.raises(BadRequestError) as info:
            await client.create_task(CREATE, {}, idempotency_key="k")
    assert info.value.field == field


@pytest.mark.parametrize(
    ("progress", "expected"),
    [
        (0.45, 0.45),
        (45, 0.45),
        ("45%", 0.45),
        ("45", 0.45),
        ("0.5", 0.5),
        (150, 1.0),
        ("soon", None),
        (None, None),
    ],
)
def test_progress_forms(progress: Any, expected: float | None) -> None:
    task = TaskInfo.from_response({"id": "a", "status": "processing", "progress": progress})
    assert task.progress == (pytest.approx(expected) if expected is not None else None)


def test_unknown_fields_are_kept() -> None:
    task = TaskInfo.from_response({"id": "a", "status": "processing", "eta": 12})
    assert task.raw["eta"] == 12
    with pytest.raises(RunAPIResponseError):
        TaskInfo.from_response(["not", "an", "object"])
    with pytest.raises(RunAPIResponseError):
        UploadedFile.from_response({"file_name": "x"})


# -- sanitising what upstream sends ----------------------------------------------------------------


def key_forms(secret: str = KEY) -> list[str]:
    raw = secret.encode()
    return [
        secret,
        quote(secret, safe=""),
        base64.b64encode(raw).decode().rstrip("="),
        base64.b64encode(b"Bearer " + raw).decode().rstrip("="),
    ]


def assert_no_key(*texts: str) -> None:
    for text in texts:
        for form in key_forms():
            assert form not in text


def assert_clean(text: str) -> None:
    """Encodable as strict UTF-8, and free of controls and bidi overrides."""
    text.encode("utf-8")
    assert not any(ord(c) < 0x20 and c not in "\t\n\r" for c in text)
    assert not any(c in text for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\x7f\x9b")


async def test_strings_in_answers_are_cleaned() -> None:
    body = (
        b'{"id": "t\\ud800", "status": "failed", "\\udfffkey\\u0000": "v",'
        b' "error": "bad\\u0000 \\u001b[31mred\\u202e gnp.exe \\u2066x\\u2069 \\ud83d\\ude00 tab\\tok",'
        b' "big": "' + b"x" * 1_000_000 + b'", "list": ["\\u0007bell", {"\\u202ek": "\\udc00"}]}'
    )
    async with make_client(Recorder(httpx.Response(200, content=body))) as client:
        task = await client.get_task(CREATE, "t1")
    assert task.id == "t\ufffd"
    assert task.error == "bad [31mred gnp.exe x \U0001f600 tab\tok"
    assert len(task.raw["big"]) == 8192 and task.raw["big"].endswith("…")
    assert task.raw["\ufffdkey"] == "v"
    assert task.raw["list"] == ["bell", {"k": "\ufffd"}]
    dumped = task.model_dump_json()
    assert_clean(dumped)
    assert_clean(json.dumps(task.raw, ensure_ascii=False))


async def test_cleaned_header_values() -> None:
    request_id = "req\x1b[2J\u202e-1".encode()
    response = httpx.Response(
        500, json={"error": "boom\u202e"}, headers=[(b"x-request-id", request_id), (b"Retry-After", b"\x01 2")]
    )
    async with make_client(Recorder(response), retry=RetryPolicy(max_retries=0)) as client:
        with pytest.raises(ServerError) as info:
            await client.get_balance()
    assert info.value.request_id == "req[2J-1"
    assert_clean(str(info.value))
    assert_clean(repr(info.value))


async def chunks(count: int, size: int, sent: list[int]) -> AsyncIterator[bytes]:
    block = b" " * size
    for _ in range(count):
        sent.append(size)
        yield block


async def test_a_huge_answer_is_refused_without_reading_it_all() -> None:
    sent: list[int] = []
    recorder = Recorder(lambda request: httpx.Response(200, content=chunks(50, 1 << 20, sent)))
    async with make_client(recorder) as client:
        with pytest.raises(RunAPIResponseError, match="larger than 4,194,304 bytes"):
            await client.get_task(CREATE, "t1")
    assert sum(sent) <= 5 << 20  # stopped right after the cap, not at 50 MB
    assert len(recorder.requests) == 1  # asking again would only fetch the same flood


async def test_a_compressed_bomb_is_refused_while_inflating() -> None:
    bomb = gzip.compress(b"[" + b" " * (50 << 20) + b"]", compresslevel=9)
    assert len(bomb) < 100_000
    recorder = Recorder(httpx.Response(200, content=iter_of(bomb), headers={"Content-Encoding": "gzip"}))
    async with make_client(recorder) as client:
        with pytest.raises(RunAPIResponseError, match="larger than"):
            await client.get_balance()


async def iter_of(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 4096):
        yield data[i : i + 4096]


async def test_compressed_answers_are_read() -> None:
    packed = gzip.compress(json.dumps({"id": "t1", "status": "pending"}).encode())
    recorder = Recorder(
        lambda request: httpx.Response(200, content=iter_of(packed), headers={"Content-Encoding": "gzip"})
    )
    async with make_client(recorder) as client:
        assert (await client.get_task(CREATE, "t1")).id == "t1"
    assert recorder.requests[0].headers["Accept-Encoding"] == "gzip, deflate"


@pytest.mark.parametrize("depth", [100, 10_000, 200_000])
async def test_deep_nesting_is_refused(depth: int) -> None:
    body = b'{"id": "t1", "x": ' + b"[" * depth + b"]" * depth + b"}"
    recorder = Recorder(httpx.Response(200, content=body))
    async with make_client(recorder) as client:
        with pytest.raises(RunAPIResponseError, match="nested"):
            await client.get_task(CREATE, "t1")
    assert len(recorder.requests) == 1


@pytest.mark.parametrize(
    "content",
    [b"[1, 2, 3]", b'"just a string"', b"null", b"42", b"\xff\xfe{not json", b'{"id": "' + b"x" * 300 + b'"}'],
)
async def test_unusable_answers_raise_response_error(content: bytes) -> None:
    async with make_client(Recorder(httpx.Response(200, content=content))) as client:
        with pytest.raises(RunAPIResponseError):
            await client.get_task(CREATE, "t1")


@pytest.mark.parametrize(
    "body",
    [
        {"id": 10**30},
        {"id": ["a"]},
        {"id": {"a": 1}},
        {"id": True},
        {"data": [1]},
        {"data": "x", "id": None},
        {"id": "a", "status": {"x": 1}},
        {"id": "a", "status": ["completed"]},
        {"id": "a", "status": "completed", "images": [{"url": {"x": 1}}, None, 5, [[]]]},
        {"id": "a", "status": "completed", "images": {"images": {"images": {"images": ["u"]}}}},
        {"id": "a", "error": [[[{"message": 1}]]], "status": "failed"},
        {"id": "a", "progress": 10**400},
        {"id": "a", "progress": "1e999"},
        {"id": "a", "progress": float("nan")},
        {"id": "a", "model": ["m"], "raw": "x", "images": "not a url list"},
        {"id": "a", "status": "completed", "images": [f"https://o/{i}" for i in range(100_000)]},
    ],
)
def test_task_model_takes_any_shape(body: Any) -> None:
    try:
        task = TaskInfo.from_response(body)
    except RunAPIResponseError:
        return
    assert len(task.images) <= 64
    assert task.progress is None or 0.0 <= task.progress <= 1.0


@pytest.mark.parametrize(
    "body",
    [
        {"balance_cents": 10**400},
        {"balance_cents": "1e999"},
        {"balance_cents": [1], "paid_balance_cents": {"a": 1}},
        {"data": {"balance_cents": "-inf"}},
        ["not", "an", "object"],
        "text",
    ],
)
def test_balance_and_upload_models_take_any_shape(body: Any) -> None:
    for model in (Balance, UploadedFile):
        with contextlib.suppress(RunAPIResponseError):
            model.from_response(body)
    with pytest.raises(RunAPIResponseError):
        UploadedFile.from_response({"url": ["x"]})
    uploaded = UploadedFile.from_response({"url": "https://f/x", "size_bytes": 10**400, "mime_type": 5})
    assert uploaded.size_bytes is None and uploaded.mime_type == "5"


async def test_weird_headers_do_not_escape_as_other_errors() -> None:
    headers = {"Retry-After": "Fri, 31 Dec 99999 23:59:59 GMT", "x-request-id": ""}
    recorder = Recorder(httpx.Response(429, headers=headers), httpx.Response(503, headers={"Retry-After": "1e999"}))
    sleeps = Sleeps()
    async with make_client(recorder, sleeps=sleeps, retry=RetryPolicy(max_retries=1)) as client:
        with pytest.raises(ServerError):
            await client.get_task(CREATE, "t1")
    assert len(sleeps.delays) == 1


async def test_unsendable_text_becomes_a_runapi_error() -> None:
    recorder = Recorder(httpx.Response(404))
    async with make_client(recorder) as client:
        for call in (
            client.create_task(CREATE, {"prompt": "a\ud800"}, idempotency_key="k"),
            client.create_task(CREATE, {"strength": float("nan")}, idempotency_key="k"),
            client.upload_file(b"x", filename="a\ud800.png", mime_type="image/png"),
        ):
            with pytest.raises(BadRequestError, match="cannot be encoded"):
                await call
        assert recorder.requests == []
        with pytest.raises(NotFoundError):
            await client.get_task(CREATE, "t\ud800")
    assert recorder.requests[0].url.raw_path.endswith(b"/t%3F")


# -- the key, echoed back --------------------------------------------------------------------------


async def test_echoed_key_never_reaches_models_or_errors() -> None:
    b64 = base64.b64encode(KEY.encode()).decode()
    answer = {
        "id": "t1",
        "status": "failed",
        "error": f"invalid token {KEY} / {quote(KEY, safe='')} / {b64}",
        "images": [f"https://cdn.test/1.png?key={quote(KEY, safe='')}&raw={KEY}&b={b64}"],
        KEY: "as a key too",
    }
    recorder = Recorder(
        httpx.Response(200, json=answer),
        httpx.Response(500, json={"error": f"echo {KEY}", "code": KEY}, headers={"x-request-id": KEY}),
        httpx.Response(400, json={"detail": [{"loc": ["body", KEY], "msg": b64}]}, headers={"x-request-id": b64}),
        # An upload: prepare, the PUT to storage, and a confirm that echoes the key.
        prepared(),
        httpx.Response(200),
        httpx.Response(200, json={"url": f"https://f/x?k={KEY}", "file_name": KEY}),
        httpx.Response(200, json={"balance_cents": 1, "note": f"Bearer {KEY}"}),
        # An unknown status that quotes the key: the task ends failed, in RunAPI's words with the key gone.
        httpx.Response(200, json={"id": "t2", "status": f"revoked:{KEY}", "error": f"token {b64} revoked"}),
    )
    async with make_client(recorder, retry=RetryPolicy(max_retries=0)) as client:
        task = await client.get_task(CREATE, "t1")
        with pytest.raises(ServerError) as server:
            await client.get_task(CREATE, "t1")
        with pytest.raises(BadRequestError) as bad:
            await client.get_balance()
        uploaded = await client.upload_file(b"x", filename="a.png", mime_type="image/png")
        balance = await client.get_balance()
        revoked = await client.get_task(CREATE, "t2")
    assert server.value.request_id == "***"
    assert task.error is not None and "***" in task.error
    assert revoked.status == "failed" and revoked.error is not None
    assert revoked.error.startswith("RunAPI reported an unknown task status 'revoked:***'"), revoked.error
    assert "token *** revoked" in revoked.error
    assert "Authorization" not in recorder.requests[4].headers  # the PUT: storage never sees the key
    texts = [repr(task), str(task), task.model_dump_json(), repr(uploaded), repr(balance), repr(client)]
    texts += [repr(revoked), revoked.model_dump_json(), revoked.raw_status or ""]
    for err in (server.value, bad.value):
        texts += [str(err), repr(err), str(err.code), str(err.request_id)]
    assert_no_key(*texts)


async def test_the_redactor_is_shared() -> None:
    async with make_client(Recorder(task_json())) as client:
        assert client.redactor(f"x {KEY} y") == "x *** y"
    mine = Redactor([KEY, "other-secret"])
    answer = {"id": "t1", "status": "failed", "error": "leaked other-secret"}
    async with make_client(Recorder(httpx.Response(200, json=answer)), redactor=mine) as client:
        assert client.redactor is mine
        assert (await client.get_task(CREATE, "t1")).error == "leaked ***"


async def test_download_errors_do_not_show_the_url_query(tmp_path: pathlib.Path) -> None:
    url = f"https://cdn.test/{KEY}/1.png?sig={quote(KEY, safe='')}"
    recorder = Recorder(httpx.Response(500), httpx.ConnectError(f"failed for {url}"))
    async with make_client(recorder, retry=RetryPolicy(max_retries=1)) as client:
        with pytest.raises(RunAPIError) as info:
            await client.download(url, tmp_path / "x.png")
    assert_no_key(str(info.value), repr(info.value))


# -- the image URL policy --------------------------------------------------------------------------

PUBLIC_BASE = "https://api.test"
LOOPBACK_BASE = "http://127.0.0.1:8000"
PRIVATE_BASE = "http://10.0.0.5:8080"
OK = None

POLICY_TABLE: list[tuple[str, str | None, str | None, str | None]] = [
    # url, then the refusal (substring) for a public, a loopback and a private base URL; None: allowed
    ("https://93.184.216.34/x.png", OK, OK, OK),
    ("https://public.test/x.png", OK, OK, OK),
    ("http://169.254.169.254/latest/meta-data/", "link-local/metadata", "link-local/metadata", "link-local/metadata"),
    ("http://169.254.10.1/", "link-local", "link-local", "link-local"),
    ("http://[fe80::1]/", "link-local", "link-local", "link-local"),
    ("http://[fd00:ec2::254]/", "metadata", "metadata", "metadata"),
    ("http://100.100.100.200/", "metadata", "metadata", "metadata"),
    ("http://metadata.google.internal/", "metadata", "metadata", "metadata"),
    ("http://[::ffff:169.254.169.254]/", "link-local/metadata", "link-local/metadata", "link-local/metadata"),
    ("http://[64:ff9b::a9fe:a9fe]/", "link-local/metadata", "link-local/metadata", "link-local/metadata"),
    ("http://meta.test/", "link-local/metadata", "link-local/metadata", "link-local/metadata"),
    ("http://mixed.test/", "link-local/metadata", "link-local/metadata", "link-local/metadata"),
    ("http://0.0.0.0:8000/", "unspecified", "unspecified", "unspecified"),
    ("http://0.1.2.3/", "unspecified", "unspecified", "unspecified"),
    ("http://[::]:8000/", "unspecified", "unspecified", "unspecified"),
    ("http://224.0.0.1/", "multicast", "multicast", "multicast"),
    ("http://[ff02::1]/", "multicast", "multicast", "multicast"),
    ("http://255.255.255.255/", "broadcast", "broadcast", "broadcast"),
    ("http://240.0.0.1/", "reserved", "reserved", "reserved"),
    ("http://127.0.0.1:8000/x.png", "loopback", OK, "loopback"),
    ("http://127.0.0.2:8000/x.png", "loopback", OK, "loopback"),
    ("http://[::1]:8000/x.png", "loopback", OK, "loopback"),
    ("http://[::ffff:127.0.0.1]:8000/x.png", "loopback", OK, "loopback"),
    ("http://localhost:8000/x.png", "loopback", OK, "loopback"),
    ("http://127.0.0.1:8001/x.png", "loopback", "port 8000", "loopback"),
    ("http://127.0.0.1/x.png", "loopback", "port 8000", "loopback"),
    ("http://10.1.2.3/x.png", "private", "private", OK),
    ("http://172.16.0.1/x.png", "private", "private", OK),
    ("http://192.168.1.1:9999/x.png", "private", "private", OK),
    ("http://100.64.0.1/x.png", "private", "private", OK),
    ("http://[fd12:3456::1]/x.png", "private", "private", OK),
    ("http://lan.test/x.png", "private", "private", OK),
    ("ftp://93.184.216.34/x.png", "not http", "not http", "not http"),
    ("http://user:pw@93.184.216.34/x.png", "credentials", "credentials", "credentials"),
]
DNS = {
    "localhost": ["::1", "127.0.0.1"],
    "meta.test": ["169.254.169.254"],
    "mixed.test": [PUBLIC_IP, "169.254.169.254"],  # every address counts, not just the first
    "lan.test": ["192.168.7.7"],
}


@pytest.mark.parametrize(("url", "public", "loopback", "private"), POLICY_TABLE)
async def test_image_url_policy(url: str, public: str | None, loopback: str | None, private: str | None) -> None:
    for base, expected in ((PUBLIC_BASE, public), (LOOPBACK_BASE, loopback), (PRIVATE_BASE, private)):
        policy = ImageUrlPolicy(base, resolver=fake_dns(DNS))
        if expected is None:
            addresses = await policy.check(httpx.URL(url))
            assert addresses and all(address_class(a) in ("public", "loopback", "private") for a in addresses)
        else:
            with pytest.raises(ImageUrlRefusedError, match=expected) as info:
                await policy.check(httpx.URL(url))
            assert str(info.value).startswith("refused to fetch an image from")
            assert "/x.png" not in str(info.value) and "pw" not in str(info.value)


async def test_policy_base_url_by_name() -> None:
    gateway = fake_dns({"gateway.lan": ["192.168.1.10"], "lan.test": ["10.9.9.9"]})
    assert await ImageUrlPolicy("http://gateway.lan", resolver=gateway).check(httpx.URL("http://lan.test/x"))
    local = ImageUrlPolicy("http://localhost:9000", resolver=fake_dns(DNS))
    assert await local.check(httpx.URL("http://127.0.0.1:9000/x"))
    with pytest.raises(ImageUrlRefusedError, match="port 9000"):
        await local.check(httpx.URL("http://127.0.0.1:9001/x"))

    async def broken(host: str, port: int) -> Sequence[str]:
        raise OSError("no DNS")

    with pytest.raises(RunAPIConnectionError, match="could not resolve"):
        await ImageUrlPolicy(PUBLIC_BASE, resolver=broken).check(httpx.URL("https://cdn.test/x"))

    async def idna(host: str, port: int) -> Sequence[str]:
        raise UnicodeError("label too long")

    with pytest.raises(RunAPIResponseError, match="not valid"):
        await ImageUrlPolicy(PUBLIC_BASE, resolver=idna).check(httpx.URL("https://cdn.test/x"))


def test_refusal_messages_are_plain() -> None:
    assert address_class("::ffff:10.0.0.1") == "private"
    err = ImageUrlRefusedError("refused to fetch an image from 169.254.169.254: link-local/metadata address")
    assert str(err) == "refused to fetch an image from 169.254.169.254: link-local/metadata address"
    assert isinstance(err, RunAPIError)


async def test_refused_urls_send_nothing_and_are_not_retried(tmp_path: pathlib.Path) -> None:
    recorder = Recorder(httpx.Response(200, content=PNG))
    async with make_client(recorder) as client:
        for url in ("http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:8000/x", "http://10.0.0.1/x"):
            with pytest.raises(ImageUrlRefusedError):
                await client.download(url, tmp_path / "x.png")
    assert recorder.requests == []
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    ("location", "error"),
    [
        ("http://169.254.169.254/latest/meta-data/iam", ImageUrlRefusedError),
        ("http://[::ffff:a9fe:a9fe]/", ImageUrlRefusedError),
        ("http://meta.test/x", ImageUrlRefusedError),
        ("http://127.0.0.1:22/", ImageUrlRefusedError),
        ("file:///etc/passwd", ImageUrlRefusedError),
        ("javascript:alert(1)", ImageUrlRefusedError),
        ("http://[::1", RunAPIResponseError),
    ],
)
async def test_redirect_to_a_refused_place_is_refused(
    tmp_path: pathlib.Path, location: str, error: type[RunAPIError]
) -> None:
    recorder = Recorder(httpx.Response(302, headers={"Location": location}))
    async with make_client(recorder, image_policy=ImageUrlPolicy(BASE, resolver=fake_dns(DNS))) as client:
        with pytest.raises(error):
            await client.download("https://cdn.test/1.png", tmp_path / "x.png")
    assert len(recorder.requests) == 1  # neither followed nor retried
    assert listing(tmp_path) == []


async def test_relative_redirects_resolve_against_the_current_url(tmp_path: pathlib.Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/a/1.png":
            return httpx.Response(301, headers={"Location": "../b/2.png"})
        return httpx.Response(200, content=PNG)

    recorder = Recorder(handler)
    async with make_client(recorder) as client:
        await client.download("https://cdn.test/a/1.png", tmp_path / "x.png")
    assert [str(r.url) for r in recorder.requests] == [f"https://{PUBLIC_IP}/a/1.png", f"https://{PUBLIC_IP}/b/2.png"]


async def test_download_is_pinned_to_the_checked_address(tmp_path: pathlib.Path) -> None:
    calls: list[str] = []
    recorder = Recorder(httpx.Response(200, content=PNG))
    policy = ImageUrlPolicy(BASE, resolver=fake_dns({"cdn.test": ["203.0.114.7"]}, calls=calls))
    async with make_client(recorder, image_policy=policy) as client:
        await client.download("https://cdn.test:8443/1.png?sig=1", tmp_path / "x.png")
    (request,) = recorder.requests
    assert str(request.url) == "https://203.0.114.7:8443/1.png?sig=1"
    assert request.headers["Host"] == "cdn.test:8443"
    assert request.extensions["sni_hostname"] == "cdn.test"
    assert calls.count("cdn.test") == 1  # resolved once, for the check; the connection reuses that answer


async def test_persistent_503_makes_one_plus_max_retries_requests(tmp_path: pathlib.Path) -> None:
    for call in ("api", "download"):
        recorder = Recorder(httpx.Response(503))
        async with make_client(recorder) as client:
            with pytest.raises(ServerError):
                if call == "api":
                    await client.get_task(CREATE, "t1")
                else:
                    await client.download("https://cdn.test/1.png", tmp_path / "x.png")
        assert len(recorder.requests) == 3, call
    assert listing(tmp_path) == []


async def test_partial_file_is_removed_when_retries_run_out(tmp_path: pathlib.Path) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise httpx.ReadError("connection reset")

    recorder = Recorder(lambda request: httpx.Response(200, content=broken()))
    async with make_client(recorder) as client:
        with pytest.raises(RunAPIConnectionError):
            await client.download("https://cdn.test/1.png", tmp_path / "x.png")
    assert len(recorder.requests) == 3
    assert listing(tmp_path) == []


# -- a real loopback server: pinning, redirects, trickling hosts, separate pools --------------------


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]


Route = Callable[[Seen, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class LoopbackServer:
    """A minimal HTTP/1.1 server on 127.0.0.1 (one request per connection) with scripted routes."""

    routes: dict[str, Route]
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    async def __aenter__(self) -> LoopbackServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, target, _ = (await reader.readline()).decode().split(" ", 2)
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, value = line.decode().split(":", 1)
                headers[name.strip().lower()] = value.strip()
            seen = Seen(method, target, headers)
            self.seen.append(seen)
            route = self.routes.get(target.split("?")[0], not_found)
            await route(seen, writer)
            await writer.drain()
        except (ConnectionError, ValueError):
            pass
        finally:
            writer.close()


def head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in {**headers, "Connection": "close"}.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer(status: int, body: bytes = b"", **headers: str) -> Route:
    async def route(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(head(status, {"Content-Length": str(len(body)), **headers}) + body)

    return route


async def not_found(seen: Seen, writer: asyncio.StreamWriter) -> None:
    writer.write(head(404, {"Content-Length": "0"}))


def trickle(every_s: float) -> Route:
    """Promise 1000 bytes, then send one every ``every_s`` seconds: never a read time-out, never done."""

    async def route(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(head(200, {"Content-Length": "1000", "Content-Type": "image/png"}))
        for _ in range(1000):
            await writer.drain()
            await asyncio.sleep(every_s)  # real time: the slowness is what the client's deadline is tested on
            writer.write(b"x")

    return route


def loopback_client(server: LoopbackServer, **kwargs: Any) -> RunAPIClient:
    table = {"images.test": ["::1", "127.0.0.1"], "localhost": ["127.0.0.1"]}
    policy = ImageUrlPolicy(server.base, resolver=fake_dns(table))
    kwargs.setdefault("clock", Sleeps())
    return RunAPIClient(KEY, server.base, image_policy=policy, **kwargs)


async def test_real_connection_goes_to_the_checked_address(tmp_path: pathlib.Path) -> None:
    routes = {"/img.png": answer(200, PNG, **{"Content-Type": "image/png"})}
    async with LoopbackServer(routes) as server, loopback_client(server) as client:
        # images.test exists only in the fake resolver: the download can only work if the connection
        # goes to the address the policy checked (::1 refused here, then 127.0.0.1), Host kept.
        result = await client.download(f"http://images.test:{server.port}/img.png", tmp_path / "x.png")
    assert result.bytes_written == len(PNG) and result.content_type == "image/png"
    (seen,) = server.seen
    assert seen.target == "/img.png" and seen.headers["host"] == f"images.test:{server.port}"
    assert "authorization" not in seen.headers


async def test_real_redirect_loop_stops_after_five_hops(tmp_path: pathlib.Path) -> None:
    routes: dict[str, Route] = {"/loop": answer(302, Location="/loop")}
    async with LoopbackServer(routes) as server, loopback_client(server) as client:
        with pytest.raises(RunAPIConnectionError, match="redirected more than 5 times"):
            await client.download(f"{server.base}/loop", tmp_path / "x.png")
    assert len(server.seen) == 6  # the request and five redirects, not retried
    assert listing(tmp_path) == []


async def test_real_redirect_to_another_loopback_port_is_refused(tmp_path: pathlib.Path) -> None:
    async with LoopbackServer({}) as other:
        routes = {"/img.png": answer(307, Location=f"http://localhost:{other.port}/secret")}
        async with LoopbackServer(routes) as server, loopback_client(server) as client:
            with pytest.raises(ImageUrlRefusedError, match="loopback"):
                await client.download(f"{server.base}/img.png", tmp_path / "x.png")
    assert other.seen == []


async def test_trickling_host_hits_the_deadline(tmp_path: pathlib.Path) -> None:
    async with LoopbackServer({"/slow.png": trickle(0.05)}) as server, loopback_client(server) as client:
        started = time.monotonic()
        with pytest.raises(RunAPITimeoutError, match=r"did not deliver within 0\.5 s"):
            await client.download(f"{server.base}/slow.png", tmp_path / "x.png", deadline_s=0.5)
        elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < 1.5
    assert listing(tmp_path) == []


async def test_trickling_downloads_do_not_starve_api_calls(tmp_path: pathlib.Path) -> None:
    routes = {"/slow.png": trickle(0.2), "/api/v1/me/balance": answer(200, b'{"balance_cents": 7}')}
    async with LoopbackServer(routes) as server:
        client = loopback_client(server, max_connections=2, max_download_connections=8)
        async with client, anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(client.download, f"{server.base}/slow.png", tmp_path / f"{n}.png")
            # Every download under way, holding a connection:
            await until(lambda: len(list(tmp_path.iterdir())) == 8, "eight downloads under way")
            with anyio.fail_after(2):
                assert (await client.get_balance()).balance_cents == 7
            tg.cancel_scope.cancel()
    assert listing(tmp_path) == []  # cancelled downloads leave no partial file
