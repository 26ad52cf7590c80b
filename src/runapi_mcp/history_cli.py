"""``runapi-mcp tasks``: the task history as a table for people, read from the store the server keeps.

The store is opened the way the server opens it (``app.open_store``), so the table shows what
``list_tasks`` would, also while a server is running on the same home (the store allows readers
beside its writer).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, TextIO, cast

if TYPE_CHECKING:  # the CLI imports this module for every command: keep it light
    from runapi_mcp.config import Settings
    from runapi_mcp.tasks import TaskRecord, TaskState

STATES: tuple[str, ...] = ("submitting", "pending", "processing", "completed", "failed", "cancelled")
HEADER = ("TASK", "STATUS", "MODEL", "CREATED", "PRICE", "IMAGES")


def _price(cents: int | None) -> str:
    return "-" if cents is None else f"${cents / 100:.2f}"


def _images(record: TaskRecord) -> str:
    saved = [image.path for image in record.images if image.path]
    missing = len(record.images) - len(saved)
    parts = list(saved)
    if missing:
        parts.append(f"{missing} not downloaded")
    return ", ".join(parts) or "-"


def rows(records: Sequence[TaskRecord]) -> list[tuple[str, ...]]:
    """One row per task; the time is the reader's local time (a person reads it)."""
    return [
        (
            record.task_id,
            record.status,
            record.model,
            datetime.fromtimestamp(record.created_at).strftime("%Y-%m-%d %H:%M:%S"),
            _price(record.cost_cents if record.cost_cents is not None else record.price_cents),
            _images(record),
        )
        for record in records
    ]


def format_table(records: Sequence[TaskRecord]) -> str:
    """A plain-text table, columns padded to their widest cell (the last one, paths, left as it is)."""
    table = [HEADER, *rows(records)]
    widths = [max(len(row[n]) for row in table) for n in range(len(HEADER) - 1)]
    lines = ["  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]) for row in table]
    return "\n".join(line.rstrip() for line in lines)


async def print_history(settings: Settings, status: str | None, limit: int, out: TextIO | None = None) -> int:
    """Print the newest ``limit`` tasks (of ``status``, if given); the exit code."""
    from runapi_mcp.app import open_store  # the server's wiring, only when the command runs

    stream = out or sys.stdout
    async with open_store(settings) as store:
        page = await store.page(status=cast("TaskState | None", status), limit=limit)
    if not page.records:
        stream.write(f"No tasks{f' with status {status}' if status else ''} in {settings.store_file}\n")
        return 0
    stream.write(format_table(page.records) + "\n")
    if page.next_cursor is not None:
        stream.write(f"(newest {limit} shown; --limit N shows more)\n")
    return 0
