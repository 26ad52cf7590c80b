"""MCP prompts: listed with titles and described arguments; each renders one well-formed call of our tools.

The end-to-end test takes the JSON call out of every prompt's text and makes it against the simulator:
a prompt whose call the tool refused would fail there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import pytest
from mcp.client import Client
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, GetPromptResult, TextContent

from runapi_mcp.catalog import ActionSpec, Catalog, FieldSpec, ModelSpec, get_catalog
from runapi_mcp.server.prompts import ImagePrompts, parse_pixels, print_pixels, quote_exactly, transparency_option
from tests.support import Harness, text_of, upstream_creates

pytestmark = pytest.mark.anyio

PROMPTS = {
    "product_shot": ("Product shot on a clean background", {"product"}),
    "transparent_logo": ("Logo or sticker with a transparent background", {"subject"}),
    "poster_with_text": ("Poster or banner with exact text", {"text", "theme"}),
    "background_edit": ("Remove or replace a background", {"image"}),
    "consistent_character": ("Consistent character across scenes", {"reference_image", "scene"}),
    "upscale_for_print": ("Upscale for print", {"image", "print_size"}),
}


def the_call(text: str) -> tuple[str, dict[str, Any]]:
    """The tool and the arguments a prompt's text tells the model to use."""
    tool = re.search(r"Call the `(\w+)` tool once", text)
    block = re.search(r"```json\n(.*?)\n```", text, re.DOTALL)
    assert tool and block, text
    return tool.group(1), json.loads(block.group(1))


def message_text(result: GetPromptResult) -> str:
    [message] = result.messages
    assert message.role == "user" and isinstance(message.content, TextContent)
    return message.content.text


def prompts(catalog: Catalog | None = None, sizes: Mapping[str, tuple[int, int]] | None = None) -> ImagePrompts:
    known = dict(sizes or {})

    async def lookup(reference: str) -> tuple[int, int] | None:
        return known.get(reference)

    return ImagePrompts(catalog or get_catalog(), lookup)


# -- over the protocol ------------------------------------------------------------------------------------------
async def test_every_prompt_is_listed_with_a_title_and_described_arguments(harness: Harness) -> None:
    assert harness.client.server_capabilities.prompts is not None
    listed = {p.name: p for p in (await harness.client.list_prompts()).prompts}
    assert set(listed) == set(PROMPTS)
    for name, (title, required) in PROMPTS.items():
        prompt = listed[name]
        assert prompt.title == title and prompt.description
        assert prompt.arguments and all(a.description for a in prompt.arguments), name
        assert {a.name for a in prompt.arguments if a.required} == required, name


async def test_each_prompt_leads_to_one_call_the_tool_accepts(harness: Harness) -> None:
    source = await harness.call("generate_image", {"prompt": "a red bicycle", "aspect_ratio": "1:1"})
    assert not source.is_error, text_of(source)
    task_id = source.structured_content["task_id"]
    uri = source.structured_content["images"][0]["uri"]
    cases: list[tuple[str, dict[str, str], str]] = [
        ("product_shot", {"product": "a matte black mug"}, "generate_image"),
        ("product_shot", {"product": "the bicycle", "image": uri, "background": "light grey sweep"}, "edit_image"),
        ("transparent_logo", {"subject": "a fox head", "kind": "sticker", "text": "EMBER"}, "generate_image"),
        ("poster_with_text", {"text": 'SUMMER "SALE" 50%', "theme": "a beach at noon", "format": "banner"},
         "generate_image"),
        ("background_edit", {"image": task_id}, "edit_image"),
        ("background_edit", {"image": uri, "new_background": "a sunny beach"}, "edit_image"),
        ("consistent_character", {"reference_image": uri, "scene": "riding through Paris at dusk"}, "edit_image"),
        ("upscale_for_print", {"image": task_id, "print_size": "8x10 in"}, "upscale_image"),
    ]  # fmt: skip
    for name, arguments, tool in cases:
        text = message_text(await harness.client.get_prompt(name, arguments))
        called, call = the_call(text)
        assert called == tool, (name, text)
        for argument in call:
            assert f'"{argument}"' in text  # every argument is spelled out in the text itself
        # The call as the prompt gives it (without waiting: that it is accepted and created is the point).
        result = await harness.call(tool, {**call, "wait": False})
        assert not result.is_error, (name, text_of(result))
    assert len(upstream_creates(harness.sim)) == 1 + len(cases)


