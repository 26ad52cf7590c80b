"""PostgreSQL for the store tests: a real server, a schema of its own for each test.

The server is ``RUNAPI_MCP_TEST_DATABASE_URL`` (default: the local one, trust auth, database ``test``). Where
none answers, the PostgreSQL tests skip saying why; with ``RUNAPI_MCP_REQUIRE_POSTGRES=1`` (CI) they fail
instead. A module opens its pools once (``pg_pools``); each test gets a fresh schema, dropped after it.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    from runapi_mcp.tasks.pg_store import PostgresTaskStore

URL_VARIABLE = "RUNAPI_MCP_TEST_DATABASE_URL"
REQUIRE_VARIABLE = "RUNAPI_MCP_REQUIRE_POSTGRES"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def database_url() -> str:
    return os.environ.get(URL_VARIABLE, "").strip() or DEFAULT_URL


def required() -> bool:
    return os.environ.get(REQUIRE_VARIABLE, "").strip().lower() in ("1", "true", "yes")


@functools.cache
def _unreachable() -> str | None:
    """Why no test database can be used (None: it can), asked once per process."""
    try:
        import psycopg
        import psycopg_pool  # noqa: F401  (the store's pool: part of the postgres extra)
    except ImportError as exc:
        return f"psycopg is not installed ({exc.name}): pip install -e '.[postgres]'"
    try:
        with psycopg.connect(database_url(), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        from runapi_mcp.redaction import redact_url

        return f"no PostgreSQL at {redact_url(database_url())} ({' '.join(str(exc).split())}); set {URL_VARIABLE}"
    return None


def need_postgres() -> None:
    """Skip (or, with RUNAPI_MCP_REQUIRE_POSTGRES=1, fail) the calling test where no database answers."""
    reason = _unreachable()
    if reason is not None:
        _unavailable(reason)


def _unavailable(reason: str) -> NoReturn:
    if required():
        pytest.fail(f"{REQUIRE_VARIABLE} is set, but {reason}", pytrace=False)
    pytest.skip(reason)


def new_schema() -> str:
    return f"test_{uuid.uuid4().hex[:16]}"


def schema_url(schema: str) -> str:
    """The test database's URL with ``schema`` first on the search_path (the store's tables go there)."""
    url = database_url()
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


def drop_schema(schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(database_url(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def pg_schema_sync() -> Iterator[str]:
    """A schema name for a test outside the event loop (created by whatever opens it), dropped after."""
    need_postgres()
    schema = new_schema()
    try:
        yield schema
    finally:
        drop_schema(schema)


@pytest.fixture(scope="module")
async def pg_pools() -> AsyncIterator[tuple[Any, Any] | None]:
    """Two pools on the test database, as two server instances would have; None where there is no database
    (a test that needs it calls :func:`need_postgres` first, so the other engines' tests still run)."""
    if _unreachable() is not None:
        yield None
        return
    from psycopg_pool import AsyncConnectionPool

    pools = [
        AsyncConnectionPool(
            database_url(), min_size=1, max_size=4, open=False, kwargs={"autocommit": True}, name=f"test-{side}"
        )
        for side in "ab"
    ]
    try:
        for pool in pools:
            await pool.open(wait=True, timeout=10)
        yield pools[0], pools[1]
    finally:
        for pool in pools:
            await pool.close()


def pools_of(pools: tuple[Any, Any] | None) -> tuple[Any, Any]:
    need_postgres()
    assert pools is not None
    return pools


@pytest.fixture
async def pg_schema(pg_pools: tuple[Any, Any] | None) -> AsyncIterator[str]:
    """A fresh schema name on the test database, dropped (with all in it) after the test."""
    pools = pools_of(pg_pools)
    schema = new_schema()
    try:
        yield schema
    finally:
        await _drop(pools[0], schema)


@asynccontextmanager
async def pg_stores(pools: tuple[Any, Any] | None, count: int = 1) -> AsyncIterator[list[PostgresTaskStore]]:
    """``count`` stores on one fresh schema, each over its own pool in turn (two instances sharing one
    database); closed, and the schema dropped, after the block."""
    from runapi_mcp.tasks.pg_store import PostgresTaskStore

    a, b = pools_of(pools)
    schema = new_schema()
    stores: list[PostgresTaskStore] = []
    try:
        for n in range(count):
            stores.append(await PostgresTaskStore.attach((a, b)[n % 2], schema=schema))
        yield stores
    finally:
        for store in stores:
            await store.close()
        await _drop(a, schema)


async def _drop(pool: Any, schema: str) -> None:
    from psycopg import sql

    async with pool.connection() as conn:
        await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
