"""The task stores: in memory, SQLite and PostgreSQL answer alike (every test taking ``store`` runs on each);
the SQLite and PostgreSQL ones migrate and survive. PostgreSQL: tests/postgres.py (skipped, saying why, where
no database answers; required in CI)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from runapi_mcp.tasks import ImageRecord, InvalidCursorError, MemoryTaskStore, TaskRecord, TaskStore
from runapi_mcp.tasks.changes import ChangeHub, FeedGap, TaskChange
from runapi_mcp.tasks.migrations import MIGRATIONS
from runapi_mcp.tasks.sqlite_store import SCHEMA_VERSION, SQLiteTaskStore, StoreError
from tests.postgres import need_postgres, pg_stores
from tests.support import until

pytestmark = pytest.mark.anyio

ENGINES = ["memory", "sqlite", "postgres"]
LAYOUT_4 = Path(__file__).parent / "data" / "tasks-layout-4.sqlite3"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # module-wide: the PostgreSQL pools (tests/postgres.py) are opened once per module


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


@asynccontextmanager
async def instances(engine: str, tmp_path: Path, pg_pools: Any) -> AsyncIterator[tuple[TaskStore, TaskStore]]:
    """Two server instances' views of one store. The embedded stores serve one process, which owns all their
    tasks: both views are the same store. On PostgreSQL, two stores over two pools on one schema."""
    if engine == "memory":
        memory = MemoryTaskStore()
        yield memory, memory
    elif engine == "sqlite":
        sqlite_store = await SQLiteTaskStore.open(tmp_path / "tasks.sqlite3")
        try:
            yield sqlite_store, sqlite_store
        finally:
            await sqlite_store.close()
    else:
        async with pg_stores(pg_pools, 2) as (a, b):
            yield a, b


@pytest.fixture(params=ENGINES)
async def store(request: pytest.FixtureRequest, tmp_path: Path, pg_pools: Any) -> AsyncIterator[TaskStore]:
    async with instances(request.param, tmp_path, pg_pools) as (one, _):
        yield one


@pytest.fixture(params=ENGINES)
async def two(request: pytest.FixtureRequest, tmp_path: Path, pg_pools: Any) -> AsyncIterator[tuple[TaskStore, TaskStore]]:
    async with instances(request.param, tmp_path, pg_pools) as pair:
        yield pair


class Durable:
    """A durable store (SQLite file, or PostgreSQL schema) to open anew, as a restarted process would, and
    to reach behind the store's back (``execute``: one SQL statement, committed)."""

    def __init__(self, engine: str, tmp_path: Path) -> None:
        self.engine = engine
        self.path = tmp_path / "tasks.sqlite3"
        self.schema = ""
        if engine == "postgres":
            from tests.postgres import new_schema

            need_postgres()
            self.schema = new_schema()

    async def open(self) -> TaskStore:
        if self.engine == "sqlite":
            return await SQLiteTaskStore.open(self.path)
        from runapi_mcp.tasks.pg_store import PostgresTaskStore
        from tests.postgres import database_url

        return await PostgresTaskStore.open(database_url(), schema=self.schema, max_size=2)

    def execute(self, statement: str) -> None:
        if self.engine == "sqlite":
            with sqlite3.connect(self.path) as db:
                db.execute(statement)
            return
        import psycopg

        from tests.postgres import schema_url

        with psycopg.connect(schema_url(self.schema), autocommit=True) as conn:
            conn.execute(statement.encode())

    def drop(self) -> None:
        if self.schema:
            from tests.postgres import drop_schema

            drop_schema(self.schema)


