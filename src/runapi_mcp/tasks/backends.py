"""Which task store to open: the PostgreSQL one at a database URL, else the embedded SQLite file."""

from __future__ import annotations

from pathlib import Path

from runapi_mcp.redaction import redact_url
from runapi_mcp.tasks.store import StoreError, TaskStore

POSTGRES_EXTRA = "pip install 'runapi-mcp[postgres]'"


async def open_task_store(*, database_url: str | None, sqlite_file: Path) -> TaskStore:
    """The store at ``database_url`` (PostgreSQL) when given, else the SQLite store in ``sqlite_file``;
    :class:`StoreError` names the URL (without its password) or the file when it cannot be opened."""
    if database_url is None:
        from runapi_mcp.tasks.sqlite_store import SQLiteTaskStore

        return await SQLiteTaskStore.open(sqlite_file)
    try:
        from runapi_mcp.tasks.pg_store import PostgresTaskStore
    except ImportError as exc:  # psycopg is an extra: the embedded store needs none of it
        raise StoreError(
            f"RUNAPI_MCP_DATABASE_URL is set ({redact_url(database_url)}), but the PostgreSQL driver is not "
            f"installed ({exc.name or exc}): {POSTGRES_EXTRA}"
        ) from None
    return await PostgresTaskStore.open(database_url)
