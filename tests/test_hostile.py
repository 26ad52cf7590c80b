"""Every failure class of the "Unbreakable" issue, replayed end to end against the simulator.

A real MCP client calls the server (in process, and once over a real stdio pipe); the simulator plays a
hostile RunAPI and hostile image hosts (its ``Fault`` kinds), and ``ImageHost`` a foreign host that must
never be contacted. In every case the call must come back within a bounded time with a result whose
text says what went wrong in plain words, the process must survive, and a normal ``generate_image``
must complete right after in the same server (``_still_serving``).

Many variants of one class run side by side in one test: each task is created on its own (so it takes
exactly the fault armed for it), then all are awaited together. That keeps the module fast while each
variant stays identifiable by its task id.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import re
import resource
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import pytest
from mcp.client import Client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, ImageContent, ResourceLink, TextContent

from runapi_mcp.app import open_app
from runapi_mcp.client import DEFAULT_RETRY_POLICY
from runapi_mcp.simulator import PLANTED_STRINGS, Fault, FaultBody, FaultWhere, ImageHost, Simulator
from runapi_mcp.tasks import fetcher as fetcher_module
from tests.postgres import database_url, schema_url
from tests.support import (
    FAST_POLICY,
    SIM_KEY,
    Harness,
    RawStdioServer,
    make_settings,
    png_file,
    server_env,
    text_of,
    until,
)

pytestmark = pytest.mark.anyio

# A tool call that takes longer than this counts as a hang. Tasks take 0.3-0.6 s here; the slowest case
# below (a download retried with backoff) takes about 2 s.
CALL_TIMEOUT_S = 15.0
# Over stdio the server runs the real poll policy (first look after 1.5 s), so each call takes ~2 s.
STDIO_TIMEOUT_S = 30.0
# The bound for the whole process, whatever upstream sends (the in-process simulator included).
MAX_RSS_BYTES = 1 << 30
# A 1 MB upstream string must not reach the client whole: the client caps each one at 8 KiB, and a text
# quotes one a few times at most.
MAX_STRING_CHARS = 64_000
# Claude Desktop's cap on a whole tool result (the server keeps inline previews well under it).
MAX_RESULT_CHARS = 1 << 20
# Characters the client strips from upstream text: NUL, bidi embeddings/overrides/isolates.
_INVISIBLE = re.compile("[\x00\u202a-\u202e\u2066-\u2069]")
_SURROGATE = re.compile("[\ud800-\udfff]")


# -- helpers -----------------------------------------------------------------------------------------


async def _call(harness: Harness, tool: str, args: dict[str, Any], within_s: float = CALL_TIMEOUT_S) -> CallToolResult:
    """A tool call that must come back within ``within_s`` (a hang fails the test instead of stalling it)."""
    with anyio.fail_after(within_s):
        result: CallToolResult = await harness.call(tool, args)
    return result


def _data(result: CallToolResult) -> dict[str, Any]:
    assert result.structured_content is not None, text_of(result)
    return dict(result.structured_content)


async def _still_serving(harness: Harness) -> None:
    """The server survived: with every fault gone, a normal task completes with its picture saved."""
    harness.sim.clear_faults()
    result = await _call(harness, "generate_image", {"prompt": "a calm lake after the storm"})
    assert not result.is_error, text_of(result)
    data = _data(result)
    assert data["status"] == "completed" and data["error"] is None, text_of(result)
    [image] = data["images"]
    assert image["path"] and Path(image["path"]).is_file(), text_of(result)


async def _create_held(harness: Harness, args: dict[str, Any] | None = None) -> str:
    """Create a task the simulator keeps running until ``_release``: faults scoped to its id (downloads,
    polls) can then be armed before it completes, with no race against a 0.3 s task."""
    harness.sim.set_task_outcome(None, "running")
    result = await _call(harness, "generate_image", {"prompt": "held back", **(args or {}), "wait": False})
    assert not result.is_error, text_of(result)
    task_id: str = _data(result)["runapi_task_id"]  # the simulator knows tasks by RunAPI's id
    return task_id


def _release(sim: Simulator, task_ids: list[str]) -> None:
    """Let held tasks complete now (their next poll finds them done)."""
    for task_id in task_ids:
        sim.set_task_outcome(task_id, "completed")


async def _create(harness: Harness, fault: Fault, args: dict[str, Any] | None = None) -> tuple[str, CallToolResult]:
    """Arm a task fault and create the task that takes it (without waiting for it to finish)."""
    harness.sim.inject(fault)
    result = await _call(harness, "generate_image", {"prompt": "hostile upstream", **(args or {}), "wait": False})
    assert not result.is_error, text_of(result)
    # RunAPI's id: the simulator knows tasks by it, and get_task takes it as well as the server's own.
    return _data(result)["runapi_task_id"], result


async def _wait_all(
    harness: Harness, task_ids: list[str], timeout_s: float = CALL_TIMEOUT_S
) -> dict[str, CallToolResult]:
    """``get_task(wait=true)`` on every task at once; each must answer within ``timeout_s`` (plus slack)."""
    results: dict[str, CallToolResult] = {}

    async def wait(task_id: str) -> None:
        results[task_id] = await _call(
            harness, "get_task", {"task_id": task_id, "wait": True, "timeout_s": timeout_s}, within_s=timeout_s + 10
        )

    async with anyio.create_task_group() as tg:
        for task_id in task_ids:
            tg.start_soon(wait, task_id)
    return results


def _strings(value: Any) -> Iterator[str]:
    """Every string in a JSON-like value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, inner in value.items():
            yield str(key)
            yield from _strings(inner)
    elif isinstance(value, list | tuple):
        for inner in value:
            yield from _strings(inner)


