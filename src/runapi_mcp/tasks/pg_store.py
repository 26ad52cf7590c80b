"""The PostgreSQL task store (``RUNAPI_MCP_DATABASE_URL``): several server instances share one.

Everything an instance must agree on with the others lives in the database:

- the records, as in SQLite (kept whole as JSON, beside the columns the queries need: here the prompt
  case-folded, the picture count and the output URLs too, so no query parses JSON);
- the daily spend cap's holds, taken under a transaction-scoped advisory lock per owner
  (``hold_spend``): two instances admitting one user's tasks at once take turns, so both cannot pass;
- task leases (``leases``): which instance polls which unfinished task, claimed with ``FOR UPDATE SKIP
  LOCKED`` until a deadline on the database's clock (one clock for every instance);
- the change feed (``changes``): each write sends ``NOTIFY`` in its own statement, so a change is
  announced exactly when it commits; one listening connection per process hands it to in-process
  subscribers, and opens again after a dropped connection.

The tables live in one schema (the connection's ``current_schema()``, normally ``public``), laid out by
``migrations``: several stores (or test runs) can share a database in separate schemas.

psycopg 3 and its pool come with the ``postgres`` extra (``pip install 'runapi-mcp[postgres]'``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, LiteralString

import anyio
import psycopg
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from runapi_mcp.redaction import redact_url
from runapi_mcp.tasks.changes import DEFAULT_BUFFER, ChangeHub, FeedGap, Subscription, TaskChange, new_origin
from runapi_mcp.tasks.migrations import (
    CREATE_MIGRATIONS_TABLE,
    MIGRATIONS,
    MIGRATIONS_TABLE,
    SCHEMA_VERSION,
    newer_layout,
    output_urls,
    prompt_folded,
)
from runapi_mcp.tasks.records import ImageRecord, TaskRecord, TaskState
from runapi_mcp.tasks.store import (
    SPEND_SQL,
    SpendHold,
    StoreError,
    TaskPage,
    decode_cursor,
    library_pictures,
    needs_taking_up,
    new_hold_id,
    page_of,
    parse_records,
)

__all__ = ["PostgresChangeFeed", "PostgresLeases", "PostgresTaskStore", "Probe", "probe", "redact_url"]

log = logging.getLogger("runapi_mcp.tasks")

DEFAULT_TIMEOUT_S = 10.0
_CHANNEL = "runapi_mcp_tasks"
_NAME_BYTES = 63  # PostgreSQL's identifier length (channels and application names)
_NOW = "EXTRACT(EPOCH FROM statement_timestamp())::float8"  # the database's clock, one value per statement
_FEED_RETRY_S = (0.1, 5.0)  # the listener's first and longest wait before opening its connection again
_FEED_PING_S = 30.0  # with no notification for this long, the listener checks its connection is alive
_FEED_PING_TIMEOUT_S = 10.0  # a liveness check unanswered for this long: the connection is taken for dead


def _short(name: str) -> str:
    """``name`` if it fits an identifier, else a stable digest of it (long schema names)."""
    if len(name.encode()) <= _NAME_BYTES:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return name.encode()[: _NAME_BYTES - 17].decode(errors="ignore") + "~" + digest


class PostgresTaskStore:
    """``TaskStore`` over PostgreSQL. Open with :meth:`open` (its own pool) or :meth:`attach` (a pool shared
    with other stores, e.g. one per schema); close with :meth:`close`."""

    def __init__(self, pool: AsyncConnectionPool[Any], schema: str, *, owns_pool: bool, display: str) -> None:
        self._pool = pool
        self.schema = schema
        self.display = display  # the URL as it may be shown: no password
        self._owns_pool = owns_pool
        self._queries: dict[str, sql.Composed] = {}
        self._leases = PostgresLeases(self)
        self._changes = PostgresChangeFeed(
            str(pool.conninfo),
            channel=_short(f"{_CHANNEL}:{schema}"),
            display=display,
            timeout_s=pool.timeout,
            announce_with=self._connection,
        )

    # -- opening -------------------------------------------------------------------------------------
    @classmethod
    async def open(
        cls,
        url: str,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 8,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> PostgresTaskStore:
        """Connect to ``url``, bring the schema's layout up to date, and keep a pool of connections."""
        display = redact_url(url)
        pool = AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            open=False,
            kwargs={"autocommit": True},  # one statement, one transaction; several: `conn.transaction()`
            check=AsyncConnectionPool.check_connection,  # a connection the server dropped is replaced, not used
            timeout=timeout_s,
            name="runapi-mcp",
        )
        try:
            # One plain connection first: its error says why (the pool's says only that it timed out).
            async with await AsyncConnection.connect(url, autocommit=True, connect_timeout=_connect_timeout(timeout_s)):
                pass
            await pool.open(wait=True, timeout=timeout_s)
        except psycopg.Error as exc:
            await pool.close()
            raise StoreError(f"cannot reach the task store at {display}: {_reason(exc)}") from exc
        try:
            return await cls.attach(pool, schema=schema, owns_pool=True, display=display)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await pool.close()
            raise

    @classmethod
    async def attach(
        cls,
        pool: AsyncConnectionPool[Any],
        *,
        schema: str | None = None,
        owns_pool: bool = False,
        display: str | None = None,
    ) -> PostgresTaskStore:
        """A store in ``schema`` (made if missing; None: the connection's current schema) over an open
        pool whose connections are in autocommit mode; :meth:`close` leaves the pool open unless owned."""
        display = display or redact_url(str(pool.conninfo))
        try:
            async with pool.connection() as conn:
                if schema is None:
                    found = await (await conn.execute("SELECT current_schema()")).fetchone()
                    schema = found[0] if found else None
                    if not schema:
                        raise StoreError(
                            f"the task store at {display} has no schema to use: the search_path names none that "
                            "exists (create one, or fix the search_path)"
                        )
                else:
                    async with conn.transaction():  # under the migrations' lock: instances starting together
                        await _lock_migrations(conn, schema)
                        exists = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
                        if await exists.fetchone() is None:
                            await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
                await migrate(conn, schema, display)
        except psycopg.Error as exc:
            raise StoreError(f"cannot use the task store at {display}: {_reason(exc)}") from exc
        return cls(pool, schema, owns_pool=owns_pool, display=display)

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._changes.close()
            if self._owns_pool:
                await self._pool.close()

    @property
    def shared(self) -> bool:
        return True

    @property
    def leases(self) -> PostgresLeases:
        return self._leases

    @property
    def changes(self) -> PostgresChangeFeed:
        return self._changes

    # -- the TaskStore protocol ----------------------------------------------------------------------
    async def save(self, record: TaskRecord, *, release_hold: str | None = None) -> None:
        unfinished = needs_taking_up(record)
        row = (
            record.task_id,
            record.upstream_id,
            record.status,
            record.model,
            record.created_at,
            record.updated_at,
            record.price_cents,
            record.cost_cents,
            unfinished,
            record.owner,
            record.model_dump_json(),
            library_pictures(record),
            prompt_folded(record),
            output_urls(record),
        )
        # One statement: the write and its NOTIFY commit together (a rolled-back write announces nothing). A
        # finished task's lease ends with the write, and the spend hold that admitted the task with its price
        # (TaskStore.save): hold_spend's one statement sees both sums before the commit or both after.
        released: LiteralString = ""
        hold: tuple[str, ...] = ()
        if release_hold is not None:
            released, hold = ", released AS (DELETE FROM {s}.spend_holds WHERE hold_id = %s)", (release_hold,)
        query = self._sql(
            "WITH saved AS ("
            " INSERT INTO {s}.tasks AS t (task_id, upstream_id, status, model, created_at, updated_at, price_cents,"
            " cost_cents, unfinished, owner, record, pictures, prompt_folded, output_urls)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (task_id) DO UPDATE SET upstream_id = EXCLUDED.upstream_id, status = EXCLUDED.status,"
            " model = EXCLUDED.model, created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at,"
            " price_cents = EXCLUDED.price_cents, cost_cents = EXCLUDED.cost_cents,"
            " unfinished = EXCLUDED.unfinished, owner = EXCLUDED.owner, record = EXCLUDED.record,"
            " pictures = EXCLUDED.pictures, prompt_folded = EXCLUDED.prompt_folded,"
            " output_urls = EXCLUDED.output_urls,"
            " lease_holder = CASE WHEN EXCLUDED.unfinished THEN t.lease_holder END,"
            " lease_until = CASE WHEN EXCLUDED.unfinished THEN t.lease_until END"
            " RETURNING 1)" + released + " SELECT pg_notify(%s, %s) FROM saved"
        )
        change = TaskChange(record.task_id, record.status, self._changes.origin)
        async with self._connection() as conn:
            await conn.execute(query, (*row, *hold, self._changes.channel, change.payload()))

    async def get(self, task_id: str) -> TaskRecord | None:
        query = self._sql(
            "SELECT record FROM {s}.tasks WHERE task_id = %s OR upstream_id = %s ORDER BY task_id = %s DESC LIMIT 1"
        )
        found = await self._records(query, (task_id, task_id, task_id))
        return found[0] if found else None

    async def get_many(self, task_ids: Collection[str]) -> dict[str, TaskRecord]:
        wanted = sorted(set(task_ids))
        if not wanted:
            return {}
        found = await self._records(self._sql("SELECT record FROM {s}.tasks WHERE task_id = ANY(%s)"), (wanted,))
        return {r.task_id: r for r in found}

    async def page(
        self,
        *,
        status: TaskState | None = None,
        model: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
        owner: str | None = None,
    ) -> TaskPage:
        where, args = self._filters(owner=owner, status=status, model=model)
        if cursor is not None:
            created_at, task_id = decode_cursor(cursor)
            where.append(sql.SQL("(created_at, task_id) < (%s, %s)"))
            args += [created_at, task_id]
        query = sql.SQL("SELECT record FROM {}.tasks{} ORDER BY created_at DESC, task_id DESC LIMIT %s").format(
            sql.Identifier(self.schema), _where(where)
        )
        return page_of(await self._records(query, (*args, max(1, limit) + 1)), limit)

    async def unfinished(self) -> list[TaskRecord]:
        return await self._records(self._sql("SELECT record FROM {s}.tasks WHERE unfinished ORDER BY created_at DESC"))

    async def spent_cents(self, since: float, owner: str | None = None) -> int:
        where, args = self._filters(owner=owner)
        where.append(sql.SQL("created_at >= %s"))
        query = sql.SQL("SELECT COALESCE(SUM({}), 0) FROM {}.tasks{}").format(
            sql.SQL(SPEND_SQL), sql.Identifier(self.schema), _where(where)
        )
        return await self._number(query, (*args, since))

    async def models(self, owner: str | None = None) -> list[str]:
        where, args = self._filters(owner=owner)
        query = sql.SQL("SELECT DISTINCT model FROM {}.tasks{}").format(sql.Identifier(self.schema), _where(where))
        async with self._connection() as conn:
            rows = await (await conn.execute(query, args)).fetchall()
        return sorted(str(row[0]) for row in rows)

    async def count_pictures(
        self,
        *,
        status: TaskState | None = None,
        model: str | None = None,
        owner: str | None = None,
        text: str | None = None,
    ) -> int:
        where, args = self._filters(owner=owner, status=status, model=model)
        if text:
            where.append(sql.SQL("strpos(prompt_folded, %s) > 0"))  # store.prompt_holds: both case-folded
            args.append(text.casefold().replace("\x00", ""))
        query = sql.SQL("SELECT COALESCE(SUM(pictures), 0) FROM {}.tasks{}").format(
            sql.Identifier(self.schema), _where(where)
        )
        return await self._number(query, tuple(args))

    async def outputs_at(self, urls: Collection[str], owner: str | None = None) -> dict[str, ImageRecord]:
        wanted = set(urls)
        if not wanted:
            return {}
        where, args = self._filters(owner=owner)
        where.append(sql.SQL("output_urls && %s"))  # the GIN index finds the tasks; their records, the images
        query = sql.SQL("SELECT record FROM {}.tasks{}").format(sql.Identifier(self.schema), _where(where))
        found: dict[str, ImageRecord] = {}
        for record in await self._records(query, (*args, sorted(wanted))):
            for image in record.images:
                if image.url is not None and image.url in wanted:
                    found[image.url] = image
        return found

    async def load_state(self, key: str) -> Any:
        async with self._connection() as conn:
            row = await (await conn.execute(self._sql("SELECT value FROM {s}.state WHERE key = %s"), (key,))).fetchone()
        return None if row is None else json.loads(row[0])

    async def save_state(self, key: str, value: Any) -> None:
        text = json.dumps(value, separators=(",", ":"))
        query = self._sql(
            "INSERT INTO {s}.state (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
        )
        async with self._connection() as conn:
            await conn.execute(query, (key, text))

    async def setdefault_state(self, key: str, value: Any) -> Any:
        text = json.dumps(value, separators=(",", ":"))
        # Two statements (autocommit: each its own snapshot). Of instances inserting at once, one insert wins
        # and the others wait for it to commit, then do nothing; the read after sees the winner's value.
        insert = self._sql("INSERT INTO {s}.state (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING")
        async with self._connection() as conn:
            await conn.execute(insert, (key, text))
            row = await (await conn.execute(self._sql("SELECT value FROM {s}.state WHERE key = %s"), (key,))).fetchone()
        return json.loads(row[0]) if row else value

    async def hold_spend(self, owner: str, *, since: float, cents: int, cap_cents: int, ttl_s: float) -> SpendHold:
        # The owner's lock first, for the rest of the transaction: another instance holding for the same owner
        # waits here, then reads the spend with this hold in it (read committed: each statement sees what
        # committed before it started).
        lock = f"runapi_mcp.spend:{self.schema}:{owner}"
        spent_sql = self._sql(
            "SELECT (SELECT COALESCE(SUM(" + SPEND_SQL + "), 0) FROM {s}.tasks WHERE created_at >= %s AND owner = %s)"
            " + (SELECT COALESCE(SUM(cents), 0) FROM {s}.spend_holds WHERE owner = %s AND expires_at > " + _NOW + ")"
        )
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (lock,))
            await conn.execute(self._sql("DELETE FROM {s}.spend_holds WHERE expires_at <= " + _NOW))
            row = await (await conn.execute(spent_sql, (since, owner, owner))).fetchone()
            spent = int(row[0]) if row else 0
            if spent + cents > cap_cents:
                return SpendHold(False, spent)
            hold = SpendHold(True, spent, new_hold_id())
            await conn.execute(
                self._sql(
                    "INSERT INTO {s}.spend_holds (hold_id, owner, cents, expires_at) VALUES (%s, %s, %s, "
                    + _NOW
                    + " + %s)"
                ),
                (hold.hold_id, owner, cents, ttl_s),
            )
        return hold

    async def release_spend(self, hold_id: str) -> None:
        async with self._connection() as conn:
            await conn.execute(self._sql("DELETE FROM {s}.spend_holds WHERE hold_id = %s"), (hold_id,))

    # -- internals -----------------------------------------------------------------------------------
    def _sql(self, template: LiteralString) -> sql.Composed:
        """``template`` with ``{s}`` the store's schema, quoted (composed once per template)."""
        query = self._queries.get(template)
        if query is None:
            query = self._queries[template] = sql.SQL(template).format(s=sql.Identifier(self.schema))
        return query

    @staticmethod
    def _filters(**columns: str | None) -> tuple[list[sql.Composable], list[Any]]:
        where: list[sql.Composable] = []
        args: list[Any] = []
        for column, value in columns.items():
            if value is not None:
                where.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
                args.append(value)
        return where, args

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        try:
            async with self._pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            raise StoreError(f"the task store at {self.display} failed: {_reason(exc)}") from exc

    async def _number(self, query: sql.Composed, args: tuple[Any, ...]) -> int:
        async with self._connection() as conn:
            row = await (await conn.execute(query, args)).fetchone()
        return int(row[0]) if row else 0

    async def _records(self, query: sql.Composed, args: tuple[Any, ...] = ()) -> list[TaskRecord]:
        async with self._connection() as conn:
            rows = await (await conn.execute(query, args)).fetchall()
        return parse_records((text for (text,) in rows), self.display)


