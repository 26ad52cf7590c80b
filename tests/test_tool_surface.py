"""What a model reads stays small: tools/list under its budget, list_models an index unless asked for more.

The figures are computed over whatever tools the server has (a new tool counts from its first commit) and
shown in the failure message; ``bench/tool_surface.py`` prints them per tool.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError
from mcp.types import TextResourceContents

from runapi_mcp.catalog import ALIASES, get_catalog
from runapi_mcp.server.arguments import IMAGE_FORMS, SAVE_AS_DESCRIPTION, no_filter
from runapi_mcp.server.catalog_view import INDEX_BUDGET_BYTES
from runapi_mcp.server.icons import TOOL_KINDS, icon_for
from runapi_mcp.server.surface import TOOLS_BUDGET_BYTES, result_bytes, visible, visible_bytes
from tests.support import Harness, text_of

pytestmark = pytest.mark.anyio

CATALOG = get_catalog()


def _report(line: str) -> None:
    """A figure for the record: shown with ``-s`` (or ``-rP``); a failure's message has it as well."""
    print(line)


# -- tools/list --------------------------------------------------------------------------------------------


async def test_what_a_model_reads_of_tools_list_stays_under_budget(harness: Harness) -> None:
    tools = (await harness.client.list_tools()).tools
    total = visible_bytes(tools)
    per_tool = ", ".join(f"{t.name} {visible_bytes([t])}" for t in tools)
    _report(f"tools/list model-visible: {total} bytes for {len(tools)} tools ({per_tool}); budget {TOOLS_BUDGET_BYTES}")
    assert total < TOOLS_BUDGET_BYTES, (
        f"tools/list model-visible bytes: {total} >= {TOOLS_BUDGET_BYTES} ({per_tool}); shorten descriptions, "
        "put explanations in INSTRUCTIONS or the README (bench/tool_surface.py prints the figures)"
    )


async def test_every_tool_has_a_title_and_an_svg_icon(harness: Harness) -> None:
    for tool in (await harness.client.list_tools()).tools:
        assert tool.title and tool.title.strip(), tool.name
        assert tool.icons, tool.name
        for icon in tool.icons:
            assert icon.mime_type == "image/svg+xml" and icon.src.startswith("data:image/svg+xml;base64,")
            svg = base64.b64decode(icon.src.split(",", 1)[1], validate=True).decode()
            assert svg.startswith("<svg") and svg.endswith("</svg>") and "<script" not in svg
        # Icons are for the interface: not part of what the budget counts (surface.py says why).
        assert "icons" not in visible(tool)
    # Our own tools each carry their kind's icon, not the generic one.
    tools = {t.name: t for t in (await harness.client.list_tools()).tools}
    for name, kind in TOOL_KINDS.items():
        if name in tools:
            assert tools[name].icons == icon_for(kind), name


async def test_every_prompt_has_a_title_and_an_icon(harness: Harness) -> None:
    prompts = (await harness.client.list_prompts()).prompts
    assert len(prompts) >= 6
    for prompt in prompts:
        assert prompt.title, prompt.name
        assert prompt.icons == icon_for("prompt"), prompt.name


def test_icon_for_gives_each_caller_its_own_list() -> None:
    first, second = icon_for("prompt"), icon_for("prompt")
    assert first == second and first is not second
    first.clear()
    assert icon_for("prompt")
    assert len({icon_for(kind)[0].src for kind in ("generate", "edit", "upscale", "task", "models")}) == 5