def _assert_clean(result: CallToolResult) -> None:
    """What an MCP client (or a terminal) would choke on or be fooled by is absent, and the size is bounded.

    In process nothing encodes the result as UTF-8, so a lone surrogate would pass here unnoticed and only
    crash a real transport: encode every string explicitly.
    """
    texts = [block.text for block in result.content if isinstance(block, TextContent)]
    for text in [*texts, *_strings(result.structured_content or {})]:
        text.encode("utf-8")  # raises on a lone surrogate
        assert len(text) < MAX_STRING_CHARS, len(text)
        assert not _SURROGATE.search(text), ascii(text[:200])
        assert not _INVISIBLE.search(text), ascii(text[:200])
    dumped = result.model_dump_json()
    dumped.encode("utf-8")
    assert len(dumped) < MAX_RESULT_CHARS, len(dumped)


def _leftovers(home: Path) -> list[Path]:
    """Partial downloads (``<id>.download`` and the client's ``.<name>.<hex>.part``) anywhere in the home."""
    return [p for p in home.rglob("*") if p.name.endswith((".part", ".download"))]


def _library_files(harness: Harness, image_id: str) -> list[Path]:
    """Every file the library holds for an image: the picture, its sidecar, cached previews."""
    root = harness.app.settings.images_dir
    return sorted(root.rglob(f"*{image_id}*")) if root.exists() else []


def _key_forms() -> dict[str, bytes]:
    """The API key in every form an echo may take: verbatim, percent-encoded (the usual way and every byte
    of it, which no longer contains the key as a substring), base64 (plain, URL-safe, in a Basic or Bearer
    header). Padding is left off: it depends on what follows."""
    raw = SIM_KEY.encode()
    return {
        "verbatim": raw,
        "percent-encoded": quote(SIM_KEY, safe="").encode(),
        "every byte percent-encoded": "".join(f"%{byte:02X}" for byte in raw).encode(),
        "base64": base64.b64encode(raw).rstrip(b"="),
        "base64url": base64.urlsafe_b64encode(raw).rstrip(b"="),
        "base64 of 'Bearer <key>'": base64.b64encode(b"Bearer " + raw).rstrip(b"="),
    }


def _assert_no_key(blob: bytes | str, where: str) -> None:
    data = blob.encode("utf-8", "surrogatepass") if isinstance(blob, str) else blob
    for name, form in _key_forms().items():
        # Percent-encoding's hex digits may come in either case.
        found = form.lower() in data.lower() if form.startswith(b"%") else form in data
        assert not found, f"the API key ({name}) is in {where}"


def _server_would_log(record: logging.LogRecord) -> bool:
    """Whether a captured record is one a real server writes: not the in-process simulator's (nor its
    uvicorn's), and from the libraries ``app.configure_logging`` caps at WARNING (httpcore traces every
    header at DEBUG) only warnings and worse."""
    root = record.name.split(".")[0]
    if record.name.startswith("runapi_mcp.simulator") or root == "uvicorn":
        return False
    return root not in ("httpx", "httpcore", "mcp") or record.levelno >= logging.WARNING


def _reset_peak_rss() -> None:
    """Start a fresh peak-RSS measurement (Linux: writing 5 to clear_refs resets VmHWM)."""
    with suppress(OSError):  # elsewhere the lifetime peak is measured: a stricter check
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_bytes() -> int:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    if match:
        return int(match.group(1)) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


@asynccontextmanager
async def _harness_with(sim: Simulator, home: Path, inputs: Path, **policy: float) -> AsyncIterator[Harness]:
    """An in-process server like the ``harness`` fixture's, with poll-policy fields replaced."""
    async with (
        open_app(make_settings(sim, home, inputs), policy=dataclasses.replace(FAST_POLICY, **policy)) as app,
        Client(app.server, mode="legacy") as client,
    ):
        yield Harness(app=app, client=client, sim=sim)


# -- 1. an output URL that answers 200 with something that is not an image ---------------------------

