"""End to end: a real MCP client -> the server in-process -> the simulator over loopback HTTP."""

from __future__ import annotations

import base64
import inspect
import io
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client
from mcp.types import BlobResourceContents, TextResourceContents
from PIL import Image

from runapi_mcp.app import open_app
from runapi_mcp.catalog import (
    DEFAULT_MODEL,
    DEFAULT_UPSCALE_MODEL,
    SOFT_DEFAULTS,
    CatalogError,
    RequestKind,
    get_catalog,
)
from runapi_mcp.config import load_settings
from runapi_mcp.errors import UserError
from runapi_mcp.server.tools import ImageTools, TaskRequest
from runapi_mcp.simulator import Fault
from tests.support import (
    FAST_POLICY,
    SIM_KEY,
    Harness,
    make_settings,
    png_bytes,
    sent_anything,
    text_of,
    until,
    uploads,
    upstream_creates,
)

pytestmark = pytest.mark.anyio


async def test_generate_image_returns_the_picture(harness: Harness) -> None:
    result = await harness.call(
        "generate_image", {"prompt": "a red fox in snow", "aspect_ratio": "16:9", "output_resolution": "1k"}
    )
    assert not result.is_error, text_of(result)
    data = result.structured_content
    assert data["status"] == "completed"
    assert (data["model"], data["service"], data["action"]) == ("gpt-image-2", "gpt_image_2", "text_to_image")
    assert data["prompt"] == "a red fox in snow"
    assert data["completed_at"] and data["created_at"]
    [image] = data["images"]
    assert image["uri"].startswith("runapi://images/")
    assert (image["width"], image["height"]) == (1024, 576)
    assert image["mime_type"] == "image/png"
    path = Path(image["path"])
    assert path.is_absolute() and path.is_file() and path.stat().st_size == image["bytes"]
    with Image.open(path) as img:
        assert img.size == (1024, 576)
    assert image["url"].startswith(harness.sim.base_url)
    kinds = [block.type for block in result.content]
    assert kinds == ["text", "image", "resource_link"]
    preview = base64.b64decode(result.content[1].data)
    assert len(preview) < 1_000_000
    with Image.open(io.BytesIO(preview)) as img:
        assert max(img.size) <= 1024
    assert result.content[2].uri == image["uri"]
    assert str(path) in text_of(result)
    # The request sent upstream is what the catalog built.
    [create] = upstream_creates(harness.sim)
    assert create.path == "/api/v1/gpt_image_2/text_to_image"
    assert create.json == {
        "model": "gpt-image-2",
        "prompt": "a red fox in snow",
        "aspect_ratio": "16:9",
        "output_resolution": "1k",
    }
    assert create.idempotency_key


async def test_image_and_task_resources(harness: Harness) -> None:
    result = await harness.call("generate_image", {"prompt": "a blue teapot"})
    data = result.structured_content
    image = data["images"][0]
    read = await harness.client.read_resource(image["uri"])
    [blob] = read.contents
    assert isinstance(blob, BlobResourceContents) and blob.mime_type == "image/png"
    assert base64.b64decode(blob.blob) == Path(image["path"]).read_bytes()
    task = await harness.client.read_resource(f"runapi://tasks/{data['task_id']}")
    [task_json] = task.contents
    assert isinstance(task_json, TextResourceContents)
    payload = json.loads(task_json.text)
    assert payload["status"] == "completed" and payload["images"][0]["uri"] == image["uri"]
    [models] = (await harness.client.read_resource("runapi://models")).contents
    assert isinstance(models, TextResourceContents)
    assert "gpt-image-2" in json.loads(models.text)["models"]  # the index (runapi://models/{model}: the fields)
    templates = await harness.client.list_resource_templates()
    assert {t.uri_template for t in templates.resource_templates} == {
        "runapi://tasks/{task_id}",
        "runapi://images/{image_id}",
        "runapi://models/{model}",
    }


async def test_progress_notifications_never_decrease(harness: Harness) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    result = await harness.call(
        "generate_image", {"prompt": "slow one", "output_resolution": "4k"}, progress_callback=on_progress
    )
    assert result.structured_content["status"] == "completed"
    assert len(seen) >= 2
    values = [p for p, _, _ in seen]
    assert values == sorted(values)
    assert values[-1] == 100
    assert all(total == 100 for _, total, _ in seen)
    assert any(m and ("pending" in m or "processing" in m) and "elapsed" in m for _, _, m in seen)


