"""The change feed: every task record change (its id and new status), delivered to subscribers in this process.

A store publishes a :class:`TaskChange` for each record it writes. The embedded stores publish in-process,
after the write (one process owns all their tasks); the PostgreSQL store publishes with ``NOTIFY`` in the
write's own transaction, and its listener hands what arrives, from every instance, to the same in-process
:class:`ChangeHub`. A subscriber that may have missed changes (the listener's connection dropped, or the
subscriber fell behind its buffer) receives a :class:`FeedGap` instead: it should re-read what it follows.

Each change names the feed it was made through (``origin``: one per store object, so one per process): a
process hears its own writes too, and tells them apart from other instances' by that. A change may also be
only *announced*, with no write (:meth:`ChangeFeed.announce`): RunAPI's callback about a task reached an
instance that does not poll it (``called_back``), and the one that does should read its status now.
"""

from __future__ import annotations

import json
import secrets
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, get_args

import anyio

from runapi_mcp.client import TaskStatus
from runapi_mcp.tasks.records import TaskState

DEFAULT_BUFFER = 1024  # changes a subscriber may fall behind by before it is told it missed some
_STATES: frozenset[str] = frozenset({"submitting", "cancelled", *get_args(TaskStatus)})


@dataclass(frozen=True)
class TaskChange:
    """A task record was written: its server id and its status after the write. ``origin``: the feed of the
    process that wrote it (not compared: the same change, whoever made it); ``called_back``: no write, but
    RunAPI's callback about the task reached ``origin`` (its poller should read the status now)."""

    task_id: str
    status: TaskState
    origin: str | None = field(default=None, compare=False)
    called_back: bool = False

    def payload(self) -> str:
        """The change as the text a ``NOTIFY`` carries."""
        data: dict[str, Any] = {"task_id": self.task_id, "status": self.status}
        if self.origin is not None:
            data["origin"] = self.origin
        if self.called_back:
            data["called_back"] = True
        return json.dumps(data, separators=(",", ":"))

    @staticmethod
    def from_payload(text: str) -> TaskChange | None:
        """The change a ``NOTIFY`` carried (None: not one of ours)."""
        try:
            data: Any = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        task_id, status, origin = data.get("task_id"), data.get("status"), data.get("origin")
        if not isinstance(task_id, str) or status not in _STATES:
            return None
        return TaskChange(
            task_id, status, origin if isinstance(origin, str) else None, data.get("called_back") is True
        )


@dataclass(frozen=True)
class FeedGap:
    """Changes may have been missed (``reason`` says why): re-read the tasks you follow."""

    reason: str


Change = TaskChange | FeedGap


class Subscription:
    """What one subscriber receives, in order: ``async for change in subscription``."""

    def __init__(self, buffer: int) -> None:
        self._buffer = max(1, buffer)
        self._queue: deque[Change] = deque()
        self._arrived = anyio.Event()
        self._gap_queued = False  # a FeedGap waits in the queue

    def deliver(self, change: Change) -> None:
        """Queue ``change`` (never blocks the publisher: past the buffer, the backlog becomes one gap). A gap
        arriving while another waits in the queue is dropped: the re-read the waiting one brings starts after
        both, so it sees what either missed (a burst of gaps during a re-read costs one more, not one each)."""
        if isinstance(change, FeedGap) and self._gap_queued:
            return
        if len(self._queue) >= self._buffer:
            self._queue.clear()
            change = FeedGap(f"this subscriber fell more than {self._buffer} changes behind")
        self._gap_queued = self._gap_queued or isinstance(change, FeedGap)
        self._queue.append(change)
        self._arrived.set()

    async def receive(self) -> Change:
        while not self._queue:
            await self._arrived.wait()
            self._arrived = anyio.Event()
        change = self._queue.popleft()
        if isinstance(change, FeedGap):
            self._gap_queued = False
        return change

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Change:
        return await self.receive()


class ChangeFeed(Protocol):
    """Where a store's changes are followed (``store.changes``)."""

    @property
    def origin(self) -> str:
        """This feed's id, carried by every change made through it (``TaskChange.origin``)."""
        ...

    def subscribe(self, *, buffer: int = DEFAULT_BUFFER) -> AbstractAsyncContextManager[Subscription]:
        """Receive every change committed from the moment the block is entered until it ends."""
        ...

    async def announce(self, change: TaskChange) -> None:
        """Send every subscriber (of every process sharing the store) ``change``, which no write made, with
        this feed's origin."""
        ...


def new_origin() -> str:
    return secrets.token_hex(8)


class ChangeHub:
    """In-process fan-out: each published change goes to every current subscriber."""

    def __init__(self) -> None:
        self._subscribers: list[Subscription] = []
        self._origin = new_origin()

    @property
    def origin(self) -> str:
        return self._origin

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @asynccontextmanager
    async def subscribe(self, *, buffer: int = DEFAULT_BUFFER) -> AsyncIterator[Subscription]:
        """Receive every change published from now until the block ends."""
        subscription = Subscription(buffer)
        self._subscribers.append(subscription)
        try:
            yield subscription
        finally:
            self._subscribers.remove(subscription)

    def publish(self, change: Change) -> None:
        for subscription in list(self._subscribers):
            subscription.deliver(change)

    def stamped(self, task_id: str, status: TaskState) -> TaskChange:
        """The change of a write made here (this hub's origin)."""
        return TaskChange(task_id, status, self._origin)

    async def announce(self, change: TaskChange) -> None:
        self.publish(TaskChange(change.task_id, change.status, self._origin, change.called_back))