NOT_IMAGES: list[tuple[Fault, str]] = [
    (Fault("not_image", body="html"), "sent an HTML page"),
    (Fault("not_image", body="svg"), "sent an SVG drawing"),
    (Fault("not_image", body="text"), "sent text"),
    (Fault("not_image", body="json"), "sent a JSON document"),
    (Fault("not_image", body="empty"), "was empty"),
    (Fault("not_image", body="truncated_png"), "truncated"),
    # The proxy error page of the older fault kind, served with status 200 and text/html.
    (Fault("html", status=200, method="GET"), "sent an HTML page"),
]


async def test_non_image_outputs_are_refused_and_the_url_is_kept(harness: Harness, home: Path) -> None:
    expected: dict[str, str] = {}
    for fault, needle in NOT_IMAGES:
        task_id = await _create_held(harness)
        # Scoped to this task's downloads, every time: an empty body is retried by the client (it may be a
        # hiccup), and the retries must meet the same body.
        harness.sim.inject(dataclasses.replace(fault, path_contains=f"/images/{task_id}/", times=None))
        expected[task_id] = needle
    _release(harness.sim, list(expected))
    results = await _wait_all(harness, list(expected))
    for task_id, needle in expected.items():
        result = results[task_id]
        _assert_clean(result)
        data = _data(result)
        assert not result.is_error and data["status"] == "completed", text_of(result)
        [image] = data["images"]
        assert image["path"] is None and image["url"], image
        assert needle in image["error"], image["error"]
        assert re.search(r"not (an|a readable) image|was empty", image["error"]), image["error"]
        assert needle in (data["error"] or "") and "get_task" in data["error"], data["error"]
        text = text_of(result)
        assert "not downloaded" in text and needle in text and image["url"] in text, text
        assert not any(isinstance(block, ImageContent | ResourceLink) for block in result.content)
        assert _library_files(harness, image["uri"].removeprefix("runapi://images/")) == []
    assert _leftovers(home) == []
    await _still_serving(harness)


# -- 2, 3. decompression bombs and huge outputs ------------------------------------------------------


async def test_a_decompression_bomb_is_saved_without_a_preview(harness: Harness) -> None:
    _reset_peak_rss()
    harness.sim.inject(Fault("bomb"))  # 60000x60000: 3.6 gigapixels in a few hundred KB
    result = await _call(harness, "generate_image", {"prompt": "an innocent square"})
    _assert_clean(result)
    data = _data(result)
    assert not result.is_error and data["status"] == "completed", text_of(result)
    [image] = data["images"]
    assert (image["width"], image["height"]) == (60_000, 60_000)
    assert image["path"] and Path(image["path"]).stat().st_size == image["bytes"] < 5_000_000
    assert not any(isinstance(block, ImageContent) for block in result.content)
    assert any(isinstance(block, ResourceLink) for block in result.content)
    text = text_of(result)
    assert "no preview" in text and "60000x60000" in text and "preview limit" in text, text
    # Reading it back as a resource hands over the file, never decoded.
    with anyio.fail_after(CALL_TIMEOUT_S):
        read = await harness.client.read_resource(image["uri"])
    assert len(read.contents) == 1
    assert _peak_rss_bytes() < MAX_RSS_BYTES, _peak_rss_bytes()
    await _still_serving(harness)


async def test_four_huge_outputs_are_saved_without_previews(harness: Harness) -> None:
    _reset_peak_rss()
    harness.sim.inject(Fault("huge_image", times=4))  # 20000x14000 each: 280 megapixels
    result = await _call(
        harness,
        "generate_image",
        {"prompt": "four murals", "model": "gpt-4o-image", "aspect_ratio": "1:1", "params": {"output_count": 4}},
    )
    _assert_clean(result)
    data = _data(result)
    assert not result.is_error and data["status"] == "completed", text_of(result)
    assert len(data["images"]) == 4
    for image in data["images"]:
        assert (image["width"], image["height"]) == (20_000, 14_000)
        assert image["path"] and Path(image["path"]).is_file()
    assert not any(isinstance(block, ImageContent) for block in result.content)
    assert sum(isinstance(block, ResourceLink) for block in result.content) == 4
    text = text_of(result)
    assert text.count("no preview") == 4 and text.count("20000x14000 is over the 40 MP preview limit") == 4, text
    assert _peak_rss_bytes() < MAX_RSS_BYTES, _peak_rss_bytes()
    await _still_serving(harness)


# -- 4. trickling image hosts ------------------------------------------------------------------------