async def test_no_wait_then_get_task(harness: Harness) -> None:
    result = await harness.call("generate_image", {"prompt": "a lighthouse", "wait": False})
    data = result.structured_content
    assert not result.is_error
    assert data["status"] in ("pending", "processing")
    assert data["images"] == []
    assert "get_task" in text_of(result)
    done = await harness.call("get_task", {"task_id": data["task_id"], "wait": True})
    assert done.structured_content["status"] == "completed"
    assert Path(done.structured_content["images"][0]["path"]).is_file()
    again = await harness.call("get_task", {"task_id": data["task_id"]})
    assert again.structured_content["images"] == done.structured_content["images"]
    assert len(upstream_creates(harness.sim)) == 1


async def test_wait_deadline_is_not_an_error(harness: Harness) -> None:
    result = await harness.call("generate_image", {"prompt": "patience", "output_resolution": "4k", "timeout_s": 0.05})
    assert not result.is_error
    data = result.structured_content
    assert data["status"] in ("pending", "processing")
    assert "get_task" in text_of(result) and "wait=true" in text_of(result)
    done = await harness.call("get_task", {"task_id": data["task_id"], "wait": True, "timeout_s": 20})
    assert done.structured_content["status"] == "completed"


async def test_waiters_share_one_poll_loop(harness: Harness) -> None:
    created = await harness.call("generate_image", {"prompt": "shared", "output_resolution": "4k", "wait": False})
    task_id = created.structured_content["task_id"]
    upstream_id = created.structured_content["runapi_task_id"]
    results: list[Any] = []

    async def waiter() -> None:
        results.append(await harness.call("get_task", {"task_id": task_id, "wait": True}))

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(waiter)
    assert all(r.structured_content["status"] == "completed" for r in results)
    polls = [
        r for r in harness.sim.requests if r.method == "GET" and r.path.startswith("/api/v1/") and upstream_id in r.path
    ]
    assert polls and len(polls) == harness.app.manager.stats(task_id)["polls"]


async def test_cancelled_call_stops_the_wait_not_the_task(harness: Harness) -> None:
    before = harness.sim.tasks_created
    async with anyio.create_task_group() as tg:
        tg.start_soon(harness.call, "generate_image", {"prompt": "cancel me", "output_resolution": "4k"})
        await until(lambda: upstream_creates(harness.sim), "the create out")  # however slow the machine
        tg.cancel_scope.cancel()
    [create] = upstream_creates(harness.sim)
    tasks = (await harness.app.manager.store.page()).records
    assert tasks and create  # recorded before the create was sent
    task_id = tasks[0].task_id
    done = await harness.call("get_task", {"task_id": task_id, "wait": True})
    assert done.structured_content["status"] == "completed"
    # One task upstream. A cancel that lands while the create's answer is on its way leaves the task
    # "submitting": its create is sent again with the same key, and RunAPI answers with the same task.
    assert harness.sim.tasks_created == before + 1
    assert len({r.idempotency_key for r in upstream_creates(harness.sim)}) == 1


async def test_failed_task_is_an_error_with_the_reason(harness: Harness) -> None:
    harness.sim.inject(Fault(kind="fail_task", reason="content policy violation"))
    result = await harness.call("generate_image", {"prompt": "something forbidden"})
    assert result.is_error
    assert "content policy violation" in text_of(result)
    assert result.structured_content["status"] == "failed"
    assert result.structured_content["error"] == "content policy violation"


@pytest.mark.parametrize(
    "fault",
    [
        Fault(kind="status", status=429, retry_after=0.05, method="POST", path_contains="/gpt_image_2"),
        Fault(kind="status", status=500, method="POST", path_contains="/gpt_image_2"),
        Fault(kind="html", status=502, method="POST", path_contains="/gpt_image_2"),
        Fault(kind="lose_response", method="POST", path_contains="/gpt_image_2"),
        Fault(kind="status", status=503, method="GET", path_contains="/gpt_image_2", times=2),
        Fault(kind="html", status=502, method="GET", path_contains="/gpt_image_2"),
        Fault(kind="malformed_json", method="GET", path_contains="/gpt_image_2"),
    ],
    ids=lambda f: f"{f.kind}-{f.status}-{f.method}",
)
async def test_faults_recover_with_exactly_one_task(harness: Harness, fault: Fault) -> None:
    before = harness.sim.tasks_created
    harness.sim.inject(fault)
    result = await harness.call("generate_image", {"prompt": "resilient"})
    assert not result.is_error, text_of(result)
    assert result.structured_content["status"] == "completed"
    assert harness.sim.tasks_created - before == 1
    keys = {r.idempotency_key for r in upstream_creates(harness.sim)}
    assert len(keys) == 1


