"""The RunAPI simulator, over real loopback HTTP."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import struct
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from PIL import Image

from runapi_mcp.catalog import CatalogError, ModelSpec, get_catalog
from runapi_mcp.simulator import PLANTED_STRINGS, Fault, FaultBody, ImageHost, Simulator, SimulatorConfig
from runapi_mcp.simulator._tasks import ApiError, validate_body
from tests.support import png_bytes, wait_until

KEY = "sk-sim-test-key"
T2I = "/api/v1/gpt_image_2/text_to_image"
EDIT = "/api/v1/gpt_image_2/edit_image"


def _config(**overrides: Any) -> SimulatorConfig:
    values: dict[str, Any] = {"api_key": KEY, "time_scale": 0.005}
    values.update(overrides)
    return SimulatorConfig(**values)


def _client(base_url: str = "", **kwargs: Any) -> httpx.Client:
    """A client with no TLS set-up (loopback HTTP only): cheap to make."""
    return httpx.Client(base_url=base_url, verify=False, timeout=10, **kwargs)


@pytest.fixture(scope="module")
def anon() -> Iterator[httpx.Client]:
    """No key, no base URL: downloads and unauthenticated calls."""
    with _client() as c:
        yield c


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator(_config()) as simulator:
        yield simulator


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx.Client]:
    sim.reset()  # the module's simulator, as new for each test
    with _client(sim.base_url, headers={"Authorization": f"Bearer {KEY}"}) as c:
        yield c


def _body(prompt: str = "a red fox in the snow", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-image-2", "prompt": prompt, **extra}


def _wait(client: httpx.Client, path: str) -> dict[str, Any]:
    """The task's status answer once it has ended."""
    answers: list[dict[str, Any]] = []

    def ended() -> bool:
        answers.append(client.get(path).json())
        return answers[-1]["status"] not in ("pending", "processing")

    wait_until(ended, f"{path} to end", 5.0, every=0.02)
    return answers[-1]


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")


def _prepare(client: httpx.Client, data: bytes, filename: str = "red.png") -> dict[str, Any]:
    prepared = client.post(
        "/api/v1/files/prepare", json={"filename": filename, "byte_size": len(data), "checksum": _md5(data)}
    )
    assert prepared.status_code == 200, prepared.text
    answer: dict[str, Any] = prepared.json()
    return answer


def _upload(client: httpx.Client, data: bytes, filename: str = "red.png") -> dict[str, Any]:
    """A local file the way RunAPI's SDK uploads it: prepare, PUT to storage (no key), confirm."""
    prepared = _prepare(client, data, filename)
    with _client() as storage:  # a bare client: the key must not go to storage
        put = storage.put(prepared["upload_url"], content=data, headers=prepared["headers"])
    assert put.status_code == 200, put.text
    confirmed = client.post("/api/v1/files/confirm", json={"signed_id": prepared["signed_id"]})
    assert confirmed.status_code == 200, confirmed.text
    answer: dict[str, Any] = confirmed.json()
    return answer


# -- the task lifecycle ------------------------------------------------------------------------------
@pytest.mark.parametrize(("resolution", "size"), [("1k", (1024, 576)), ("2k", (2048, 1152))])
def test_lifecycle_to_completed_with_sized_png(
    client: httpx.Client, resolution: str, size: tuple[int, int], anon: httpx.Client
) -> None:
    created = client.post(T2I, json=_body(aspect_ratio="16:9", output_resolution=resolution))
    assert created.status_code == 200
    assert created.headers["x-request-id"]
    task = created.json()
    assert task["status"] == "pending" and task["model"] == "gpt-image-2"
    answers: list[dict[str, Any]] = []

    def completed() -> bool:
        answers.append(client.get(f"{T2I}/{task['id']}").json())
        return bool(answers[-1]["status"] == "completed")

    wait_until(completed, "the task to complete")
    answer = answers[-1]
    statuses = [a["status"] for a in answers]
    assert set(statuses[:-1]) <= {"pending", "processing"} and "processing" in statuses
    # The short status path answers the same.
    assert client.get(f"/api/v1/gpt_image_2/{task['id']}").json()["status"] == "completed"
    url = answer["images"][0]["url"]
    assert url.startswith(client.base_url.join("/images/").__str__())
    download = anon.get(url)
    assert download.status_code == 200
    assert download.headers["content-type"] == "image/png"
    assert int(download.headers["content-length"]) == len(download.content)
    assert Image.open(io.BytesIO(download.content)).size == size


def test_status_of_unknown_task_is_404(client: httpx.Client) -> None:
    answer = client.get(f"{T2I}/00000000-0000-0000-0000-000000000000")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "not_found"
    assert client.post("/api/v1/nope/text_to_image", json=_body()).status_code == 404


def test_gpt_4o_image_reports_monotonic_progress_and_output_count(client: httpx.Client) -> None:
    task = client.post(
        "/api/v1/gpt_4o_image/text_to_image",
        json={"model": "gpt-4o-image", "prompt": "two cats", "aspect_ratio": "3:2", "output_count": 2},
    ).json()
    answers: list[dict[str, Any]] = []

    def completed() -> bool:
        answers.append(client.get(f"/api/v1/gpt_4o_image/text_to_image/{task['id']}").json())
        return bool(answers[-1]["status"] == "completed")

    wait_until(completed, "the task to complete")
    answer = answers[-1]
    seen = [a["progress"] for a in answers]
    assert seen == sorted(seen) and seen[-1] == 1.0 and 0 <= seen[0] < 1
    assert [(i["width"], i["height"]) for i in answer["images"]] == [(1024, 683), (1024, 683)]


# -- idempotency, billing, auth, validation ------------------------------------------------------
def test_idempotency_same_body_same_task_charged_once(sim: Simulator, client: httpx.Client) -> None:
    before_tasks, before_balance = sim.tasks_created, sim.balance_cents
    headers = {"Idempotency-Key": "idem-same-1"}
    first = client.post(T2I, json=_body(output_resolution="2k"), headers=headers)
    second = client.post(T2I, json=_body(output_resolution="2k"), headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert sim.tasks_created == before_tasks + 1
    assert sim.balance_cents == before_balance - 6
    conflict = client.post(T2I, json=_body("another prompt"), headers=headers)
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "idempotency_conflict"
    assert sim.tasks_created == before_tasks + 1
    balance = client.get("/api/v1/me/balance").json()
    assert balance["balance_cents"] == sim.balance_cents
    assert balance["spent_cents_total"] >= 6
    assert set(balance) >= {"paid_balance_cents", "bonus_balance_cents", "spent_cents_today"}


def test_insufficient_balance_is_402() -> None:
    with Simulator(_config(initial_balance_cents=5)) as sim, _client(sim.base_url) as c:
        headers = {"Authorization": f"Bearer {KEY}"}
        assert c.post(T2I, json=_body(), headers=headers).status_code == 200  # 3 cents
        refused = c.post(T2I, json=_body(), headers=headers)
        assert refused.status_code == 402
        assert refused.json()["error"]["code"] == "insufficient_credits"
        assert sim.tasks_created == 1 and sim.balance_cents == 2


def test_auth_401_and_key_never_logged(sim: Simulator, client: httpx.Client, anon: httpx.Client) -> None:
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "Basic abc"}):
        answer = anon.post(sim.base_url + T2I, json=_body(), headers=headers)
        assert answer.status_code == 401
        assert answer.json() == {"error": {"message": "Invalid API key", "code": "unauthorized"}}
        assert "sk-wrong" not in answer.text
    assert anon.get(sim.base_url + "/api/v1/me", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert anon.get(sim.base_url + "/v1/models").status_code == 200  # no key needed
    assert client.get("/api/v1/me").status_code == 200
    logged = sim.requests
    assert [r.authorized for r in logged][:3] == [False, False, False]
    assert logged[1].sent_auth and logged[-1].authorized
    assert KEY not in repr(logged) and "sk-wrong" not in repr(logged)
    assert KEY not in client.get(sim.base_url + "/_sim/requests").text


def test_any_bearer_key_when_no_key_configured(anon: httpx.Client) -> None:
    with Simulator(_config(api_key=None)) as sim:
        assert anon.get(sim.base_url + "/api/v1/me", headers={"Authorization": "Bearer whatever"}).is_success
        assert anon.get(sim.base_url + "/api/v1/me").status_code == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_body(aspect_ratio="7:3"), "aspect_ratio"),
        (_body(output_resolution="8k"), "output_resolution"),
        ({"model": "gpt-image-2"}, "prompt"),
        (_body(colour="blue"), "colour"),
        (_body() | {"model": "dall-e-9"}, "model"),
    ],
)
def test_validation_422_names_the_field(
    sim: Simulator, client: httpx.Client, body: dict[str, Any], field: str
) -> None:
    before = sim.tasks_created
    answer = client.post(T2I, json=body)
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["code"] == "validation_error" and error["field"] == field
    assert field in error["message"]
    assert sim.tasks_created == before