async def test_trickling_hosts_hit_the_deadline_and_starve_nothing(sim: Simulator, home: Path, inputs: Path) -> None:
    # 2 s rather than the 120 s default keeps the test short, and leaves a normal task (~0.5 s) ample room
    # to complete while all eight trickles are still going.
    deadline_s = 2.0
    async with _harness_with(sim, home, inputs, download_deadline_s=deadline_s) as harness:
        slow = [await _create_held(harness, {"prompt": f"slow host {n}"}) for n in range(8)]
        for task_id in slow:
            # One byte every 50 ms: a 1K PNG would take hours.
            sim.inject(Fault("trickle", chunk=1, delay=0.05, path_contains=f"/images/{task_id}/", times=None))
        released = time.monotonic()
        _release(sim, slow)
        await until(lambda: sim.open_streams >= len(slow), "the trickling downloads to start", CALL_TIMEOUT_S)
        # Creates and polls have their own slots: the normal task does not wait for the trickles.
        normal = await _call(harness, "generate_image", {"prompt": "a normal picture meanwhile"})
        assert sim.open_streams == len(slow), "the normal task waited for the trickling downloads to end"
        data = _data(normal)
        assert data["status"] == "completed" and data["images"][0]["path"], text_of(normal)
        results = await _wait_all(harness, slow)
        # The client keeps the deadline; the manager's backstop (5 s later) must not be what ended them.
        assert time.monotonic() - released < deadline_s + 2.5, "the download deadline did not hold"
        for task_id in slow:
            result = results[task_id]
            _assert_clean(result)
            data = _data(result)
            assert data["status"] == "completed" and not result.is_error, text_of(result)
            [image] = data["images"]
            assert image["path"] is None and image["url"]
            assert f"did not deliver within {deadline_s:g} s" in image["error"], image["error"]
            assert "did not deliver" in text_of(result)
        # The client hung up on every trickle (none is left streaming into the void).
        await until(lambda: sim.open_streams == 0, "the client to hang up on every trickle", CALL_TIMEOUT_S)
        assert _leftovers(home) == []
        await _still_serving(harness)


# -- 5. one retry layer ------------------------------------------------------------------------------


# The client's retries, and no other layer's: 3 requests at most for one download.
ATTEMPTS = 1 + DEFAULT_RETRY_POLICY.max_retries


def _downloads(sim: Simulator) -> int:
    return sum(1 for r in sim.requests if r.method == "GET" and r.path.startswith("/images/"))


async def _a_task_whose_host_is_down(harness: Harness) -> dict[str, Any]:
    # Retry-After keeps the client's waits between attempts short; it does not change how many it makes.
    harness.sim.inject(
        Fault("status", status=503, method="GET", path_contains="/images/", times=None, retry_after=0.01)
    )
    result = await _call(harness, "generate_image", {"prompt": "a host that is down"})
    _assert_clean(result)
    data = _data(result)
    assert data["status"] == "completed" and not result.is_error, text_of(result)
    [image] = data["images"]
    assert image["path"] is None and image["url"], image
    assert "503" in image["error"] and "Service Unavailable" in image["error"], image["error"]
    assert "not downloaded" in text_of(result) and "get_task" in (data["error"] or ""), text_of(result)
    return data


async def test_a_failing_image_host_costs_exactly_one_round_of_retries(harness: Harness) -> None:
    data = await _a_task_whose_host_is_down(harness)
    assert _downloads(harness.sim) == ATTEMPTS == 3
    # get_task within 10 s of the last try does not try again: a host that is down is not hammered.
    await _call(harness, "get_task", {"task_id": data["task_id"]})
    await _call(harness, "get_task", {"task_id": data["task_id"], "wait": True})
    assert _downloads(harness.sim) == ATTEMPTS
    await _still_serving(harness)


