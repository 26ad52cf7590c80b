"""Today's RunAPI, through MCP: GPT Image 2.5 and its rules, today's Grok and Topaz, statuses, task ids in
error answers, upload expiry, live availability, what a task really cost, and RunAPI's own refusals.

Every call goes through a real MCP client to the server, and from there over HTTP to the simulator, which
accepts only the forms RunAPI's SDK (runapi-core 0.10.1) sends; its request log shows what went upstream.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client

from runapi_mcp.app import open_app
from runapi_mcp.clock import SYSTEM_CLOCK, Clock
from runapi_mcp.simulator import Fault, Simulator
from tests.support import (
    FAST_POLICY,
    FakeClock,
    Harness,
    make_settings,
    png_file,
    price_quotes,
    sent_anything,
    text_of,
    uploads,
    upstream_creates,
)

pytestmark = pytest.mark.anyio

GPT_25 = ("gpt-image-2.5-flare", "gpt-image-2.5-sunburst")
RATIOS = ["auto", "1:1", "3:2", "2:3", "4:3", "3:4", "5:4", "4:5", "16:9", "9:16", "2:1", "1:2", "3:1", "1:3", "21:9", "9:21"]


def done(result: Any) -> dict[str, Any]:
    assert not result.is_error, text_of(result)
    data = dict(result.structured_content)
    assert data["status"] == "completed", data
    return data


@asynccontextmanager
async def server(
    sim: Simulator, home: Path, inputs: Path, *, clock: Clock = SYSTEM_CLOCK, **overrides: Any
) -> AsyncIterator[Harness]:
    async with (
        open_app(make_settings(sim, home, inputs, **overrides), policy=FAST_POLICY, clock=clock) as app,
        Client(app.server, mode="legacy") as client,
    ):
        await app.availability.refresh()
        sim.clear_log()
        yield Harness(app=app, client=client, sim=sim)


@contextmanager
def simulator_config(sim: Simulator, **changes: Any) -> Iterator[None]:
    """The session simulator set as asked for one test, and set back after it."""
    before = {name: getattr(sim.config, name) for name in changes}
    sim.configure(**changes)
    try:
        yield
    finally:
        sim.configure(**before)


# -- GPT Image 2.5 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", GPT_25)
async def test_gpt_image_25_generates_and_edits_16_images(harness: Harness, inputs: Path, model: str) -> None:
    made = done(await harness.call("generate_image", {"prompt": "a lighthouse", "model": model}))
    assert made["model"] == model and made["action"] == "text_to_image"
    [create] = upstream_creates(harness.sim)
    assert create.path == "/api/v1/gpt_image_2_5/text_to_image" and create.json["model"] == model
    at_4k = done(
        await harness.call(
            "generate_image", {"prompt": "a lighthouse", "model": model, "output_resolution": "4k", "aspect_ratio": "16:9"}
        )
    )
    assert (at_4k["images"][0]["width"], at_4k["images"][0]["height"]) == (3840, 2160)
    sources = [str(png_file(inputs / f"s{i}.png", (48, 32), (i * 15, 100, 200))) for i in range(16)]
    harness.sim.clear_log()
    edited = done(await harness.call("edit_image", {"prompt": "as one poster", "images": sources, "model": model}))
    assert edited["action"] == "edit_image"
    [create] = upstream_creates(harness.sim)
    assert create.path == "/api/v1/gpt_image_2_5/edit_image" and len(create.json["source_image_urls"]) == 16
    assert len(uploads(harness.sim)) == 16  # sixteen distinct pictures, each uploaded once, after the quote
    [quote] = price_quotes(harness.sim)
    assert quote.json["model"] == model and quote.time <= min(u.time for u in uploads(harness.sim))
    # The history and the galleries filter by it like any model.
    listed = (await harness.call("list_tasks", {"model": model})).structured_content["tasks"]
    assert {t["task_id"] for t in listed} == {made["task_id"], at_4k["task_id"], edited["task_id"]}
    shown = await harness.call("gallery", {"model": model})
    assert not shown.is_error and edited["task_id"] in str(shown.structured_content)
    assert model in await harness.app.manager.store.models(owner="")  # the web gallery's model filter


# (what the caller asks, the field the refusal names, a value it allows, values it must not offer). "auto" is
# also the tools' default aspect ratio, so asking for it reads as giving none: the resolution is refused,
# saying that auto is not allowed there either, and which ratios are.
RULES = [
    ({"output_resolution": "4k", "aspect_ratio": "1:1"}, "aspect_ratio", "16:9", ["1:1", "auto"]),
    ({"output_resolution": "4k", "aspect_ratio": "auto"}, "output_resolution", "1k", ["2k", "4k"]),
    ({"output_resolution": "2k", "aspect_ratio": "auto"}, "output_resolution", "1k", ["2k", "4k"]),
    ({"output_resolution": "4k"}, "output_resolution", "1k", ["2k", "4k"]),
    ({"output_resolution": "2k"}, "output_resolution", "1k", ["2k", "4k"]),
]


@pytest.mark.parametrize(("options", "field", "allowed", "refused"), RULES)
@pytest.mark.parametrize("tool", ["generate_image", "edit_image"])
async def test_each_gpt_image_25_rule_is_refused_before_anything_is_sent(
    harness: Harness, inputs: Path, tool: str, options: dict[str, str], field: str, allowed: str, refused: list[str]
) -> None:
    arguments: dict[str, Any] = {"prompt": "a lighthouse", "model": "gpt-image-2.5-flare", **options}
    if tool == "edit_image":
        arguments["images"] = [str(png_file(inputs / "src.png", (48, 32)))]
    result = await harness.call(tool, arguments)
    assert result.is_error
    message = text_of(result)
    assert message.startswith(f"'{field}'"), message
    shown = message.split("allowed then: ", 1)[1].split(";", 1)[0].split(", ")
    assert allowed in shown and not set(refused) & set(shown), message
    if field == "output_resolution":  # the way out: an aspect ratio, and which ones fit
        ratios = message.split("give 'aspect_ratio', one of: ", 1)[1].split(" (", 1)[0].split(", ")
        assert "16:9" in ratios and "auto" not in ratios, message
    if options.get("aspect_ratio") == "auto":
        assert "'aspect_ratio' 'auto', the default, is not allowed here either" in message
    assert sent_anything(harness.sim) == []  # no quote, no upload, no create


# -- today's Grok and Topaz -----------------------------------------------------------------------


async def test_grok_image_20_edits_source_images(harness: Harness, inputs: Path) -> None:
    images = [str(png_file(inputs / f"g{i}.png", (48, 32), c)) for i, c in enumerate(("red", "blue"))]
    edited = done(
        await harness.call(
            "edit_image",
            {"prompt": "merge them", "images": images, "model": "grok-imagine-image-2-0", "aspect_ratio": "16:9"},
        )
    )
    assert edited["action"] == "edit_image"
    [create] = upstream_creates(harness.sim)
    assert create.path == "/api/v1/grok_imagine/edit_image"
    assert len(create.json["source_image_urls"]) == 2 and create.json["aspect_ratio"] == "16:9"
    assert "source_task_id" not in create.json and "mask_indices" not in create.json
    # Its segment map: an image in, a map out, by the segment map's own name.
    mapped = done(
        await harness.call("edit_image", {"prompt": "segments", "images": [images[0]], "model": "grok-imagine-segment-map"})
    )
    assert mapped["action"] == "segment_map" and mapped["images"]


async def test_topaz_factor_8_is_refused_naming_1_2_4(harness: Harness, inputs: Path) -> None:
    image = str(png_file(inputs / "small.png", (48, 32)))
    for tool, arguments in (
        ("upscale_image", {"image": image, "factor": 8}),
        ("edit_image", {"prompt": "x", "images": [image], "model": "topaz-upscale-image", "params": {"upscale_factor": 8}}),
    ):
        result = await harness.call(tool, arguments)
        assert result.is_error and "1, 2, 4" in text_of(result) and "8" not in text_of(result).split("1, 2, 4")[1]
    assert sent_anything(harness.sim) == []
    assert done(await harness.call("upscale_image", {"image": image, "factor": 4}))["images"][0]["width"] == 192


# -- statuses, task ids, upload expiry ------------------------------------------------------------


@pytest.mark.parametrize(("status", "words"), [("timeout", "'timeout'"), ("exploded", "unknown task status 'exploded'")])
async def test_a_failure_like_or_unknown_status_ends_the_task_at_once(
    harness: Harness, status: str, words: str
) -> None:
    started = await harness.call("generate_image", {"prompt": "a fox", "wait": False})
    task_id = started.structured_content["task_id"]
    # The next step travels in the structured content too (some clients show the model nothing else).
    assert f"get_task with task_id='{task_id}' and wait=true" in started.structured_content["next_step"]
    upstream = harness.sim.task_ids[-1]
    harness.sim.set_task_outcome(upstream, "failed", status_text=status, error="the renderer gave up")
    polls_before = sum(1 for r in harness.sim.requests if r.method == "GET" and upstream in r.path)
    with anyio.fail_after(10):
        result = await harness.call("get_task", {"task_id": task_id, "wait": True})
    data = result.structured_content
    assert data["status"] == "failed" and words in data["error"] and "the renderer gave up" in data["error"]
    # Not charged (RunAPI reported no cost): no price shown, and nothing to wait for.
    assert data["price_cents"] is None and "3 cents" not in text_of(result)
    assert "Nothing to wait for" in data["next_step"] and "charged nothing" in data["next_step"]
    polls = sum(1 for r in harness.sim.requests if r.method == "GET" and upstream in r.path) - polls_before
    assert polls == 1  # ended by the first read that saw it, not polled on to our own deadline


async def test_a_5xx_create_naming_its_task_is_tracked_by_that_id(harness: Harness) -> None:
    # Every answer to the create is a 502 naming the task (the client's retries with the same key included).
    harness.sim.inject(Fault("create_error", method="POST", path_contains="/gpt_image_2/", times=3))
    before = harness.sim.tasks_created
    data = done(await harness.call("generate_image", {"prompt": "a fox"}))
    assert harness.sim.tasks_created == before + 1  # one upstream task, whatever the retries
    creates = upstream_creates(harness.sim)
    assert creates and all(create.status >= 500 for create in creates)
    assert len({create.idempotency_key for create in creates}) == 1
    upstream = data["runapi_task_id"]
    assert upstream == harness.sim.task_ids[-1]
    for task_id in (data["task_id"], upstream):
        again = await harness.call("get_task", {"task_id": task_id})
        assert again.structured_content["task_id"] == data["task_id"] and again.structured_content["status"] == "completed"


async def test_an_upload_is_reused_well_inside_its_life_and_redone_after(
    sim: Simulator, home: Path, inputs: Path
) -> None:
    image = str(png_file(inputs / "to-edit.png", (48, 32)))
    sim.configure(upload_lifetime_s=3.0)  # (the sim fixture sets it back)
    # The server's clock, moved by the test: "after its life" is ten seconds on, not three waited. Its wall
    # time starts at the simulator's, whose expires_at it reads.
    clock = FakeClock(wall=time.time())
    async with server(sim, home, inputs, clock=clock) as harness:

        async def edit(prompt: str) -> None:  # the upload is decided before the create: no need to wait for it
            result = await harness.call("edit_image", {"prompt": prompt, "images": [image], "wait": False})
            assert not result.is_error, text_of(result)

        await edit("make it blue")
        await edit("make it red")
        assert len(uploads(sim)) == 1  # the second edit, well before expires_at, reused the URL
        await clock.advance(10.0)  # well past expires_at
        await edit("make it green")
        assert len(uploads(sim)) == 2
        creates = upstream_creates(sim)
        assert creates[0].json["source_image_urls"] == creates[1].json["source_image_urls"]
        assert creates[2].json["source_image_urls"] != creates[0].json["source_image_urls"]


# -- availability, cost, RunAPI's own refusals -----------------------------------------------------


async def test_a_model_in_maintenance_is_refused_and_marked(sim: Simulator, home: Path, inputs: Path) -> None:
    async with server(sim, home, inputs, schedules_max_age_s=0) as harness:
        sim.set_catalog_status("gpt-image-2", "maintenance", action="edit_image")
        try:
            image = str(png_file(inputs / "m.png", (48, 32)))
            refused = await harness.call("edit_image", {"prompt": "x", "images": [image]})
            assert refused.is_error
            message = text_of(refused)
            assert message.startswith("'model'") and "maintenance" in message and "gpt-image-2.5-flare" in message
            assert [r for r in sent_anything(sim) if not (r.method == "GET" and "price_schedules" in r.path)] == []
            listed = await harness.call("list_models", {})
            assert listed.structured_content["unavailable"] == {"gpt-image-2": "maintenance on edit_image"}
            assert "gpt-image-2: " in text_of(listed) and "NOT AVAILABLE NOW (RunAPI: maintenance on edit_image)" in text_of(listed)
            detail = await harness.call("list_models", {"model": "gpt-image-2"})
            marks = {d["action"]: d["availability"] for d in detail.structured_content["details"]}
            assert marks == {"text_to_image": None, "edit_image": "maintenance"}
            done(await harness.call("generate_image", {"prompt": "still fine"}))  # its other route runs
        finally:
            sim.set_catalog_status("gpt-image-2", "active")
        # A model RunAPI lists that this version has no contract for: shown, not callable.
        with simulator_config(sim, extra_schedule_rows=[{"service": "gpt_image_3", "action": "text_to_image", "model": "gpt-image-3"}]):
            listed = await harness.call("list_models", {})
            assert listed.structured_content["upstream_only"] == ["gpt-image-3 (text_to_image)"]
            assert "not callable with this version yet" in text_of(listed) and "gpt-image-3" in text_of(listed)
            unknown = await harness.call("generate_image", {"prompt": "x", "model": "gpt-image-3"})
            assert unknown.is_error and "'model'" in text_of(unknown)
        back = await harness.call("edit_image", {"prompt": "x", "images": [image]})
        assert not back.is_error, text_of(back)
        # A conditional read: an unchanged table costs a bodiless 304.
        schedule_reads = [r for r in sim.requests if r.path == "/api/v1/price_schedules"]
        assert schedule_reads and 304 in {r.status for r in schedule_reads}


async def test_check_balance_counts_what_runapi_reported_a_task_cost(harness: Harness) -> None:
    sim = harness.sim
    quoted = done(await harness.call("generate_image", {"prompt": "quoted and settled alike"}))
    sim.set_task_outcome(None, "completed", cost_cents=11)  # the next task settles at 11 cents
    settled = done(await harness.call("generate_image", {"prompt": "settled"}))
    assert settled["price_cents"] == quoted["price_cents"] == 3
    sim.set_task_outcome(None, "failed", error="nsfw")
    failed = await harness.call("generate_image", {"prompt": "refused"})
    assert failed.structured_content["status"] == "failed"
    balance = (await harness.call("check_balance")).structured_content
    # 3 (the first: RunAPI reported 3) + 11 (reported, not the quote's 3) + 0 (failed, no cost reported)
    assert balance["spent_cents_today_here"] == 3 + 11
    record = await harness.app.manager.store.get(settled["task_id"])
    assert record is not None and record.cost_cents == 11 and record.price_cents == 3
    assert settled["cost_cents"] == 11 and "11 cents" in text_of(await harness.call("get_task", {"task_id": settled["task_id"]}))
    assert failed.structured_content["cost_cents"] is None


async def test_runapi_s_own_validation_error_is_a_field_error(harness: Harness) -> None:
    harness.sim.inject(
        Fault(
            "status",
            status=422,
            method="POST",
            path_contains="/gpt_image_2/text_to_image",
            message="aspect_ratio 21:9 is not available at 4k for this account",
            field="aspect_ratio",
        )
    )
    result = await harness.call("generate_image", {"prompt": "x", "aspect_ratio": "21:9", "output_resolution": "4k"})
    assert result.is_error
    message = text_of(result)
    assert message.startswith("'aspect_ratio': ") and "is not available at 4k for this account" in message
    assert "nothing was created or charged" in message
    assert len(upstream_creates(harness.sim)) == 1  # a refusal is not retried