def test_docs_alias_and_id_styles() -> None:
    picks: dict[str, Callable[[dict[str, Any]], str]] = {
        "task_id": lambda a: a["task_id"],
        "data": lambda a: a["data"]["id"],
    }
    for style, pick in picks.items():
        with Simulator(_config(id_style=style)) as sim, _client(sim.base_url) as c:
            headers = {"Authorization": f"Bearer {KEY}"}
            created = c.post(T2I, json=_body() | {"model": "gpt-image-2-text-to-image"}, headers=headers)
            assert created.status_code == 200
            task_id = pick(created.json())
            assert c.get(f"{T2I}/{task_id}", headers=headers).json()["id"] == task_id


def test_status_retry_after_header_while_running() -> None:
    with Simulator(_config(status_retry_after=0.25, time_scale=0.05)) as sim, _client(sim.base_url) as c:
        headers = {"Authorization": f"Bearer {KEY}"}
        task = c.post(T2I, json=_body(), headers=headers).json()
        assert c.get(f"{T2I}/{task['id']}", headers=headers).headers["retry-after"] == "0.25"
        sim.set_task_outcome(task["id"], "completed")
        assert "retry-after" not in c.get(f"{T2I}/{task['id']}", headers=headers).headers


def test_set_task_outcome(sim: Simulator, client: httpx.Client) -> None:
    stuck = client.post(T2I, json=_body()).json()["id"]
    sim.set_task_outcome(stuck, "running")
    # A twin created after it, left alone, completes: the held one is past its own end too, and still runs.
    twin = client.post(T2I, json=_body()).json()["id"]
    assert _wait(client, f"{T2I}/{twin}")["status"] == "completed"
    assert client.get(f"{T2I}/{stuck}").json()["status"] == "processing"
    sim.set_task_outcome(stuck, "failed", error="boom", status_text="generate_failed")
    answer = client.get(f"{T2I}/{stuck}").json()
    assert (answer["status"], answer["error"]) == ("generate_failed", "boom")
    sim.set_task_outcome(None, "completed", images=0)  # the next task: done at once, without images
    empty = client.post(T2I, json=_body()).json()["id"]
    assert client.get(f"{T2I}/{empty}").json()["images"] == []


# -- uploads and edits ---------------------------------------------------------------------------
def test_upload_then_edit_is_derived_from_the_source(
    sim: Simulator, client: httpx.Client, anon: httpx.Client
) -> None:
    source = png_bytes((600, 400), (230, 20, 20))
    info = _upload(client, source, "red.png")
    assert set(info) == {"file_name", "url", "size_bytes", "mime_type", "created_at", "expires_at"}
    assert info["size_bytes"] == len(source) and info["mime_type"] == "image/png"
    assert anon.get(info["url"]).content == source
    before = sim.tasks_created
    task = client.post(EDIT, json=_body("give it a blue hat", source_image_urls=[info["url"]])).json()
    assert sim.tasks_created == before + 1
    answer = _wait(client, f"{EDIT}/{task['id']}")
    assert answer["status"] == "completed"
    img = Image.open(io.BytesIO(anon.get(answer["images"][0]["url"]).content)).convert("RGB")
    assert img.size == (1024, 683)  # "auto" keeps the source's 3:2
    r, g, b = img.getpixel((5, 5))  # type: ignore[misc]
    assert r > 120 and r > g + 40 and r > b + 40  # still the red source, tinted


def test_upload_json_sources_and_limits(client: httpx.Client, anon: httpx.Client) -> None:
    data = png_bytes((64, 48), (0, 128, 0))
    up = client.post(
        "/api/v1/files", json={"source": {"type": "base64", "data": base64.b64encode(data).decode()}}
    )
    assert up.status_code == 200 and up.json()["size_bytes"] == len(data)
    again = client.post("/api/v1/files", json={"source": {"type": "url", "url": up.json()["url"]}})
    assert again.status_code == 200 and anon.get(again.json()["url"]).content == data
    foreign = client.post(
        "/api/v1/files", json={"source": {"type": "url", "url": "https://example.com/a.png"}}
    )
    assert foreign.status_code == 422 and foreign.json()["error"]["field"] == "source.url"
    bad = client.post("/api/v1/files", json={"source": {"type": "base64", "data": "%%%"}})
    assert bad.status_code == 422
    with Simulator(_config(max_upload_bytes=1000)) as small:
        headers = {"Authorization": f"Bearer {KEY}"}
        too_big = anon.post(
            small.base_url + "/api/v1/files",
            json={"source": {"type": "base64", "data": base64.b64encode(b"x" * 5000).decode()}},
            headers=headers,
        )
        assert too_big.status_code == 413
        prepared = anon.post(
            small.base_url + "/api/v1/files/prepare",
            json={"filename": "big.bin", "byte_size": 5000, "checksum": _md5(b"x" * 5000)},
            headers=headers,
        )
        assert prepared.status_code == 413 and prepared.json()["error"]["field"] == "byte_size"


def test_edit_of_remote_and_missing_sources(client: httpx.Client) -> None:
    remote = client.post(
        EDIT, json=_body("paint it", source_image_urls=["https://example.com/cat.jpg"])
    ).json()
    answer = _wait(client, f"{EDIT}/{remote['id']}")
    assert answer["status"] == "completed" and answer["images"][0]["width"] == 1024
    missing_url = str(client.base_url.join("/files/nothing-here.png"))
    missing = client.post(EDIT, json=_body("paint it", source_image_urls=[missing_url])).json()
    failed = _wait(client, f"{EDIT}/{missing['id']}")
    assert failed["status"] == "failed" and "404" in failed["error"]


def test_upscale_multiplies_the_source_size(client: httpx.Client, anon: httpx.Client) -> None:
    up = _upload(client, png_bytes((300, 200), (9, 9, 9)), "s.png")
    task = client.post(
        "/api/v1/topaz/upscale_image",
        json={"model": "topaz-upscale-image", "source_image_url": up["url"], "upscale_factor": 4},
    ).json()
    answer = _wait(client, f"/api/v1/topaz/upscale_image/{task['id']}")
    assert (answer["images"][0]["width"], answer["images"][0]["height"]) == (1200, 800)
    img = Image.open(io.BytesIO(anon.get(answer["images"][0]["url"]).content))
    assert img.size == (1200, 800)


# -- faults --------------------------------------------------------------------------------------
def test_status_fault_with_retry_after(sim: Simulator, client: httpx.Client) -> None:
    sim.inject(Fault("status", status=429, retry_after=1.5, method="POST", path_contains="/gpt_image_2"))
    assert client.get("/api/v1/me").status_code == 200  # does not match
    limited = client.post(T2I, json=_body())
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "1.5" and limited.headers["x-request-id"]
    assert limited.json()["error"]["code"] == "rate_limited"
    assert client.post(T2I, json=_body()).status_code == 200  # times=1: used up
    sim.inject(Fault("status", status=503, retry_after=2, retry_after_date=True, times=2))
    first, second, third = (client.get("/api/v1/me") for _ in range(3))
    assert first.status_code == second.status_code == 503 and third.status_code == 200
    assert first.headers["retry-after"].endswith("GMT")
    assert [r.fault for r in sim.requests[-3:]] == ["status", "status", None]