def _where(conditions: list[sql.Composable]) -> sql.Composable:
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")


def _reason(exc: BaseException) -> str:
    """psycopg's message, on one line (libpq's may span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _connect_timeout(timeout_s: float) -> int:
    return max(2, round(timeout_s))  # libpq takes whole seconds, 2 at least


# -- migrations ---------------------------------------------------------------------------------------------


async def migrate(conn: AsyncConnection[Any], schema: str, display: str, target: int = SCHEMA_VERSION) -> None:
    """Apply the missing migrations up to ``target``, each in a transaction of its own under an advisory
    lock on the schema: instances starting together take turns, and each finds the others' steps done."""
    while True:
        async with conn.transaction():
            await _lock_migrations(conn, schema)
            await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
            await conn.execute(CREATE_MIGRATIONS_TABLE.format("DOUBLE PRECISION"))
            row = await (await conn.execute(f"SELECT COALESCE(MAX(version), 0) FROM {MIGRATIONS_TABLE}")).fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreError(newer_layout(f"at {display} (schema {schema})", version, "use another schema"))
            if version >= target:
                return
            migration = MIGRATIONS[version]  # takes layout `version` to `version + 1`
            for step in migration.postgres:
                if isinstance(step, str):
                    await conn.execute(step)
                else:
                    await step(conn)
            await conn.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (version, name, applied_at)"
                f" VALUES (%s, %s, {_NOW})",
                (migration.version, migration.name),
            )
        log.info("task store %s (schema %s): layout %d (%s)", display, schema, migration.version, migration.name)