@pytest.fixture(params=["sqlite", "postgres"])
def durable(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    store = Durable(request.param, tmp_path)
    yield store
    store.drop()


async def test_get_by_either_id_pages_filters_and_cursors(store: TaskStore) -> None:
    for n in range(25):
        await store.save(_record(n, status="failed" if n % 5 == 0 else "completed", price_cents=3))
    await store.save(_record(30, model="flux-kontext-pro"))
    assert (await store.get("task-0007")) == (await store.get("up-7"))
    assert await store.get("nope") is None
    # A batch by server id, in one read: an unknown id (or a RunAPI id) is absent; 600 ids take SQLite's chunks.
    many = await store.get_many([f"task-{n:04d}" for n in range(600)] + ["task-0030", "up-7", "nope"])
    assert sorted(many) == [f"task-{n:04d}" for n in (*range(25), 30)]
    assert many["task-0007"] == await store.get("task-0007") and many["task-0030"].model == "flux-kontext-pro"
    assert await store.get_many([]) == {}
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


async def test_a_state_default_is_kept_once_by_instances_racing_for_it(two: tuple[TaskStore, TaskStore]) -> None:
    """What instances must share, made once (the signing key of image links): of several keeping a value of
    their own at once, all get the first one's, and later ones too."""
    a, b = two
    kept: list[Any] = []

    async def keep(store: TaskStore, n: int) -> None:
        kept.append(await store.setdefault_state("secret", {"made_by": n}))

    async with anyio.create_task_group() as tg:
        for n in range(8):
            tg.start_soon(keep, (a, b)[n % 2], n)
    assert len({json.dumps(value) for value in kept}) == 1, kept
    assert await a.setdefault_state("secret", {"made_by": "late"}) == kept[0] == await b.load_state("secret")


async def test_the_store_outlives_its_process_and_takes_concurrent_writes(durable: Durable) -> None:
    first = await durable.open()
    async with anyio.create_task_group() as tg:
        for n in range(200):
            tg.start_soon(first.save, _record(n))
    await first.close()
    again = await durable.open()
    try:
        page = await again.page(limit=500)
        assert len(page.records) == 200
        if durable.engine == "sqlite":
            with sqlite3.connect(durable.path) as db:
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


async def test_a_newer_layout_or_a_broken_row_is_handled(durable: Durable, caplog: pytest.LogCaptureFixture) -> None:
    store = await durable.open()
    try:
        await store.save(_record(1))
        await store.save(_record(2))
        durable.execute("UPDATE tasks SET record = '{not json' WHERE task_id = 'task-0001'")
        page = await store.page()
        assert [r.task_id for r in page.records] == ["task-0002"]  # the bad row is skipped, not fatal
        assert list(await store.get_many(["task-0001", "task-0002"])) == ["task-0002"]
        assert "unreadable task record" in caplog.text
    finally:
        await store.close()
    durable.execute(
        f"INSERT INTO schema_migrations (version, name, applied_at) VALUES ({SCHEMA_VERSION + 1}, 'future', 0)"
    )
    with pytest.raises(StoreError, match="newer than this server"):
        await durable.open()
    # An older runapi-mcp read only user_version: a newer SQLite file says so there too, and is refused.
    newer = durable.path.with_name("newer.sqlite3")
    with sqlite3.connect(newer) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this server"):
        await SQLiteTaskStore.open(newer)


async def test_each_migration_is_applied_once_and_recorded(durable: Durable) -> None:
    for _ in range(2):  # the second open finds nothing to do
        store = await durable.open()
        await store.close()
    if durable.engine == "sqlite":
        with sqlite3.connect(durable.path) as db:
            rows = db.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    else:
        import psycopg

        from tests.postgres import schema_url

        with psycopg.connect(schema_url(durable.schema)) as conn:
            rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
    assert rows == [(m.version, m.name) for m in MIGRATIONS]
    assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))


