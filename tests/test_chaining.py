"""Nothing lost: chaining across models (generate -> upscale -> edit, one call per step) and cost.

Every call goes through a real MCP client to the server, and from there to the simulator, whose request
log shows what went upstream: which image field each model got without the caller naming it, that each
task was quoted before anything was sent, and that a call the spend cap refuses sends nothing at all.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client

from runapi_mcp.app import open_app
from runapi_mcp.server.cost import start_of_day_utc
from runapi_mcp.simulator import Fault, Simulator
from tests.support import (
    FAST_POLICY,
    Harness,
    calls_around_a_paused_write,
    make_settings,
    png_file,
    price_quotes,
    sent_anything,
    text_of,
    uploads,
    upstream_creates,
)

pytestmark = pytest.mark.anyio

# The simulator's prices: gpt-image-2 at 1k costs 3 cents an image, a model without a resolution 4.
GPT_1K_CENTS = 3
TOPAZ_CENTS = 4



def data_of(result: Any) -> dict[str, Any]:
    assert result.structured_content is not None, text_of(result)
    return dict(result.structured_content)


def completed_with_a_local_image(result: Any) -> dict[str, Any]:
    assert not result.is_error, text_of(result)
    data = data_of(result)
    assert data["status"] == "completed", data
    [image] = data["images"]
    assert image["path"] and Path(image["path"]).is_file(), image
    return data


@asynccontextmanager
async def capped(sim: Simulator, home: Path, inputs: Path, cap: int) -> AsyncIterator[Harness]:
    """A server with RUNAPI_MCP_MAX_SPEND_CENTS set to ``cap``."""
    settings = make_settings(sim, home, inputs, max_spend_cents=cap)
    async with open_app(settings, policy=FAST_POLICY) as app, Client(app.server, mode="legacy") as client:
        yield Harness(app=app, client=client, sim=sim)


# -- chaining across models ------------------------------------------------------------------------------


async def test_generate_then_upscale_then_edit_with_another_model(harness: Harness) -> None:
    sim = harness.sim
    balance = sim.balance_cents

    generated = completed_with_a_local_image(
        await harness.call("generate_image", {"prompt": "a lighthouse at dusk", "aspect_ratio": "1:1"})
    )
    assert generated["model"] == "gpt-image-2" and generated["price_cents"] == GPT_1K_CENTS
    assert balance - sim.balance_cents == GPT_1K_CENTS  # the quote is what RunAPI charged
    first = generated["images"][0]

    # Step 2: the task id alone names the picture; topaz's own field carries its URL.
    upscaled = completed_with_a_local_image(
        await harness.call("upscale_image", {"image": generated["task_id"], "factor": 4})
    )
    assert (upscaled["model"], upscaled["action"]) == ("topaz-upscale-image", "upscale_image")
    assert upscaled["price_cents"] == TOPAZ_CENTS and f"{TOPAZ_CENTS} cents" in text_of(
        await harness.call("get_task", {"task_id": upscaled["task_id"]})
    )
    second = upscaled["images"][0]
    assert (second["width"], second["height"]) == (4 * first["width"], 4 * first["height"])

    # Step 3: the upscale's library URI, into a model whose image field is a single source_image_url.
    edited = completed_with_a_local_image(
        await harness.call(
            "edit_image",
            {"prompt": "make it a stormy night", "images": [second["uri"]], "model": "flux-kontext-pro"},
        )
    )
    assert edited["model"] == "flux-kontext-pro" and edited["price_cents"] == TOPAZ_CENTS
    assert balance - sim.balance_cents == GPT_1K_CENTS + 2 * TOPAZ_CENTS

    gen_create, upscale_create, edit_create = upstream_creates(sim)
    assert gen_create.path == "/api/v1/gpt_image_2/text_to_image"
    assert upscale_create.path == "/api/v1/topaz/upscale_image"
    assert upscale_create.json == {
        "model": "topaz-upscale-image",
        "source_image_url": first["url"],
        "upscale_factor": 4,
    }
    assert edit_create.path == "/api/v1/flux_kontext/text_to_image"
    assert edit_create.json is not None
    assert edit_create.json["source_image_url"] == second["url"]
    assert "source_image_urls" not in edit_create.json and edit_create.json["model"] == "flux-kontext-pro"
    # Every picture was reused by its RunAPI URL: nothing was uploaded.
    assert uploads(sim) == []

    # Each task was quoted first, with the very body it was then created with.
    quotes = price_quotes(sim)
    assert len(quotes) == 3
    for quote, create in zip(quotes, (gen_create, upscale_create, edit_create), strict=True):
        assert quote.time <= create.time
        service, action = create.path.split("/")[3:5]
        # Today's form: the create's fields nested under params, the model beside them.
        body = dict(create.json or {})
        model = body.pop("model", None)
        assert quote.json == {"service": service, "action": action, "model": model, "params": body}


async def test_upscale_takes_every_image_form(harness: Harness, inputs: Path) -> None:
    """One entry in any form edit_image's images take; local bytes are uploaded only after the quote."""
    local = png_file(inputs / "small.png")
    other = base64.b64encode(png_file(inputs / "other.png", (40, 30)).read_bytes()).decode()
    # (image, its size, whether its bytes are new: the file:// URI names bytes uploaded a moment ago)
    for image, size, new_bytes in (
        (str(local), (64, 48), True),
        (local.as_uri(), (64, 48), False),
        (f"data:image/png;base64,{other}", (40, 30), True),
    ):
        harness.sim.clear_log()
        data = completed_with_a_local_image(await harness.call("upscale_image", {"image": image}))
        assert (data["images"][0]["width"], data["images"][0]["height"]) == (2 * size[0], 2 * size[1])
        assert data["price_cents"] == TOPAZ_CENTS  # a quote without the source image is a quote all the same
        [quote] = price_quotes(harness.sim)
        [create] = upstream_creates(harness.sim)
        assert quote.json is not None and create.json is not None and create.json["upscale_factor"] == 2
        if new_bytes:  # priced before the upload, without the URL that did not exist yet
            [upload] = uploads(harness.sim)
            assert quote.time <= upload.time <= create.time
            assert "source_image_url" not in quote.json["params"]
        else:  # the URL of the earlier upload is reused, and priced with the rest of the body
            assert uploads(harness.sim) == []
            assert quote.json["params"]["source_image_url"] == create.json["source_image_url"]
    library = data["images"][0]
    for image in (library["uri"], library["url"], data["task_id"]):
        harness.sim.clear_log()
        again = completed_with_a_local_image(await harness.call("upscale_image", {"image": image, "factor": 1}))
        assert again["images"][0]["width"] == library["width"]
        [create] = upstream_creates(harness.sim)
        assert create.json is not None and create.json["source_image_url"] == library["url"]
        assert uploads(harness.sim) == []