async def _lock_migrations(conn: AsyncConnection[Any], schema: str) -> None:
    """Until the transaction ends, this connection alone migrates ``schema``."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"runapi_mcp.migrate:{schema}",))


# -- leases -------------------------------------------------------------------------------------------------


class PostgresLeases:
    """:class:`~runapi_mcp.tasks.leases.TaskLeases` in the tasks table (``lease_holder``, ``lease_until``)."""

    def __init__(self, store: PostgresTaskStore) -> None:
        self._store = store

    async def claim(
        self, holder: str, *, limit: int, ttl_s: float, task_ids: Collection[str] | None = None
    ) -> list[TaskRecord]:
        # SKIP LOCKED: rows another instance is claiming (or writing) right now are passed over, not waited
        # for; a row that changed since this statement's snapshot is checked again once locked.
        only = "" if task_ids is None else " AND task_id = ANY(%s)"
        query = self._store._sql(
            "WITH due AS (SELECT task_id FROM {s}.tasks"
            " WHERE unfinished AND (lease_until IS NULL OR lease_until <= " + _NOW + ")" + only
            + " ORDER BY created_at, task_id LIMIT %s FOR UPDATE SKIP LOCKED)"
            " UPDATE {s}.tasks AS t SET lease_holder = %s, lease_until = " + _NOW + " + %s"
            " FROM due WHERE t.task_id = due.task_id RETURNING t.record"
        )
        ids: tuple[Any, ...] = () if task_ids is None else (list(task_ids),)
        records = await self._store._records(query, (*ids, max(0, limit), holder, ttl_s))
        return sorted(records, key=lambda r: (r.created_at, r.task_id))

    async def renew(self, holder: str, task_ids: Collection[str], *, ttl_s: float) -> set[str]:
        query = self._store._sql(
            "UPDATE {s}.tasks SET lease_until = " + _NOW + " + %s"
            " WHERE task_id = ANY(%s) AND lease_holder = %s AND lease_until > " + _NOW + " RETURNING task_id"
        )
        async with self._store._connection() as conn:
            rows = await (await conn.execute(query, (ttl_s, list(task_ids), holder))).fetchall()
        return {str(row[0]) for row in rows}

    async def release(self, holder: str, task_ids: Collection[str] | None = None) -> None:
        only = "" if task_ids is None else " AND task_id = ANY(%s)"
        query = self._store._sql(
            "UPDATE {s}.tasks SET lease_holder = NULL, lease_until = NULL WHERE lease_holder = %s" + only
        )
        async with self._store._connection() as conn:
            await conn.execute(query, (holder,) if task_ids is None else (holder, list(task_ids)))


# -- the change feed ----------------------------------------------------------------------------------------


class PostgresChangeFeed:
    """``LISTEN`` on the store's channel, on a connection of its own, for this process's subscribers.

    The listener starts with the first subscription and runs until the store closes. When its connection
    drops, it opens another (waiting a little longer each time, up to 5 s) and, once it listens again,
    sends every subscriber a :class:`FeedGap`: what changed in between was not seen.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        channel: str,
        display: str,
        timeout_s: float,
        announce_with: Callable[[], AbstractAsyncContextManager[AsyncConnection[Any]]],
    ) -> None:
        self._conninfo = conninfo
        self.channel = channel
        self._origin = new_origin()  # carried by this process's writes and announcements
        self._announce_with = announce_with  # a connection of the store's pool
        self.application_name = _short(f"runapi-mcp {channel}")  # how the listener shows in pg_stat_activity
        self._display = display
        self._timeout_s = timeout_s
        self._hub = ChangeHub()
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._problem = "not connected yet"

    @property
    def origin(self) -> str:
        return self._origin

    async def announce(self, change: TaskChange) -> None:
        """``NOTIFY`` ``change`` (no write made it) to every instance's listener, this one's included."""
        stamped = TaskChange(change.task_id, change.status, self._origin, change.called_back)
        async with self._announce_with() as conn:
            await conn.execute("SELECT pg_notify(%s, %s)", (self.channel, stamped.payload()))

    @asynccontextmanager
    async def subscribe(self, *, buffer: int = DEFAULT_BUFFER) -> AsyncIterator[Subscription]:
        """Every change committed from the moment the block is entered (the listener is listening by then)."""
        async with self._hub.subscribe(buffer=buffer) as subscription:
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._listen(), name=f"listen {self.channel}")
            try:
                with anyio.fail_after(self._timeout_s):
                    await self._listening.wait()
            except TimeoutError:
                raise StoreError(
                    f"cannot follow task changes at {self._display}: {self._problem}"
                ) from None
            yield subscription

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _listen(self) -> None:
        retry_s, listened = _FEED_RETRY_S[0], False
        while True:
            try:
                async with await AsyncConnection.connect(
                    self._conninfo,
                    autocommit=True,
                    application_name=self.application_name,
                    connect_timeout=_connect_timeout(self._timeout_s),
                ) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    self._listening.set()
                    if listened:
                        self._hub.publish(FeedGap("the change feed's database connection dropped and was opened again"))
                        log.info("task change feed: listening again at %s", self._display)
                    listened, retry_s = True, _FEED_RETRY_S[0]
                    await self._deliver(conn)
            except psycopg.Error as exc:
                self._listening.clear()
                self._problem = _reason(exc)
                log.warning(
                    "task change feed at %s: %s; opening its connection again in %.1f s",
                    self._display, self._problem, retry_s,
                )
            await asyncio.sleep(retry_s)
            retry_s = min(retry_s * 2, _FEED_RETRY_S[1])

    async def _deliver(self, conn: AsyncConnection[Any]) -> None:
        while True:
            async for notify in conn.notifies(timeout=_FEED_PING_S):
                change = TaskChange.from_payload(notify.payload)
                if change is not None:
                    self._hub.publish(change)
            # Nothing for a while: a connection lost without a word (a dead peer, a cut network) shows here, and
            # within a bound one that stops answering (a hung server, a peer gone behind a NAT), which the
            # kernel would otherwise wait on for its retransmissions (a quarter of an hour), hearing nothing.
            try:
                with anyio.fail_after(_FEED_PING_TIMEOUT_S):
                    await conn.execute("SELECT 1")
            except TimeoutError:
                raise psycopg.OperationalError(
                    f"the database did not answer a liveness check within {_FEED_PING_TIMEOUT_S:g} s"
                ) from None