async def test_a_file_made_by_the_layout_4_server_migrates_without_loss(tmp_path: Path) -> None:
    """tests/data/tasks-layout-4.sqlite3 was written by runapi-mcp at layout 4 (commit 89492a8, before the
    migrations table) through its own SQLiteTaskStore: seven tasks (created at 1_700_000_000 + n, n = 1..7:
    completed with two library pictures and a reported cost of 2; completed on imagen-4 with an output not
    downloaded; failed; processing; submitting; bob's completed one on flux-pro; bob's cancelled one), each
    quoted 3 cents but n = 4 (6), n = 5 (11) and n = 6 (5), and the state value "durations"."""
    path = tmp_path / "tasks.sqlite3"
    shutil.copyfile(LAYOUT_4, path)
    store = await SQLiteTaskStore.open(path)
    try:
        page = await store.page(limit=50)
        assert [r.task_id for r in page.records] == [f"task-{n:04d}" for n in range(7, 0, -1)]
        first = await store.get("up-1")
        assert first is not None and first.prompt == "A red FOX in the snow" and first.cost_cents == 2
        assert [i.path for i in first.images] == ["/library/img-1-0.png", "/library/img-1-1.png"]
        assert [r.status for r in page.records] == [
            "cancelled", "completed", "submitting", "processing", "failed", "completed", "completed"
        ]
        assert sorted(r.task_id for r in await store.unfinished()) == ["task-0002", "task-0004", "task-0005"]
        # Spend: n=1 its cost (2), n=2 3, n=4 6, n=5 11, n=7 3 (cancelled is not failed); bob: n=6 5, n=7 3.
        assert await store.spent_cents(since=0, owner="") == 2 + 3 + 6 + 11
        assert await store.spent_cents(since=0, owner="bob") == 5 + 3
        assert await store.models() == ["flux-pro", "gpt-image-2", "imagen-4"]
        assert await store.count_pictures(owner="", text="fox") == 2
        assert set(await store.outputs_at(["https://cdn.example/6/0.png"], owner="bob")) == {
            "https://cdn.example/6/0.png"
        }
        assert await store.load_state("durations") == {"gpt-image-2@1k": [12.0, 1.5]}
        # The new layout works on the old data: a hold, a lease.
        hold = await store.hold_spend("", since=0, cents=1, cap_cents=2 + 3 + 6 + 11 + 1, ttl_s=60)
        assert hold.admitted and hold.spent_cents == 22
        assert [r.task_id for r in await store.leases.claim("me", limit=1, ttl_s=60)] == ["task-0002"]
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall() == [
            (v,) for v in range(1, SCHEMA_VERSION + 1)
        ]
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


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


# -- what several instances share: leases, spend holds, the change feed (every engine) --------------------------


async def _claim_until(store: TaskStore, holder: str, want: int, ttl_s: float = 60) -> list[str]:
    """Claim for ``holder`` until it has taken ``want`` tasks (a lease may be a moment from its deadline)."""
    taken: list[str] = []

    async def enough() -> bool:
        taken.extend(r.task_id for r in await store.leases.claim(holder, limit=want - len(taken), ttl_s=ttl_s))
        return len(taken) >= want

    await until(enough, f"{want} tasks claimed by {holder}")
    return taken