async def test_upscale_with_another_model_and_refusals(harness: Harness, inputs: Path) -> None:
    local = png_file(inputs / "crisp.png")
    crisp = completed_with_a_local_image(
        await harness.call("upscale_image", {"image": str(local), "model": "recraft-crisp-upscale"})
    )
    assert crisp["action"] == "upscale_image"
    [create] = upstream_creates(harness.sim)
    assert create.path == "/api/v1/recraft/upscale_image" and create.json is not None
    assert "upscale_factor" not in create.json  # the model has no factor: the default is not sent
    harness.sim.clear_log()
    for arguments, needles in (
        ({"image": str(local), "factor": 3}, ["'factor'", "1, 2, 4", "upscale_factor"]),
        ({"image": str(local), "factor": 8}, ["'factor'", "1, 2, 4", "upscale_factor"]),
        ({"image": str(local), "factor": 4, "model": "recraft-crisp-upscale"}, ["'factor'", "recraft-crisp-upscale"]),
        ({"image": str(local), "model": "gpt-image-2"}, ["'model'", "upscale_image", "topaz-upscale-image"]),
        ({"image": str(inputs / "missing.png")}, ["'image'"]),
        ({"image": str(local), "factor": 0}, ["'factor'"]),
        ({"image": str(local), "factor": "2"}, ["'factor'"]),
        ({"images": [str(local)]}, ["'images' is not an argument of upscale_image"]),
    ):
        refused = await harness.call("upscale_image", arguments)
        assert refused.is_error, text_of(refused)
        for needle in needles:
            assert needle in text_of(refused), (needle, text_of(refused))
    assert sent_anything(harness.sim) == []  # refused before anything was quoted, uploaded or created


