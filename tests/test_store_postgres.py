"""PostgreSQL only: what two instances on one database do at the same moment, the listener that reconnects,
migrations raced and backfilled, the doctor's check, and two servers sharing one spend cap end to end.

The contract every engine keeps is in test_store.py; here each test needs a real server (tests/postgres.py:
skipped, saying why, where none answers; required in CI).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from mcp.client import Client

from runapi_mcp.app import open_app
from runapi_mcp.commands.doctor import Report, diagnose
from runapi_mcp.redaction import redact_url
from runapi_mcp.simulator import Simulator
from runapi_mcp.tasks import TaskRecord, pg_store
from runapi_mcp.tasks.changes import FeedGap, TaskChange
from runapi_mcp.tasks.migrations import SCHEMA_VERSION
from runapi_mcp.tasks.pg_store import PostgresTaskStore, migrate
from runapi_mcp.tasks.store import StoreError
from tests.postgres import database_url, need_postgres, pg_stores, pools_of, schema_url
from tests.support import (
    FAST_POLICY,
    Harness,
    calls_around_a_paused_write,
    make_settings,
    text_of,
    upstream_creates,
)

pytestmark = pytest.mark.anyio

GPT_1K_CENTS = 3  # the simulator's price of one gpt-image-2 picture at 1k
UNREACHABLE = "postgresql://runapi:s3cret-pw@127.0.0.1:9/tasks"  # port 9 (discard): nothing listens there


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # module-wide: the pools (tests/postgres.py) are opened once per module


def _record(n: int, **extra: Any) -> TaskRecord:
    return TaskRecord.model_validate(
        {
            "task_id": f"task-{n:04d}",
            "idempotency_key": f"key-{n}",
            "status": "processing",
            "model": "gpt-image-2",
            "service": "gpt_image_2",
            "action": "text_to_image",
            "route": "/api/v1/gpt_image_2/text_to_image",
            "created_at": 1_000_000.0 + n,
            **extra,
        }
    )


async def test_two_instances_admitting_at_once_cannot_both_pass_the_cap(pg_pools: Any) -> None:
    async with pg_stores(pg_pools, 2) as (a, b):
        await a.save(_record(1, status="completed", price_cents=4, owner="alice"))
        admitted: list[tuple[str, str]] = []

        async def admit(store: PostgresTaskStore, side: str, owner: str) -> None:
            hold = await store.hold_spend(owner, since=0, cents=3, cap_cents=13, ttl_s=60)
            if hold.admitted:
                admitted.append((side, owner))

        # 24 admissions at the same moment, half from each instance's pool, for two users: alice has 9 cents
        # of room (3 holds), bob 13 (4 holds).
        async with anyio.create_task_group() as tg:
            for n in range(24):
                tg.start_soon(admit, (a, b)[n % 2], "ab"[n % 2], ("alice", "bob")[n // 2 % 2])
        assert sorted(owner for _, owner in admitted) == ["alice"] * 3 + ["bob"] * 4, admitted
        assert {side for side, _ in admitted} == {"a", "b"}  # both instances admitted some: it was a real race
        refused = await b.hold_spend("alice", since=0, cents=1, cap_cents=13, ttl_s=60)
        assert not refused.admitted and refused.spent_cents == 4 + 9


async def test_instances_claiming_at_once_share_the_tasks_without_overlap(pg_pools: Any) -> None:
    async with pg_stores(pg_pools, 2) as (a, b):
        for n in range(60):
            await a.save(_record(n))
        claimed: dict[str, list[str]] = {"a": [], "b": []}

        async def claim(store: PostgresTaskStore, side: str) -> None:
            for _ in range(8):
                claimed[side] += [r.task_id for r in await store.leases.claim(side, limit=5, ttl_s=60)]

        async with anyio.create_task_group() as tg:
            for side, store in (("a", a), ("b", b), ("a", a), ("b", b)):
                tg.start_soon(claim, store, side)
        every = claimed["a"] + claimed["b"]
        assert sorted(every) == [f"task-{n:04d}" for n in range(60)]  # each task once, none left over
        assert claimed["a"] and claimed["b"]


async def test_the_listener_comes_back_after_its_connection_drops(pg_pools: Any) -> None:
    async with pg_stores(pg_pools, 2) as (a, b), a.changes.subscribe() as changes:
        await b.save(_record(1))
        with anyio.fail_after(10):
            assert await changes.receive() == TaskChange("task-0001", "processing")
        async with pools_of(pg_pools)[1].connection() as admin:
            killed = await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                (a.changes.application_name,),
            )
            assert [row[0] for row in await killed.fetchall()] == [True]
        with anyio.fail_after(10):
            gap = await changes.receive()  # once it listens again: what changed in between was not seen
            assert isinstance(gap, FeedGap) and "opened again" in gap.reason
            await b.save(_record(2))
            assert await changes.receive() == TaskChange("task-0002", "processing")


async def test_a_listener_whose_database_stops_answering_listens_again(
    pg_pools: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listener's backend stops answering without closing its connection (a hung server, a peer gone
    behind a NAT): its liveness check times out and it opens another connection, with a gap for the
    subscribers, instead of waiting on the dead one (the kernel's retransmissions: a quarter of an hour)."""
    if os.name != "posix" or os.geteuid() != 0 or "127.0.0.1" not in database_url():
        pytest.skip("stops the listener's backend with SIGSTOP: needs root and a local server")
    monkeypatch.setattr(pg_store, "_FEED_PING_S", 0.2)
    monkeypatch.setattr(pg_store, "_FEED_PING_TIMEOUT_S", 0.5)
    async with pg_stores(pg_pools, 2) as (a, b), a.changes.subscribe() as changes:
        async with pools_of(pg_pools)[1].connection() as admin:
            found = await admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (a.changes.application_name,)
            )
            [(pid,)] = await found.fetchall()
        os.kill(pid, signal.SIGSTOP)
        try:
            with anyio.fail_after(10):
                assert isinstance(await changes.receive(), FeedGap)
        finally:
            os.kill(pid, signal.SIGCONT)
        await b.save(_record(1))
        with anyio.fail_after(10):
            assert await changes.receive() == TaskChange("task-0001", "processing")