async def test_leases_split_due_tasks_between_instances(two: tuple[TaskStore, TaskStore]) -> None:
    a, b = two
    for n in range(10):
        await a.save(_record(n, status="processing"))
    await a.save(_record(20, status="completed"))
    await a.save(_record(21, status="failed"))
    first = await a.leases.claim("instance-a", limit=4, ttl_s=60)
    assert [r.task_id for r in first] == [f"task-{n:04d}" for n in range(4)]  # oldest first, whole records
    assert first[0] == await a.get("task-0000")
    rest = await b.leases.claim("instance-b", limit=100, ttl_s=60)
    assert [r.task_id for r in rest] == [f"task-{n:04d}" for n in range(4, 10)]  # finished ones are never due
    assert await a.leases.claim("instance-a", limit=100, ttl_s=60) == []  # nothing is due: every task is held
    # Only the holder renews; a release lets the other instance take them.
    held_a = {r.task_id for r in first}
    assert await b.leases.renew("instance-b", held_a, ttl_s=60) == set()
    assert await a.leases.renew("instance-a", held_a, ttl_s=60) == held_a
    await a.leases.release("instance-a", ["task-0000", "task-0001"])
    assert [r.task_id for r in await b.leases.claim("instance-b", limit=100, ttl_s=60)] == ["task-0000", "task-0001"]
    # Only the named tasks, when named.
    await b.save(_record(30, status="pending"))
    await b.save(_record(31, status="pending"))
    only = await a.leases.claim("instance-a", limit=100, ttl_s=60, task_ids=["task-0031", "task-0005"])
    assert [r.task_id for r in only] == ["task-0031"]  # task-0005 is b's
    # A task written finished ends its lease; letting go of everything frees the rest.
    done = await b.get("task-0005")
    assert done is not None
    await b.save(done.completed([], [], None, at=2_000_000.0))
    assert await b.leases.renew("instance-b", ["task-0004", "task-0005"], ttl_s=60) == {"task-0004"}
    await b.leases.release("instance-b")
    again = await a.leases.claim("instance-a", limit=100, ttl_s=60)
    assert {r.task_id for r in again} == {"task-0000", "task-0001", "task-0030", *(f"task-{n:04d}" for n in (4, 6, 7, 8, 9))}


async def test_an_instance_that_stops_renewing_loses_its_tasks_at_the_deadline(
    two: tuple[TaskStore, TaskStore],
) -> None:
    a, b = two
    for n in range(3):
        await a.save(_record(n, status="processing"))
    assert len(await a.leases.claim("instance-a", limit=10, ttl_s=0.2)) == 3
    assert await b.leases.claim("instance-b", limit=10, ttl_s=60) == []  # held until the deadline
    # instance-a renews no more: at its deadline the tasks are due again, and instance-b takes them up.
    taken = await _claim_until(b, "instance-b", 3)
    assert sorted(taken) == ["task-0000", "task-0001", "task-0002"]
    assert await a.leases.renew("instance-a", taken, ttl_s=60) == set()  # lost, and a late renewal cannot take them back
    assert await b.leases.renew("instance-b", taken, ttl_s=60) == set(taken)


async def test_spend_holds_keep_an_owner_under_the_cap(store: TaskStore) -> None:
    await store.save(_record(1, price_cents=4))
    await store.save(_record(2, status="failed", price_cents=50))  # a failed task costs nothing
    await store.save(_record(3, price_cents=5, owner="bob"))
    first = await store.hold_spend("", since=0, cents=3, cap_cents=10, ttl_s=60)
    assert first.admitted and first.spent_cents == 4 and first.hold_id
    refused = await store.hold_spend("", since=0, cents=4, cap_cents=10, ttl_s=60)
    assert not refused.admitted and refused.spent_cents == 4 + 3 and refused.hold_id is None
    assert (await store.hold_spend("bob", since=0, cents=5, cap_cents=10, ttl_s=60)).admitted  # bob's own day
    since_task_2 = await store.hold_spend("", since=1_000_002.0, cents=4, cap_cents=6, ttl_s=60)
    assert not since_task_2.admitted and since_task_2.spent_cents == 3  # task 1 is older: only the hold counts
    await store.release_spend(first.hold_id)
    assert (await store.hold_spend("", since=0, cents=6, cap_cents=10, ttl_s=0.05)).admitted

    async def admitted() -> bool:
        return (await store.hold_spend("", since=0, cents=6, cap_cents=10, ttl_s=60)).admitted

    # A hold nobody released (its instance died) stops counting at its deadline.
    await until(admitted, "the unreleased hold to stop counting", every=0.02)
    assert await store.spent_cents(since=0, owner="") == 4  # holds are not spending