async def test_a_bad_argument_is_refused_by_name(harness: Harness) -> None:
    async def refused(name: str, arguments: dict[str, str]) -> str:
        with pytest.raises(MCPError) as caught:
            await harness.client.get_prompt(name, arguments)
        assert caught.value.error.code == INVALID_PARAMS
        return caught.value.error.message

    assert "needs 'product'" in await refused("product_shot", {})
    assert "needs 'product'" in await refused("product_shot", {"product": "  "})
    assert "'colour' is not an argument of prompt product_shot" in await refused(
        "product_shot", {"product": "a mug", "colour": "red"}
    )
    message = await refused("product_shot", {"product": "a mug", "aspect_ratio": "7:5"})
    assert "aspect_ratio" in message and "16:9" in message
    assert "'model'" in await refused("product_shot", {"product": "a mug", "model": "topaz-upscale-image"})
    assert "'kind' must be logo or sticker" in await refused("transparent_logo", {"subject": "x", "kind": "badge"})
    assert "data: URI" in await refused("background_edit", {"image": "data:image/png;base64,AAAA"})
    assert "'image_size'" in await refused("upscale_for_print", {"image": "/tmp/x.png", "print_size": "A4"})
    assert "'print_size'" in await refused(
        "upscale_for_print", {"image": "x", "print_size": "huge", "image_size": "9x9"}
    )
    assert "'dpi'" in await refused("upscale_for_print", {"image": "x", "print_size": "A4", "dpi": "9000"})


async def test_an_unknown_prompt_is_invalid_params_naming_the_prompts_there_are(harness: Harness) -> None:
    with pytest.raises(MCPError) as caught:
        await harness.client.get_prompt("product_photo", {"product": "a mug"})
    assert caught.value.error.code == INVALID_PARAMS  # -32602, as the README says (the SDK's own refusal: 0)
    message = caught.value.error.message
    assert "'product_photo'" in message and all(name in message for name in PROMPTS), message
    with pytest.raises(MCPError) as long_name:
        await harness.client.get_prompt("x" * 5000)
    assert long_name.value.error.code == INVALID_PARAMS and len(long_name.value.error.message) < 400


# -- the texts, without a session ----------------------------------------------------------------------------
async def test_poster_text_is_quoted_exactly_and_never_escaped_for_the_image_model() -> None:
    words = 'GRAND "OPENING"\nMay 3 · 10:00'
    text = await prompts().poster_with_text(text=words, theme="a bakery at dawn")
    _, call = the_call(text)
    assert quote_exactly(words) in call["prompt"] and "\\" not in call["prompt"]
    assert call["model"] == "gpt-image-2" and call["aspect_ratio"] == "2:3" and call["output_resolution"] == "2k"
    banner = the_call(await prompts().poster_with_text(text="SALE", theme="x", format="banner", model="imagen-4"))[1]
    assert banner["aspect_ratio"] == "16:9" and "output_resolution" not in banner  # imagen-4 has no 3:1, no size
    assert quote_exactly('a “b” "c"') == '«a “b” "c"»'


async def test_the_logo_uses_a_transparency_option_when_a_model_has_one() -> None:
    assert transparency_option(get_catalog()) is None  # today: none, so gpt-image-2 on a flat background
    text = await prompts().transparent_logo(subject="a fox head")
    _, call = the_call(text)
    assert call["model"] == "gpt-image-2" and "#FFFFFF" in call["prompt"] and "params" not in call
    assert "No image model here has a transparency option" in text and "recraft-remove-background" in text
    fields = {
        "prompt": FieldSpec(name="prompt", type="string", required=True),
        "background": FieldSpec(name="background", type="string", enum=("opaque", "transparent")),
        "output_format": FieldSpec(name="output_format", type="string", enum=("jpeg", "png")),
        "aspect_ratio": FieldSpec(name="aspect_ratio", type="string", enum=("1:1", "16:9")),
    }
    model = ModelSpec(slug="alpha-1", send_model=True, fields=fields, endpoint="text_to_image")
    catalog = Catalog((ActionSpec("alpha", "Alpha", "alpha", "text_to_image", {"alpha-1": model}),))
    _, call = the_call(await prompts(catalog).transparent_logo(subject="a fox head", kind="sticker"))
    assert call["model"] == "alpha-1" and call["params"] == {"background": "transparent", "output_format": "png"}
    assert call["aspect_ratio"] == "1:1" and "transparent background" in call["prompt"]


@pytest.mark.parametrize(
    ("size", "print_size", "dpi", "factor", "note"),
    [
        ((1024, 1024), "A3", "", 4, "about"),  # 4.8x needed, 4x at most (Topaz: 1, 2 or 4)
        ((2048, 2048), "8x10 in", "300", 2, "the smallest"),  # 3000 px needed: 1.46x
        ((1536, 1024), "8x10 in", "150", 2, "the smallest"),  # landscape for an upright print: turned, not stretched
        ((4000, 6000), "A4", "", 1, "large enough already"),
        ((512, 512), "50x70 cm", "", 4, "about"),  # 16x needed, 4x at most
        ((1000, 1000), "7200x4800 px", "", 4, "about"),  # 7.2x needed
        ((1000, 1000), "3600x2400 px", "", 4, "the smallest"),  # 3.6x needed
    ],
)
async def test_the_upscale_factor_comes_from_the_print_size(
    size: tuple[int, int], print_size: str, dpi: str, factor: int, note: str
) -> None:
    text = await prompts(sizes={"task-1": size}).upscale_for_print(image="task-1", print_size=print_size, dpi=dpi)
    tool, call = the_call(text)
    assert tool == "upscale_image" and call == {"image": "task-1", "model": "topaz-upscale-image", "factor": factor}
    assert note in text and f"{size[0]}x{size[1]} px" in text
    # A picture the library does not know: its size comes as an argument.
    given = await prompts().upscale_for_print(
        image="/home/me/cat.png", print_size=print_size, dpi=dpi, image_size=f"{size[0]}x{size[1]}"
    )
    assert the_call(given)[1]["factor"] == factor
    fixed = the_call(await prompts(sizes={"t": size}).upscale_for_print(image="t", print_size="A4",
                                                                          model="recraft-crisp-upscale"))  # fmt: skip
    assert fixed[1] == {"image": "t", "model": "recraft-crisp-upscale"}  # its factor is its own


