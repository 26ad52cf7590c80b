"""The task stores: the in-memory one and the SQLite one answer alike; the SQLite one migrates and survives."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from runapi_mcp.tasks import ImageRecord, InvalidCursorError, MemoryTaskStore, TaskRecord, TaskStore
from runapi_mcp.tasks.sqlite_store import SCHEMA_VERSION, SQLiteTaskStore, StoreError

pytestmark = pytest.mark.anyio


def _record(n: int, *, status: str = "completed", model: str = "gpt-image-2", **extra: object) -> TaskRecord:
    return TaskRecord.model_validate(
        {
            "task_id": f"task-{n:04d}",
            "upstream_id": f"up-{n}" if status != "submitting" else None,
            "idempotency_key": f"key-{n}",
            "status": status,
            "model": model,
            "service": "gpt_image_2",
            "action": "text_to_image",
            "route": "/api/v1/gpt_image_2/text_to_image",
            "created_at": 1_000_000.0 + n,
            **extra,
        }
    )


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TaskStore]:
    if request.param == "memory":
        yield MemoryTaskStore()
        return
    sqlite_store = await SQLiteTaskStore.open(tmp_path / "tasks.sqlite3")
    try:
        yield sqlite_store
    finally:
        await sqlite_store.close()


async def test_get_by_either_id_pages_filters_and_cursors(store: TaskStore) -> None:
    for n in range(25):
        await store.save(_record(n, status="failed" if n % 5 == 0 else "completed", price_cents=3))
    await store.save(_record(30, model="flux-kontext-pro"))
    assert (await store.get("task-0007")) == (await store.get("up-7"))
    assert await store.get("nope") is None
    first = await store.page(limit=10)
    assert [r.task_id for r in first.records] == [f"task-{n:04d}" for n in (30, *range(24, 15, -1))]
    assert first.next_cursor
    second = await store.page(limit=10, cursor=first.next_cursor)
    assert [r.task_id for r in second.records] == [f"task-{n:04d}" for n in range(15, 5, -1)]
    rest = await store.page(limit=10, cursor=second.next_cursor)
    assert len(rest.records) == 6 and rest.next_cursor is None
    failed = await store.page(status="failed", limit=100)
    assert {r.task_id for r in failed.records} == {f"task-{n:04d}" for n in range(0, 25, 5)}
    flux = await store.page(model="flux-kontext-pro")
    assert [r.task_id for r in flux.records] == ["task-0030"]
    with pytest.raises(InvalidCursorError):
        await store.page(cursor="not-a-cursor")
    assert await store.spent_cents(since=0) == 3 * 20  # failed tasks are not counted
    assert await store.spent_cents(since=1_000_020.0) == 3 * 4


async def test_unfinished_means_what_a_restart_must_take_up(store: TaskStore) -> None:
    image = ImageRecord(id="i", task_id="task-0003", index=0, uri="runapi://images/i", url="https://x/y.png")
    await store.save(_record(1, status="submitting"))
    await store.save(_record(2, status="processing"))
    await store.save(_record(3, images=[image]))  # completed, its image not in the library
    await store.save(_record(4, images=[image.model_copy(update={"path": "/lib/i.png"})]))
    await store.save(_record(5, status="failed"))
    assert sorted(r.task_id for r in await store.unfinished()) == ["task-0001", "task-0002", "task-0003"]
    done = (await store.get("task-0002"))
    assert done is not None
    await store.save(done.completed([image.model_copy(update={"path": "/lib/j.png"})], [], None, at=time.time()))
    assert sorted(r.task_id for r in await store.unfinished()) == ["task-0001", "task-0003"]


async def test_state_values_round_trip(store: TaskStore) -> None:
    assert await store.load_state("durations") is None
    await store.save_state("durations", {"gpt-image-2@1k": [12.0, 1.5]})
    assert await store.load_state("durations") == {"gpt-image-2@1k": [12.0, 1.5]}


async def test_the_sqlite_store_outlives_its_process_and_takes_concurrent_writes(tmp_path: Path) -> None:
    path = tmp_path / "tasks.sqlite3"
    first = await SQLiteTaskStore.open(path)
    async with anyio.create_task_group() as tg:
        for n in range(200):
            tg.start_soon(first.save, _record(n))
    await first.close()
    again = await SQLiteTaskStore.open(path)
    try:
        page = await again.page(limit=500)
        assert len(page.records) == 200
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        await again.close()


async def test_an_older_layout_is_migrated_not_discarded(tmp_path: Path) -> None:
    path = tmp_path / "tasks.sqlite3"
    old = _record(7, status="processing", price_cents=6)
    with sqlite3.connect(path) as db:  # layout 1, as the first version wrote it
        db.execute(
            "CREATE TABLE tasks (task_id TEXT PRIMARY KEY, upstream_id TEXT, status TEXT NOT NULL,"
            " model TEXT NOT NULL, created_at REAL NOT NULL, record TEXT NOT NULL)"
        )
        db.execute(
            "INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?)",
            (old.task_id, old.upstream_id, old.status, old.model, old.created_at, old.model_dump_json()),
        )
        db.execute("PRAGMA user_version = 1")
    store = await SQLiteTaskStore.open(path)
    try:
        assert await store.get("up-7") == old
        assert [r.task_id for r in await store.unfinished()] == ["task-0007"]  # backfilled from the record
        assert await store.spent_cents(since=0) == 6
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_a_newer_layout_or_a_broken_row_is_handled(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    newer = tmp_path / "newer.sqlite3"
    with sqlite3.connect(newer) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this server"):
        await SQLiteTaskStore.open(newer)
    path = tmp_path / "tasks.sqlite3"
    store = await SQLiteTaskStore.open(path)
    try:
        await store.save(_record(1))
        await store.save(_record(2))
        with sqlite3.connect(path) as db:
            db.execute("UPDATE tasks SET record = '{not json' WHERE task_id = 'task-0001'")
        page = await store.page()
        assert [r.task_id for r in page.records] == ["task-0002"]  # the bad row is skipped, not fatal
        assert "unreadable task record" in caplog.text
    finally:
        await store.close()


async def test_history_records_each_status_change() -> None:
    record = _record(1, status="submitting")
    started = time.time()
    moved = record.accepted("up-1", at=started).progressed("pending", 0.5, at=started).completed(
        [], [], None, at=started + 1
    )
    assert [step.status for step in moved.history] == ["pending", "completed"]
    assert all(step.at >= started for step in moved.history)


async def test_what_the_gallery_asks_models_pictures_and_outputs_by_url(store: TaskStore) -> None:
    def image(n: int, index: int, *, saved: bool = True) -> dict[str, object]:
        return {
            "id": f"img-{n}-{index}",
            "task_id": f"task-{n:04d}",
            "index": index,
            "uri": f"runapi://images/img-{n}-{index}",
            "path": f"/library/img-{n}-{index}.png" if saved else None,
            "url": f"https://cdn.example/{n}/{index}.png",
        }

    await store.save(_record(1, prompt="A red FOX in the snow", images=[image(1, 0), image(1, 1)]))
    await store.save(_record(2, prompt="Straße bei Nacht", model="imagen-4", images=[image(2, 0, saved=False)]))
    await store.save(_record(3, status="failed", prompt="a fox that failed"))
    await store.save(_record(4, prompt="bob's fox", owner="bob", model="flux-pro", images=[image(4, 0)]))
    assert await store.models(owner="") == ["gpt-image-2", "imagen-4"]
    assert await store.models() == ["flux-pro", "gpt-image-2", "imagen-4"]
    # Pictures in the library (a file on disk), of matching tasks; text compared case-folded (ß = ss).
    assert await store.count_pictures(owner="") == 2
    assert await store.count_pictures(owner="", text="fox") == 2
    assert await store.count_pictures(owner="", text="STRASSE") == 0  # its one output was never downloaded
    assert await store.count_pictures(owner="", model="imagen-4") == 0
    assert await store.count_pictures(owner="", status="failed", text="fox") == 0
    assert await store.count_pictures(text="fox") == 3
    assert await store.count_pictures(owner="bob", text="nothing like it") == 0
    found = await store.outputs_at(
        ["https://cdn.example/1/1.png", "https://cdn.example/4/0.png", "https://elsewhere.example/x.png"], owner=""
    )
    assert {url: image.id for url, image in found.items()} == {"https://cdn.example/1/1.png": "img-1-1"}
    assert set(await store.outputs_at(["https://cdn.example/4/0.png"])) == {"https://cdn.example/4/0.png"}
    assert await store.outputs_at([], owner="") == {}