async def test_the_write_recording_an_admitted_task_drops_its_hold(two: tuple[TaskStore, TaskStore]) -> None:
    # The hold's quote turns into the record's price in one write: another instance's check right after it
    # counts the task once. (Dropped after the write, both counted: a call the cap allows was refused.)
    a, b = two
    held = await a.hold_spend("", since=0, cents=3, cap_cents=6, ttl_s=60)
    assert held.admitted and held.hold_id
    await a.save(_record(1, status="submitting", price_cents=3), release_hold=held.hold_id)
    second = await b.hold_spend("", since=0, cents=3, cap_cents=6, ttl_s=60)
    assert second.admitted and second.spent_cents == 3 and second.hold_id
    await a.release_spend(held.hold_id)  # a release after the write (the guard skips it now) is a no-op
    refused = await b.hold_spend("", since=0, cents=1, cap_cents=6, ttl_s=60)
    assert not refused.admitted and refused.spent_cents == 3 + 3  # the record and the second hold
    await b.save(_record(2, status="submitting", price_cents=3))  # a write naming no hold leaves the holds be
    assert (await a.hold_spend("", since=0, cents=0, cap_cents=100, ttl_s=60)).spent_cents == 3 + 3 + 3


async def test_every_write_reaches_the_change_feed_of_every_instance(two: tuple[TaskStore, TaskStore]) -> None:
    a, b = two
    async with a.changes.subscribe() as seen_by_a, b.changes.subscribe() as seen_by_b:
        record = _record(1, status="submitting")
        await a.save(record)
        await a.save(record.accepted("up-1", at=2_000_000.0))
        await b.save(record.completed([], [], None, at=2_000_001.0))
        await b.save_state("durations", {})  # not a task record: no change
        await b.save(_record(2, status="failed"))
        expected = [
            TaskChange("task-0001", "submitting"),
            TaskChange("task-0001", "pending"),
            TaskChange("task-0001", "completed"),
            TaskChange("task-0002", "failed"),
        ]
        with anyio.fail_after(10):
            assert [await seen_by_a.receive() for _ in expected] == expected
            assert [await seen_by_b.receive() for _ in expected] == expected


async def test_a_subscriber_that_falls_behind_is_told_it_missed_changes() -> None:
    hub = ChangeHub()
    async with hub.subscribe(buffer=3) as slow, hub.subscribe() as keeping_up:
        for n in range(5):
            hub.publish(TaskChange(f"task-{n}", "pending"))
        gap = await slow.receive()
        assert isinstance(gap, FeedGap) and "fell more than 3 changes behind" in gap.reason
        assert await slow.receive() == TaskChange("task-4", "pending")  # and it goes on from there
        assert [await keeping_up.receive() for _ in range(5)] == [TaskChange(f"task-{n}", "pending") for n in range(5)]
    assert hub.subscribers == 0
    assert TaskChange.from_payload(TaskChange("t", "completed").payload()) == TaskChange("t", "completed")
    assert TaskChange.from_payload('{"task_id": "t", "status": "exploded"}') is None


async def test_a_gap_waiting_for_its_subscriber_stands_for_the_gaps_after_it() -> None:
    """The re-read a waiting gap brings starts after any later gap arrived, so a later one is dropped: a burst
    of gaps during a re-read costs one more, not one each. The changes between them are all delivered."""
    hub = ChangeHub()
    async with hub.subscribe() as subscription:
        hub.publish(FeedGap("first"))
        hub.publish(TaskChange("task-1", "pending"))
        hub.publish(FeedGap("second"))
        hub.publish(TaskChange("task-2", "pending"))
        assert [await subscription.receive() for _ in range(3)] == [
            FeedGap("first"), TaskChange("task-1", "pending"), TaskChange("task-2", "pending")
        ]
        hub.publish(FeedGap("third"))  # after the first was received: its re-read may have missed this
        hub.publish(FeedGap("fourth"))
        hub.publish(TaskChange("task-3", "pending"))
        assert [await subscription.receive() for _ in range(2)] == [FeedGap("third"), TaskChange("task-3", "pending")]
