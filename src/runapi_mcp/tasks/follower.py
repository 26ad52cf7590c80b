"""The change follower: what other instances sharing the store do to tasks, told here as a change made here is.

With a shared store (PostgreSQL) a task is written by the instance that polls it, yet a tool call waiting on
it, a resource subscription, an MCP task's status or a listen stream may be on any instance. Each instance
follows the store's change feed (``store.changes``: ``NOTIFY`` with every write, heard by every instance
within milliseconds). For a change another process made, the follower reads the record and hands it to the
registry (:meth:`TaskRegistry.adopt`): a held task takes it and its waiters wake, and the listeners (resource
updates, listen streams, MCP task statuses) are told, on the one path a change made here takes. A change
this process made itself (the feed's origin) was told when it was made, and is passed over.

A task this process polls is written here only, so the feed has nothing new about it, except a cancel made
on another instance (the poll loop ends, as after a cancel made here) and RunAPI's callback landing on
another instance (``TaskChange.called_back``: the loop reads the status now). When the feed may have missed
changes (``FeedGap``: its connection dropped), every unfinished task held here is read again, in one store
call (``TaskStore.get_many``); gaps arriving meanwhile wait as one (``Subscription``): one more re-read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
from anyio.abc import TaskStatus

from runapi_mcp.tasks.changes import FeedGap, TaskChange
from runapi_mcp.tasks.poller import Poller
from runapi_mcp.tasks.records import TaskRecord, TaskState
from runapi_mcp.tasks.registry import TaskRegistry, Tracked
from runapi_mcp.tasks.store import StoreError, TaskStore
from runapi_mcp.tasks.waker import CompletionWaker

log = logging.getLogger("runapi_mcp.tasks")

CANCELLED_ELSEWHERE = "cancelled on another instance of this server"


class ChangeFollower:
    """Follows ``store.changes`` for as long as :meth:`run` runs (the manager's life)."""

    def __init__(
        self,
        store: TaskStore,
        registry: TaskRegistry,
        poller: Poller,
        waker: CompletionWaker,
        called_back: Callable[[Tracked], None],
    ) -> None:
        self._store = store
        self._registry = registry
        self._poller = poller
        self._waker = waker
        self._called_back = called_back  # what a callback received here does (``TaskManager``)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Follow the feed; ``task_status`` is told once it is followed (no change after that is missed)."""
        async with self._store.changes.subscribe() as changes:
            task_status.started()
            async for change in changes:
                try:
                    await self.handle(change)
                except StoreError as exc:  # the record could not be read: its next change, or a gap, reads it
                    log.warning("could not follow a task change (%s): %s", change, exc)
                except Exception:  # one bad change must not end the following of all the others
                    log.exception("following a task change (%s) failed", change)

    async def handle(self, change: TaskChange | FeedGap) -> None:
        if isinstance(change, FeedGap):
            await self._reread(change)
            return
        if change.origin == self._store.changes.origin:
            return  # made here, and told then
        if change.called_back:
            tracked = self._registry.held(change.task_id)
            if tracked is not None:  # a task this process polls is held here
                self._called_back(tracked)
            return
        await self._reload(change.task_id, change.status)

    async def _reread(self, gap: FeedGap) -> None:
        """Read again every unfinished task held here, at once (one store call: gaps come under load, and may
        come again soon), and adopt each (one this process polls: only a cancel made elsewhere is news)."""
        wanted = [t.task_id for t in self._registry.all() if not t.record.terminal]
        log.info("task change feed: %s; reading the %d unfinished tasks held here again", gap.reason, len(wanted))
        if not wanted:
            return
        try:
            # A record that cannot be decoded is left out (and logged) by the store: it costs only itself.
            records = await self._store.get_many(wanted)
        except StoreError as exc:
            # The batch failed as a whole (a statement timeout, a pool that timed out): read each on its own,
            # so that one read that fails does not leave the others' changes unread.
            log.warning("could not read the %d tasks held here again at once: %s", len(wanted), exc)
            for task_id in wanted:
                try:
                    await self._reload(task_id, None)
                except StoreError as each:
                    log.warning("task %s: could not read it again after a gap in the change feed: %s", task_id, each)
            return
        for task_id in wanted:
            record = records.get(task_id)
            if record is not None:
                await self._adopt(task_id, record, None)

    async def _reload(self, task_id: str, status: TaskState | None) -> None:
        """Read the task the change (``status``; None: a gap, it may be anything) is about, and adopt it."""
        if self._poller.polls(task_id) and status not in (None, "cancelled"):
            return  # this process polls it and writes it: nothing new
        record = await self._store.get(task_id)
        if record is None or record.task_id != task_id:
            return
        await self._adopt(task_id, record, status)

    async def _adopt(self, task_id: str, record: TaskRecord, status: TaskState | None) -> None:
        """Hand ``record``, just read, to the registry (or, for a task polled here, to its loop)."""
        tracked = self._registry.held(task_id)
        if tracked is None or not self._poller.polls(task_id):  # (claimed here meanwhile: written here from now)
            await self._registry.adopt(record)
            return
        if record.status == "cancelled":
            await self._registry.adopt(record)  # the loop ends at its next look, woken now
        elif status == "cancelled" and not tracked.record.terminal:
            # The cancel was overwritten by a write of this process's poll loop made before it heard of it: the
            # cancel stands (an end is final), written again.
            cancelled = tracked.record.cancelled(CANCELLED_ELSEWHERE, at=self._registry.clock.time())
            await self._registry.commit(tracked, cancelled)
        else:
            return
        self._waker.wake_now(task_id)
