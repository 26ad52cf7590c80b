"""The task store's layouts, as one ordered list of migrations for both engines.

Migration *n* takes a store from layout *n - 1* to *n*, on SQLite and on PostgreSQL alike: each entry
says what it does once, then how in each engine's SQL (the two differ where the engines do: PostgreSQL
keeps the searchable parts of a record in columns, SQLite reads them from the JSON). Each store applies
the missing ones in order, each in a transaction of its own together with its row in the
``schema_migrations`` table (version, name, when), so a migration is applied once and a failed one
leaves the layout before it. A store whose layout is newer than :data:`SCHEMA_VERSION` is refused, never
touched: it belongs to a newer runapi-mcp.

SQLite files written before this table existed said their layout in ``PRAGMA user_version`` alone (1 to
4): the table adopts that number (those migrations are recorded as applied), and ``user_version`` is kept
equal to the layout so that an older runapi-mcp still refuses a newer file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pydantic

from runapi_mcp.tasks.records import TaskRecord
from runapi_mcp.tasks.store import library_pictures, needs_taking_up

if TYPE_CHECKING:
    from psycopg import AsyncConnection

SqliteStep = str | Callable[[sqlite3.Connection], None]
PostgresStep = str | Callable[["AsyncConnection[Any]"], Awaitable[None]]

MIGRATIONS_TABLE = "schema_migrations"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sqlite: tuple[SqliteStep, ...]
    postgres: tuple[PostgresStep, ...]  # run with the store's schema first on the search_path


def _sqlite_backfill_v2(db: sqlite3.Connection) -> None:
    """Fill the columns version 2 added from each row's own record."""
    for task_id, text in db.execute("SELECT task_id, record FROM tasks").fetchall():
        try:
            record = TaskRecord.model_validate_json(text)
        except pydantic.ValidationError:
            continue
        db.execute(
            "UPDATE tasks SET updated_at = ?, price_cents = ?, unfinished = ? WHERE task_id = ?",
            (record.updated_at, record.price_cents, int(needs_taking_up(record)), task_id),
        )


def prompt_folded(record: TaskRecord) -> str:
    """The prompt as ``store.prompt_holds`` compares it (PostgreSQL text holds no NUL)."""
    return (record.prompt or "").casefold().replace("\x00", "")


def output_urls(record: TaskRecord) -> list[str]:
    return [image.url for image in record.images if image.url is not None]


async def _postgres_refill(
    conn: AsyncConnection[Any], sql: str, values: Callable[[TaskRecord], tuple[Any, ...]]
) -> None:
    """Run ``sql`` (its last parameter the task id) for each row, with values taken from its record."""
    cursor = await conn.execute("SELECT task_id, record FROM tasks")
    for task_id, text in await cursor.fetchall():
        try:
            record = TaskRecord.model_validate_json(text)
        except pydantic.ValidationError:
            continue
        await conn.execute(sql, (*values(record), task_id))


async def _postgres_backfill_v2(conn: AsyncConnection[Any]) -> None:
    await _postgres_refill(
        conn,
        "UPDATE tasks SET updated_at = %s, price_cents = %s, unfinished = %s WHERE task_id = %s",
        lambda r: (r.updated_at, r.price_cents, needs_taking_up(r)),
    )


async def _postgres_backfill_v5(conn: AsyncConnection[Any]) -> None:
    await _postgres_refill(
        conn,
        "UPDATE tasks SET pictures = %s, prompt_folded = %s, output_urls = %s WHERE task_id = %s",
        lambda r: (library_pictures(r), prompt_folded(r), output_urls(r)),
    )