def test_html_text_and_malformed_faults(sim: Simulator, client: httpx.Client) -> None:
    sim.inject(Fault("html"))
    page = client.get("/api/v1/me")
    assert page.status_code == 502 and page.headers["content-type"].startswith("text/html")
    assert "<html>" in page.text
    sim.inject(Fault("text", status=504))
    text = client.get("/api/v1/me")
    assert text.status_code == 504 and text.headers["content-type"].startswith("text/plain")
    sim.inject(Fault("malformed_json"))
    broken = client.get("/api/v1/me")
    assert broken.status_code == 200 and broken.headers["content-type"] == "application/json"
    with pytest.raises(ValueError):
        broken.json()


def test_slow_fault_delays_then_answers(sim: Simulator, client: httpx.Client) -> None:
    sim.inject(Fault("slow", delay=0.3))
    started = time.monotonic()
    assert client.get("/api/v1/me").status_code == 200
    assert time.monotonic() - started >= 0.3
    with pytest.raises(httpx.ReadTimeout):
        sim.inject(Fault("slow", delay=0.5))
        client.get("/api/v1/me", timeout=0.1)


def test_expired_url_fault_on_downloads_only(
    sim: Simulator, client: httpx.Client, anon: httpx.Client
) -> None:
    task = client.post(T2I, json=_body()).json()
    sim.set_task_outcome(task["id"], "completed")
    url = client.get(f"{T2I}/{task['id']}").json()["images"][0]["url"]
    sim.inject(Fault("expired_url"))
    assert client.get("/api/v1/me").status_code == 200  # not a download: untouched
    expired = anon.get(url)
    assert expired.status_code == 403
    assert "<Code>AccessDenied</Code>" in expired.text and "Request has expired" in expired.text
    assert anon.get(url).status_code == 200


def test_fail_task_fault_and_prompt_marker(sim: Simulator, client: httpx.Client) -> None:
    sim.inject(Fault("fail_task", reason="NSFW content detected"))
    assert client.get("/api/v1/me").status_code == 200  # fail_task only hits task creation
    failed = client.post(T2I, json=_body()).json()
    answer = _wait(client, f"{T2I}/{failed['id']}")
    assert (answer["status"], answer["error"]) == ("failed", "NSFW content detected")
    ok = client.post(T2I, json=_body()).json()
    assert _wait(client, f"{T2I}/{ok['id']}")["status"] == "completed"
    marked = client.post(T2I, json=_body("a cat [sim:fail]")).json()
    answer = _wait(client, f"{T2I}/{marked['id']}")
    assert answer["status"] == "failed" and answer["error"] == "content policy violation"


def test_lose_response_then_retry_with_same_key_gets_one_task(sim: Simulator, client: httpx.Client) -> None:
    sim.inject(Fault("lose_response", method="POST"))
    before_tasks, before_balance = sim.tasks_created, sim.balance_cents
    headers = {"Idempotency-Key": "lost-1"}
    lost = client.post(T2I, json=_body(), headers=headers)
    assert lost.status_code == 502
    assert sim.tasks_created == before_tasks + 1  # created and charged all the same
    retry = client.post(T2I, json=_body(), headers=headers)
    assert retry.status_code == 200
    assert retry.json()["id"] == sim.task_ids[-1]
    assert sim.tasks_created == before_tasks + 1 and sim.balance_cents == before_balance - 3