async def test_expired_output_url_is_reported(harness: Harness) -> None:
    harness.sim.inject(Fault(kind="expired_url", times=None))
    result = await harness.call("generate_image", {"prompt": "gone"})
    harness.sim.clear_faults()
    data = result.structured_content
    assert data["status"] == "completed"
    assert data["images"][0]["path"] is None and data["images"][0]["url"]
    assert "expired" in (data["error"] or "").lower()
    assert "<Error>" not in text_of(result)


# -- edits: every image reference form ---------------------------------------------------------


async def _first_image(harness: Harness) -> dict[str, Any]:
    result = await harness.call("generate_image", {"prompt": "source picture", "aspect_ratio": "1:1"})
    assert result.structured_content["status"] == "completed"
    return dict(result.structured_content)


async def test_edit_with_every_reference_form(harness: Harness, inputs: Path) -> None:
    source = await _first_image(harness)
    local = inputs / "cat photo.png"
    local.write_bytes(png_bytes((300, 200)))
    other = inputs / "dog.png"
    other.write_bytes(png_bytes((200, 200), "navy"))
    data_uri = "data:image/png;base64," + base64.b64encode(png_bytes((40, 40), "orange")).decode()
    forms = {
        "url": source["images"][0]["url"],
        "path": str(local),
        "file_uri": other.as_uri(),
        "data_uri": data_uri,
        "library_uri": source["images"][0]["uri"],
        "task_id": source["task_id"],
    }
    for name, ref in forms.items():
        harness.sim.clear_log()
        result = await harness.call("edit_image", {"prompt": f"make it purple ({name})", "images": [ref]})
        assert not result.is_error, (name, text_of(result))
        data = result.structured_content
        assert data["status"] == "completed" and data["action"] == "edit_image", name
        [create] = upstream_creates(harness.sim)
        assert create.path == "/api/v1/gpt_image_2/edit_image"
        [url] = create.json["source_image_urls"]
        assert url.startswith(("http://", "https://")), name
        assert bool(uploads(harness.sim)) == (name in ("path", "file_uri", "data_uri")), name
        if name == "path":
            with Image.open(data["images"][0]["path"]) as img:
                assert img.size == (1024, 683)  # the edit keeps the 3:2 source's shape


async def test_edit_alias_and_other_model(harness: Harness) -> None:
    source = await _first_image(harness)
    result = await harness.call(
        "edit_image",
        {
            "prompt": "upscale",
            "images": [source["task_id"]],
            "model": "topaz-upscale-image",
            "params": {"upscale_factor": 2},
        },
    )
    assert not result.is_error, text_of(result)
    create = upstream_creates(harness.sim)[-1]
    assert create.path == "/api/v1/topaz/upscale_image"
    assert create.json["upscale_factor"] == 2 and "source_image_url" in create.json
    assert "aspect_ratio" not in create.json
    alias = await harness.call(
        "generate_image", {"prompt": "alias works", "model": "gpt-image-2-text-to-image", "wait": False}
    )
    assert alias.structured_content["model"] == "gpt-image-2"


# -- bad input: clear errors, nothing sent upstream ----------------------------------------------


