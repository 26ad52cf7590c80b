"""Where task records live: the interface the manager and the tools use, and an in-memory store.

The embedded default is ``sqlite_store.SQLiteTaskStore`` (in ``RUNAPI_MCP_HOME``); a store shared by
several server instances (``pg_store.PostgresTaskStore``) implements the same protocol. Every method is
async (a store may block on disk or a network) and returns copies: what a caller holds is never the
store's own object. Beside the records, a store keeps the spend holds the daily cap admits tasks with,
the leases that say which instance polls which task (``leases``), and a feed of every record change
(``changes``).
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import pydantic

from runapi_mcp.errors import UserError
from runapi_mcp.tasks.changes import ChangeFeed, ChangeHub
from runapi_mcp.tasks.leases import LocalLeases, TaskLeases
from runapi_mcp.tasks.records import UNFINISHED, ImageRecord, TaskRecord, TaskState

log = logging.getLogger("runapi_mcp.tasks")

# TaskRecord.spend_cents in SQL (SQLite and PostgreSQL alike): RunAPI's reported cost, else the quote of a task
# that did not fail.
SPEND_SQL = (
    "CASE WHEN cost_cents IS NOT NULL THEN cost_cents WHEN status != 'failed' THEN COALESCE(price_cents, 0) ELSE 0 END"
)


class StoreError(RuntimeError):
    """The task store cannot be opened or used (a broken file, a newer layout, no permission, no database)."""


@dataclass(frozen=True)
class TaskPage:
    """One page of a task listing, newest first; ``next_cursor`` fetches the next (None: no more)."""

    records: list[TaskRecord]
    next_cursor: str | None


@dataclass(frozen=True)
class SpendHold:
    """A daily-cap check (``TaskStore.hold_spend``): ``admitted`` or not; ``spent_cents`` is what the owner's
    tasks since the day's start cost plus the other live holds, before this one; ``hold_id`` releases it."""

    admitted: bool
    spent_cents: int
    hold_id: str | None = None


@dataclass
class HeldSpend:
    """A live spend hold as the daily cap's guard hands it to the block it admits. ``recorded`` turns true once
    a record's write dropped it (``TaskManager.submit(spend_hold=...)``): the guard then has nothing to give
    back, and skips the release (a database round trip per capped task)."""

    hold_id: str
    recorded: bool = False


def new_hold_id() -> str:
    return f"hold-{uuid.uuid4().hex}"


class InvalidCursorError(UserError, ValueError):
    """A cursor this store did not hand out."""

    def __str__(self) -> str:
        return "'cursor' is not a cursor this server handed out; start again without one"


