"""completion/complete: prompt arguments (models per action, per-model values, the caller's images) and the
resource templates' ids, capped at 100 with total and hasMore, and never another user's ids."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp.shared.exceptions import MCPError
from mcp.types import Completion, PromptReference, ResourceTemplateReference

from runapi_mcp.catalog import get_catalog
from runapi_mcp.server.completions import Completions
from runapi_mcp.server.prompts import ImagePrompts
from runapi_mcp.simulator import Simulator
from runapi_mcp.tasks import LOCAL_OWNER, ImageRecord, MemoryTaskStore, TaskRecord, current_owner
from tests.support import Harness, text_of
from tests.test_auth_tokens import Issuer, Keys, issuer, keys
from tests.test_http_users import connect, serving, token_for

pytestmark = pytest.mark.anyio

__all__ = ["issuer", "keys"]  # fixtures (the JWT issuer on loopback) from the token tests

GPT_IMAGE_2_RATIOS = ["auto", "1:1", "3:2", "2:3", "4:3", "3:4", "5:4", "4:5", "16:9", "9:16", "2:1", "1:2", "3:1",
                      "1:3", "21:9", "9:21"]  # fmt: skip


async def no_sizes(reference: str) -> tuple[int, int] | None:
    return None


def completions(store: MemoryTaskStore | None = None) -> Completions:
    return Completions(ImagePrompts(get_catalog(), no_sizes), store or MemoryTaskStore())


async def prompt_values(name: str, argument: str, typed: str = "", context: dict[str, str] | None = None) -> Completion:
    return await completions().for_prompt(name, argument, typed, context or {})


def record(n: int, owner: str = "", *, status: str = "completed", images: int = 1) -> TaskRecord:
    task_id = f"task-{owner or 'me'}-{n:04d}"
    return TaskRecord(
        task_id=task_id,
        idempotency_key=f"key-{task_id}",
        status=status,
        model="gpt-image-2",
        service="gpt_image_2",
        action="text_to_image",
        route="/api/v1/gpt_image_2/text_to_image",
        owner=owner,
        created_at=1_000_000 + n,
        images=[
            ImageRecord(id=f"{task_id}-{i}", task_id=task_id, index=i, uri=f"runapi://images/{task_id}-{i}",
                        path=f"/lib/{task_id}-{i}.png")
            for i in range(images)
        ],
    )  # fmt: skip


@pytest.fixture
def as_alice() -> Iterator[None]:
    with current_owner.scope("alice"):
        yield


@pytest.fixture
def as_local_user() -> Iterator[None]:
    """What the MCP layer's owner middleware sets for a request over stdio (these tests call the handlers)."""
    with current_owner.scope(LOCAL_OWNER):
        yield


# -- models, ratios, resolutions, choices ---------------------------------------------------------------------
async def test_models_follow_the_prompts_action_and_the_typed_prefix() -> None:
    generate = (await prompt_values("product_shot", "model")).values
    assert generate[0] == "gpt-image-2" and "flux-kontext-pro" in generate and "gpt-image-2-text-to-image" in generate
    assert "topaz-upscale-image" not in generate and "gpt-image-2-image-to-image" not in generate
    edit = (await prompt_values("product_shot", "model", context={"image": "task-1"})).values
    assert "gpt-image-2-image-to-image" in edit and "flux-2-klein" not in edit  # flux-2-klein only draws
    # GPT Image 2.5 is offered wherever GPT Image 2 is, first among the models typed after it.
    typed = (await prompt_values("product_shot", "model", "gpt-image-2.")).values
    assert typed[:2] == ["gpt-image-2.5-flare", "gpt-image-2.5-sunburst"]
    assert {"gpt-image-2.5-flare", "gpt-image-2.5-sunburst"} <= set(edit) & set(generate)
    upscale = await prompt_values("upscale_for_print", "model")
    assert upscale.values == ["topaz-upscale-image", "recraft-crisp-upscale"] and upscale.total == 2
    assert not upscale.has_more
    removal = (await prompt_values("background_edit", "model")).values
    assert removal == ["recraft-remove-background"]  # a cut-out: only the removal models
    replace = (await prompt_values("background_edit", "model", context={"new_background": "a beach"})).values
    assert replace[0] == "gpt-image-2" and "qwen-3-edit-image" in replace
    kontext = await prompt_values("poster_with_text", "model", "FLUX-K")
    assert kontext.values == ["flux-kontext-max", "flux-kontext-pro"] and kontext.total == 2