BAD_CALLS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("generate_image", {"prompt": "x", "aspect_ratio": "7:3"}, ["aspect_ratio", "16:9", "auto"]),
    ("generate_image", {"prompt": "x", "output_resolution": "8k"}, ["output_resolution", "1k", "2k", "4k"]),
    ("generate_image", {"prompt": "x", "model": "dall-e-9"}, ["model", "gpt-image-2"]),
    ("generate_image", {"prompt": "   "}, ["prompt", "required"]),
    ("generate_image", {}, ["prompt"]),
    ("generate_image", {"prompt": "x", "params": {"seed": 3}}, ["seed", "aspect_ratio", "output_resolution"]),
    ("generate_image", {"prompt": "x", "params": {"callback_url": "not a url"}}, ["callback_url", "URL"]),
    ("generate_image", {"prompt": "x", "timeout_s": -1}, ["timeout_s"]),
    ("generate_image", {"prompt": "x", "wait": "perhaps"}, ["wait"]),
    ("generate_image", {"prompt": "x", "model": "gpt-4o-image"}, ["aspect_ratio", "1:1", "3:2", "2:3"]),
    ("generate_image", {"prompt": "x", "model": "topaz-upscale-image"}, ["model", "edit_image"]),
    ("edit_image", {"prompt": "x", "images": []}, ["images"]),
    ("edit_image", {"prompt": "x"}, ["images"]),
    ("edit_image", {"prompt": "x", "images": ["/etc/hostname"]}, ["images[0]", "outside the allowed"]),
    ("edit_image", {"prompt": "x", "images": ["/nonexistent/file.png"]}, ["images[0]", "no such file"]),
    ("edit_image", {"prompt": "x", "images": ["no-such-task-id"]}, ["images[0]", "task id"]),
    ("edit_image", {"prompt": "x", "images": ["runapi://images/nope-0"]}, ["images[0]", "no image"]),
    ("edit_image", {"prompt": "x", "images": ["data:image/png;base64,!!!"]}, ["images[0]", "base64"]),
    ("edit_image", {"prompt": "x", "images": ["ftp://host/x.png"]}, ["images[0]", "http(s) URL"]),
    (
        "edit_image",
        {"prompt": "x", "images": ["https://a/b.png"], "model": "topaz-upscale-image"},
        ["upscale_factor", "1, 2, 4"],
    ),
    (
        "edit_image",
        {"prompt": "x", "images": ["https://a/1.png", "https://a/2.png"], "model": "flux-kontext-pro"},
        ["images", "exactly one"],
    ),
    ("get_task", {"task_id": "does-not-exist"}, ["task_id", "does-not-exist"]),
    ("get_task", {"task_id": "does-not-exist", "wait": True}, ["task_id"]),
    ("list_models", {"action": "paint_house"}, ["action", "edit_image", "text_to_image"]),
    # Today's contract: Topaz upscales by 1, 2 or 4; GPT Image 2.5's rules; Grok's edit takes images, not a task.
    ("upscale_image", {"image": "https://a/b.png", "factor": 8}, ["upscale_factor", "1, 2, 4"]),
    (
        "generate_image",
        {"prompt": "x", "model": "gpt-image-2.5-flare", "output_resolution": "4k", "aspect_ratio": "1:1"},
        ["aspect_ratio", "4k", "16:9"],
    ),
    (
        "generate_image",
        {"prompt": "x", "model": "gpt-image-2.5-sunburst", "output_resolution": "2k"},
        ["output_resolution", "1k", "aspect_ratio"],
    ),
    (
        "edit_image",
        {"prompt": "x", "images": ["https://a/1.png"], "model": "grok-imagine-image-2-0", "params": {"source_task_id": "t"}},
        ["source_task_id"],
    ),
]


@pytest.mark.parametrize(
    ("tool", "args", "needles"), BAD_CALLS, ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(BAD_CALLS)]
)
async def test_bad_input_is_refused_before_anything_is_sent(
    harness: Harness, tool: str, args: dict[str, Any], needles: list[str]
) -> None:
    result = await harness.call(tool, args)
    assert result.is_error
    message = text_of(result)
    for needle in needles:
        assert needle in message, (needle, message)
    assert sent_anything(harness.sim) == [], [r.path for r in harness.sim.requests]


async def test_local_file_limits(harness: Harness, inputs: Path, home: Path) -> None:
    not_image = inputs / "notes.txt"
    not_image.write_text("hello")
    big = inputs / "big.png"
    big.write_bytes(b"\x89PNG" + b"\0" * (21 * 1024 * 1024))
    link = inputs / "escape.png"
    link.symlink_to(home)
    for path, needle in ((not_image, "not a readable image"), (big, "limit"), (link, "outside the allowed")):
        result = await harness.call("edit_image", {"prompt": "x", "images": [str(path)]})
        assert result.is_error and needle in text_of(result), text_of(result)
    assert sent_anything(harness.sim) == []