def encode_cursor(record: TaskRecord) -> str:
    """An opaque cursor pointing after ``record`` in newest-first order."""
    raw = json.dumps([record.created_at, record.task_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, task_id = json.loads(raw)
        if not isinstance(task_id, str) or isinstance(created_at, bool):
            raise ValueError
        return float(created_at), task_id
    except (ValueError, TypeError, UnicodeDecodeError):
        raise InvalidCursorError(cursor) from None


class TaskStore(Protocol):
    """Task records by the server's task id (and by RunAPI's id once known)."""

    async def save(self, record: TaskRecord, *, release_hold: str | None = None) -> None:
        """Insert or replace the record (keyed by ``task_id``). ``release_hold``: the spend hold that admitted
        this task (:meth:`hold_spend`), dropped in the same transaction, so its price starts counting as the
        hold stops: a :meth:`hold_spend` in between counts it once, never twice nor not at all."""

    async def get(self, task_id: str) -> TaskRecord | None:
        """The record whose server id or RunAPI id is ``task_id``."""

    async def get_many(self, task_ids: Collection[str]) -> dict[str, TaskRecord]:
        """The records whose server ids are among ``task_ids``, by server id, read at once (one query, or one
        per few hundred ids on SQLite): what a change feed's gap reads again. An id with no record, or whose
        record cannot be decoded (logged, as :meth:`page` skips it), is absent."""

    async def page(
        self,
        *,
        status: TaskState | None = None,
        model: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
        owner: str | None = None,
    ) -> TaskPage:
        """Records newest first, filtered (``owner`` None: every owner's); raises
        :class:`InvalidCursorError` for a foreign cursor."""

    async def unfinished(self) -> list[TaskRecord]:
        """Every record not yet completed or failed, and every completed one with an output not in the
        library (what a restarted manager must take up again)."""

    async def spent_cents(self, since: float, owner: str | None = None) -> int:
        """What the tasks created since ``since`` (epoch seconds) cost (``TaskRecord.spend_cents``: RunAPI's
        reported cost, else the quote of a task that did not fail), of ``owner`` only when given."""

    async def models(self, owner: str | None = None) -> list[str]:
        """The models the tasks were made with (``owner``'s tasks only, when given), sorted."""

    async def count_pictures(
        self,
        *,
        status: TaskState | None = None,
        model: str | None = None,
        owner: str | None = None,
        text: str | None = None,
    ) -> int:
        """How many pictures in the library (outputs with a local file) the matching tasks have; ``text``:
        only tasks whose prompt holds it, compared case-folded (:func:`prompt_holds`)."""

    async def outputs_at(self, urls: Collection[str], owner: str | None = None) -> dict[str, ImageRecord]:
        """The outputs RunAPI served at ``urls`` (their ``ImageRecord.url``), by URL, of ``owner``'s tasks
        when given: which pictures an edit or an upscale was made from (its request holds their URLs)."""

    async def load_state(self, key: str) -> Any:
        """A small JSON value kept under ``key`` (e.g. what the poll schedule learned), or None."""

    async def save_state(self, key: str, value: Any) -> None:
        """Keep a small JSON value under ``key``."""

    async def setdefault_state(self, key: str, value: Any) -> Any:
        """The value kept under ``key``, ``value`` kept there first when there is none: in one step, so
        instances starting together all get the first one's (a secret they must share, made once)."""

    async def hold_spend(self, owner: str, *, since: float, cents: int, cap_cents: int, ttl_s: float) -> SpendHold:
        """In one step no other instance can interleave with: what ``owner``'s tasks created since ``since``
        cost (:meth:`spent_cents`) plus ``owner``'s live holds; when ``cents`` more stays within
        ``cap_cents``, hold ``cents`` for ``ttl_s`` seconds (until :meth:`release_spend`) and admit."""

    async def release_spend(self, hold_id: str) -> None:
        """Drop a hold (its task was never recorded; one recorded with ``save(release_hold=...)`` dropped it
        already, and dropping it again does nothing)."""

    @property
    def shared(self) -> bool:
        """Whether other server instances use this store too (PostgreSQL): then each task is polled by the
        instance holding its lease (``claims.LeaseClaims``), and changes made elsewhere are heard on
        :attr:`changes` (``follower``). False: this process owns every task in it (SQLite, memory)."""

    @property
    def leases(self) -> TaskLeases:
        """Which instance polls which unfinished task (``tasks.leases``)."""

    @property
    def changes(self) -> ChangeFeed:
        """Every record change, as it is committed (``tasks.changes``)."""

    async def close(self) -> None:
        """Release what the store holds (files, connections)."""


def needs_taking_up(record: TaskRecord) -> bool:
    """Unfinished, or completed with an output that is not in the library."""
    return record.status in UNFINISHED or record.missing_outputs


def matches(record: TaskRecord, status: TaskState | None, model: str | None, owner: str | None = None) -> bool:
    return (
        (status is None or record.status == status)
        and (model is None or record.model == model)
        and (owner is None or record.owner == owner)
    )


def prompt_holds(record: TaskRecord, text: str) -> bool:
    """The one text-search rule: the prompt holds ``text``, both case-folded."""
    return text.casefold() in (record.prompt or "").casefold()


def library_pictures(record: TaskRecord) -> int:
    """How many of the task's outputs are in the library (downloaded: they have a local file)."""
    return sum(1 for image in record.images if image.path)


def newest_first(records: Iterable[TaskRecord]) -> list[TaskRecord]:
    return sorted(records, key=lambda r: (r.created_at, r.task_id), reverse=True)


def page_of(records: list[TaskRecord], limit: int) -> TaskPage:
    """The first ``max(1, limit)`` of ``records`` (newest first: a page, and one more when more follow) and
    the cursor to the rest."""
    size = max(1, limit)
    chosen = records[:size]
    return TaskPage(chosen, encode_cursor(chosen[-1]) if len(records) > size else None)


def parse_records(texts: Iterable[str], where: object) -> list[TaskRecord]:
    """The records stored as ``texts`` (JSON) in the store at ``where``, leaving out any that do not parse."""
    records: list[TaskRecord] = []
    for text in texts:
        try:
            records.append(TaskRecord.model_validate_json(text))
        except pydantic.ValidationError as exc:  # one bad row must not hide the others
            log.warning("skipping an unreadable task record in %s: %s", where, exc.errors()[:1])
    return records


class MemoryTaskStore:
    """A process-local store: tasks are forgotten on exit (tests, and servers that want no disk)."""

    def __init__(self) -> None:
        self._records: dict[str, TaskRecord] = {}
        self._state: dict[str, Any] = {}
        self._holds: dict[str, tuple[str, int, float]] = {}  # hold id -> (owner, cents, expires at)
        self._leases = LocalLeases(self.unfinished)
        self._changes = ChangeHub()

    @property
    def shared(self) -> bool:
        return False

    @property
    def leases(self) -> LocalLeases:
        return self._leases

    @property
    def changes(self) -> ChangeHub:
        return self._changes

    async def save(self, record: TaskRecord, *, release_hold: str | None = None) -> None:
        self._records[record.task_id] = record.model_copy(deep=True)
        if release_hold is not None:  # no await since the write: no hold_spend sees both
            self._holds.pop(release_hold, None)
        if not needs_taking_up(record):
            self._leases.finished(record.task_id)
        self._changes.publish(self._changes.stamped(record.task_id, record.status))

    async def get(self, task_id: str) -> TaskRecord | None:
        record = self._records.get(task_id)
        if record is None:
            record = next((r for r in self._records.values() if r.upstream_id == task_id), None)
        return record.model_copy(deep=True) if record else None

    async def get_many(self, task_ids: Collection[str]) -> dict[str, TaskRecord]:
        return {i: self._records[i].model_copy(deep=True) for i in set(task_ids) if i in self._records}

    async def page(
        self,
        *,
        status: TaskState | None = None,
        model: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
        owner: str | None = None,
    ) -> TaskPage:
        records = [r for r in newest_first(self._records.values()) if matches(r, status, model, owner)]
        if cursor is not None:
            after = decode_cursor(cursor)
            records = [r for r in records if (r.created_at, r.task_id) < after]
        page = page_of(records, limit)
        return TaskPage([r.model_copy(deep=True) for r in page.records], page.next_cursor)

    async def unfinished(self) -> list[TaskRecord]:
        return [r.model_copy(deep=True) for r in newest_first(self._records.values()) if needs_taking_up(r)]

    async def spent_cents(self, since: float, owner: str | None = None) -> int:
        return self._spent(since, owner)

    def _spent(self, since: float, owner: str | None) -> int:
        return sum(
            r.spend_cents
            for r in self._records.values()
            if r.created_at >= since and (owner is None or r.owner == owner)
        )

    async def models(self, owner: str | None = None) -> list[str]:
        return sorted({r.model for r in self._records.values() if owner is None or r.owner == owner})

    async def count_pictures(
        self,
        *,
        status: TaskState | None = None,
        model: str | None = None,
        owner: str | None = None,
        text: str | None = None,
    ) -> int:
        return sum(
            library_pictures(r)
            for r in self._records.values()
            if matches(r, status, model, owner) and (not text or prompt_holds(r, text))
        )

    async def outputs_at(self, urls: Collection[str], owner: str | None = None) -> dict[str, ImageRecord]:
        wanted = set(urls)
        return {
            image.url: image.model_copy(deep=True)
            for r in self._records.values()
            if owner is None or r.owner == owner
            for image in r.images
            if image.url is not None and image.url in wanted
        }

    async def load_state(self, key: str) -> Any:
        return json.loads(json.dumps(self._state.get(key)))

    async def save_state(self, key: str, value: Any) -> None:
        self._state[key] = json.loads(json.dumps(value))

    async def setdefault_state(self, key: str, value: Any) -> Any:
        if key not in self._state:
            await self.save_state(key, value)
        return await self.load_state(key)

    async def hold_spend(self, owner: str, *, since: float, cents: int, cap_cents: int, ttl_s: float) -> SpendHold:
        # No await in here: nothing else on the event loop runs between the check and the hold.
        now = time.time()
        self._holds = {k: hold for k, hold in self._holds.items() if hold[2] > now}
        spent = self._spent(since, owner) + sum(c for o, c, _ in self._holds.values() if o == owner)
        if spent + cents > cap_cents:
            return SpendHold(False, spent)
        hold_id = new_hold_id()
        self._holds[hold_id] = (owner, cents, now + ttl_s)
        return SpendHold(True, spent, hold_id)

    async def release_spend(self, hold_id: str) -> None:
        self._holds.pop(hold_id, None)

    async def close(self) -> None:
        return None