async def test_a_write_that_fails_announces_nothing(pg_pools: Any) -> None:
    async with pg_stores(pg_pools) as (store,), store.changes.subscribe() as changes:
        with pytest.raises(StoreError, match="failed"):
            await store.save(_record(1, owner="nul\x00byte"))  # PostgreSQL text holds no NUL: the write fails
        assert await store.get("task-0001") is None
        await store.save(_record(2))
        with anyio.fail_after(10):
            assert await changes.receive() == TaskChange("task-0002", "processing")  # the first one through


async def test_instances_starting_together_migrate_once(pg_pools: Any) -> None:
    need_postgres()
    from tests.postgres import drop_schema, new_schema

    schema = new_schema()
    stores: list[PostgresTaskStore] = []
    try:

        async def start() -> None:
            stores.append(await PostgresTaskStore.open(database_url(), schema=schema, max_size=1))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(start)
        async with pools_of(pg_pools)[0].connection() as conn:
            rows = await (
                await conn.execute(f'SELECT version FROM "{schema}".schema_migrations ORDER BY version')
            ).fetchall()
        assert rows == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    finally:
        for store in stores:
            await store.close()
        drop_schema(schema)


async def test_a_layout_4_schema_is_backfilled_on_migrating(pg_pools: Any) -> None:
    need_postgres()
    from tests.postgres import drop_schema, new_schema

    schema = new_schema()
    image = {"id": "i", "task_id": "task-0001", "index": 0, "uri": "runapi://images/i", "path": "/lib/i.png",
             "url": "https://cdn.example/i.png"}
    old = _record(1, status="completed", prompt="Große Straße", images=[image])
    try:
        async with pools_of(pg_pools)[0].connection() as conn:
            await conn.execute(f'CREATE SCHEMA "{schema}"')
            await migrate(conn, schema, "test", target=4)
            await conn.execute(
                f'INSERT INTO "{schema}".tasks (task_id, upstream_id, status, model, created_at, record, owner)'
                " VALUES (%s, %s, %s, %s, %s, %s, '')",
                (old.task_id, "up-1", old.status, old.model, old.created_at, old.model_dump_json()),
            )
        store = await PostgresTaskStore.attach(pools_of(pg_pools)[0], schema=schema)
        try:
            assert await store.get("task-0001") == old
            assert await store.count_pictures(text="GROSSE STRASSE") == 1  # the search columns, filled from the record
            assert set(await store.outputs_at(["https://cdn.example/i.png"])) == {"https://cdn.example/i.png"}
        finally:
            await store.close()
    finally:
        drop_schema(schema)