async def test_upload_happens_only_when_every_entry_is_valid(harness: Harness, inputs: Path) -> None:
    good = inputs / "good.png"
    good.write_bytes(png_bytes())
    result = await harness.call("edit_image", {"prompt": "x", "images": [str(good), "/nope/missing.png"]})
    assert result.is_error and "images[1]" in text_of(result)
    assert sent_anything(harness.sim) == []


# -- catalog and account tools ---------------------------------------------------------------------


async def test_list_models_and_balance(harness: Harness) -> None:
    every = await harness.call("list_models")
    models = every.structured_content["models"]  # the index: a few words a model (test_tool_surface has more)
    assert set(models) >= {"gpt-image-2", "gpt-4o-image", "flux-kontext-pro", "topaz-upscale-image"}
    assert every.structured_content["aliases"]["gpt-image-2-image-to-image"].startswith("gpt-image-2")
    edits = await harness.call("list_models", {"action": "edit_image"})
    assert {m["action"] for m in edits.structured_content["details"]} == {"edit_image"}
    gpt = await harness.call("list_models", {"model": "gpt-image-2"})
    fields = next(m for m in gpt.structured_content["details"] if m["action"] == "text_to_image")["fields"]
    assert "16:9" in fields["aspect_ratio"]["spec"]
    before = (await harness.call("check_balance")).structured_content["balance_cents"]
    await harness.call("generate_image", {"prompt": "costs money"})
    after = (await harness.call("check_balance")).structured_content["balance_cents"]
    assert after < before


async def test_tool_annotations_and_instructions(harness: Harness) -> None:
    tools = {t.name: t for t in (await harness.client.list_tools()).tools}
    assert set(tools) == {
        "generate_image", "edit_image", "upscale_image", "get_task", "list_models", "check_balance", "list_tasks",
        "gallery",
    }
    annotations = {name: tool.annotations for name, tool in tools.items()}
    for name in ("get_task", "list_models", "check_balance", "list_tasks"):
        hints = annotations[name]
        assert hints is not None and hints.read_only_hint is True and hints.idempotent_hint is True
    for name in ("generate_image", "edit_image", "upscale_image"):
        hints = annotations[name]
        assert hints is not None and hints.read_only_hint is False and hints.open_world_hint is True
        assert (tools[name].output_schema or {})["properties"]["images"]
    for tool in tools.values():
        # Descriptions are dedented: no line of them starts with the docstring's indentation.
        assert tool.description and not any(line.startswith("    ") for line in tool.description.splitlines())
        assert tool.input_schema.get("additionalProperties") is False
    schema = tools["generate_image"].input_schema["properties"]
    assert schema["model"]["default"] == "gpt-image-2" and schema["aspect_ratio"]["default"] == "auto"
    assert schema["output_resolution"]["default"] == "1k" and schema["wait"]["default"] is True


async def test_without_a_key_catalog_works_and_task_tools_explain(sim: Any, home: Path, inputs: Path) -> None:
    settings = make_settings(sim, home, inputs, api_key=None)
    async with open_app(settings, policy=FAST_POLICY) as app, Client(app.server, mode="legacy") as client:
        listed = await client.call_tool("list_models", {})
        assert not listed.is_error
        for tool, args in (
            ("generate_image", {"prompt": "x"}),
            ("check_balance", {}),
            ("edit_image", {"prompt": "x", "images": ["https://a/b.png"]}),
        ):
            result = await client.call_tool(tool, args)
            assert result.is_error and "RUNAPI_API_KEY" in text_of(result)
    assert sent_anything(sim) == []