async def test_aspect_ratios_and_resolutions_are_those_of_the_model_in_the_context() -> None:
    assert (await prompt_values("poster_with_text", "aspect_ratio")).values == GPT_IMAGE_2_RATIOS
    four_o = await prompt_values("poster_with_text", "aspect_ratio", context={"model": "gpt-4o-image"})
    assert four_o.values == ["1:1", "3:2", "2:3"] and four_o.total == 3 and four_o.has_more is False
    kontext = await prompt_values("product_shot", "aspect_ratio", context={"model": "flux-kontext-pro"})
    assert kontext.values == ["21:9", "16:9", "4:3", "1:1", "3:4", "9:16"]
    assert (await prompt_values("product_shot", "aspect_ratio", "16", {"model": "gpt-image-2"})).values == ["16:9"]
    assert (await prompt_values("product_shot", "aspect_ratio", context={"model": "no-such-model"})).values == []
    # An edit prompt reads the model's edit action: nano-banana-2-lite edits with its own ratios.
    lite = await prompt_values("consistent_character", "aspect_ratio", context={"model": "nano-banana-2-lite"})
    assert "1:8" in lite.values and "auto" in lite.values
    assert (await prompt_values("product_shot", "output_resolution")).values == ["1k", "2k", "4k"]
    flux = await prompt_values("poster_with_text", "output_resolution", context={"model": "flux-2-max-text-to-image"})
    assert flux.values == ["1k"]
    assert (await prompt_values("product_shot", "output_resolution", context={"model": "nano-banana"})).values == []


async def test_fixed_choices_and_unknown_names() -> None:
    assert (await prompt_values("transparent_logo", "kind")).values == ["logo", "sticker"]
    assert (await prompt_values("poster_with_text", "format", "b")).values == ["banner"]
    assert "A4" in (await prompt_values("upscale_for_print", "print_size", "a")).values
    assert (await prompt_values("upscale_for_print", "dpi")).values == ["300", "240", "150"]
    for name, argument in (("no_such_prompt", "model"), ("product_shot", "product"), ("product_shot", "nope")):
        empty = await prompt_values(name, argument)
        assert empty.values == [] and empty.total == 0 and empty.has_more is False


# -- the caller's images and ids --------------------------------------------------------------------------------
async def test_images_and_ids_are_the_callers_own(as_alice: None) -> None:
    store = MemoryTaskStore()
    for n in range(3):
        await store.save(record(n, "alice"))
        await store.save(record(n, "bob"))
    await store.save(record(9, "alice", status="processing", images=0))
    complete = completions(store)
    images = await complete.for_prompt("product_shot", "image", "", {})
    # Newest first, each finished task's pictures then its id; a running task has nothing to offer yet.
    assert images.values[:2] == ["runapi://images/task-alice-0002-0", "task-alice-0002"]
    assert images.total == 6 and not any("bob" in v for v in images.values)
    by_id = await complete.for_prompt("consistent_character", "reference_image", "task-alice-0001", {})
    assert by_id.values == ["runapi://images/task-alice-0001-0", "task-alice-0001"]
    tasks = await complete.for_template("runapi://tasks/{task_id}", "task_id", "")
    assert tasks.values == ["task-alice-0009", "task-alice-0002", "task-alice-0001", "task-alice-0000"]
    ids = await complete.for_template("runapi://images/{image_id}", "image_id", "task-alice-0000")
    assert ids.values == ["task-alice-0000-0"]
    assert (await complete.for_template("runapi://tasks/{task_id}", "task_id", "task-bob")).values == []
    assert (await complete.for_template("runapi://models", "x", "")).values == []