async def test_input_schemas_say_only_what_a_choice_needs(harness: Harness) -> None:
    def keys(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [k for k in node if k != "properties"]
            for key, value in node.items():
                children = value.values() if key == "properties" and isinstance(value, dict) else [value]
                for child in children:
                    found += keys(child) if key not in ("default", "enum") else []
            return found
        return [k for item in node for k in keys(item)] if isinstance(node, list) else []

    tools = {t.name: t for t in (await harness.client.list_tools()).tools}
    for tool in tools.values():
        schema = tool.input_schema
        assert schema.get("additionalProperties") is False  # still strict
        found = keys(schema)
        assert "title" not in found and "anyOf" not in found, (tool.name, schema)
        assert not any(p.get("default", 0) is None for p in schema.get("properties", {}).values()), tool.name
    edit = tools["edit_image"].input_schema["properties"]
    assert IMAGE_FORMS in edit["images"]["description"] and edit["images"]["maxItems"] == 16
    assert tools["upscale_image"].input_schema["properties"]["image"]["description"] == IMAGE_FORMS
    assert "get_task(task_id, wait=true)" in (tools["generate_image"].description or "")
    # save_as on every tool that makes a picture, optional, saying in a few words how the copy is named.
    for name in ("generate_image", "edit_image", "upscale_image"):
        save_as = tools[name].input_schema["properties"]["save_as"]
        assert save_as == {"description": SAVE_AS_DESCRIPTION, "type": "string"}, name
        assert "save_as" not in tools[name].input_schema["required"]
    assert "extension" in SAVE_AS_DESCRIPTION and len(SAVE_AS_DESCRIPTION) <= 80


async def test_guards_not_shown_are_still_enforced(harness: Harness) -> None:
    for tool, arguments, needle in (
        ("generate_image", {"prompt": "x", "model": "m" * 201}, "'model' is too long: at most 200"),
        ("generate_image", {"prompt": "x", "timeout_s": 3601}, "'timeout_s'"),
        ("generate_image", {"prompt": "x", "params": None, "timeout_s": None}, None),  # null is still fine
        ("upscale_image", {"image": "https://a/b.png", "factor": 0}, "'factor'"),
        ("get_task", {"task_id": ""}, "'task_id' must not be empty"),
    ):
        result = await harness.call(tool, arguments)
        if needle is None:
            assert not result.is_error, text_of(result)
        else:
            assert result.is_error and needle in text_of(result), text_of(result)


# -- list_models -------------------------------------------------------------------------------------------


async def test_the_index_is_small_and_lists_every_model(harness: Harness) -> None:
    result = await harness.call("list_models")
    assert not result.is_error, text_of(result)
    size = result_bytes(result)
    _report(f"list_models index: {size} bytes (text and structured content, as JSON); budget {INDEX_BUDGET_BYTES}")
    assert size < INDEX_BUDGET_BYTES, f"list_models index: {size} bytes >= {INDEX_BUDGET_BYTES}"
    data = result.structured_content
    assert data is not None and "details" not in data
    assert list(data["models"]) == CATALOG.model_names
    lines = text_of(result).splitlines()
    for slug in CATALOG.model_names:
        [line] = [line for line in lines if line.startswith(f"{slug}: ")]
        actions, _, tools = line.removeprefix(f"{slug}: ").partition("; ")
        assert set(actions.split(", ")) == {a.endpoint for a in CATALOG.actions if slug in a.models}, line
        assert tools and set(tools.split(", ")) <= {"generate", "edit", "upscale"}, line
    assert data["models"]["nano-banana"] == "text_to_image; generate, edit"  # takes reference images too
    assert data["models"]["topaz-upscale-image"].endswith("upscale")
    assert set(data["aliases"]) == set(ALIASES)
    assert "list_models(model=...)" in lines[1]


async def test_a_model_s_fields_in_full(harness: Harness) -> None:
    result = await harness.call("list_models", {"model": "topaz-upscale-image"})
    assert not result.is_error, text_of(result)
    data = result.structured_content
    [info] = data["details"]
    assert (info["model"], info["action"], info["tool"]) == ("topaz-upscale-image", "upscale_image", "upscale_image")
    assert info["route"] == "POST /api/v1/topaz/upscale_image" and info["image_field"] == "source_image_url"
    assert info["fields"]["upscale_factor"]["spec"] == "integer; one of 1, 2, 4; required"
    assert list(data["models"]) == ["topaz-upscale-image"]
    text = text_of(result)
    assert "- upscale_factor: integer; one of 1, 2, 4; required" in text and "params" in text

    gpt = (await harness.call("list_models", {"model": " GPT-Image-2 "})).structured_content
    assert {d["action"] for d in gpt["details"]} == {"text_to_image", "edit_image"}
    spec = next(d for d in gpt["details"] if d["action"] == "edit_image")["fields"]["aspect_ratio"]["spec"]
    assert "21:9" in spec
    # An alias means one action of its model.
    alias = (await harness.call("list_models", {"model": "gpt-image-2-image-to-image"})).structured_content
    assert [(d["model"], d["action"]) for d in alias["details"]] == [("gpt-image-2", "edit_image")]
    # A field without a description has none: nothing empty is sent once per field.
    assert all(f.get("description", "x") for d in gpt["details"] for f in d["fields"].values())


async def test_a_typo_gets_the_close_matches(harness: Harness) -> None:
    result = await harness.call("list_models", {"model": "gpt-imge-2"})
    assert result.is_error
    text = text_of(result)
    assert "'model'" in text and "close matches: gpt-image-2" in text
    assert len(text) < 300  # the close ones, not all 60
    partial = text_of(await harness.call("list_models", {"model": "banana"}))
    assert "nano-banana" in partial and "nano-banana-pro" in partial
    far = text_of(await harness.call("list_models", {"model": "zzzzzzzz"}))
    assert "'model'" in far and "none of the" in far
    assert harness.sim.requests == []


async def test_action_filters_and_combines_with_model(harness: Harness) -> None:
    result = await harness.call("list_models", {"action": "upscale_image"})
    data = result.structured_content
    expected = {slug for a in CATALOG.actions if a.endpoint == "upscale_image" for slug in a.models}
    assert {d["model"] for d in data["details"]} == expected == set(data["models"])
    assert {d["action"] for d in data["details"]} == {"upscale_image"}
    family = (await harness.call("list_models", {"action": "flux-kontext"})).structured_content
    assert {d["model"] for d in family["details"]} == {"flux-kontext-pro", "flux-kontext-max"}
    both = (await harness.call("list_models", {"model": "flux-dev", "action": "remix_image"})).structured_content
    assert [(d["model"], d["action"]) for d in both["details"]] == [("flux-dev", "remix_image")]
    neither = await harness.call("list_models", {"model": "gpt-image-2", "action": "remix_image"})
    assert neither.is_error and "'action'" in text_of(neither) and "edit_image, text_to_image" in text_of(neither)
    unknown = await harness.call("list_models", {"action": "paint_house"})
    assert unknown.is_error and "'action'" in text_of(unknown)
    # A blank filter is no filter: the index, not every field of every model.
    blank = await harness.call("list_models", {"action": "", "model": " "})
    assert not blank.is_error and "details" not in blank.structured_content
    # The value a random fuzz seed once found: the tool and the fuzz now read blank by the same rule.
    spaces = await harness.call("list_models", {"action": " "})
    assert not spaces.is_error and "details" not in spaces.structured_content
    assert no_filter(" ") and no_filter("") and no_filter(None) and not no_filter("\t") and not no_filter(" x")
    # A tab is no blank: it is checked as a name, and refused by name.
    tab = await harness.call("list_models", {"action": "\t"})
    assert tab.is_error and "'action'" in text_of(tab)


async def test_a_blank_model_filter_is_no_filter_in_every_tool(harness: Harness) -> None:
    made = await harness.call("generate_image", {"prompt": "a red fox in snow"})
    assert not made.is_error, text_of(made)
    for tool in ("list_tasks", "gallery"):
        result = await harness.call(tool, {"model": "   "})
        assert not result.is_error, text_of(result)
        unfiltered = await harness.call(tool, {})
        assert result.structured_content == unfiltered.structured_content
        assert made.structured_content["task_id"] in json.dumps(result.structured_content)


# -- resources ---------------------------------------------------------------------------------------------


async def _read_json(harness: Harness, uri: str) -> Any:
    [contents] = (await harness.client.read_resource(uri)).contents
    assert isinstance(contents, TextResourceContents) and contents.mime_type == "application/json"
    return json.loads(contents.text)


async def test_the_models_resources(harness: Harness) -> None:
    index = await _read_json(harness, "runapi://models")
    assert list(index["models"]) == CATALOG.model_names and "details" not in index
    one = await _read_json(harness, "runapi://models/gpt-image-2")
    assert {d["action"] for d in one["details"]} == {"text_to_image", "edit_image"}
    listed = (await harness.call("list_models", {"model": "gpt-image-2"})).structured_content
    assert one == listed  # the same answer both ways
    # A model with rules across its fields lists them, in the resource as in the tool.
    flare = await _read_json(harness, "runapi://models/gpt-image-2.5-flare")
    assert {d["route"] for d in flare["details"]} == {
        "POST /api/v1/gpt_image_2_5/text_to_image", "POST /api/v1/gpt_image_2_5/edit_image"
    }
    rules = next(d for d in flare["details"] if d["action"] == "text_to_image")["rules"]
    assert "when 'aspect_ratio' is 1:1 and 'output_resolution' is 4k: 'aspect_ratio' not allowed" in rules
    assert "when no 'aspect_ratio' is given and 'output_resolution' is 2k: 'output_resolution' not allowed" in rules
    with pytest.raises(MCPError) as refused:
        await harness.client.read_resource("runapi://models/gpt-imge-2")
    assert "gpt-image-2" in refused.value.error.message and "close matches" in refused.value.error.message
    templates = {t.uri_template: t for t in (await harness.client.list_resource_templates()).resource_templates}
    assert templates["runapi://models/{model}"].mime_type == "application/json"