def test_print_sizes_read_as_pixels() -> None:
    assert print_pixels("A4", 300)[:2] == (2481, 3508)
    assert print_pixels("8x10 in", 300)[:2] == (2400, 3000)
    assert print_pixels('8x10"', 100)[:2] == (800, 1000)
    assert print_pixels("30 x 40 cm", 254)[:2] == (3000, 4000)
    assert print_pixels("7200x4800 px", 300)[:2] == (7200, 4800)
    assert parse_pixels("1024x1536", "image_size") == (1024, 1536)
    for bad in ("huge", "30x40", "0x10 cm", "5x5 km"):
        with pytest.raises(MCPError, match="print_size"):
            print_pixels(bad, 300)
    with pytest.raises(MCPError, match="image_size"):
        parse_pixels("10.5x3", "image_size")


async def test_removal_and_replacement_pick_their_models() -> None:
    removal = the_call(await prompts().background_edit(image="runapi://images/abc-0"))[1]
    assert removal["model"] == "recraft-remove-background" and removal["images"] == ["runapi://images/abc-0"]
    swap = the_call(await prompts().background_edit(image="task-1", new_background="a snowy forest"))[1]
    assert swap["model"] == "gpt-image-2" and "a snowy forest" in swap["prompt"]
    character = await prompts().consistent_character(
        reference_image="task-1", scene="on the moon", character="Mina, a red-haired courier", aspect_ratio="16:9"
    )
    call = the_call(character)[1]
    assert call["images"] == ["task-1"] and call["aspect_ratio"] == "16:9" and "Mina" in call["prompt"]
    assert "same reference image" in character


async def test_a_prompt_never_leads_to_a_call_the_catalog_refuses() -> None:
    with pytest.raises(MCPError, match="output_resolution"):
        await prompts().product_shot(product="a mug", model="flux-2-max-text-to-image", output_resolution="2k")
    # The prompt's own defaults drop out for a model that cannot take them, instead of failing.
    call = the_call(await prompts().product_shot(product="a mug", model="gpt-4o-image"))[1]
    assert call["aspect_ratio"] == "1:1" and "output_resolution" not in call
    call = the_call(await prompts().product_shot(product="a mug", model="midjourney-v8.1"))[1]
    assert "aspect_ratio" not in call and "output_resolution" not in call


async def test_the_2026_era_lists_renders_and_refuses_alike(harness: Harness) -> None:
    async with Client(harness.app.server, mode="2026-07-28") as client:
        assert {p.name for p in (await client.list_prompts()).prompts} == set(PROMPTS)
        tool, call = the_call(message_text(await client.get_prompt("poster_with_text", {"text": "HI", "theme": "x"})))
        assert tool == "generate_image" and call["aspect_ratio"] == "2:3"
        with pytest.raises(MCPError, match="needs 'theme'"):
            await client.get_prompt("poster_with_text", {"text": "HI"})


@pytest.mark.parametrize("model", ["gpt-image-2.5-flare", "gpt-image-2.5-sunburst"])
async def test_gpt_image_25_in_every_generating_prompt(model: str) -> None:
    """A prompt's own picks (2k, a ratio) step aside for the model's rules; what the user chose is kept or
    refused by name."""
    kept = the_call(await prompts().product_shot(product="a mug", model=model))[1]
    assert kept["model"] == model and (kept["aspect_ratio"], kept["output_resolution"]) == ("1:1", "2k")
    auto = the_call(await prompts().product_shot(product="a mug", model=model, aspect_ratio="auto"))[1]
    assert auto["aspect_ratio"] == "auto" and "output_resolution" not in auto  # 2k would need another ratio
    poster = the_call(await prompts().poster_with_text(text="SALE", theme="a bakery at dawn", model=model))[1]
    assert poster["model"] == model and poster["output_resolution"] == "2k"
    with pytest.raises(MCPError) as refused:
        await prompts().product_shot(product="a mug", model=model, aspect_ratio="auto", output_resolution="4k")
    assert "'aspect_ratio'" in str(refused.value)
