"""Leases: which process polls which unfinished task, when several share one store.

An instance *claims* due tasks (unfinished, and held by nobody or by a holder whose lease has run out)
for a while (``ttl_s``), *renews* what it still polls before the deadline, and *releases* what it lets go.
An instance that stops renewing (it crashed, hung, or lost its database connection) loses its tasks at
the deadline, and the next claim by another instance takes them up. A task that is written finished
(``store.needs_taking_up`` false) is released by that write.

The PostgreSQL store keeps leases in the database (``pg_store``). The embedded stores serve one process,
whose tasks are all its own: :class:`LocalLeases` keeps the same contract in memory, so code written for
several instances runs unchanged on them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Protocol

from runapi_mcp.clock import SYSTEM_CLOCK, Clock
from runapi_mcp.tasks.records import TaskRecord


class TaskLeases(Protocol):
    """Claim, renew and release the tasks an instance polls; ``holder`` is the instance's id."""

    async def claim(
        self, holder: str, *, limit: int, ttl_s: float, task_ids: Collection[str] | None = None
    ) -> list[TaskRecord]:
        """Take up to ``limit`` due tasks (oldest first; only ``task_ids`` when given) for ``ttl_s``
        seconds and return them. Tasks ``holder`` already holds are not returned again."""

    async def renew(self, holder: str, task_ids: Collection[str], *, ttl_s: float) -> set[str]:
        """Extend ``holder``'s leases on ``task_ids`` to ``ttl_s`` from now; the ids it still held (a
        lease past its deadline is lost, even if nobody has claimed the task yet)."""

    async def release(self, holder: str, task_ids: Collection[str] | None = None) -> None:
        """Let go of ``task_ids`` (None: every task ``holder`` holds); others' leases are left alone."""


class LocalLeases:
    """:class:`TaskLeases` in this process's memory, over a store's unfinished tasks. Leases run out on
    ``clock``'s monotonic time: the system's by default, as a database's would (a test passes its own)."""

    def __init__(
        self,
        unfinished: Callable[[], Awaitable[list[TaskRecord]]],
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._unfinished = unfinished
        self._clock = clock
        self._held: dict[str, tuple[str, float]] = {}  # task id -> (holder, deadline)

    async def claim(
        self, holder: str, *, limit: int, ttl_s: float, task_ids: Collection[str] | None = None
    ) -> list[TaskRecord]:
        wanted = None if task_ids is None else set(task_ids)
        due = [
            record
            for record in sorted(await self._unfinished(), key=lambda r: (r.created_at, r.task_id))
            if (wanted is None or record.task_id in wanted) and self._free(record.task_id)
        ][: max(0, limit)]
        deadline = self._clock.monotonic() + ttl_s
        for record in due:
            self._held[record.task_id] = (holder, deadline)
        return due

    async def renew(self, holder: str, task_ids: Collection[str], *, ttl_s: float) -> set[str]:
        now = self._clock.monotonic()
        kept = {
            task_id
            for task_id in task_ids
            if (lease := self._held.get(task_id)) is not None and lease[0] == holder and lease[1] > now
        }
        for task_id in kept:
            self._held[task_id] = (holder, now + ttl_s)
        return kept

    async def release(self, holder: str, task_ids: Collection[str] | None = None) -> None:
        ids = [t for t, (h, _) in self._held.items() if h == holder] if task_ids is None else task_ids
        for task_id in ids:
            if (lease := self._held.get(task_id)) is not None and lease[0] == holder:
                del self._held[task_id]

    def finished(self, task_id: str) -> None:
        """The store wrote ``task_id`` finished: nobody polls it any more."""
        self._held.pop(task_id, None)

    def _free(self, task_id: str) -> bool:
        lease = self._held.get(task_id)
        return lease is None or lease[1] <= self._clock.monotonic()