async def test_get_task_downloads_a_missing_output_again(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """The RunAPI URL of an output that failed is kept, and get_task tries it again (at most every 10 s;
    the pause is cut to nothing here): one more round of the client's retries, not a multiple of it."""
    data = await _a_task_whose_host_is_down(harness)
    monkeypatch.setattr(fetcher_module, "REFETCH_AFTER_S", 0.0)
    again = _data(await _call(harness, "get_task", {"task_id": data["task_id"]}))
    assert again["images"][0]["path"] is None and again["error"], again
    assert _downloads(harness.sim) == 2 * ATTEMPTS, "get_task did not try the download again"
    # Once the host is back, the picture is fetched and the task's error is gone.
    harness.sim.clear_faults()
    fixed = _data(await _call(harness, "get_task", {"task_id": data["task_id"]}))
    [image] = fixed["images"]
    assert image["path"] and Path(image["path"]).is_file(), fixed
    assert image["error"] is None and fixed["error"] is None, fixed
    await _still_serving(harness)


# -- 6. invalid Unicode, NUL, bidi overrides and 1 MB strings from upstream --------------------------

UNICODE_TASK_FAULTS: list[tuple[FaultWhere, FaultBody]] = [
    ("error", "mixed"),
    ("error", "high_surrogate"),
    ("error", "low_surrogate"),
    ("error", "nul"),
    ("error", "bidi"),
    ("error", "huge"),
    ("status", "mixed"),
    ("status", "huge"),
    ("id", "mixed"),
    ("id", "high_surrogate"),
    ("image_url", "mixed"),
    ("image_url", "low_surrogate"),
    ("image_url", "bidi"),
    ("image_url", "huge"),
]


async def test_hostile_strings_from_upstream_never_reach_the_client(harness: Harness) -> None:
    # An error message full of them on two polls (logged, retried) while the tasks below run.
    harness.sim.inject(
        Fault("invalid_unicode", where="message", body="mixed", method="GET", path_contains="/gpt_image_2", times=2)
    )
    created: dict[str, tuple[FaultWhere, FaultBody]] = {}
    for where, body in UNICODE_TASK_FAULTS:
        task_id, first = await _create(harness, Fault("invalid_unicode", where=where, body=body))
        _assert_clean(first)
        created[task_id] = (where, body)
    # Every one of them ends: a garbled terminal status is a status RunAPI's SDK does not know, which ends
    # the task as failed (in RunAPI's words, cleaned) rather than polling it until the wait runs out.
    results = await _wait_all(harness, list(created))
    for task_id, (where, body) in created.items():
        result = results[task_id]
        _assert_clean(result)
        data = _data(result)
        text = text_of(result)
        _assert_no_key(result.model_dump_json(), f"the result of task {task_id}")
        if where == "error":
            assert result.is_error and data["status"] == "failed" and data["error"], text
            assert "failed" in text
        elif where == "status":
            assert result.is_error and data["status"] == "failed", text
            error = data["error"] or ""
            assert "unknown task status" in error and "unknown task status" in text, text
            # The planted word is quoted cleaned (the checks above: no surrogate, NUL or bidi character,
            # bounded), never raw.
            assert not any(raw in text or raw in error for raw in PLANTED_STRINGS.values()), ascii(error[:200])
            if body == "mixed":  # lone surrogates replaced, the bidi override gone, the rest kept
                assert "lone \ufffd high" in error and "gnp.exe" in error, ascii(error)
            else:  # the 1 MB word, cut to a bounded quote
                assert "AAAA" in error and len(error) <= 10_000, len(error)
        elif where == "id":
            assert result.is_error and data["status"] == "failed", text
            assert "does not know this task" in text, text
        else:
            assert data["status"] == "completed" and data["images"][0]["path"], text
            assert len(data["images"][0]["url"]) <= 8192
    # The same strings as the create answer's error message or task id: a clear refusal at once. (The
    # create's path: the price quote before it is a POST too, and its failure does not stop a task.)
    create = "/gpt_image_2/"
    for fault in (
        Fault("invalid_unicode", where="message", body="mixed", status=400, method="POST", path_contains=create),
        Fault(
            "invalid_unicode", where="message", body="high_surrogate", status=400, method="POST", path_contains=create
        ),
        Fault("invalid_unicode", where="message", body="huge", status=400, method="POST", path_contains=create),
        Fault("invalid_unicode", where="id", body="huge"),
    ):
        harness.sim.inject(fault)
        refused = await _call(harness, "generate_image", {"prompt": "hostile create answer"})
        _assert_clean(refused)
        assert refused.is_error, text_of(refused)
        assert "RunAPI" in text_of(refused), text_of(refused)
    await _still_serving(harness)


def test_hostile_strings_and_echoed_keys_over_a_real_stdio_pipe(sim: Simulator, home: Path, inputs: Path) -> None:
    """The wire itself: every stdout line is one JSON-RPC message of valid UTF-8 without the key, stderr
    (the server's log) has no key either, and the server keeps answering."""
    with RawStdioServer(server_env(sim, home, inputs)) as server:
        server.initialize("2025-06-18")

        def generate(prompt: str) -> dict[str, Any]:
            answer = server.request(
                "tools/call", {"name": "generate_image", "arguments": {"prompt": prompt}}, timeout=STDIO_TIMEOUT_S
            )
            assert "result" in answer, answer
            result: dict[str, Any] = answer["result"]
            return result

        sim.inject(Fault("invalid_unicode", where="error", body="mixed"))
        failed = generate("a task whose error is garbage")
        assert failed["isError"] is True and failed["structuredContent"]["status"] == "failed"
        assert "\ufffd" in failed["structuredContent"]["error"]

        # One task with its image URL marked twice (garbage and the key), and polls that echo the key as
        # their request id, the first one as a failure that gets logged.
        sim.inject(Fault("invalid_unicode", where="image_url", body="mixed"))
        sim.inject(Fault("echo_key", where="image_url"))
        sim.inject(Fault("echo_key", where="request_id", status=500, method="GET", path_contains="/gpt_image_2"))
        sim.inject(Fault("echo_key", where="request_id", method="GET", path_contains="/gpt_image_2", times=None))
        marked = generate("a task whose answers are marked")
        assert marked["structuredContent"]["status"] == "completed", marked
        assert marked["structuredContent"]["images"][0]["path"]

        sim.clear_faults()
        normal = generate("a normal picture over stdio")
        assert normal["structuredContent"]["status"] == "completed", normal
        stderr = server.close()
    assert server.lines
    for line in server.lines:
        message = json.loads(line)
        # json.loads accepts an escaped lone surrogate ("\ud800"); writing it back as UTF-8 does not.
        json.dumps(message, ensure_ascii=False).encode("utf-8")
        _assert_no_key(line, "a stdout line")
    assert "created task" in stderr  # the log did go to stderr...
    _assert_no_key(stderr, "the server's stderr")  # ...without the key
    for path in home.rglob("*"):  # nor any file the server wrote: the store, the library, its sidecars
        if path.is_file():
            _assert_no_key(path.read_bytes(), str(path))


# -- 7. echoed keys ----------------------------------------------------------------------------------


async def test_an_echoed_key_appears_nowhere(harness: Harness, home: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    results: list[CallToolResult] = []
    # Creates refused with the key in the message, and in the request id.
    harness.sim.inject(Fault("echo_key", where="message", method="POST", path_contains="/gpt_image_2"))
    results.append(await _call(harness, "generate_image", {"prompt": "echo in the message"}))
    assert results[-1].is_error and "API key" in text_of(results[-1]), text_of(results[-1])
    harness.sim.inject(Fault("echo_key", where="request_id", status=400, method="POST", path_contains="/gpt_image_2"))
    results.append(await _call(harness, "generate_image", {"prompt": "echo in the request id"}))
    assert results[-1].is_error and "request id" in text_of(results[-1]), text_of(results[-1])
    # Polls that carry the key as their request id: two failures (logged) then answers.
    harness.sim.inject(
        Fault("echo_key", where="request_id", status=500, method="GET", path_contains="/gpt_image_2", times=2)
    )
    harness.sim.inject(Fault("echo_key", where="request_id", method="GET", path_contains="/gpt_image_2", times=None))
    failing, first = await _create(harness, Fault("echo_key", where="error"))
    marked, second = await _create(harness, Fault("echo_key", where="image_url"))
    results += [first, second]
    waited = await _wait_all(harness, [failing, marked])
    results += waited.values()
    assert waited[failing].is_error and "Authorization" in text_of(waited[failing]), text_of(waited[failing])
    marked_data = _data(waited[marked])
    assert marked_data["status"] == "completed" and marked_data["images"][0]["path"], text_of(waited[marked])
    results.append(await _call(harness, "check_balance", {}))
    await _still_serving(harness)

    for n, result in enumerate(results):
        _assert_no_key(result.model_dump_json(), f"tool result {n}")
    for path in home.rglob("*"):
        if path.is_file() and not path.is_symlink():
            _assert_no_key(path.read_bytes(), str(path.relative_to(home)))
    # The log lines a real server would write. In process its redacting filter is not installed, so this
    # is stricter than a real server's stderr (the stdio test checks that one).
    lines = []
    for record in caplog.records:
        if not _server_would_log(record):
            continue
        lines.append(record.getMessage())
        if record.exc_info:
            lines.append(logging.Formatter().formatException(record.exc_info))
    assert lines
    _assert_no_key("\n".join(lines), "the log")
    # Nor was the key sent anywhere in a URL: downloads never carry one back out.
    assert not any(r.carried_key for r in harness.sim.requests), "a download URL carried the key"


async def test_an_echoed_key_reaches_no_row_of_a_postgresql_store(
    sim: Simulator, home: Path, inputs: Path, pg_schema_sync: str
) -> None:
    """With several instances the task store is a database, not a file in the home: the key RunAPI echoes back
    (in an error message, a failure's reason, an output URL) must reach no row of it either."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(database_url(), autocommit=True) as conn:  # an operator's schema, named in the URL
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(pg_schema_sync)))
    settings = make_settings(sim, home, inputs, database_url=schema_url(pg_schema_sync))
    async with open_app(settings, policy=FAST_POLICY) as app, Client(app.server, mode="legacy") as client:
        harness = Harness(app=app, client=client, sim=sim)
        harness.sim.inject(Fault("echo_key", where="message", method="POST", path_contains="/gpt_image_2"))
        refused = await _call(harness, "generate_image", {"prompt": "echo in the message"})
        assert refused.is_error and "API key" in text_of(refused), text_of(refused)
        harness.sim.inject(
            Fault("echo_key", where="request_id", method="GET", path_contains="/gpt_image_2", times=None)
        )
        failing, _ = await _create(harness, Fault("echo_key", where="error"))
        marked, _ = await _create(harness, Fault("echo_key", where="image_url"))
        waited = await _wait_all(harness, [failing, marked])
        assert waited[failing].is_error, text_of(waited[failing])
        assert _data(waited[marked])["status"] == "completed", text_of(waited[marked])
        for n, result in enumerate([refused, *waited.values()]):
            _assert_no_key(result.model_dump_json(), f"tool result {n}")
    rows = _every_row(pg_schema_sync)
    assert any(failing in row for row in rows) and any(marked in row for row in rows), "the tasks were not stored"
    _assert_no_key("\n".join(rows), f"the PostgreSQL schema {pg_schema_sync}")
    # The echo did reach the store, masked: the failed task's reason keeps RunAPI's words, the key as ***.
    assert any(failing in row and "***" in row for row in rows), "the echoed reason was not stored"


def _every_row(schema: str) -> list[str]:
    """Every row of every table in ``schema``, as JSON text."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(database_url(), autocommit=True) as conn:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
            )
        ]
        rows: list[str] = []
        for table in tables:
            query = sql.SQL("SELECT row_to_json(t)::text FROM {}.{} AS t").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
            rows += [str(text) for (text,) in conn.execute(query)]
    return rows


