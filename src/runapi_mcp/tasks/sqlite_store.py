"""The embedded task store: one SQLite file in ``RUNAPI_MCP_HOME``, so a task outlives its process.

Claude Desktop and the MCP Inspector start a new stdio server per session, and a machine may sleep or
kill it: what a task is (its key, route and body, recorded before the create), where it stands and
what it made must be on disk at every step. SQLite in WAL mode lets several servers sharing a home
read while one writes; within this process one connection and one lock make a single writer path,
and every call runs in a worker thread of its own limiter so the event loop never waits on the disk.

A record is kept whole as JSON (the ``TaskRecord`` model is the schema), beside the columns the
queries need. The file's ``user_version`` says which layout it has; an older layout is migrated step
by step, never discarded.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pydantic

from runapi_mcp.private import private_dir, private_file, tighten
from runapi_mcp.tasks.records import ImageRecord, TaskRecord, TaskState
from runapi_mcp.tasks.store import TaskPage, decode_cursor, encode_cursor, needs_taking_up

log = logging.getLogger("runapi_mcp.tasks")

T = TypeVar("T")

SCHEMA_VERSION = 4
_BUSY_TIMEOUT_S = 10.0  # another server on the same home may hold the write lock for a moment
_JOURNALS = ("-wal", "-shm", "-journal")  # SQLite's files beside the database

# Each step takes the file from version n to n + 1. Version 1 was the first layout (tasks by id, the
# record as JSON); version 2 added the columns for paging by state, resuming and spending; version 3
# the owner (per-user tokens over HTTP: each user sees their own tasks); version 4 what RunAPI reported a
# task cost (usage.cost), which counts as its spend once known.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    0: (
        """CREATE TABLE tasks (
            task_id TEXT PRIMARY KEY,
            upstream_id TEXT,
            status TEXT NOT NULL,
            model TEXT NOT NULL,
            created_at REAL NOT NULL,
            record TEXT NOT NULL
        )""",
    ),
    1: (
        "ALTER TABLE tasks ADD COLUMN updated_at REAL NOT NULL DEFAULT 0",
        "ALTER TABLE tasks ADD COLUMN price_cents INTEGER",
        "ALTER TABLE tasks ADD COLUMN unfinished INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX IF NOT EXISTS tasks_upstream ON tasks(upstream_id)",
        "CREATE INDEX IF NOT EXISTS tasks_newest ON tasks(created_at DESC, task_id DESC)",
        "CREATE INDEX IF NOT EXISTS tasks_unfinished ON tasks(unfinished) WHERE unfinished = 1",
        "CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ),
    2: (
        "ALTER TABLE tasks ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX IF NOT EXISTS tasks_owner_newest ON tasks(owner, created_at DESC, task_id DESC)",
    ),
    3: ("ALTER TABLE tasks ADD COLUMN cost_cents INTEGER",),
}
# TaskRecord.spend_cents in SQL: RunAPI's reported cost, else the quote of a task that did not fail.
SPEND_SQL = (
    "CASE WHEN cost_cents IS NOT NULL THEN cost_cents WHEN status != 'failed' THEN COALESCE(price_cents, 0) ELSE 0 END"
)
# store.library_pictures in SQL: the outputs with a local file.
PICTURES_SQL = "(SELECT COUNT(*) FROM json_each(record, '$.images') WHERE json_extract(value, '$.path') IS NOT NULL)"
# store.prompt_holds in SQL (casefold: Python's own, registered on the connection; SQLite's lower() is ASCII only).
PROMPT_HOLDS_SQL = "instr(casefold(json_extract(record, '$.prompt')), ?) > 0"
_URLS_PER_QUERY = 500  # well under SQLite's bound on a statement's parameters
# Rows written by version 1 lack the new columns' values: fill them from the record itself.
_BACKFILL_FROM = {1}


class StoreError(RuntimeError):
    """The task store cannot be opened or used (a broken file, a newer layout, no permission)."""


class SQLiteTaskStore:
    """``TaskStore`` over one SQLite file. Open with :meth:`open`; close with :meth:`close`."""

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self._db = connection
        self._db.create_function("casefold", 1, _casefold, deterministic=True)
        self._lock = threading.Lock()
        self._limiter = anyio.CapacityLimiter(1)  # one worker thread at a time: one writer path

    # -- opening -------------------------------------------------------------------------------------
    @classmethod
    async def open(cls, path: Path) -> SQLiteTaskStore:
        """Open (creating or migrating) the store at ``path``."""
        connection = await anyio.to_thread.run_sync(_connect, path)
        return cls(path, connection)

    async def close(self) -> None:
        await self._run(self._db.close)

    # -- the TaskStore protocol ----------------------------------------------------------------------
    async def save(self, record: TaskRecord) -> None:
        row = (
            record.task_id,
            record.upstream_id,
            record.status,
            record.model,
            record.created_at,
            record.updated_at,
            record.price_cents,
            record.cost_cents,
            int(needs_taking_up(record)),
            record.owner,
            record.model_dump_json(),
        )

        def write() -> None:
            with self._transaction() as db:
                db.execute(
                    "INSERT OR REPLACE INTO tasks (task_id, upstream_id, status, model, created_at, updated_at,"
                    " price_cents, cost_cents, unfinished, owner, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )

        await self._run(write)

    async def get(self, task_id: str) -> TaskRecord | None:
        def read() -> list[TaskRecord]:
            return self._records(
                "SELECT record FROM tasks WHERE task_id = ? OR upstream_id = ? ORDER BY task_id = ? DESC LIMIT 1",
                (task_id, task_id, task_id),
            )

        found = await self._run(read)
        return found[0] if found else None

    async def page(
        self,
        *,
        status: TaskState | None = None,
        model: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
        owner: str | None = None,
    ) -> TaskPage:
        where: list[str] = []
        args: list[Any] = []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if model is not None:
            where.append("model = ?")
            args.append(model)
        if cursor is not None:
            created_at, task_id = decode_cursor(cursor)
            where.append("(created_at, task_id) < (?, ?)")
            args += [created_at, task_id]
        size = max(1, limit)
        sql = "SELECT record FROM tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, task_id DESC LIMIT ?"
        records = await self._run(lambda: self._records(sql, (*args, size + 1)))
        chosen = records[:size]
        return TaskPage(chosen, encode_cursor(chosen[-1]) if len(records) > size else None)

    async def unfinished(self) -> list[TaskRecord]:
        return await self._run(
            lambda: self._records("SELECT record FROM tasks WHERE unfinished = 1 ORDER BY created_at DESC", ())
        )

    async def spent_cents(self, since: float, owner: str | None = None) -> int:
        sql = f"SELECT COALESCE(SUM({SPEND_SQL}), 0) FROM tasks WHERE created_at >= ?"
        args: tuple[Any, ...] = (since,)
        if owner is not None:
            sql, args = sql + " AND owner = ?", (since, owner)

        def read() -> int:
            with self._lock:
                row = self._db.execute(sql, args).fetchone()
            return int(row[0])

        return await self._run(read)

    async def models(self, owner: str | None = None) -> list[str]:
        sql = "SELECT DISTINCT model FROM tasks" + ("" if owner is None else " WHERE owner = ?")
        args = () if owner is None else (owner,)

        def read() -> list[str]:
            with self._lock:
                return sorted(str(row[0]) for row in self._db.execute(sql, args).fetchall())

        return await self._run(read)

    async def count_pictures(
        self,
        *,
        status: TaskState | None = None,
        model: str | None = None,
        owner: str | None = None,
        text: str | None = None,
    ) -> int:
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("owner", owner), ("status", status), ("model", model)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if text:
            where.append(PROMPT_HOLDS_SQL)
            args.append(text.casefold())
        sql = f"SELECT COALESCE(SUM({PICTURES_SQL}), 0) FROM tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)

        def read() -> int:
            with self._lock:
                return int(self._db.execute(sql, tuple(args)).fetchone()[0])

        return await self._run(read)

    async def outputs_at(self, urls: Collection[str], owner: str | None = None) -> dict[str, ImageRecord]:
        wanted = sorted(set(urls))

        def read() -> dict[str, ImageRecord]:
            found: dict[str, ImageRecord] = {}
            for start in range(0, len(wanted), _URLS_PER_QUERY):
                chunk = wanted[start : start + _URLS_PER_QUERY]
                sql = (
                    "SELECT image.value FROM tasks, json_each(tasks.record, '$.images') AS image "
                    f"WHERE json_extract(image.value, '$.url') IN ({', '.join('?' * len(chunk))})"
                )
                args: tuple[Any, ...] = tuple(chunk)
                if owner is not None:
                    sql, args = sql + " AND tasks.owner = ?", (*args, owner)
                with self._lock:
                    rows = self._db.execute(sql, args).fetchall()
                for (text,) in rows:
                    try:
                        image = ImageRecord.model_validate_json(text)
                    except pydantic.ValidationError:
                        continue
                    if image.url is not None:
                        found[image.url] = image
            return found

        return await self._run(read) if wanted else {}

    async def load_state(self, key: str) -> Any:
        def read() -> Any:
            with self._lock:
                row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
            return json.loads(row[0]) if row else None

        return await self._run(read)

    async def save_state(self, key: str, value: Any) -> None:
        text = json.dumps(value, separators=(",", ":"))

        def write() -> None:
            with self._transaction() as db:
                db.execute("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", (key, text))

        await self._run(write)

    # -- internals -----------------------------------------------------------------------------------
    async def _run(self, fn: Callable[[], T]) -> T:
        try:
            return await anyio.to_thread.run_sync(fn, limiter=self._limiter)
        except sqlite3.Error as exc:
            raise StoreError(f"the task store {self.path} failed: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._db:  # the connection as a context manager commits, or rolls back on error
            yield self._db

    def _records(self, sql: str, args: tuple[Any, ...]) -> list[TaskRecord]:
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        records: list[TaskRecord] = []
        for (text,) in rows:
            try:
                records.append(TaskRecord.model_validate_json(text))
            except pydantic.ValidationError as exc:  # one bad row must not hide the others
                log.warning("skipping an unreadable task record in %s: %s", self.path, exc.errors()[:1])
        return records


def _casefold(text: object) -> str | None:
    return text.casefold() if isinstance(text, str) else None


def _connect(path: Path) -> sqlite3.Connection:
    """Open the file, switch it to WAL, and bring its layout up to :data:`SCHEMA_VERSION` (blocking)."""
    try:
        _private_home(path)
        db = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"cannot open the task store {path}: {exc}") from exc
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash
        db.isolation_level = "DEFERRED"  # transactions from here on (the connection's context manager commits)
        _migrate(db, path)
    except sqlite3.Error as exc:
        db.close()
        raise StoreError(f"cannot use the task store {path}: {exc}") from exc
    return db


def _private_home(path: Path) -> None:
    """The store's directory (``RUNAPI_MCP_HOME``) 0700 and the store 0600, whatever the umask (blocking).

    The database is created here, private, before SQLite opens it: SQLite gives its ``-wal`` and
    ``-shm`` files the database's own mode. A home or store found open to other users (made by an
    older version, or by hand) is tightened, with a log line.
    """
    home = path.parent
    was = private_dir(home)
    if was is not None:
        log.warning("the data directory %s was open to other users (mode %o): made it private (700)", home, was)
    changed: list[str] = []
    for target in (path, *(path.with_name(path.name + suffix) for suffix in _JOURNALS)):
        mode = private_file(target) if target == path else tighten(target)
        if mode is not None:
            changed.append(f"{target.name} (was {mode:o})")
    if changed:
        log.warning("made the task store private (600): %s in %s", ", ".join(changed), home)


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the task store {path} has layout {version}, newer than this server's {SCHEMA_VERSION}: "
            "upgrade runapi-mcp, or point RUNAPI_MCP_HOME elsewhere"
        )
    while version < SCHEMA_VERSION:
        with db:
            for statement in _MIGRATIONS[version]:
                db.execute(statement)
            if version in _BACKFILL_FROM:
                _backfill(db)
            version += 1
            db.execute(f"PRAGMA user_version = {version}")
        log.info("task store %s: layout %d", path, version)


def _backfill(db: sqlite3.Connection) -> None:
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