# -- cost --------------------------------------------------------------------------------------------


async def test_the_spend_cap_refuses_before_any_upload_or_create(sim: Simulator, home: Path, inputs: Path) -> None:
    local = png_file(inputs / "to-edit.png")
    cap = GPT_1K_CENTS + 2
    async with capped(sim, home, inputs, cap) as harness:
        first = completed_with_a_local_image(await harness.call("generate_image", {"prompt": "within the cap"}))
        assert first["price_cents"] == GPT_1K_CENTS
        sim.clear_log()
        for tool, arguments in (
            ("generate_image", {"prompt": "one too many"}),
            ("edit_image", {"prompt": "one too many", "images": [str(local)]}),
            ("upscale_image", {"image": str(local)}),
            ("upscale_image", {"image": first["task_id"]}),
        ):
            refused = await harness.call(tool, arguments)
            text = text_of(refused)
            assert refused.is_error and refused.structured_content is None, text
            assert "RUNAPI_MCP_MAX_SPEND_CENTS" in text and f"is {cap} cents" in text, text
            assert f"{GPT_1K_CENTS} cents spent today" in text, text
            quoted = TOPAZ_CENTS if tool == "upscale_image" else GPT_1K_CENTS
            assert f"{quoted} cents quoted for this task" in text, text
            assert "Nothing was uploaded or created" in text, text
        assert upstream_creates(sim) == [] and uploads(sim) == []
        assert len(price_quotes(sim)) == 4  # asked, and nothing after it

        balance = data_of(await harness.call("check_balance"))
        assert balance["spent_cents_today_here"] == GPT_1K_CENTS and balance["max_spend_cents"] == cap
        assert balance["balance_cents"] == sim.balance_cents


async def test_a_failed_task_does_not_count_against_the_cap(sim: Simulator, home: Path, inputs: Path) -> None:
    async with capped(sim, home, inputs, GPT_1K_CENTS) as harness:
        sim.inject(Fault(kind="fail_task", reason="content policy violation"))
        failed = await harness.call("generate_image", {"prompt": "refused upstream"})
        assert failed.is_error and data_of(failed)["status"] == "failed", text_of(failed)
        completed_with_a_local_image(await harness.call("generate_image", {"prompt": "the cap is still free"}))
        refused = await harness.call("generate_image", {"prompt": "now it is not"})
        assert refused.is_error and "RUNAPI_MCP_MAX_SPEND_CENTS" in text_of(refused), text_of(refused)


async def test_calls_at_the_same_time_cannot_both_slip_under_the_cap(
    sim: Simulator, home: Path, inputs: Path
) -> None:
    results: list[Any] = []
    async with capped(sim, home, inputs, GPT_1K_CENTS) as harness:

        async def call(n: int) -> None:
            results.append(await harness.call("generate_image", {"prompt": f"racer {n}", "wait": False}))

        async with anyio.create_task_group() as tg:
            for n in range(4):
                tg.start_soon(call, n)
    accepted = [r for r in results if not r.is_error]
    assert len(accepted) == 1 and len(upstream_creates(sim)) == 1, [text_of(r) for r in results]
    assert all("RUNAPI_MCP_MAX_SPEND_CENTS" in text_of(r) for r in results if r.is_error)