# -- the doctor's look ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """What ``runapi-mcp doctor`` found at a database URL (without migrating or keeping anything)."""

    reachable: bool
    problem: str | None = None  # why it is not usable, when it is not
    schema: str | None = None
    version: int = 0
    tasks: int = 0
    can_migrate: bool = True  # may create tables in the schema (matters while the layout is behind)


async def probe(url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Probe:
    """Reach ``url``, read the layout and the task count, and check a write goes through (rolled back)."""
    try:
        with anyio.fail_after(timeout_s + 1):
            conn = await AsyncConnection.connect(url, autocommit=True, connect_timeout=_connect_timeout(timeout_s))
    except (psycopg.Error, TimeoutError) as exc:
        return Probe(False, _reason(exc))
    try:
        async with conn:
            return await _look(conn)
    except psycopg.Error as exc:
        return Probe(True, _reason(exc))


async def _look(conn: AsyncConnection[Any]) -> Probe:
    row = await (
        await conn.execute(
            "SELECT current_schema(), to_regclass(quote_ident(current_schema()) || '.' || %s) IS NOT NULL,"
            " has_schema_privilege(current_schema(), 'CREATE')",
            (MIGRATIONS_TABLE,),
        )
    ).fetchone()
    if row is None or row[0] is None:
        return Probe(True, "the search_path names no schema that exists")
    schema, migrated, can_create = str(row[0]), bool(row[1]), bool(row[2])
    if not migrated:
        return Probe(True, None, schema, 0, 0, can_create)
    t = sql.Identifier(schema)
    row = await (await conn.execute(sql.SQL("SELECT COALESCE(MAX(version), 0) FROM {}.{}").format(
        t, sql.Identifier(MIGRATIONS_TABLE)))).fetchone()
    version = int(row[0]) if row else 0
    tasks = 0
    if version >= 1:
        row = await (await conn.execute(sql.SQL("SELECT count(*) FROM {}.tasks").format(t))).fetchone()
        tasks = int(row[0]) if row else 0
    if version == SCHEMA_VERSION:
        # A write that is rolled back: a read-only replica or a user without INSERT shows here, nothing stays.
        try:
            async with conn.transaction(force_rollback=True):
                await conn.execute(
                    sql.SQL("INSERT INTO {}.state (key, value) VALUES ('runapi-mcp doctor', 'null')"
                            " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value").format(t)
                )
        except psycopg.Error as exc:
            return Probe(True, f"cannot write: {_reason(exc)}", schema, version, tasks, can_create)
    return Probe(True, None, schema, version, tasks, can_create)