_SPEND_HOLDS = "CREATE TABLE spend_holds (hold_id TEXT PRIMARY KEY, owner TEXT NOT NULL, cents INTEGER NOT NULL, {})"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "tasks by id, each record kept whole as JSON",
        sqlite=(
            """CREATE TABLE tasks (
                task_id TEXT PRIMARY KEY,
                upstream_id TEXT,
                status TEXT NOT NULL,
                model TEXT NOT NULL,
                created_at REAL NOT NULL,
                record TEXT NOT NULL
            )""",
        ),
        postgres=(
            # "C": ids, owners and models order byte by byte, as in SQLite and Python (cursors compare them).
            """CREATE TABLE tasks (
                task_id TEXT COLLATE "C" PRIMARY KEY,
                upstream_id TEXT COLLATE "C",
                status TEXT COLLATE "C" NOT NULL,
                model TEXT COLLATE "C" NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                record TEXT NOT NULL
            )""",
        ),
    ),
    Migration(
        2,
        "columns for paging by state, resuming and spending; small JSON state values",
        sqlite=(
            "ALTER TABLE tasks ADD COLUMN updated_at REAL NOT NULL DEFAULT 0",
            "ALTER TABLE tasks ADD COLUMN price_cents INTEGER",
            "ALTER TABLE tasks ADD COLUMN unfinished INTEGER NOT NULL DEFAULT 0",
            "CREATE INDEX IF NOT EXISTS tasks_upstream ON tasks(upstream_id)",
            "CREATE INDEX IF NOT EXISTS tasks_newest ON tasks(created_at DESC, task_id DESC)",
            "CREATE INDEX IF NOT EXISTS tasks_unfinished ON tasks(unfinished) WHERE unfinished = 1",
            "CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            _sqlite_backfill_v2,
        ),
        postgres=(
            "ALTER TABLE tasks ADD COLUMN updated_at DOUBLE PRECISION NOT NULL DEFAULT 0,"
            " ADD COLUMN price_cents BIGINT, ADD COLUMN unfinished BOOLEAN NOT NULL DEFAULT false",
            "CREATE INDEX tasks_upstream ON tasks(upstream_id)",
            "CREATE INDEX tasks_newest ON tasks(created_at DESC, task_id DESC)",
            "CREATE INDEX tasks_unfinished ON tasks(created_at) WHERE unfinished",
            "CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            _postgres_backfill_v2,
        ),
    ),
    Migration(
        3,
        "the owner (per-user tokens over HTTP: each user sees their own tasks)",
        sqlite=(
            "ALTER TABLE tasks ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
            "CREATE INDEX IF NOT EXISTS tasks_owner_newest ON tasks(owner, created_at DESC, task_id DESC)",
        ),
        postgres=(
            "ALTER TABLE tasks ADD COLUMN owner TEXT COLLATE \"C\" NOT NULL DEFAULT ''",
            "CREATE INDEX tasks_owner_newest ON tasks(owner, created_at DESC, task_id DESC)",
        ),
    ),
    Migration(
        4,
        "what RunAPI reported a task cost (usage.cost), its spend once known",
        sqlite=("ALTER TABLE tasks ADD COLUMN cost_cents INTEGER",),
        postgres=("ALTER TABLE tasks ADD COLUMN cost_cents BIGINT",),
    ),
    Migration(
        5,
        "spend holds (the daily cap, checked in one transaction); on PostgreSQL, task leases and the "
        "searchable parts of a record as columns",
        sqlite=(
            _SPEND_HOLDS.format("expires_at REAL NOT NULL"),
            "CREATE INDEX spend_holds_owner ON spend_holds(owner, expires_at)",
        ),
        postgres=(
            _SPEND_HOLDS.format("expires_at DOUBLE PRECISION NOT NULL"),
            "CREATE INDEX spend_holds_owner ON spend_holds(owner, expires_at)",
            "ALTER TABLE tasks ADD COLUMN lease_holder TEXT, ADD COLUMN lease_until DOUBLE PRECISION,"
            " ADD COLUMN pictures INTEGER NOT NULL DEFAULT 0, ADD COLUMN prompt_folded TEXT NOT NULL DEFAULT '',"
            " ADD COLUMN output_urls TEXT[] NOT NULL DEFAULT '{}'",
            "CREATE INDEX tasks_output_urls ON tasks USING GIN (output_urls)",
            _postgres_backfill_v5,
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version

CREATE_MIGRATIONS_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
    " applied_at {} NOT NULL)"
)


def newer_layout(where: str, version: int, fix: str) -> str:
    return (
        f"the task store {where} has layout {version}, newer than this server's {SCHEMA_VERSION}: "
        f"upgrade runapi-mcp, or {fix}"
    )
