"""``runapi-mcp tasks``: the task history as a table for people, read from the store the server keeps.

The store is opened the way the server opens it (``app.open_store``), so the table shows what
``list_tasks`` would, also while a server is running on the same home (the store allows readers
beside its writer). Each task is one line (its prompt shortened to one line of ``PROMPT_WIDTH``); a
failed or cancelled task that has a reason gets a second line with it. A failed task RunAPI reported no
cost for shows no price: it was not charged, and "$0.03 ... failed" would read as a charge.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, TextIO, cast

import anyio

from runapi_mcp.commands.options import add_settings_flags, positive_int, run_configured
from runapi_mcp.tasks.records import STATES
from runapi_mcp.wording import count

if TYPE_CHECKING:  # the CLI imports this module for every command: keep it light
    from runapi_mcp.config import Settings
    from runapi_mcp.tasks import TaskRecord, TaskState

NAME = "tasks"
HELP = "Print the task history, newest first, from the server's task store"
HEADER = ("TASK", "STATUS", "MODEL", "CREATED", "PRICE", "PROMPT", "IMAGES")
PROMPT_WIDTH = 40
REASON_WIDTH = 160


def shorten(text: str | None, width: int) -> str:
    """``text`` on one line (runs of white space as one space), cut to ``width`` characters with an ellipsis."""
    flat = " ".join((text or "").split())
    if not flat:
        return "-"
    return flat if len(flat) <= width else flat[: width - 1].rstrip() + "…"


def _price(record: TaskRecord) -> str:
    """What RunAPI reported the task cost, else its quote; nothing for a failed task it reported no cost for."""
    if record.cost_cents is not None:
        cents: int | None = record.cost_cents
    else:
        cents = None if record.status == "failed" else record.price_cents
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
            _price(record),
            shorten(record.prompt, PROMPT_WIDTH),
            _images(record),
        )
        for record in records
    ]


def reason(record: TaskRecord) -> str | None:
    """Why a failed or cancelled task ended, on one line (None for the others, or when nothing was said)."""
    if record.status not in ("failed", "cancelled") or not record.error:
        return None
    charged = " (RunAPI charged nothing)" if record.status == "failed" and record.cost_cents is None else ""
    return f"{record.status}: {shorten(record.error, REASON_WIDTH)}{charged}"


def format_table(records: Sequence[TaskRecord]) -> str:
    """A plain-text table, columns padded to their widest cell (the last one, paths, left as it is); a failed
    task's reason on the line below it, under STATUS."""
    table = [HEADER, *rows(records)]
    widths = [max(len(row[n]) for row in table) for n in range(len(HEADER) - 1)]
    indent = " " * (widths[0] + 2)
    lines: list[str] = []
    for n, row in enumerate(table):
        lines.append("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]))
        why = reason(records[n - 1]) if n else None
        if why:
            lines.append(indent + why)
    return "\n".join(line.rstrip() for line in lines)


async def print_history(settings: Settings, status: str | None, limit: int, out: TextIO | None = None) -> int:
    """Print the newest ``limit`` tasks (of ``status``, if given); the exit code."""
    from runapi_mcp.app import open_store  # the server's wiring, only when the command runs

    stream = out or sys.stdout
    async with open_store(settings) as store:
        page = await store.page(status=cast("TaskState | None", status), limit=limit)
    if not page.records:
        stream.write(f"No tasks{f' with status {status}' if status else ''} in {settings.store_location}\n")
        return 0
    stream.write(format_table(page.records) + "\n")
    if page.next_cursor is not None:
        stream.write(f"(the newest {count(limit, 'task')} shown; --limit N shows more)\n")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status", choices=STATES, help="Only tasks in this state")
    parser.add_argument("--limit", type=positive_int, default=20, help="How many tasks (default 20)")
    add_settings_flags(parser, sub=True)


def run(args: argparse.Namespace) -> int:
    return run_configured(args, lambda settings: anyio.run(print_history, settings, args.status, args.limit))