# -- 8. hostile image URLs and redirects -------------------------------------------------------------


async def test_hostile_image_urls_are_never_fetched(harness: Harness, home: Path) -> None:
    with ImageHost() as host:
        port = host.base_url.rsplit(":", 1)[1]
        urls: dict[str, list[str]] = {
            host.url("/cat.png"): ["refused", "loopback"],  # another service on this machine
            "http://169.254.169.254/latest/meta-data/": ["refused", "metadata"],
            "http://[::ffff:169.254.169.254]/": ["refused", "metadata"],
            "http://metadata.google.internal/computeMetadata/v1/": ["refused", "metadata"],
            f"http://0.0.0.0:{port}/x.png": ["refused", "unspecified"],
            f"http://user:secret@127.0.0.1:{port}/x.png": ["refused", "credentials"],
            "file:///etc/passwd": ["refused", "not http(s)"],
            "ftp://x/y.png": ["refused", "not http(s)"],
            "javascript:alert(1)": ["refused", "not http(s)"],
            host.url("/" + "a" * 10_000): ["refused", "loopback"],
            "http://[::1]:1/x.png": ["refused", "loopback"],
        }
        tasks: dict[str, str] = {}
        for url in urls:
            task_id, _ = await _create(harness, Fault("image_urls", urls=[url]))
            tasks[task_id] = url
        results = await _wait_all(harness, list(tasks))
        for task_id, url in tasks.items():
            result = results[task_id]
            _assert_clean(result)
            data = _data(result)
            assert data["status"] == "completed" and not result.is_error, text_of(result)
            [image] = data["images"]
            assert image["path"] is None, url
            for needle in urls[url]:
                assert needle in image["error"], (url[:100], image["error"])
            assert "not downloaded" in text_of(result)
            assert len(image["url"]) <= 8192  # the 10 KB URL is not echoed whole
        assert not host.hit, host.requests
    assert not any(r.path.startswith("/images/") for r in harness.sim.requests)
    assert _leftovers(home) == []
    await _still_serving(harness)