def test_fault_validation() -> None:
    with pytest.raises(ValueError):
        Fault("explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Fault.from_dict({"kind": "status", "colour": 1})


def test_fault_validation_of_hostile_kinds() -> None:
    bad: list[dict[str, Any]] = [
        {"kind": "status", "urls": ["http://x/"]},  # a field for another kind
        {"kind": "trickle", "body": "html"},
        {"kind": "not_image", "body": "deep"},
        {"kind": "echo_key", "where": "status"},
        {"kind": "invalid_unicode", "where": "request_id"},
        {"kind": "image_urls"},  # neither urls nor count
        {"kind": "image_urls", "count": -1},
        {"kind": "image_urls", "urls": "http://x/"},
        {"kind": "image_urls", "urls": ["http://x/"], "method": "GET"},  # task faults: at creation
        {"kind": "echo_key", "where": "error", "method": "GET"},
        {"kind": "redirect", "status": 200},
        {"kind": "redirect", "location": "http://x/\r\nSet-Cookie: a=b"},
        {"kind": "not_image", "content_type": "image/\u00fcpng\u0100"},
        {"kind": "bomb", "width": 0},
        {"kind": "bomb", "width": 2**31, "height": 1},
        {"kind": "bomb", "width": 2**20, "height": 2**20},  # inflates to more than 32 GiB
        {"kind": "huge_image", "width": 100_000, "height": 100_000},
        {"kind": "trickle", "chunk": 0},
        {"kind": "odd_json", "body": "array", "size": 10},
        {"kind": "odd_json", "size": 0},
    ]
    for item in bad:
        with pytest.raises(ValueError):
            Fault.from_dict(item)
    # Defaults are filled in, and every kind survives the trip through the control API's JSON.
    assert (Fault("bomb").width, Fault("bomb").height) == (60_000, 60_000)
    assert (Fault("huge_image").width, Fault("huge_image").height) == (20_000, 14_000)
    assert Fault("invalid_unicode").where == "error" and Fault("invalid_unicode").body == "mixed"
    assert Fault("odd_json").size == 50_000_000 and Fault("odd_json", body="deep").size == 10_000
    assert Fault("trickle").chunk == 1
    examples = [
        Fault("not_image", body="svg", content_type="image/webp"),
        Fault("trickle", chunk=10, delay=0.5),
        Fault("redirect", status=307, location="file:///etc/passwd"),
        Fault("image_urls", urls=["javascript:alert(1)"], count=3),
        Fault("echo_key", where="request_id", status=500),
        Fault("invalid_unicode", where="id", message="\ud800"),
    ]
    for fault in examples:
        assert Fault.from_dict(json.loads(json.dumps(fault.to_dict()))) == fault
    assert Fault("echo_key", where="image_url").task_scoped and not Fault("echo_key", where="message").task_scoped


# -- a hostile upstream ----------------------------------------------------------------------------
def _completed(sim: Simulator, client: httpx.Client, path: str = T2I) -> tuple[str, dict[str, Any]]:
    """A new task (taking any task faults), completed at once: its real id and its status answer."""
    client.post(path, json=_body())
    task_id = sim.task_ids[-1]  # not from the create answer: a fault may have planted a fake id there
    sim.set_task_outcome(task_id, "completed")
    return task_id, client.get(f"{path}/{task_id}").json()


def _image_url(sim: Simulator, client: httpx.Client) -> str:
    url: str = _completed(sim, client)[1]["images"][0]["url"]
    return url


def _wait_streams_closed(sim: Simulator) -> None:
    """Wait until the simulator sends no streamed answer (it may finish just after its client)."""
    wait_until(lambda: not sim.open_streams, "every streamed answer to end", 2.0)


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The chunks of a PNG, each CRC checked (no decoding)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks: list[tuple[bytes, bytes]] = []
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    return chunks


def _ihdr(data: bytes) -> tuple[int, int, int, int]:
    """Width, height, bit depth and colour type a PNG declares."""
    width, height, depth, colour = struct.unpack(">IIBB", _png_chunks(data)[0][1][:10])
    return width, height, depth, colour


def test_not_image_downloads(sim: Simulator, client: httpx.Client, anon: httpx.Client) -> None:
    url = _image_url(sim, client)
    checks: dict[str, Callable[[bytes], bool]] = {
        "html": lambda b: b.startswith(b"<!DOCTYPE html>") and b"<form" in b,
        "svg": lambda b: b.startswith(b"<?xml") and b"<svg" in b and b"<script>" in b,
        "text": lambda b: b.startswith(b"403 Forbidden"),
        "json": lambda b: "error" in json.loads(b),
        "empty": lambda b: b == b"",
        "truncated_png": lambda b: len(b) == 100 and b.startswith(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
    }
    for body, check in checks.items():
        sim.inject(Fault("not_image", body=body))  # type: ignore[arg-type]
        assert client.get("/api/v1/me").status_code == 200  # not a download: untouched
        served = anon.get(url)
        assert served.status_code == 200 and served.headers["content-type"] == "image/png", body
        assert int(served.headers["content-length"]) == len(served.content)
        assert check(served.content), body
    sim.inject(Fault("not_image", body="json", content_type="image/webp", path_contains="/images/"))
    assert anon.get(url).headers["content-type"] == "image/webp"
    sim.inject(Fault("html", status=200))  # the older way: an HTML page as a 200 answer
    page = anon.get(url)
    assert page.status_code == 200 and "<html>" in page.text
    assert anon.get(url).content.startswith(b"\x89PNG")  # every fault used up: the real picture


def test_bomb_declares_gigapixels_in_a_small_file(sim: Simulator, client: httpx.Client, anon: httpx.Client) -> None:
    url = _image_url(sim, client)
    sim.inject(Fault("bomb"))
    bomb = anon.get(url)
    assert bomb.status_code == 200 and bomb.headers["content-type"] == "image/png"
    assert _ihdr(bomb.content) == (60_000, 60_000, 1, 0)  # 1-bit grayscale, 3.6 gigapixels
    assert 100_000 < len(bomb.content) < 1_000_000
    # A smaller one inflated in full: real PNG image data (zlib checksum included), all zeros.
    sim.inject(Fault("bomb", width=4001, height=3000))
    small = anon.get(url).content
    assert _ihdr(small)[:2] == (4001, 3000)
    inflater = zlib.decompressobj()
    data = b"".join(body for kind, body in _png_chunks(small) if kind == b"IDAT")
    raw = inflater.decompress(data)
    assert inflater.eof and not inflater.unused_data
    assert len(raw) == 3000 * (1 + 501) and raw.count(0) == len(raw)


def test_huge_image_is_a_real_picture(sim: Simulator, client: httpx.Client, anon: httpx.Client) -> None:
    url = _image_url(sim, client)
    sim.inject(Fault("huge_image"))
    huge = anon.get(url)
    assert huge.status_code == 200 and huge.headers["content-type"] == "image/png"
    assert _ihdr(huge.content) == (20_000, 14_000, 4, 3)  # 280 megapixels, 16-colour palette
    assert 200_000 < len(huge.content) < 5_000_000
    sim.inject(Fault("huge_image", width=3001, height=2000))
    img = Image.open(io.BytesIO(anon.get(url).content))
    img.load()
    assert img.size == (3001, 2000) and img.mode == "P"
    assert len(set(img.crop((0, 0, 1000, 1)).getdata())) > 4  # colour bands, not a blank


def test_trickle_sends_slowly_without_blocking_and_stops_on_hang_up(
    sim: Simulator, client: httpx.Client, anon: httpx.Client
) -> None:
    url = _image_url(sim, client)
    real = anon.get(url).content
    sim.inject(Fault("trickle", chunk=100, delay=0.05))
    assert anon.head(url).status_code == 200 and sim.faults  # a HEAD has no body to trickle: left armed
    started = time.monotonic()
    with anon.stream("GET", url) as response:
        assert time.monotonic() - started < 0.5  # the headers come at once
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert int(response.headers["content-length"]) == len(real)
        received = b""
        # Kept, not left with `break`: abandoning httpx's iterator closes the connection.
        pieces = response.iter_raw()
        while len(received) < 500:
            received += next(pieces)
        assert time.monotonic() - started >= 0.2  # 5 pieces of 100 bytes, 50 ms apart
        assert received == real[: len(received)]
        quick = time.monotonic()
        assert client.get("/v1/models").status_code == 200  # the simulator still answers the rest
        assert time.monotonic() - quick < 0.5
        assert sim.open_streams == 1
    _wait_streams_closed(sim)  # hung up: the simulator stops sending
    # Read to the end, a trickle delivers the real picture.
    sim.inject(Fault("trickle", chunk=len(real) // 4 + 1, delay=0.01))
    assert anon.get(url).content == real
    assert sim.requests[-1].fault == "trickle"


def test_invalid_unicode_in_task_answers(sim: Simulator, client: httpx.Client) -> None:
    sim.inject(Fault("invalid_unicode", where="error", body="high_surrogate"))
    client.post(T2I, json=_body())
    failed = _wait(client, f"{T2I}/{sim.task_ids[-1]}")
    raw = client.get(f"{T2I}/{sim.task_ids[-1]}").content
    assert failed["status"] == "failed" and failed["error"] == "\ud800"
    assert b'"error":"\\ud800"' in raw  # a lone surrogate escape, as the internet sends it

    sim.inject(Fault("invalid_unicode", where="status"))
    _, answer = _completed(sim, client)
    assert answer["status"] == PLANTED_STRINGS["mixed"] and answer["images"]
    raw = client.get(f"{T2I}/{sim.task_ids[-1]}").content
    for escape in (b"\\ud800", b"\\udfff", b"\\u0000", b"\\u202e"):
        assert escape in raw

    sim.inject(Fault("invalid_unicode", where="id", body="nul"))
    created = client.post(T2I, json=_body())
    assert created.json()["id"] == "before\x00after" and b"\\u0000" in created.content
    real_id = sim.task_ids[-1]
    assert client.get(f"{T2I}/{real_id}").json()["id"] == "before\x00after"

    sim.inject(Fault("invalid_unicode", where="image_url", body="low_surrogate"))
    _, answer = _completed(sim, client)
    assert answer["images"][0]["url"].endswith("?u=\udfff")

    sim.inject(Fault("invalid_unicode", where="message", body="huge", status=400))
    refused = client.get("/api/v1/me")
    assert refused.status_code == 400 and len(refused.json()["error"]["message"]) == 1_000_000
    sim.inject(Fault("invalid_unicode", where="message", message="bidi \u202e\ud800"))
    assert client.get("/api/v1/me").json()["error"]["message"] == "bidi \u202e\ud800"
    assert client.get("/api/v1/me").status_code == 200  # used up
    sim.inject(Fault("text", message="bad \ud800"))  # not JSON: the invalid UTF-8 a surrogate makes
    assert client.get("/api/v1/me").content == b"bad \xed\xa0\x80"


def test_invalid_unicode_over_the_control_api(sim: Simulator, client: httpx.Client) -> None:
    control = _client(sim.base_url)
    fault = {"kind": "invalid_unicode", "where": "message", "message": "\udfff"}
    # json.dumps escapes the surrogate (httpx's json= would refuse to encode it).
    posted = control.post("/_sim/faults", content=json.dumps(fault), headers={"Content-Type": "application/json"})
    assert posted.status_code == 201 and posted.json()["faults"][0]["message"] == "\udfff"
    assert client.get("/api/v1/me").json()["error"]["message"] == "\udfff"
    assert control.get("/_sim/requests").status_code == 200
    control.close()


def test_echo_key_everywhere_but_the_log(sim: Simulator, client: httpx.Client, anon: httpx.Client) -> None:
    sim.inject(Fault("echo_key", where="message"))
    refused = client.get("/api/v1/me")
    assert refused.status_code == 401 and KEY in refused.json()["error"]["message"]

    sim.inject(Fault("echo_key", where="request_id", method="GET", path_contains=T2I, times=2))
    task_id, _ = _completed(sim, client)
    poll = client.get(f"{T2I}/{task_id}")
    assert poll.status_code == 200 and poll.headers["x-request-id"] == KEY
    sim.inject(Fault("echo_key", where="request_id", status=503))
    error = client.get("/api/v1/me")
    assert error.status_code == 503 and error.headers["x-request-id"] == KEY

    sim.inject(Fault("echo_key", where="error"))
    client.post(T2I, json=_body())
    failed = _wait(client, f"{T2I}/{sim.task_ids[-1]}")
    assert failed["status"] == "failed" and f"Bearer {KEY}" in failed["error"]

    sim.inject(Fault("echo_key", where="image_url"))
    _, answer = _completed(sim, client)
    url = answer["images"][0]["url"]
    encoded = "".join(f"%{b:02X}" for b in KEY.encode())
    assert f"?sig={KEY}&token={encoded}" in url and f"token={encoded}" in answer["images"][0]["origin_url"]
    assert anon.get(url).content.startswith(b"\x89PNG")  # the URL still downloads

    # The log keeps real request ids, and the download of the marked URL without the key in it.
    logged = sim.requests
    assert len(logged) >= 8 and all(r.request_id.startswith("req_") for r in logged)
    assert logged[-1].query == "sig=[key]&token=[key]" and logged[-1].carried_key
    assert not any(r.carried_key for r in logged[:-1])
    with _client(sim.base_url) as control:
        for text in (repr(logged), control.get("/_sim/requests").text):
            assert KEY not in text and encoded not in text


def test_image_urls_point_anywhere(sim: Simulator, client: httpx.Client, anon: httpx.Client) -> None:
    with ImageHost() as host:
        hostile = [
            host.url("/cat.png"),
            "http://169.254.169.254/latest/meta-data/",
            "file:///etc/passwd",
            "ftp://127.0.0.1/pub/cat.png",
            "javascript:alert(document.cookie)",
            "http://127.0.0.1/" + "a" * 10_000,
            "http://[::1]:1/",
        ]
        sim.inject(Fault("image_urls", urls=hostile, path_contains="/text_to_image"))
        assert client.get("/api/v1/me").status_code == 200  # task faults wait for a task
        client.post(EDIT, json=_body(source_image_urls=["https://example.com/a.png"]))  # another path
        assert sim.faults[0].kind == "image_urls"
        _, answer = _completed(sim, client)
        assert [i["url"] for i in answer["images"]] == hostile
        assert all(i["width"] == 1024 and i["content_type"] == "image/png" for i in answer["images"])
        assert not sim.faults and not host.hit  # the simulator lists them, it never fetches them
        downloaded = anon.get(answer["images"][0]["url"])
        assert downloaded.content == host.body and _ihdr(downloaded.content)[:2] == (48, 48)
        assert [(r.method, r.path, r.sent_auth) for r in host.requests] == [("GET", "/cat.png", False)]

    sim.inject(Fault("image_urls", count=1000))
    task_id, answer = _completed(sim, client)
    urls = {i["url"] for i in answer["images"]}
    assert len(answer["images"]) == 1000 and len(urls) == 1 and task_id in urls.pop()
    assert anon.get(answer["images"][999]["url"]).content.startswith(b"\x89PNG")

    # Two task faults of different kinds shape one task: URLs listed, then marked with the key.
    sim.inject(Fault("image_urls", urls=["http://a/1.png", "http://a/2.png"], count=3))
    sim.inject(Fault("echo_key", where="image_url"))
    _, answer = _completed(sim, client)
    assert [i["url"].split("?")[0] for i in answer["images"]] == ["http://a/1.png", "http://a/2.png", "http://a/1.png"]
    assert all(f"sig={KEY}" in i["url"] for i in answer["images"])


def test_redirects_anywhere(sim: Simulator, client: httpx.Client, anon: httpx.Client) -> None:
    url = _image_url(sim, client)
    path = httpx.URL(url).raw_path.decode()
    with ImageHost(b"not from the simulator", content_type="image/png") as host:
        for status, location in [
            (301, host.url("/elsewhere.png")),
            (302, "http://169.254.169.254/latest/meta-data/iam/"),
            (307, "file:///etc/passwd"),
            (308, "/images/../../etc/passwd"),
        ]:
            sim.inject(Fault("redirect", status=status, location=location))
            moved = anon.get(url)
            assert (moved.status_code, moved.headers["location"]) == (status, location)
        sim.inject(Fault("redirect", location=host.url("/elsewhere.png")))
        followed = anon.get(url, follow_redirects=True)
        assert followed.content == b"not from the simulator" and host.hit
    sim.inject(Fault("redirect", times=None))  # no location: back to itself, forever
    loop = anon.get(url + "?x=1")
    assert loop.status_code == 302 and loop.headers["location"] == path + "?x=1"
    with pytest.raises(httpx.TooManyRedirects):
        anon.get(url, follow_redirects=True)
    sim.clear_faults()
    assert client.get("/api/v1/me").status_code == 200  # a redirect fault only hits downloads


def test_odd_json_status_answers(sim: Simulator, client: httpx.Client) -> None:
    task_id, _ = _completed(sim, client)
    status_path = f"{T2I}/{task_id}"

    def odd(body: FaultBody = "huge", size: int | None = None) -> Fault:
        """Matched per status poll, by its path."""
        return Fault("odd_json", body=body, size=size, method="GET", path_contains="/api/v1/gpt_image_2")

    sim.inject(odd("array"))
    assert client.get("/api/v1/me").json()["id"] == 1  # another path: untouched
    listed = client.get(status_path).json()
    assert isinstance(listed, list) and listed[0]["status"] == "completed"

    sim.inject(odd("deep"))
    deep = client.get(status_path)
    assert deep.content.startswith(b'{"detail":' + b"[" * 10_000)
    with pytest.raises(RecursionError):
        json.loads(deep.content)

    sim.inject(odd(size=300_000))
    padded = client.get(status_path)
    assert len(padded.content) == 300_000 and "content-length" not in padded.headers
    answer = padded.json()
    assert answer["status"] == "completed" and answer["id"] == task_id and set(answer["padding"]) == {"A"}

    sim.inject(odd())  # the default: 50 MB, streamed
    total = 0
    with client.stream("GET", status_path) as streamed:
        assert streamed.headers.get("transfer-encoding") == "chunked"
        for piece in streamed.iter_raw():
            total += len(piece)
    assert total == 50_000_000
    _wait_streams_closed(sim)


def test_image_host_records_requests() -> None:
    with ImageHost(b"{}", status=404, content_type="application/json", headers={"X-Thing": "1"}) as host:
        assert not host.hit
        answer = httpx.get(host.url("meta-data/") + "?k=v", headers={"Authorization": "Bearer leaked"})
        assert (answer.status_code, answer.content, answer.headers["x-thing"]) == (404, b"{}", "1")
        (seen,) = host.requests
        assert (seen.method, seen.path, seen.query, seen.sent_auth) == ("GET", "/meta-data/", "k=v", True)
        assert "leaked" not in repr(seen.to_dict())
        host.clear_log()
        assert not host.hit


# -- control API, lifecycle ----------------------------------------------------------------------
def test_control_api(sim: Simulator, client: httpx.Client) -> None:
    control = _client(sim.base_url)
    assert control.post("/_sim/faults", json={"kind": "status", "status": 500, "times": 1}).status_code == 201
    assert control.post("/_sim/faults", json={"kind": "nope"}).status_code == 422
    assert len(sim.faults) == 1
    assert client.get("/api/v1/me").status_code == 500
    control.post("/_sim/faults", json={"kind": "status", "status": 503, "times": None})
    assert control.delete("/_sim/faults").status_code == 200
    assert client.get("/api/v1/me").status_code == 200
    logged = control.get("/_sim/requests").json()["requests"]
    assert [(r["path"], r["status"]) for r in logged[-2:]] == [("/api/v1/me", 500), ("/api/v1/me", 200)]
    assert all(not r["path"].startswith("/_sim") for r in logged)
    state = control.get("/_sim/state").json()
    assert state["tasks_created"] == sim.tasks_created and state["balance_cents"] == sim.balance_cents
    task = client.post(T2I, json=_body()).json()
    assert (
        control.post("/_sim/outcome", json={"task_id": task["id"], "status": "completed"}).status_code == 200
    )
    assert client.get(f"{T2I}/{task['id']}").json()["status"] == "completed"
    assert control.post("/_sim/outcome", json={"task_id": "nope"}).status_code == 404
    control.close()


def test_reset_forgets_everything_a_test_did(sim: Simulator, client: httpx.Client, anon: httpx.Client) -> None:
    """What the ``sim`` fixture relies on between tests: a reset simulator is a new one on the same port."""
    uploaded = _upload(client, png_bytes((16, 16), (0, 90, 0)))
    prepared = _prepare(client, b"never sent")
    first = client.post(T2I, json=_body(), headers={"Idempotency-Key": "reset-1"}).json()["id"]
    sim.set_task_outcome(None, "running")  # queued for the next task: the next test must not inherit it
    sim.set_task_outcome(None, "failed", error="queued twice")
    sim.inject(Fault("status", status=503, path_contains="/never-called", times=None))
    sim.set_catalog_status("z-image", "disabled")
    sim.configure(upload_lifetime_s=5.0, status_retry_after=1.0, report_progress=True, id_style="task_id")
    sim.set_balance(3)
    config_before = _config()
    etag = client.get("/api/v1/price_schedules").headers["etag"]
    assert sim.config != config_before and sim.requests and sim.tasks_created >= 1

    sim.reset()

    assert sim.config == config_before
    assert sim.task_ids == [] and sim.tasks_created == 0 and sim.balance_cents == config_before.initial_balance_cents
    assert sim.faults == [] and sim.requests == [] and sim.callbacks == []
    assert [p for d in ("files", "images", "staging") for p in (sim._data_dir / d).iterdir()] == []
    assert client.get(f"{T2I}/{first}").status_code == 404
    assert anon.get(uploaded["url"]).status_code == 404
    refused = client.post("/api/v1/files/confirm", json={"signed_id": prepared["signed_id"]})
    assert refused.status_code in (404, 422), refused.text
    schedules = client.get("/api/v1/price_schedules", headers={"If-None-Match": etag})
    assert schedules.status_code == 200 and schedules.headers["etag"] != etag
    assert {r["catalog_status"] for r in schedules.json()["price_schedules"] if r["model"] == "z-image"} == {"active"}
    again = client.post(T2I, json=_body(), headers={"Idempotency-Key": "reset-1"})
    assert again.status_code == 200 and "id" in again.json()  # id_style is back to "id"
    assert again.json()["id"] != first and sim.tasks_created == 1  # the key is new again: a new task
    assert sim.completed_at(again.json()["id"]) is not None  # not held: the queued outcomes are gone
    assert "retry-after" not in client.get(f"{T2I}/{again.json()['id']}").headers

    # The same over the control API.
    control = _client(sim.base_url)
    assert control.post("/_sim/outcome", json={"status": "running"}).status_code == 200
    assert control.post("/_sim/reset").json() == {"ok": True}
    assert sim.requests == [] and sim.task_ids == []
    fresh = client.post(T2I, json=_body()).json()["id"]
    assert sim.completed_at(fresh) is not None
    control.close()


def test_restart_on_the_same_port_keeps_state() -> None:
    sim = Simulator(_config())
    try:
        url = sim.start()
        headers = {"Authorization": f"Bearer {KEY}"}
        task = httpx.post(url + T2I, json=_body(), headers=headers).json()
        sim.stop()
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/v1/models")
        assert sim.start(port=int(url.rsplit(":", 1)[1])) == url
        assert httpx.get(f"{url}{T2I}/{task['id']}", headers=headers).status_code == 200
    finally:
        sim.close()


# -- timing and pre-rendering (benchmarks) -----------------------------------------------------------
def test_completed_at_is_the_moment_the_status_turns_completed(sim: Simulator, client: httpx.Client) -> None:
    before = time.monotonic()
    task_id = client.post(T2I, json=_body()).json()["id"]
    after = time.monotonic()
    done_at = sim.completed_at(task_id)
    assert done_at is not None
    # 1k tasks take 12 s, scaled by 0.005: 60 ms after creation.
    assert before + 0.06 - 1e-6 <= done_at <= after + 0.06 + 1e-6
    answer = _wait(client, f"{T2I}/{task_id}")
    assert answer["status"] == "completed" and time.monotonic() >= done_at
    sim.set_task_outcome(None, "running")
    held = client.post(T2I, json=_body()).json()["id"]
    assert sim.completed_at(held) is None
    sim.set_task_outcome(held, "completed")
    forced = sim.completed_at(held)
    assert forced is not None and forced <= time.monotonic()
    failing = client.post(T2I, json=_body("[sim:fail] a cat")).json()["id"]
    assert sim.completed_at(failing) is None
    with pytest.raises(KeyError):
        sim.completed_at("no-such-task")


def test_prerender_renders_outputs_before_they_are_downloaded(anon: httpx.Client) -> None:
    with Simulator(_config(prerender=True, time_scale=1.0)) as sim, _client(sim.base_url) as c:
        headers = {"Authorization": f"Bearer {KEY}"}
        task_id = c.post(T2I, json=_body(output_resolution="1k"), headers=headers).json()["id"]
        images = sim._data_dir / "images"
        wait_until(lambda: list(images.glob(f"{task_id}_*.png")), "the picture rendered in the background")
        assert c.get(f"{T2I}/{task_id}", headers=headers).json()["status"] in ("pending", "processing")
        sim.set_task_outcome(task_id, "completed")
        url = c.get(f"{T2I}/{task_id}", headers=headers).json()["images"][0]["url"]
        assert Image.open(io.BytesIO(anon.get(url).content)).size == (1024, 1024)


# -- today's contract: direct uploads, quotes, schedules, task headers (runapi-core 0.10.1) ------------
def test_multipart_upload_is_refused_and_legacy_takes_it(sim: Simulator, client: httpx.Client) -> None:
    multipart = client.post("/api/v1/files", files={"file": ("red.png", png_bytes((8, 8), (1, 2, 3)), "image/png")})
    assert multipart.status_code == 415
    assert "/api/v1/files/prepare" in multipart.json()["error"]["message"]
    sim.configure(legacy=True)
    try:
        old = client.post("/api/v1/files", files={"file": ("red.png", png_bytes((8, 8), (1, 2, 3)), "image/png")})
        assert old.status_code == 200 and old.json()["mime_type"] == "image/png"
    finally:
        sim.configure(legacy=False)


def test_direct_upload_rules(sim: Simulator, client: httpx.Client, anon: httpx.Client) -> None:
    data = png_bytes((40, 30), (10, 200, 10))
    prepared = _prepare(client, data, "green.png")
    assert set(prepared) == {"signed_id", "upload_url", "headers"}
    assert prepared["upload_url"].startswith(sim.base_url + "/storage/")
    assert prepared["headers"] == {"Content-Type": "image/png", "Content-MD5": _md5(data)}
    url, headers = prepared["upload_url"], prepared["headers"]
    # Confirming before the bytes arrive, or an unknown id: 422 naming signed_id.
    early = client.post("/api/v1/files/confirm", json={"signed_id": prepared["signed_id"]})
    assert early.status_code == 422 and early.json()["error"]["field"] == "signed_id"
    unknown = client.post("/api/v1/files/confirm", json={"signed_id": "sig_nope"})
    assert unknown.status_code == 422 and unknown.json()["error"]["field"] == "signed_id"
    # Storage refuses the key, other headers, other bytes.
    keyed = anon.put(url, content=data, headers={**headers, "Authorization": f"Bearer {KEY}"})
    assert keyed.status_code == 400 and "<Code>InvalidArgument</Code>" in keyed.text
    assert anon.put(url, content=data, headers={"Content-Type": "image/png"}).status_code == 403  # no Content-MD5
    assert anon.put(url, content=data, headers={**headers, "Content-Type": "image/jpeg"}).status_code == 403
    assert anon.put(url, content=data + b"x", headers=headers).status_code == 400  # size
    other = bytes(len(data))
    digest = anon.put(url, content=other, headers=headers)
    assert digest.status_code == 400 and "<Code>BadDigest</Code>" in digest.text
    put = anon.put(url, content=data, headers=headers)
    assert put.status_code == 200 and put.headers["etag"] == f'"{hashlib.md5(data).hexdigest()}"'
    confirmed = client.post("/api/v1/files/confirm", json={"signed_id": prepared["signed_id"]})
    assert confirmed.status_code == 200
    info = confirmed.json()
    assert set(info) == {"file_name", "url", "size_bytes", "mime_type", "created_at", "expires_at"}
    assert info["size_bytes"] == len(data) and info["mime_type"] == "image/png"
    assert anon.get(info["url"]).content == data
    # Confirmed: the same file again; the upload URL is spent.
    assert client.post("/api/v1/files/confirm", json={"signed_id": prepared["signed_id"]}).json() == info
    assert anon.put(url, content=data, headers=headers).status_code == 403
    # The log has the steps, and whether each PUT carried a key.
    steps = [(r.method, r.path.split("/storage/")[0] or "/storage", r.status, r.sent_auth) for r in sim.requests]
    assert ("POST", "/api/v1/files/prepare", 200, True) in steps
    assert ("PUT", "/storage", 400, True) in steps and ("PUT", "/storage", 200, False) in steps
    assert ("POST", "/api/v1/files/confirm", 200, True) in steps
    for bad, field in [
        ({"filename": "a.png", "byte_size": 0, "checksum": _md5(b"")}, "byte_size"),
        ({"filename": "a.png", "byte_size": 3, "checksum": "abc"}, "checksum"),
        ({"filename": "", "byte_size": 3, "checksum": _md5(b"abc")}, "filename"),
    ]:
        refused = client.post("/api/v1/files/prepare", json=bad)
        assert refused.status_code == 422 and refused.json()["error"]["field"] == field


def test_uploads_expire(client: httpx.Client, anon: httpx.Client) -> None:
    with Simulator(_config(upload_lifetime_s=0.4)) as sim, _client(sim.base_url) as c:
        c.headers["Authorization"] = f"Bearer {KEY}"
        info = _upload(c, png_bytes((32, 32), (200, 0, 0)))
        created, expires = (
            datetime.fromisoformat(info[k].replace("Z", "+00:00")) for k in ("created_at", "expires_at")
        )
        assert timedelta(0) <= expires - created <= timedelta(seconds=1)
        assert c.post(EDIT, json=_body(source_image_urls=[info["url"]])).status_code == 200
        wait_until(lambda: anon.get(info["url"]).status_code == 403, "the upload to expire", 5.0, every=0.05)
        assert datetime.now(UTC) >= expires  # expired when it said it would, not before
        before = sim.tasks_created
        refused = c.post(EDIT, json=_body(source_image_urls=[info["url"]]))
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "source_image_urls"
        assert sim.tasks_created == before
        again = c.post("/api/v1/files", json={"source": {"type": "url", "url": info["url"]}})
        assert again.status_code == 422
    # The default: one hour.
    info = _upload(client, png_bytes((8, 8), (0, 0, 200)))
    created, expires = (datetime.fromisoformat(info[k].replace("Z", "+00:00")) for k in ("created_at", "expires_at"))
    assert expires - created == timedelta(hours=1)


def test_price_quote_nests_the_fields_under_params(client: httpx.Client, anon: httpx.Client, sim: Simulator) -> None:
    quote = {"service": "gpt_image_2", "action": "text-to-image", "model": "gpt-image-2"}
    answer = anon.post(sim.base_url + "/api/v1/price_quotes", json={**quote, "params": _body(output_resolution="2k")})
    assert answer.status_code == 200  # no key needed
    priced = answer.json()["price_quote"]
    assert set(priced) >= {
        "service", "action", "model", "pricing_status", "currency", "reservation_amount_cents", "estimate_basis", "as_of"
    }
    assert (priced["service"], priced["action"], priced["model"]) == ("gpt_image_2", "text_to_image", "gpt-image-2")
    assert priced["reservation_amount_cents"] == 6 and priced["currency"] == "USD" and priced["pricing_status"]
    assert client.post("/api/v1/price_quotes", json={**quote, "params": {"prompt": "x"}}).json()["price_quote"][
        "reservation_amount_cents"
    ] == 3  # with the key, too
    wrong_key = anon.post(
        sim.base_url + "/api/v1/price_quotes", json={**quote, "params": {}}, headers={"Authorization": "Bearer sk-no"}
    )
    assert wrong_key.status_code == 401  # a key that is sent is checked
    # A quote priced from an existing task needs the key of its account.
    segment = {"service": "grok_imagine", "action": "segment_map", "model": "grok-imagine-image-2-0"}
    source_task = client.post(T2I, json=_body()).json()["id"]
    from_task = {**segment, "params": {"source_task_id": source_task}}
    assert anon.post(sim.base_url + "/api/v1/price_quotes", json=from_task).status_code == 401
    assert client.post("/api/v1/price_quotes", json=from_task).status_code == 200
    unknown = client.post("/api/v1/price_quotes", json={**segment, "params": {"source_task_id": "nope"}})
    assert unknown.status_code == 422 and unknown.json()["error"]["field"] == "params.source_task_id"
    for body, field in [
        ({**quote, "prompt": "flat", "output_resolution": "2k"}, "params"),  # the old flat form
        ({**quote, "params": "prompt=x"}, "params"),
        ({**quote, "params": {"prompt": "x"}, "aspect_ratio": "1:1"}, "params"),
        ({**quote, "params": {"prompt": "x", "colour": "red"}}, "params.colour"),
        ({**quote, "params": {"prompt": "x", "aspect_ratio": "7:3"}}, "params.aspect_ratio"),
        ({**quote, "params": {"prompt": "x", "model": "gpt-4o-image"}}, "model"),
        ({**quote, "service": "nope", "params": {}}, "service"),
        ({**quote, "action": "nope", "params": {}}, "action"),
    ]:
        refused = client.post("/api/v1/price_quotes", json=body)
        assert refused.status_code == 422, body
        assert refused.json()["error"]["field"] == field, body


def test_price_schedules_etag_and_catalog_status(sim: Simulator, client: httpx.Client, anon: httpx.Client) -> None:
    url = sim.base_url + "/api/v1/price_schedules"
    listed = anon.get(url)  # no key needed
    assert listed.status_code == 200
    rows = listed.json()["price_schedules"]
    assert listed.json()["as_of"]
    keys = {
        "service", "action", "model", "pricing_status", "catalog_status", "currency",
        "billing_unit", "billing_strategy", "unit_price_cents", "billing_config",
    }
    assert rows and all(set(row) >= keys for row in rows)
    assert all(row["catalog_status"] == "active" for row in rows)
    gpt = anon.get(url, params={"service": "gpt-image-2", "action": "text-to-image"})
    [row] = gpt.json()["price_schedules"]
    assert (row["service"], row["action"], row["model"]) == ("gpt_image_2", "text_to_image", "gpt-image-2")
    assert row["billing_config"] == {"resolution_prices_cents": {"1k": 3, "2k": 6, "4k": 12}}
    assert [r["model"] for r in anon.get(url, params={"model": "z-image"}).json()["price_schedules"]] == ["z-image"]
    etag = gpt.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    same = anon.get(url, params={"service": "gpt_image_2", "action": "text_to_image"}, headers={"If-None-Match": etag})
    assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == etag
    # Availability changes: the ETag changes and the model is no longer called.
    with _client(sim.base_url) as control:
        set_status = control.post("/_sim/catalog_status", json={"model": "z-image", "status": "maintenance"})
        assert set_status.status_code == 200
        assert control.post("/_sim/catalog_status", json={"model": "z-image", "status": "gone"}).status_code == 422
        assert control.post("/_sim/catalog_status", json={"model": "nope", "status": "active"}).status_code == 422
    try:
        changed = anon.get(url, headers={"If-None-Match": listed.headers["etag"]})
        assert changed.status_code == 200 and changed.headers["etag"] != listed.headers["etag"]
        z_rows = [r for r in changed.json()["price_schedules"] if r["model"] == "z-image"]
        assert [r["catalog_status"] for r in z_rows] == ["maintenance"]
        z_body = {"model": "z-image", "prompt": "a cat", "aspect_ratio": "1:1"}
        busy = client.post("/api/v1/z_image/text_to_image", json=z_body)
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "model_maintenance"
        sim.set_catalog_status("z-image", "disabled", action="text-to-image")
        off = client.post("/api/v1/z_image/text_to_image", json=z_body)
        assert off.status_code == 422 and off.json()["error"]["field"] == "model"
    finally:
        sim.set_catalog_status("z-image", "active")
    assert anon.get(url).json()["price_schedules"] == rows  # active again (``as_of`` moved on)
    with Simulator(_config(extra_schedule_rows=[{"service": "sora-2", "action": "text-to-video", "model": "sora-2"}])) as s2:
        [extra] = httpx.get(s2.base_url + "/api/v1/price_schedules", params={"model": "sora-2"}).json()["price_schedules"]
        assert (extra["service"], extra["action"], extra["catalog_status"]) == ("sora_2", "text_to_video", "active")


def test_legacy_mode_answers_the_old_way(sim: Simulator, client: httpx.Client, anon: httpx.Client) -> None:
    with _client(sim.base_url) as control:
        assert control.post("/_sim/config", json={"legacy": True}).json()["legacy"] is True
        try:
            quote = {"service": "gpt_image_2", "action": "text_to_image"}
            flat = client.post("/api/v1/price_quotes", json={**quote, **_body()})
            assert flat.status_code == 200 and flat.json()["price_quote"]["reservation_amount_cents"] == 3
            nested = client.post("/api/v1/price_quotes", json={**quote, "params": _body()})
            assert nested.status_code == 422 and nested.json()["error"]["field"] == "params"
            assert anon.post(sim.base_url + "/api/v1/price_quotes", json={**quote, **_body()}).status_code == 401
            rows = client.get("/api/v1/price_schedules").json()["price_schedules"]
            assert rows and all("catalog_status" not in row for row in rows)
            assert client.post("/api/v1/files/prepare", json={}).status_code == 404
            assert client.post("/api/v1/files/confirm", json={}).status_code == 404
        finally:
            assert control.post("/_sim/config", json={"legacy": False}).json()["legacy"] is False
        assert control.post("/_sim/config", json={"legacy": False, "colour": 1}).status_code == 422
        assert control.post("/_sim/config", json={"upload_lifetime_s": -1}).status_code == 422
        assert control.get("/_sim/config").json()["upload_lifetime_s"] == 3600.0


def test_task_headers_usage_and_replay(sim: Simulator, client: httpx.Client) -> None:
    created = client.post(T2I, json=_body(output_resolution="2k"), headers={"Idempotency-Key": "hdr-1"})
    task_id = created.json()["id"]
    assert created.headers["x-runapi-task-id"] == task_id and created.headers["x-request-id"]
    assert "task_replayed" not in created.json()
    running = client.get(f"{T2I}/{task_id}")
    assert running.headers["x-runapi-task-id"] == task_id and "usage" not in running.json()
    replay = client.post(T2I, json=_body(output_resolution="2k"), headers={"Idempotency-Key": "hdr-1"})
    assert replay.json()["task_replayed"] is True and replay.json()["id"] == task_id
    assert replay.headers["idempotent-replayed"] == "true" and replay.headers["x-runapi-task-id"] == task_id
    done = _wait(client, f"{T2I}/{task_id}")
    assert done["usage"] == {"cost": 0.06, "generated_images": 1}  # US dollars (runapi-core 0.10.1), not cents
    # Error answers about a known task carry its id too; a task on another route is not found.
    sim.inject(Fault("status", status=422, method="GET", path_contains=task_id))
    refused = client.get(f"/api/v1/gpt_image_2/{task_id}")
    assert refused.status_code == 422 and refused.headers["x-runapi-task-id"] == task_id
    elsewhere = client.get(f"{EDIT}/{task_id}")
    assert elsewhere.status_code == 404 and "x-runapi-task-id" not in elsewhere.headers
    assert client.get(f"{T2I}/nope").headers["x-request-id"]
    echoed = client.get(f"{T2I}/{task_id}", headers={"X-Client-Request-Id": "order-123"})
    assert echoed.headers["x-client-request-id"] == "order-123"
    assert "x-client-request-id" not in client.get("/api/v1/me", headers={"X-Client-Request-Id": "x" * 513}).headers
    with _client(sim.base_url) as control:
        assert control.get("/_sim/state").headers["x-request-id"]
    failing = client.post(T2I, json=_body("[sim:fail] a cat")).json()["id"]
    assert "usage" not in _wait(client, f"{T2I}/{failing}")  # failed answers carry no usage: nothing charged


@pytest.mark.parametrize("status_text", ["timeout", "canceled", "error", "exploded"])
def test_tasks_can_end_with_any_status(sim: Simulator, client: httpx.Client, status_text: str) -> None:
    task_id = client.post(T2I, json=_body()).json()["id"]
    with _client(sim.base_url) as control:
        forced = control.post(
            "/_sim/outcome",
            json={"task_id": task_id, "status": "failed", "status_text": status_text, "error": f"task {status_text}"},
        )
        assert forced.status_code == 200
        assert control.post("/_sim/outcome", json={"task_id": task_id, "status_text": 3}).status_code == 422
    answer = client.get(f"{T2I}/{task_id}").json()
    assert (answer["status"], answer["error"]) == (status_text, f"task {status_text}")
    assert "usage" not in answer


def test_create_error_fault_still_creates_the_task(sim: Simulator, client: httpx.Client) -> None:
    sim.inject(Fault("create_error", method="POST", path_contains="/gpt_image_2/"))
    before = sim.tasks_created
    failed = client.post(T2I, json=_body(), headers={"Idempotency-Key": "create-error-1"})
    assert failed.status_code == 502 and failed.json()["error"]["code"] == "bad_gateway"
    task_id = failed.headers["x-runapi-task-id"]
    assert sim.tasks_created == before + 1 and sim.task_ids[-1] == task_id
    assert sim.requests[-1].fault == "create_error"
    retry = client.post(T2I, json=_body(), headers={"Idempotency-Key": "create-error-1"})
    assert retry.status_code == 200 and retry.json()["id"] == task_id and retry.json()["task_replayed"] is True
    assert _wait(client, f"{T2I}/{task_id}")["status"] == "completed"
    sim.inject(Fault("create_error", status=500, message="boom"))
    nothing = client.get("/api/v1/me")  # no task: no task id
    assert nothing.status_code == 500 and "x-runapi-task-id" not in nothing.headers


def test_contract_rules_are_checked_when_the_catalog_has_them() -> None:
    action = get_catalog().find_route("gpt_image_2", "text_to_image")
    assert action is not None
    spec = action.models["gpt-image-2"]

    @dataclasses.dataclass(frozen=True)
    class Ruled(ModelSpec):
        def check_rules(self, body: Mapping[str, Any]) -> None:
            if body.get("output_resolution") == "4k" and body.get("aspect_ratio") in (None, "1:1", "auto"):
                raise CatalogError("at 4k an aspect ratio other than 1:1 and auto is required", field="aspect_ratio")

    ruled = Ruled(slug=spec.slug, send_model=spec.send_model, fields=spec.fields, endpoint=spec.endpoint)
    routed = dataclasses.replace(action, models={"gpt-image-2": ruled})
    assert validate_body(routed, _body(output_resolution="4k", aspect_ratio="16:9")) is ruled
    with pytest.raises(ApiError) as refused:
        validate_body(routed, _body(output_resolution="4k"))
    assert (refused.value.status, refused.value.field) == (422, "aspect_ratio")
    assert refused.value.body()["error"]["code"] == "validation_error"
