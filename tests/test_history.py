"""The task history: list_tasks, the runapi://tasks index, and resources/list paged over tasks and images."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any, get_args

import anyio
import pytest
from mcp.shared.exceptions import MCPError
from mcp.types import BlobResourceContents, TextResourceContents

from runapi_mcp.cli import main
from runapi_mcp.server.mcp_tasks import mcp_status
from runapi_mcp.server.results import TaskResult
from runapi_mcp.tasks import LOCAL_OWNER, TERMINAL, UNFINISHED, ImageRecord, TaskRecord, TaskState, current_owner
from runapi_mcp.tasks.records import STATES
from tests.support import Harness, text_of

pytestmark = pytest.mark.anyio

SEEDED_STATES: tuple[TaskState, ...] = ("completed", "failed", "processing", "pending", "submitting")


def seeded(n: int, *, start: float, model: str = "gpt-image-2", status: TaskState = "completed") -> TaskRecord:
    """A stored task as the manager would have left it, created ``n`` seconds after ``start``."""
    return TaskRecord(
        task_id=f"task-seed-{n:03d}",
        upstream_id=f"up-{n:03d}",
        idempotency_key=f"key-{n}",
        status=status,
        model=model,
        service="svc",
        action="text_to_image",
        route="/api/v1/svc/text_to_image",
        prompt=f"seeded prompt {n}",
        price_cents=n,
        created_at=start + n,
        updated_at=start + n,
        completed_at=start + n + 1 if status == "completed" else None,
        error="upstream said no" if status == "failed" else None,
    )


async def seed(harness: Harness, count: int) -> list[TaskRecord]:
    """``count`` tasks of two models and every state, newest last."""
    start = time.time() - 10_000
    records = [
        seeded(
            n,
            start=start,
            model="gpt-image-2" if n % 2 else "flux-kontext-pro",
            status=SEEDED_STATES[n % len(SEEDED_STATES)],
        )
        for n in range(count)
    ]
    for record in records:
        await harness.app.manager.store.save(record)
    return records


async def pages(harness: Harness, **arguments: Any) -> list[dict[str, Any]]:
    """Every page of list_tasks for ``arguments``, following next_cursor to the end."""
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        result = await harness.call("list_tasks", {**arguments, **({"cursor": cursor} if cursor else {})})
        assert not result.is_error, text_of(result)
        data = result.structured_content
        assert data is not None
        out.append(data)
        cursor = data["next_cursor"]
        if cursor is None:
            return out


async def test_list_tasks_pages_newest_first_and_filters(harness: Harness) -> None:
    records = await seed(harness, 23)
    newest_first = [r.task_id for r in reversed(records)]

    listed = await pages(harness, limit=10)
    assert [len(p["tasks"]) for p in listed] == [10, 10, 3]
    assert [t["task_id"] for p in listed for t in p["tasks"]] == newest_first

    first = await harness.call("list_tasks", {"limit": 10})
    text = text_of(first)
    assert text.startswith("10 tasks, newest first:")
    assert newest_first[0] in text and "seeded prompt 22" in text
    assert f"cursor='{listed[0]['next_cursor']}'" in text

    failed = [t["task_id"] for p in await pages(harness, status="failed", limit=2) for t in p["tasks"]]
    assert failed == [r.task_id for r in reversed(records) if r.status == "failed"] and failed
    flux_done = await pages(harness, status="completed", model="flux-kontext-pro", limit=100)
    assert [t["task_id"] for t in flux_done[0]["tasks"]] == [
        r.task_id for r in reversed(records) if r.status == "completed" and r.model == "flux-kontext-pro"
    ]
    # An alias or another spelling of a model finds the same tasks (the store keeps the slug).
    alias = await pages(harness, model="GPT-Image-2-Text-To-Image", limit=100)
    assert {t["model"] for t in alias[0]["tasks"]} == {"gpt-image-2"} and len(alias[0]["tasks"]) == 11

    none = await harness.call("list_tasks", {"model": "no-such-model"})
    assert not none.is_error and none.structured_content == {"tasks": [], "next_cursor": None}
    assert text_of(none) == "No tasks (model=no-such-model)."


async def test_list_tasks_items_are_the_task_tools_result(harness: Harness) -> None:
    made = await harness.call("generate_image", {"prompt": "for the history"})
    assert not made.is_error, text_of(made)
    assert made.structured_content is not None
    listed = await harness.call("list_tasks", {"limit": 1})
    assert listed.structured_content is not None
    [item] = listed.structured_content["tasks"]
    assert set(item) == set(TaskResult.model_fields)
    moving = ("elapsed_s", "progress")
    assert {k: v for k, v in item.items() if k not in moving} == {
        k: v for k, v in made.structured_content.items() if k not in moving
    }
    image = item["images"][0]
    assert Path(image["path"]).is_file() and image["path"] in text_of(listed)
    assert [b.type for b in listed.content] == ["text"]  # no previews in a listing


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"cursor": "bm90LWEtY3Vyc29y"}, "cursor"),
        ({"cursor": "!!!"}, "cursor"),
        ({"cursor": ""}, "cursor"),
        ({"status": "done"}, "status"),
        ({"status": 3}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "5"}, "limit"),
        ({"limit": True}, "limit"),
        ({"model": "x\x00"}, "model"),
        ({"page": 2}, "page"),
    ],
)
async def test_list_tasks_refuses_what_it_cannot_take(harness: Harness, arguments: dict[str, Any], field: str) -> None:
    result = await harness.call("list_tasks", arguments)
    text = text_of(result)
    assert result.is_error and f"'{field}'" in text, text
    assert "internal error" not in text.lower()


async def test_a_resources_list_cursor_is_no_list_tasks_cursor(harness: Harness) -> None:
    await seed(harness, 5)
    harness.app.server.history.resource_page_size = 2
    listed = await harness.client.list_resources(cache_mode="bypass")
    assert listed.next_cursor
    result = await harness.call("list_tasks", {"cursor": listed.next_cursor})
    assert result.is_error and "'cursor'" in text_of(result)


async def test_resources_list_pages_over_tasks_and_images(harness: Harness) -> None:
    made = [await harness.call("generate_image", {"prompt": f"picture {n}"}) for n in range(2)]
    images = [m.structured_content["images"][0] for m in made if m.structured_content]
    seeds = await seed(harness, 4)
    with current_owner.scope(LOCAL_OWNER):  # the client's tasks, read past the MCP layer
        made_records = [
            await harness.app.manager.get(m.structured_content["task_id"]) for m in made if m.structured_content
        ]
    tasks = sorted([*seeds, *made_records], key=lambda r: (r.created_at, r.task_id), reverse=True)
    harness.app.server.history.resource_page_size = 4

    resources: list[Any] = []
    sizes: list[int] = []
    cursor: str | None = None
    while True:
        page = await harness.client.list_resources(cursor=cursor, cache_mode="bypass")
        resources += page.resources
        sizes.append(len(page.resources))
        cursor = page.next_cursor
        if cursor is None:
            break
    uris = [str(r.uri) for r in resources]
    assert len(uris) == len(set(uris))
    assert set(uris[:2]) == {"runapi://tasks", "runapi://models"}  # the fixed ones lead the first page
    assert uris[2:8] == [f"runapi://tasks/{r.task_id}" for r in tasks]
    assert set(uris[8:]) == {i["uri"] for i in images}
    assert sizes == [6, 4]  # 4 per page, plus the two fixed resources on the first
    by_uri = {str(r.uri): r for r in resources}
    assert all(by_uri[f"runapi://tasks/{r.task_id}"].mime_type == "application/json" for r in tasks)
    for image in images:
        listed = by_uri[image["uri"]]
        assert listed.mime_type == image["mime_type"] == "image/png" and listed.size == image["bytes"]
        read = await harness.client.read_resource(image["uri"])
        assert isinstance(read.contents[0], BlobResourceContents) and read.contents[0].mime_type == "image/png"

    task = await harness.client.read_resource(f"runapi://tasks/{seeds[0].task_id}")
    assert isinstance(task.contents[0], TextResourceContents)
    assert json.loads(task.contents[0].text)["task_id"] == seeds[0].task_id

    with pytest.raises(MCPError) as refused:
        await harness.client.list_resources(cursor="bm90LWEtY3Vyc29y")
    assert "'cursor'" in refused.value.error.message


async def test_an_image_page_survives_images_made_meanwhile(harness: Harness) -> None:
    """An image cursor names the last image listed: images made after it neither repeat nor hide one."""
    first = await harness.call("generate_image", {"prompt": "one"})
    second = await harness.call("generate_image", {"prompt": "two"})
    assert first.structured_content and second.structured_content
    history = harness.app.server.history
    history.resource_page_size = 1
    # Past both task pages and the first image page: the cursor of the second image page.
    cursor: str | None = None
    seen: list[str] = []
    while True:
        page = await harness.client.list_resources(cursor=cursor, cache_mode="bypass")
        seen += [str(r.uri) for r in page.resources if str(r.uri).startswith("runapi://images/")]
        cursor = page.next_cursor
        if seen:
            break
    assert cursor is not None
    third = await harness.call("generate_image", {"prompt": "three"})
    assert third.structured_content
    rest = await harness.client.list_resources(cursor=cursor, cache_mode="bypass")
    seen += [str(r.uri) for r in rest.resources]
    assert rest.next_cursor is None
    expected = {m.structured_content["images"][0]["uri"] for m in (first, second) if m.structured_content}
    assert set(seen) == expected and len(seen) == 2


async def test_the_tasks_index_resource_is_the_first_page(harness: Harness) -> None:
    records = await seed(harness, 25)
    index = await harness.client.read_resource("runapi://tasks")
    assert isinstance(index.contents[0], TextResourceContents)
    assert index.contents[0].mime_type == "application/json"
    data = json.loads(index.contents[0].text)
    assert [t["task_id"] for t in data["tasks"]] == [r.task_id for r in reversed(records)][:20]
    rest = await harness.call("list_tasks", {"cursor": data["next_cursor"]})
    assert rest.structured_content is not None
    assert [t["task_id"] for t in rest.structured_content["tasks"]] == [r.task_id for r in reversed(records)][20:]


async def test_the_cli_prints_the_history_the_server_keeps(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    made = await harness.call("generate_image", {"prompt": "for the table"})
    assert made.structured_content is not None
    image: dict[str, Any] = made.structured_content["images"][0]
    await harness.app.manager.store.save(
        seeded(1, start=time.time() - 100, status="failed").model_copy(
            update={"images": [ImageRecord(id="x", task_id="task-seed-001", index=0, uri="runapi://images/x")]}
        )
    )
    home = str(harness.app.settings.home)

    async def cli(*argv: str) -> tuple[int, list[str]]:
        # In a worker thread: the command runs its own event loop, as it does from a shell.
        code = await anyio.to_thread.run_sync(main, ["tasks", "--home", home, *argv])
        return code, capsys.readouterr().out.splitlines()

    # The server keeps its store open: the CLI reads the same file beside it.
    code, lines = await cli()
    assert code == 0
    assert lines[0].split() == ["TASK", "STATUS", "MODEL", "CREATED", "PRICE", "PROMPT", "IMAGES"]
    assert made.structured_content["task_id"] in lines[1] and "completed" in lines[1] and image["path"] in lines[1]
    assert "for the table" in lines[1] and "$0.03" in lines[1]
    assert "task-seed-001" in lines[2] and "failed" in lines[2] and "seeded prompt 1" in lines[2]
    assert "$0.01" not in lines[2], "a failed task RunAPI reported no cost for shows no price"
    assert "1 not downloaded" in lines[2]
    # The reason, under STATUS on the line below.
    assert lines[3].strip() == "failed: upstream said no (RunAPI charged nothing)"
    assert lines[3].index("failed:") == lines[0].index("STATUS") and len(lines) == 4
    code, lines = await cli("--status", "failed", "--limit", "5")
    assert code == 0 and len(lines) == 3 and "task-seed-001" in lines[1]
    code, lines = await cli("--limit", "1")
    assert code == 0 and len(lines) == 3 and lines[2] == "(the newest 1 task shown; --limit N shows more)"
    code, lines = await cli("--limit", "2")
    assert code == 0 and len(lines) == 4
    code, lines = await cli("--status", "pending")
    assert code == 0 and lines == [f"No tasks with status pending in {harness.app.settings.store_file}"]
    with pytest.raises(SystemExit) as refused:
        await cli("--status", "finished")
    assert refused.value.code == 2 and "--status" in capsys.readouterr().err


async def test_list_tasks_text_counts_in_words_and_prices_no_uncharged_failure(harness: Harness) -> None:
    start = time.time() - 100
    for record in (
        seeded(1, start=start),  # 1 cent, completed
        seeded(2, start=start, status="failed"),  # quoted 2 cents, failed, no cost reported: not charged
        seeded(3, start=start, status="failed").model_copy(update={"cost_cents": 3}),  # failed, charged
    ):
        await harness.app.manager.store.save(record)
    text = text_of(await harness.call("list_tasks", {}))
    lines = {line.split(",")[0].lstrip("- "): line for line in text.splitlines()[1:]}
    assert text.startswith("3 tasks, newest first:")
    assert ", 1 cent," in lines["task-seed-001"]
    assert "cent" not in lines["task-seed-002"] and "error: upstream said no" in lines["task-seed-002"]
    assert ", 3 cents," in lines["task-seed-003"]
    one = text_of(await harness.call("list_tasks", {"limit": 1}))
    assert one.startswith("1 task, newest first:")


def test_the_table_shortens_prompts_and_says_why_a_task_ended() -> None:
    from runapi_mcp.commands.tasks import PROMPT_WIDTH, format_table
    from runapi_mcp.wording import count

    start = time.time() - 1_000
    long_prompt = "A watercolour fox\n\nin deep   snow, " + "soft light, " * 20
    records = [
        seeded(1, start=start).model_copy(update={"prompt": long_prompt}),
        seeded(2, start=start, status="failed").model_copy(update={"cost_cents": 2, "error": "bad\nthing " * 40}),
        seeded(3, start=start).model_copy(update={"prompt": None, "action": "upscale"}),
        seeded(4, start=start, status="cancelled").model_copy(update={"error": "cancelled by the user"}),
        seeded(5, start=start, status="failed").model_copy(update={"error": None}),
    ]
    lines = format_table(records).splitlines()
    prompt_at = lines[0].index("PROMPT")
    shown = lines[1][prompt_at:].split("  ")[0]
    assert shown == "A watercolour fox in deep snow, soft li…"
    assert len(shown) == PROMPT_WIDTH
    # A failed task RunAPI reported a cost for shows it, and its reason on one line, cut short.
    assert "$0.02" in lines[2] and lines[3].strip().startswith("failed: bad thing bad thing")
    assert lines[3].strip().endswith("…") and "charged nothing" not in lines[3] and "\n" not in lines[3]
    assert lines[4][prompt_at:].startswith("- "), "an upscale has no prompt"
    assert lines[5].startswith("task-seed-004") and lines[6].strip() == "cancelled: cancelled by the user"
    assert lines[7].startswith("task-seed-005") and "-" in lines[7] and len(lines) == 8, "no reason, no line"
    assert [count(n, "task") for n in (0, 1, 2)] == ["0 tasks", "1 task", "2 tasks"]


def test_every_spelling_of_the_task_states_agrees() -> None:
    """The records' TaskState is the one definition: the tools' filter, the CLI's choices and the MCP task
    states are derived from it."""
    states = get_args(TaskState)
    assert states == STATES == ("submitting", "pending", "processing", "completed", "failed", "cancelled")
    assert set(TERMINAL) | set(UNFINISHED) == set(states) and not TERMINAL & UNFINISHED
    record = TaskRecord(idempotency_key="k", model="m", service="s", action="a", route="/r")
    assert [mcp_status(record.model_copy(update={"status": s})) for s in states] == [
        "working", "working", "working", "completed", "failed", "cancelled"
    ]


@pytest.mark.parametrize(
    "cursor",
    [
        "bm90LWEtY3Vyc29y",  # base64 of text that is no cursor
        base64.urlsafe_b64encode(b"[" * 5000 + b"]" * 5000).decode(),  # deeper than a JSON parser goes
        "A" * 10_000,
        base64.urlsafe_b64encode(json.dumps(["i", "x", -1]).encode()).decode(),
        base64.urlsafe_b64encode(json.dumps(["t", "not-a-store-cursor"]).encode()).decode(),
    ],
)
async def test_resources_list_refuses_a_cursor_it_did_not_hand_out(harness: Harness, cursor: str) -> None:
    with pytest.raises(MCPError) as refused:
        await harness.client.list_resources(cursor=cursor)
    assert refused.value.error.code == -32602 and "'cursor'" in refused.value.error.message