async def test_redirects_are_judged_hop_by_hop(harness: Harness, home: Path) -> None:
    with ImageHost() as host:
        redirects: list[tuple[Fault, list[str]]] = [
            (Fault("redirect", location=host.url("/elsewhere.png")), ["refused", "loopback"]),
            (Fault("redirect", location="http://169.254.169.254/latest/meta-data/"), ["refused", "metadata"]),
            (Fault("redirect", location="http://[::ffff:a9fe:a9fe]/"), ["refused", "metadata"]),
            (Fault("redirect", status=307, location="file:///etc/passwd"), ["refused", "not http(s)"]),
            (Fault("redirect"), ["redirected more than 5 times"]),  # to itself, forever
        ]
        tasks: dict[str, list[str]] = {}
        for fault, needles in redirects:
            task_id = await _create_held(harness)
            harness.sim.inject(dataclasses.replace(fault, path_contains=f"/images/{task_id}/", times=None))
            tasks[task_id] = needles
        _release(harness.sim, list(tasks))
        results = await _wait_all(harness, list(tasks))
        for task_id, needles in tasks.items():
            result = results[task_id]
            _assert_clean(result)
            data = _data(result)
            assert data["status"] == "completed", text_of(result)
            [image] = data["images"]
            assert image["path"] is None and image["url"].startswith(harness.sim.base_url)
            for needle in needles:
                assert needle in image["error"], (needles, image["error"])
        assert not host.hit, host.requests
    loop = [task_id for task_id, needles in tasks.items() if "redirected more than 5 times" in needles]
    hops = [r for r in harness.sim.requests if r.path.startswith(f"/images/{loop[0]}/")]
    assert len(hops) == 6  # the first answer and 5 redirects followed, in one attempt: not retried
    assert _leftovers(home) == []
    await _still_serving(harness)