async def test_an_unreachable_database_is_one_clear_error_without_its_password() -> None:
    with pytest.raises(StoreError) as caught:
        await PostgresTaskStore.open(UNREACHABLE, timeout_s=2)
    text = str(caught.value)
    assert "cannot reach the task store at postgresql://runapi:***@127.0.0.1:9/tasks" in text, text
    assert "s3cret" not in text
    assert redact_url("postgres://u@h/db?password=p%40ss&sslmode=require") == (
        "postgres://u@h/db?password=***&sslmode=require"
    )


def test_a_server_whose_database_is_unreachable_says_so_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "RUNAPI_MCP_HOME": str(tmp_path), "RUNAPI_MCP_DATABASE_URL": UNREACHABLE}
    done = subprocess.run(
        [sys.executable, "-m", "runapi_mcp", "tasks"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("runapi-mcp: cannot reach the task store at postgresql://runapi:***@127.0.0.1:9/tasks")
    assert "s3cret" not in done.stderr and "Traceback" not in done.stderr, done.stderr


# -- the doctor ----------------------------------------------------------------------------------------------


def _doctor(home: Path, url: str) -> Report:
    report: Report = anyio.run(
        lambda: diagnose({"home": str(home)}, environ={"RUNAPI_MCP_DATABASE_URL": url}, offline=True, request_s=3,
                         cwd=home)
    )
    return report


def _store_line(report: Report) -> Any:
    return next(check for check in report.checks if check.name == "task store")


def test_the_doctor_checks_the_database(pg_schema_sync: str, tmp_path: Path) -> None:
    url = schema_url(pg_schema_sync)
    with psycopg.connect(database_url(), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{pg_schema_sync}"'.encode())
    check = _store_line(_doctor(tmp_path, url))
    assert check.status == "OK" and f"no tables yet (made at the first start, layout {SCHEMA_VERSION})" in check.detail

    async def one_task() -> None:
        store = await PostgresTaskStore.open(url)
        await store.save(_record(1))
        await store.close()

    anyio.run(one_task)
    check = _store_line(_doctor(tmp_path, url))
    assert check.status == "OK", check.line()
    assert check.detail.endswith(f"(schema {pg_schema_sync}): layout {SCHEMA_VERSION}, 1 task, writable"), check.detail
    # A database that takes no writes (a read-only replica, here: read-only transactions), then a newer layout.
    check = _store_line(_doctor(tmp_path, url + "%20-cdefault_transaction_read_only%3Don"))
    assert check.status == "FAIL" and "cannot write" in check.detail and "read-only" in check.detail, check.line()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (%s, 'future', 0)", (SCHEMA_VERSION + 1,))
    check = _store_line(_doctor(tmp_path, url))
    assert check.status == "FAIL" and f"layout {SCHEMA_VERSION + 1}, newer than this version's" in check.detail


def test_the_doctor_names_an_unreachable_database_without_its_password(tmp_path: Path) -> None:
    report = _doctor(tmp_path, UNREACHABLE)
    check = _store_line(report)
    assert check.status == "FAIL" and report.failed
    assert "PostgreSQL postgresql://runapi:***@127.0.0.1:9/tasks is not reachable" in check.detail, check.detail
    assert check.fix == "start the database, or fix RUNAPI_MCP_DATABASE_URL"
    assert all("s3cret" not in line for line in report.lines())


# -- end to end ----------------------------------------------------------------------------------------------


@asynccontextmanager
async def two_capped_servers(sim: Simulator, tmp_path: Path, pg_pools: Any) -> AsyncIterator[list[Harness]]:
    """Two instances (each its own home, one database schema, made and dropped here), each with a real MCP
    client, a cap of two pictures a day."""
    need_postgres()
    from tests.postgres import drop_schema, new_schema

    schema = new_schema()
    async with pools_of(pg_pools)[0].connection() as conn:  # an operator's schema, named in the URL's search_path
        await conn.execute(f'CREATE SCHEMA "{schema}"'.encode())
    try:
        homes = [tmp_path / side for side in "ab"]
        inputs = tmp_path / "inputs"
        inputs.mkdir()
        for home in homes:
            home.mkdir()
        settings = [
            make_settings(sim, home, inputs, max_spend_cents=2 * GPT_1K_CENTS, database_url=schema_url(schema))
            for home in homes
        ]
        async with (
            open_app(settings[0], policy=FAST_POLICY) as app_a,
            open_app(settings[1], policy=FAST_POLICY) as app_b,
            Client(app_a.server, mode="legacy") as client_a,
            Client(app_b.server, mode="legacy") as client_b,
        ):
            assert isinstance(app_a.manager.store, PostgresTaskStore)
            sim.clear_log()
            yield [Harness(app=app_a, client=client_a, sim=sim), Harness(app=app_b, client=client_b, sim=sim)]
    finally:
        drop_schema(schema)


async def test_two_servers_on_one_database_share_the_daily_cap(
    sim: Simulator, tmp_path: Path, pg_pools: Any
) -> None:
    """A cap of two pictures a day: three calls at once on each instance, through real MCP clients, get two
    tasks created upstream in all."""
    results: list[Any] = []
    async with two_capped_servers(sim, tmp_path, pg_pools) as harnesses:

        async def call(harness: Harness, n: int) -> None:
            results.append(await harness.call("generate_image", {"prompt": f"racer {n}", "wait": False}))

        async with anyio.create_task_group() as tg:
            for n in range(6):
                tg.start_soon(call, harnesses[n % 2], n)
        accepted = [r for r in results if not r.is_error]
        assert len(accepted) == 2 and len(upstream_creates(sim)) == 2, [text_of(r) for r in results]
        assert all("RUNAPI_MCP_MAX_SPEND_CENTS" in text_of(r) for r in results if r.is_error)
        # Each server sees the other's task: one store.
        task_ids = {r.structured_content["task_id"] for r in accepted}
        for harness in harnesses:
            for task_id in task_ids:
                assert await harness.app.manager.store.get(task_id) is not None


async def test_a_task_being_created_on_one_server_counts_once_on_the_other(
    sim: Simulator, tmp_path: Path, pg_pools: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interleaving that made the test above fail under load (one call admitted, "6 cents spent"): a call
    on the first instance stops between writing its task's record and sending the create. The other instance
    counts that task once (its hold went with the write), so it admits one more call, then refuses."""
    async with two_capped_servers(sim, tmp_path, pg_pools) as (a, b):
        first, second, third = await calls_around_a_paused_write(monkeypatch, sim, a, b)
        assert not second.is_error, text_of(second)
        assert third.is_error and f"{2 * GPT_1K_CENTS} cents spent today" in text_of(third), text_of(third)
        assert not first.is_error and len(upstream_creates(sim)) == 2, text_of(first)