async def test_the_key_appears_nowhere(harness: Harness, home: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    results = [
        await harness.call("generate_image", {"prompt": "secret keeper"}),
        await harness.call("check_balance"),
        await harness.call("generate_image", {"prompt": "x", "aspect_ratio": "bad"}),
    ]
    harness.sim.inject(Fault(kind="status", status=401, method="POST", path_contains="/gpt_image_2/"))
    results.append(await harness.call("generate_image", {"prompt": "unauthorised"}))
    assert "401" in text_of(results[-1]) or "key" in text_of(results[-1]).lower()
    for result in results:
        assert SIM_KEY not in result.model_dump_json()
    assert SIM_KEY not in caplog.text
    # A loopback upstream's timings are not kept.
    upstream = harness.app.settings.base_url.rstrip("/")
    assert await harness.app.manager.store.load_state(f"durations:{upstream}") is None
    for path in home.rglob("*"):
        if path.is_file():
            assert SIM_KEY.encode() not in path.read_bytes(), path


async def test_json_text_is_read_only_as_a_list_or_object(harness: Harness, inputs: Path) -> None:
    """Claude Desktop sends lists as JSON text: that is read as the list. No other text becomes a value."""
    local = inputs / "as-text.png"
    local.write_bytes(png_bytes((64, 64), "olive"))
    result = await harness.call("edit_image", {"prompt": "a list sent as text", "images": json.dumps([str(local)])})
    assert not result.is_error and result.structured_content["status"] == "completed", text_of(result)
    harness.sim.clear_log()
    for arguments, field in (
        ({"prompt": "x", "wait": "false"}, "'wait'"),
        ({"prompt": "x", "timeout_s": "null"}, "'timeout_s'"),
        ({"prompt": "x", "timeout_s": "5"}, "'timeout_s'"),
        ({"prompt": "x", "aspect_ratoi": "16:9"}, "'aspect_ratoi' is not an argument of generate_image"),
    ):
        refused = await harness.call("generate_image", arguments)
        assert refused.is_error and field in text_of(refused), text_of(refused)
        assert "Error executing tool" not in text_of(refused)
    assert upstream_creates(harness.sim) == []


async def test_an_error_for_the_user_is_the_whole_answer_and_any_other_is_internal(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """How a failed call is worded depends on its exception's class alone: any ``UserError`` (wherever it is
    defined: a new one joins no list) is the caller's to fix and its text is the answer; anything else is an
    internal error, its details in the log only."""

    class NewRefusal(UserError, ValueError):
        pass

    def refuses(which: str) -> str:
        if which == "user":
            raise NewRefusal("'which' must be 'other' here (nothing was created)")
        raise RuntimeError("a bug, with /some/private/path in its text")

    harness.app.server.add_tool(refuses, name="refuses", description="fails on purpose")
    result = await harness.call("refuses", {"which": "user"})
    assert result.is_error and text_of(result) == "'which' must be 'other' here (nothing was created)"
    result = await harness.call("refuses", {"which": "other"})
    text = text_of(result)
    assert result.is_error and "internal error (RuntimeError)" in text and "/some/private/path" not in text
    assert "/some/private/path" in caplog.text


async def test_counts_read_as_people_write_them(harness: Harness) -> None:
    # "1 image", "2 images", "1 task", "2 tasks": never "image(s)" nor "1 images", in what every client reads.
    one = await harness.call("generate_image", {"prompt": "one fox"})
    assert text_of(one).splitlines()[0].endswith(": 1 image."), text_of(one)
    two = await harness.call(
        "generate_image",
        {"prompt": "two foxes", "model": "gpt-4o-image", "aspect_ratio": "1:1", "params": {"output_count": 2}},
    )
    assert text_of(two).splitlines()[0].endswith(": 2 images."), text_of(two)
    both = text_of(await harness.call("gallery"))
    assert both.startswith("Gallery: 2 tasks, newest first:") and ", 2 images: " in both and ", 1 image: " in both
    single = text_of(await harness.call("gallery", {"query": "one fox"}))
    assert single.startswith("Gallery: 1 task (query='one fox'), newest first:"), single
    listed = text_of(await harness.call("list_tasks"))
    assert listed.startswith("2 tasks, newest first:") and ", 1 image: " in listed
    models = text_of(await harness.call("list_models", {"model": "gpt-image-2"}))
    assert "; 1 image per task" in models and "up to 1 image" not in models
    for text in (text_of(one), text_of(two), both, single, listed, models):
        assert "(s)" not in text.replace("http(s)", "") and "1 images" not in text and "1 tasks" not in text


# -- the tools' defaults: one definition (catalog/defaults.py) ----------------------------------------------------


async def test_the_tools_publish_the_one_definition_of_their_defaults(harness: Harness) -> None:
    schemas = {tool.name: tool.input_schema["properties"] for tool in (await harness.client.list_tools()).tools}
    models = {"generate_image": DEFAULT_MODEL, "edit_image": DEFAULT_MODEL, "upscale_image": DEFAULT_UPSCALE_MODEL}
    for name, model in models.items():
        assert schemas[name]["model"]["default"] == model, name
    for name in ("generate_image", "edit_image"):
        for field, value in SOFT_DEFAULTS.items():
            assert schemas[name][field]["default"] == value, (name, field)
    catalog = get_catalog()
    kinds: tuple[RequestKind, ...] = ("generate", "edit")
    for kind in kinds:
        spec = catalog.resolve(DEFAULT_MODEL, kind)[1]
        for field, value in SOFT_DEFAULTS.items():  # the default model takes every default: they are its own
            allowed = spec.fields[field].enum
            assert allowed is not None and value in allowed, (kind, field, allowed)
    catalog.resolve(DEFAULT_UPSCALE_MODEL, "upscale")


def test_a_call_leaving_the_defaults_out_is_refused_by_no_model_for_them() -> None:
    """What the signatures fill in is the soft defaults, never the caller's own choice: a default sent as a choice
    would be refused by every model without that field. Each model of generate_image and edit_image is checked
    with the signature's defaults (by the catalog: nothing is sent)."""
    catalog = get_catalog()

    def outcome(kind: RequestKind, slug: str, soft: Mapping[str, object]) -> str | None:
        count = 1 if kind == "edit" else 0
        try:
            catalog.validate(kind, slug, prompt="a fox", image_count=count, soft_options=soft)
        except CatalogError as exc:
            return str(exc)
        return None

    tools: tuple[tuple[Callable[..., object], RequestKind], ...] = (
        (ImageTools.generate_image, "generate"),
        (ImageTools.edit_image, "edit"),
    )
    for tool, kind in tools:
        signature = inspect.signature(tool).parameters
        checked = 0
        for slug in catalog.model_names:
            try:
                catalog.resolve(slug, kind)
            except CatalogError:
                continue  # not one of this tool's models
            images = ["https://example.com/a.png"] if kind == "edit" else None
            request = TaskRequest.from_arguments(
                kind, prompt="a fox", model=slug, aspect_ratio=signature["aspect_ratio"].default,
                output_resolution=signature["output_resolution"].default, params=None, images=images, wait=False,
                timeout_s=None,
            )  # fmt: skip
            assert not request.options and dict(request.soft_options) == dict(SOFT_DEFAULTS), (tool.__name__, slug)
            # The defaults add no refusal: the call is taken, or refused just as with nothing filled in (a field
            # the model itself requires, which the caller has to give).
            assert outcome(kind, slug, request.soft_options) in (None, outcome(kind, slug, {})), (tool.__name__, slug)
            checked += 1
        assert checked > 5, f"{tool.__name__}: only {checked} models checked"


@pytest.mark.parametrize("links", ["on", "off"])
async def test_resource_links_can_be_left_out(sim: Any, home: Path, inputs: Path, links: str) -> None:
    # RUNAPI_MCP_RESOURCE_LINKS=off is for clients (LangChain's MCP adapters) that turn a resource_link into
    # an image URL no model provider can fetch: every result then lacks them, and says the same otherwise.
    settings = load_settings(
        {"api_key": SIM_KEY, "base_url": sim.base_url, "home": str(home), "allowed_dirs": str(inputs), "wait_s": 20},
        environ={"RUNAPI_MCP_RESOURCE_LINKS": links},
        config_file=home / "no-config.json",
    )
    async with open_app(settings, policy=FAST_POLICY) as app, Client(app.server, mode="legacy") as client:
        made = await client.call_tool(
            "generate_image",
            {"prompt": "two foxes", "model": "gpt-4o-image", "aspect_ratio": "1:1", "params": {"output_count": 2}},
        )
        data = made.structured_content
        fetched = await client.call_tool("get_task", {"task_id": data["task_id"]})
    for result in (made, fetched):
        assert not result.is_error, text_of(result)
        images = result.structured_content["images"]
        assert images and all(image["path"] for image in images)
        kinds = [block.type for block in result.content]
        links_sent = [block.uri for block in result.content if block.type == "resource_link"]
        if links == "on":
            assert kinds == ["text", *["image", "resource_link"] * len(images)]
            assert links_sent == [image["uri"] for image in images]
        else:
            assert kinds == ["text", *["image"] * len(images)] and not links_sent
        for image in images:  # the text still names each picture's URI and file, either way
            assert f"- {image['uri']}: " in text_of(result) and f"saved to {image['path']}" in text_of(result)
    assert fetched.structured_content["images"] == data["images"]
