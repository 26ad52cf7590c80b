"""The embedded task store: one SQLite file in ``RUNAPI_MCP_HOME``, so a task outlives its process.

Claude Desktop and the MCP Inspector start a new stdio server per session, and a machine may sleep or
kill it: what a task is (its key, route and body, recorded before the create), where it stands and
what it made must be on disk at every step. SQLite in WAL mode lets several servers sharing a home
read while one writes; within this process one connection and one lock make a single writer path,
and every call runs in a worker thread of its own limiter so the event loop never waits on the disk.

A record is kept whole as JSON (the ``TaskRecord`` model is the schema), beside the columns the
queries need. The layout is brought up to date by ``migrations`` (each step once, in a transaction,
recorded in ``schema_migrations``); an older layout is migrated step by step, never discarded.

One process owns the tasks here: leases are kept in memory (``leases.LocalLeases``) and changes are
delivered in-process (``changes.ChangeHub``). Spend holds are in the file, checked and taken under
SQLite's write lock, so servers sharing a home cannot both slip under the cap.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pydantic

from runapi_mcp.private import private_dir, private_file, tighten
from runapi_mcp.tasks.changes import ChangeHub
from runapi_mcp.tasks.leases import LocalLeases
from runapi_mcp.tasks.migrations import (
    CREATE_MIGRATIONS_TABLE,
    MIGRATIONS,
    MIGRATIONS_TABLE,
    SCHEMA_VERSION,
    newer_layout,
)
from runapi_mcp.tasks.records import ImageRecord, TaskRecord, TaskState
from runapi_mcp.tasks.store import (
    SPEND_SQL,
    SpendHold,
    StoreError,
    TaskPage,
    decode_cursor,
    needs_taking_up,
    new_hold_id,
    page_of,
    parse_records,
)

__all__ = ["PICTURES_SQL", "PROMPT_HOLDS_SQL", "SCHEMA_VERSION", "SPEND_SQL", "SQLiteTaskStore", "StoreError"]

log = logging.getLogger("runapi_mcp.tasks")

T = TypeVar("T")

_BUSY_TIMEOUT_S = 10.0  # another server on the same home may hold the write lock for a moment
_JOURNALS = ("-wal", "-shm", "-journal")  # SQLite's files beside the database

# store.library_pictures in SQL: the outputs with a local file.
PICTURES_SQL = "(SELECT COUNT(*) FROM json_each(record, '$.images') WHERE json_extract(value, '$.path') IS NOT NULL)"
# store.prompt_holds in SQL (casefold: Python's own, registered on the connection; SQLite's lower() is ASCII only).
PROMPT_HOLDS_SQL = "instr(casefold(json_extract(record, '$.prompt')), ?) > 0"
_URLS_PER_QUERY = 500  # well under SQLite's bound on a statement's parameters
_IDS_PER_QUERY = 500  # (get_many) likewise


class SQLiteTaskStore:
    """``TaskStore`` over one SQLite file. Open with :meth:`open`; close with :meth:`close`."""

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self._db = connection
        self._db.create_function("casefold", 1, _casefold, deterministic=True)
        self._lock = threading.Lock()
        self._limiter = anyio.CapacityLimiter(1)  # one worker thread at a time: one writer path
        self._leases = LocalLeases(self.unfinished)
        self._changes = ChangeHub()

    @property
    def shared(self) -> bool:
        return False  # one process owns the file's tasks (another sharing the home only reads: the gallery)

    @property
    def leases(self) -> LocalLeases:
        return self._leases

    @property
    def changes(self) -> ChangeHub:
        return self._changes

    # -- opening -------------------------------------------------------------------------------------
    @classmethod
    async def open(cls, path: Path) -> SQLiteTaskStore:
        """Open (creating or migrating) the store at ``path``."""
        connection = await anyio.to_thread.run_sync(_connect, path)
        return cls(path, connection)

    async def close(self) -> None:
        await self._run(self._db.close)

    # -- the TaskStore protocol ----------------------------------------------------------------------
    async def save(self, record: TaskRecord, *, release_hold: str | None = None) -> None:
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
                if release_hold is not None:  # one transaction: the price replaces the hold (TaskStore.save)
                    db.execute("DELETE FROM spend_holds WHERE hold_id = ?", (release_hold,))

        await self._run(write)
        if not needs_taking_up(record):
            self._leases.finished(record.task_id)
        self._changes.publish(self._changes.stamped(record.task_id, record.status))

    async def get(self, task_id: str) -> TaskRecord | None:
        def read() -> list[TaskRecord]:
            return self._records(
                "SELECT record FROM tasks WHERE task_id = ? OR upstream_id = ? ORDER BY task_id = ? DESC LIMIT 1",
                (task_id, task_id, task_id),
            )

        found = await self._run(read)
        return found[0] if found else None

    async def get_many(self, task_ids: Collection[str]) -> dict[str, TaskRecord]:
        wanted = sorted(set(task_ids))

        def read() -> dict[str, TaskRecord]:
            found: dict[str, TaskRecord] = {}
            for start in range(0, len(wanted), _IDS_PER_QUERY):  # chunked: SQLite caps a statement's parameters
                chunk = wanted[start : start + _IDS_PER_QUERY]
                sql = f"SELECT record FROM tasks WHERE task_id IN ({', '.join('?' * len(chunk))})"
                found.update((r.task_id, r) for r in self._records(sql, tuple(chunk)))
            return found

        return await self._run(read) if wanted else {}

    async def page(
        self,
        *,
        status: TaskState | None = None,
        model: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
        owner: str | None = None,
    ) -> TaskPage:
        where, args = _filters(owner=owner, status=status, model=model)
        if cursor is not None:
            created_at, task_id = decode_cursor(cursor)
            where.append("(created_at, task_id) < (?, ?)")
            args += [created_at, task_id]
        sql = "SELECT record FROM tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, task_id DESC LIMIT ?"
        records = await self._run(lambda: self._records(sql, (*args, max(1, limit) + 1)))
        return page_of(records, limit)

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
        where, args = _filters(owner=owner, status=status, model=model)
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

    async def setdefault_state(self, key: str, value: Any) -> Any:
        text = json.dumps(value, separators=(",", ":"))

        def write() -> Any:
            with self._transaction() as db:
                db.execute("INSERT OR IGNORE INTO state (key, value) VALUES (?, ?)", (key, text))
                row = db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
            return json.loads(row[0])

        return await self._run(write)

    async def hold_spend(self, owner: str, *, since: float, cents: int, cap_cents: int, ttl_s: float) -> SpendHold:
        def check() -> SpendHold:
            now = time.time()
            with self._lock:
                # IMMEDIATE: the write lock from the first read, so another server on this home waits for the
                # hold instead of reading the spend before it.
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.execute("DELETE FROM spend_holds WHERE expires_at <= ?", (now,))
                    spent = int(
                        self._db.execute(
                            f"SELECT COALESCE(SUM({SPEND_SQL}), 0) FROM tasks WHERE created_at >= ? AND owner = ?",
                            (since, owner),
                        ).fetchone()[0]
                    ) + int(
                        self._db.execute(
                            "SELECT COALESCE(SUM(cents), 0) FROM spend_holds WHERE owner = ?", (owner,)
                        ).fetchone()[0]
                    )
                    hold = SpendHold(False, spent)
                    if spent + cents <= cap_cents:
                        hold = SpendHold(True, spent, new_hold_id())
                        self._db.execute(
                            "INSERT INTO spend_holds (hold_id, owner, cents, expires_at) VALUES (?, ?, ?, ?)",
                            (hold.hold_id, owner, cents, now + ttl_s),
                        )
                    self._db.commit()
                except BaseException:
                    self._db.rollback()
                    raise
            return hold

        return await self._run(check)

    async def release_spend(self, hold_id: str) -> None:
        def write() -> None:
            with self._transaction() as db:
                db.execute("DELETE FROM spend_holds WHERE hold_id = ?", (hold_id,))

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
        return parse_records((text for (text,) in rows), self.path)


def _filters(**columns: str | None) -> tuple[list[str], list[Any]]:
    """``column = ?`` for each column given a value, and the values (the filters of page and count_pictures)."""
    where: list[str] = []
    args: list[Any] = []
    for column, value in columns.items():
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    return where, args


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
    except StoreError:
        db.close()
        raise
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


def _migrate(db: sqlite3.Connection, path: Path, target: int = SCHEMA_VERSION) -> None:
    """Apply the missing migrations up to ``target``, each in an IMMEDIATE transaction of its own: a
    second server opening the same file at the same time waits, then finds the step done."""
    while True:
        db.execute("BEGIN IMMEDIATE")
        try:
            version = _layout(db)
            if version > SCHEMA_VERSION:
                raise StoreError(newer_layout(str(path), version, "point RUNAPI_MCP_HOME elsewhere"))
            if version >= target:
                db.commit()
                return
            migration = MIGRATIONS[version]  # takes layout `version` to `version + 1`
            for step in migration.sqlite:
                if isinstance(step, str):
                    db.execute(step)
                else:
                    step(db)
            db.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, time.time()),
            )
            db.execute(f"PRAGMA user_version = {migration.version}")  # what an older runapi-mcp checks
            db.commit()
        except BaseException:
            db.rollback()
            raise
        log.info("task store %s: layout %d (%s)", path, migration.version, migration.name)


def _layout(db: sqlite3.Connection) -> int:
    """The file's layout, from ``schema_migrations``; a file from before that table says it in
    ``user_version`` alone, and the table is made recording those migrations as applied."""
    exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (MIGRATIONS_TABLE,))
    if exists.fetchone() is None:
        adopted = int(db.execute("PRAGMA user_version").fetchone()[0])
        db.execute(CREATE_MIGRATIONS_TABLE.format("REAL"))
        now = time.time()
        for migration in MIGRATIONS[:adopted]:
            db.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, now),
            )
    recorded = int(db.execute(f"SELECT COALESCE(MAX(version), 0) FROM {MIGRATIONS_TABLE}").fetchone()[0])
    return max(recorded, int(db.execute("PRAGMA user_version").fetchone()[0]))