async def test_a_task_being_created_counts_once_against_the_cap(
    sim: Simulator, home: Path, inputs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cap of two pictures. The first call stops between writing its task's record and sending the create:
    its quote counts once there (the record's price; the hold that admitted it went with the write), so a
    second call is admitted and a third refused with two pictures' worth spent."""
    async with capped(sim, home, inputs, 2 * GPT_1K_CENTS) as harness:
        first, second, third = await calls_around_a_paused_write(monkeypatch, sim, harness, harness)
    assert not second.is_error, text_of(second)
    assert third.is_error and f"{2 * GPT_1K_CENTS} cents spent today" in text_of(third), text_of(third)
    assert not first.is_error and len(upstream_creates(sim)) == 2, text_of(first)


async def test_the_cap_gives_a_hold_back_only_when_no_record_took_it(
    sim: Simulator, home: Path, inputs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A saved task's hold goes with its record's write: the guard makes no second trip to the store to
    release it. A call whose upload fails writes no record, and the guard gives its hold back."""
    local = png_file(inputs / "to-edit.png")
    async with capped(sim, home, inputs, 1000) as harness:
        store = harness.app.manager.store
        calls: list[str] = []
        hold_spend, save, release_spend = store.hold_spend, store.save, store.release_spend

        async def recording_hold_spend(owner: str, **options: Any) -> Any:
            calls.append("hold_spend")
            return await hold_spend(owner, **options)

        async def recording_save(record: Any, **options: Any) -> None:
            if options.get("release_hold"):  # the poller's own writes (progress, outputs) are not the cap's
                calls.append("save+release")
            await save(record, **options)

        async def recording_release_spend(hold_id: str) -> None:
            calls.append("release_spend")
            await release_spend(hold_id)

        monkeypatch.setattr(store, "hold_spend", recording_hold_spend)
        monkeypatch.setattr(store, "save", recording_save)
        monkeypatch.setattr(store, "release_spend", recording_release_spend)

        saved = await harness.call("generate_image", {"prompt": "saved", "wait": False})
        assert not saved.is_error, text_of(saved)
        assert calls[:2] == ["hold_spend", "save+release"] and "release_spend" not in calls, calls

        calls.clear()
        sim.inject(Fault(kind="status", status=400, method="POST", path_contains="/api/v1/files"))
        failed = await harness.call("edit_image", {"prompt": "upload fails", "images": [str(local)], "wait": False})
        assert failed.is_error, text_of(failed)
        assert len(upstream_creates(sim)) == 1, text_of(failed)  # the saved task's only
        assert calls == ["hold_spend", "release_spend"], calls


async def test_with_a_cap_a_task_that_cannot_be_quoted_is_refused(sim: Simulator, home: Path, inputs: Path) -> None:
    async with capped(sim, home, inputs, 1000) as harness:
        sim.inject(Fault(kind="status", status=422, method="POST", path_contains="/api/v1/price_quotes"))
        refused = await harness.call("generate_image", {"prompt": "priceless"})
        text = text_of(refused)
        assert refused.is_error and "RUNAPI_MCP_MAX_SPEND_CENTS" in text and "1000 cents" in text, text
        assert "cannot be checked" in text and "Nothing was uploaded or created" in text, text
        assert upstream_creates(sim) == []


async def test_without_a_cap_a_failed_quote_does_not_block_the_task(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="runapi_mcp.server.cost")
    harness.sim.inject(Fault(kind="status", status=500, method="POST", path_contains="/api/v1/price_quotes", times=3))
    result = completed_with_a_local_image(await harness.call("generate_image", {"prompt": "price unknown"}))
    assert result["price_cents"] is None
    assert "no price quote for gpt_image_2/text_to_image" in caplog.text
    assert len(upstream_creates(harness.sim)) == 1
    # The next task is quoted again, and its price shown.
    priced = completed_with_a_local_image(await harness.call("generate_image", {"prompt": "priced"}))
    assert priced["price_cents"] == GPT_1K_CENTS


async def test_check_balance_reports_todays_spend_here(harness: Harness) -> None:
    before = data_of(await harness.call("check_balance"))
    assert before["spent_cents_today_here"] == 0 and before["max_spend_cents"] is None
    completed_with_a_local_image(await harness.call("generate_image", {"prompt": "one", "output_resolution": "2k"}))
    completed_with_a_local_image(await harness.call("generate_image", {"prompt": "two"}))
    after = data_of(await harness.call("check_balance"))
    assert after["spent_cents_today_here"] == 6 + GPT_1K_CENTS
    # Only today's (UTC) tasks count: from tomorrow's midnight on, these are yesterday's.
    assert start_of_day_utc(1_700_000_000.0) == 1_699_920_000.0  # 2023-11-14T22:13:20Z -> 00:00
    tomorrow = start_of_day_utc(time.time()) + 86_400
    assert await harness.app.manager.store.spent_cents(tomorrow) == 0