@pytest.mark.parametrize("listing", ["one URL 1000 times", "1000 different URLs"])
async def test_a_huge_listing_is_capped_at_the_models_outputs(harness: Harness, listing: str) -> None:
    if listing == "one URL 1000 times":
        fault = Fault("image_urls", count=1000)  # the task's own picture, 1000 times
    else:
        fault = Fault("image_urls", urls=[f"{harness.sim.base_url}/images/elsewhere/{n}.png" for n in range(1000)])
    harness.sim.inject(fault)
    result = await _call(harness, "generate_image", {"prompt": "just one, please"})
    _assert_clean(result)
    data = _data(result)
    assert data["status"] == "completed", text_of(result)
    assert len(data["images"]) == 1  # gpt-image-2 makes one picture
    downloads = [r for r in harness.sim.requests if r.path.startswith("/images/")]
    assert len(downloads) <= 1 + DEFAULT_RETRY_POLICY.max_retries, len(downloads)
    # The caller is told upstream listed more than the model makes.
    note = data["error"] or ""
    assert "kept the first 1" in note and "kept the first 1" in text_of(result), text_of(result)
    await _still_serving(harness)


# -- 9. odd answers to status polls ------------------------------------------------------------------

ODD_POLLS: list[Fault] = [
    Fault("odd_json", body="huge"),  # 50 MB, streamed without a length
    Fault("odd_json", body="deep"),  # 10000 levels: json.loads raises RecursionError
    Fault("odd_json", body="array"),
    Fault("malformed_json"),
    Fault("html", status=502),
]


async def test_odd_poll_answers_do_not_break_the_poll_loop(harness: Harness) -> None:
    tasks: dict[str, str] = {}
    for fault in ODD_POLLS:
        task_id = await _create_held(harness)
        # Two odd answers to this task's polls, then normal ones.
        status_path = f"/api/v1/gpt_image_2/text_to_image/{task_id}"
        harness.sim.inject(dataclasses.replace(fault, method="GET", path_contains=status_path, times=2))
        tasks[task_id] = f"{fault.kind} {fault.body or fault.status}"
    # Let the odd answers land while the tasks still run, then let them finish.
    await until(lambda: not harness.sim.faults, "the polls to meet the odd answers", CALL_TIMEOUT_S)
    _release(harness.sim, list(tasks))
    results = await _wait_all(harness, list(tasks))
    for task_id, what in tasks.items():
        result = results[task_id]
        _assert_clean(result)
        data = _data(result)
        assert data["status"] == "completed" and data["images"][0]["path"], (what, text_of(result))
    await _still_serving(harness)


async def test_a_status_endpoint_that_stays_odd_gives_a_bounded_answer(harness: Harness) -> None:
    harness.sim.inject(Fault("odd_json", body="deep", method="GET", path_contains="/api/v1/gpt_image_2", times=None))
    result = await _call(harness, "generate_image", {"prompt": "never readable", "timeout_s": 1.5})
    _assert_clean(result)
    data = _data(result)
    assert not result.is_error and data["status"] in ("pending", "processing"), text_of(result)
    assert "get_task" in text_of(result)
    # The waiting user is told why nothing moves, in words.
    assert "polling failed" in text_of(result) and "could not be understood" in text_of(result), text_of(result)
    # The poll loop lived through it: once the answers are readable again, the same task completes.
    harness.sim.clear_faults()
    done = _data(await _call(harness, "get_task", {"task_id": data["task_id"], "wait": True}))
    assert done["status"] == "completed" and done["images"][0]["path"], done
    assert done["error"] is None  # the stale polling note is gone
    await _still_serving(harness)


# -- 10. a planted library entry, end to end ---------------------------------------------------------


async def test_a_planted_library_entry_is_never_served(harness: Harness, tmp_path: Path) -> None:
    root = harness.app.settings.images_dir
    root.mkdir(parents=True, exist_ok=True)
    outside_png = tmp_path / "outside.png"
    png_file(outside_png, (8, 8), "red")
    sidecar = {"image": {"path": "/proc/self/environ", "url": "file:///proc/self/environ", "mime_type": "image/png"}}
    planted = {
        # A sidecar claiming another file, and the id's own file a symlink to /etc/passwd.
        "planted-000000000001-0": Path("/etc/passwd"),
        # The id's own file a symlink to a real PNG outside the library (it would pass as an image).
        "planted-000000000002-0": outside_png,
        # Only a sidecar: nothing of the library's own.
        "planted-000000000003-0": None,
    }
    for image_id, target in planted.items():
        (root / f"{image_id}.json").write_text(json.dumps({**sidecar, "task_id": "x"}))
        if target is not None:
            (root / f"{image_id}.png").symlink_to(target)
    for image_id in planted:
        with anyio.fail_after(CALL_TIMEOUT_S), pytest.raises(MCPError) as refused:
            await harness.client.read_resource(f"runapi://images/{image_id}")
        message = str(refused.value)
        assert "no image" in message or "not found" in message.lower(), message
        assert "root:" not in message and "PATH=" not in message, message
        edit = await _call(harness, "edit_image", {"prompt": "x", "images": [f"runapi://images/{image_id}"]})
        assert edit.is_error and "images[0]" in text_of(edit), text_of(edit)
    assert not [r for r in harness.sim.requests if r.method == "POST"]  # nothing uploaded or created
    await _still_serving(harness)
