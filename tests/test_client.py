"""Unit tests for the RunAPI client: retry policy, headers, error parsing, tolerant models, downloads."""

from __future__ import annotations

import email.utils
import json
import logging
import pathlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from runapi_mcp.client import (
    AuthenticationError,
    BadRequestError,
    Balance,
    ConflictError,
    InsufficientCreditsError,
    NotFoundError,
    PayloadTooLargeError,
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
    normalize_status,
)

pytestmark = pytest.mark.anyio

KEY = "sk-test-SECRET-0123456789"
BASE = "https://api.test"
CREATE = "/api/v1/gpt_image_2/text_to_image"
PNG = b"\x89PNG\r\n\x1a\n" + b"x" * 1000

Handler = Callable[[httpx.Request], httpx.Response]


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


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def make_client(
    handler: Handler, *, key: str | None = KEY, sleeps: Sleeps | None = None, **kwargs: Any
) -> RunAPIClient:
    return RunAPIClient(key, BASE, transport=httpx.MockTransport(handler), sleep=sleeps or Sleeps(), **kwargs)


def listing(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def task_json(**fields: Any) -> httpx.Response:
    return httpx.Response(200, json={"id": "t1", "status": "pending", **fields})


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
            assert str(info.value) == (
                "No RunAPI API key is set: set RUNAPI_API_KEY (or apiKey in ~/.config/runapi/config.json)"
            )
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
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    recorder = Recorder(
        httpx.Response(503, headers={"Retry-After": date}),
        httpx.Response(429, headers={"Retry-After": "3600"}),
        task_json(),
    )
    sleeps = Sleeps()
    async with make_client(recorder, sleeps=sleeps) as client:
        await client.get_task(CREATE, "t1")
    assert 27 <= sleeps.delays[0] <= 30
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


async def test_transport_error_is_retried_on_keyed_post_only() -> None:
    recorder = Recorder(httpx.ReadError("reset"), task_json())
    async with make_client(recorder) as client:
        await client.create_task(CREATE, {}, idempotency_key="k")
    assert len(recorder.requests) == 2

    recorder = Recorder(httpx.ReadError("reset"), httpx.Response(200, json={"url": "https://f/x"}))
    async with make_client(recorder) as client:
        with pytest.raises(RunAPIConnectionError):
            await client.upload_file(b"x", filename="a.png", mime_type="image/png")
    assert len(recorder.requests) == 1


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


async def test_upload_file_multipart() -> None:
    answer = {
        "data": {
            "url": "https://files/x.png",
            "file_name": "x.png",
            "size_bytes": 4,
            "mime_type": "image/png",
            "expires_at": "2030-01-01T00:00:00Z",
            "created_at": "now",
        }
    }
    recorder = Recorder(httpx.Response(503), httpx.Response(201, json=answer))
    async with make_client(recorder) as client:
        uploaded = await client.upload_file(
            b"\x89PNG", filename="x.png", mime_type="image/png", idempotency_key="up-1"
        )
    assert isinstance(uploaded, UploadedFile)
    assert (uploaded.url, uploaded.size_bytes, uploaded.mime_type) == ("https://files/x.png", 4, "image/png")
    assert uploaded.model_extra == {"created_at": "now"}
    request = recorder.requests[-1]
    assert len(recorder.requests) == 2
    assert request.url.path == "/api/v1/files"
    assert request.headers["Content-Type"].startswith("multipart/form-data")
    assert request.headers["Idempotency-Key"] == "up-1"
    body = request.content
    assert b'name="file"; filename="x.png"' in body and b"Content-Type: image/png" in body
    assert b'name="file_name"' in body and b"\x89PNG" in body


async def test_upload_without_key_is_not_retried() -> None:
    recorder = Recorder(httpx.Response(503))
    async with make_client(recorder) as client:
        with pytest.raises(ServerError):
            await client.upload_file(b"x", filename="a.png", mime_type="image/png")
    assert len(recorder.requests) == 1
    assert "Idempotency-Key" not in recorder.requests[0].headers


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
        if request.url.host == "a.test":
            return httpx.Response(302, headers={"Location": "https://b.test/final.png"})
        return httpx.Response(200, content=PNG)

    recorder = Recorder(handler)
    async with make_client(recorder) as client:
        result = await client.download("https://a.test/1.png", tmp_path / "x.png")
    assert result.bytes_written == len(PNG)
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
        with pytest.raises(RunAPIResponseError):
            await client.download("file:///etc/passwd", tmp_path / "x.png")
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
        ("completed", "completed"),
        ("SUCCESS", "completed"),
        ("succeeded", "completed"),
        ("failed", "failed"),
        ("Error", "failed"),
        ("generate_failed", "failed"),
        ("create_task_failed", "failed"),
        ("pending", "pending"),
        ("queued", "pending"),
        ("created", "pending"),
        ("processing", "processing"),
        ("running", "processing"),
        ("weird", "processing"),
        (None, "processing"),
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


def test_failed_task_error_text() -> None:
    task = TaskInfo.from_response({"id": "a", "status": "generate_failed", "error": {"message": "nsfw"}})
    assert task.status == "failed" and task.error == "nsfw"
    bare = TaskInfo.from_response({"id": "a", "status": "error"})
    assert bare.error and "error" in bare.error


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