async def test_at_most_100_values_with_the_total_and_has_more(as_local_user: None) -> None:
    store = MemoryTaskStore()
    for n in range(150):
        await store.save(record(n))
    complete = completions(store)
    tasks = await complete.for_template("runapi://tasks/{task_id}", "task_id", "")
    assert len(tasks.values) == 100 and tasks.total == 150 and tasks.has_more is True
    assert tasks.values[0] == "task-me-0149"
    narrowed = await complete.for_template("runapi://tasks/{task_id}", "task_id", "task-me-001")
    assert len(narrowed.values) == 10 and narrowed.total == 10 and narrowed.has_more is False
    images = await complete.for_prompt("upscale_for_print", "image", "", {})
    assert len(images.values) == 100 and images.total == 300 and images.has_more is True
    # Only the newest tasks are offered: "recent" has a bound, and it is what total counts.
    short = Completions(complete.prompts, store, recent_tasks=40)
    recent = await short.for_template("runapi://tasks/{task_id}", "task_id", "")
    assert len(recent.values) == 40 and recent.total == 40 and recent.has_more is False


# -- over the protocol ------------------------------------------------------------------------------------------
async def test_completion_over_the_protocol(harness: Harness) -> None:
    assert harness.client.server_capabilities.completions is not None
    made = await harness.call("generate_image", {"prompt": "a lighthouse"})
    assert not made.is_error, text_of(made)
    task_id = made.structured_content["task_id"]
    uri = made.structured_content["images"][0]["uri"]
    image_ref = PromptReference(type="ref/prompt", name="background_edit")
    answer = await harness.client.complete(image_ref, {"name": "image", "value": ""})
    assert answer.completion.values == [uri, task_id] and answer.completion.total == 2
    template = ResourceTemplateReference(type="ref/resource", uri="runapi://images/{image_id}")
    answer = await harness.client.complete(template, {"name": "image_id", "value": task_id[:10]})
    assert answer.completion.values == [uri.removeprefix("runapi://images/")]
    ratios = await harness.client.complete(
        PromptReference(type="ref/prompt", name="poster_with_text"),
        {"name": "aspect_ratio", "value": ""},
        context_arguments={"model": "gpt-4o-image"},
    )
    assert ratios.completion.values == ["1:1", "3:2", "2:3"]
    started = time.monotonic()
    await harness.client.complete(template, {"name": "image_id", "value": ""})
    assert time.monotonic() - started < 2


async def test_over_http_each_user_completes_only_their_own_ids(
    sim: Simulator, home: Path, inputs: Path, issuer: Issuer, keys: Keys
) -> None:
    """Per-user tokens: the owner the HTTP layer found reaches completion/complete (and a prompt's size lookup)."""
    template = ResourceTemplateReference(type="ref/resource", uri="runapi://tasks/{task_id}")
    async with serving(sim, home, inputs, issuer) as (_, base):
        async with connect(base, token_for(keys, issuer, "alice")) as alice:
            made = await alice.call_tool("generate_image", {"prompt": "alice's picture"})
            task_id = made.structured_content["task_id"]
            mine = await alice.complete(template, {"name": "task_id", "value": ""})
            assert mine.completion.values == [task_id]
            sized = await alice.get_prompt("upscale_for_print", {"image": task_id, "print_size": "A4"})
            assert "1024x1024 px" in str(sized.messages[0].content)
        async with connect(base, token_for(keys, issuer, "bob")) as bob:
            theirs = await bob.complete(template, {"name": "task_id", "value": ""})
            assert theirs.completion.values == [] and theirs.completion.total == 0
            images = await bob.complete(
                PromptReference(type="ref/prompt", name="background_edit"), {"name": "image", "value": ""}
            )
            assert images.completion.values == []
            with pytest.raises(MCPError, match="image_size"):  # alice's picture is unknown to bob
                await bob.get_prompt("upscale_for_print", {"image": task_id, "print_size": "A4"})
