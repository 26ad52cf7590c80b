"""The tasks this process holds, and the one rule for who may see a task or a picture.

A task is held (:class:`Tracked`) from its submit, or from the first time it is asked for, found in the
store, or taken up after a restart; it is found by the server's id and by RunAPI's. Every change of a
held task goes through :meth:`TaskRegistry.commit`: stored, then every waiter and listener told.

Who may see what is decided in one place (:meth:`TaskRegistry.visible_to_caller`): a task, and every
picture it made, belongs to its owner, and everyone else is told it does not exist. A picture with no task
record (a library file of an earlier version, another home's) is the local user's.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from runapi_mcp.clock import Clock
from runapi_mcp.errors import UserError
from runapi_mcp.tasks.images import ImageStore
from runapi_mcp.tasks.records import LOCAL_OWNER, ImageRecord, TaskRecord, current_owner
from runapi_mcp.tasks.store import TaskStore

log = logging.getLogger("runapi_mcp.tasks")

Listener = Callable[[TaskRecord], Awaitable[None]]


class UnknownTaskError(UserError, KeyError):
    """No task with that id was created through this server (or the caller may not see it)."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(task_id)

    def __str__(self) -> str:
        return (
            f"'task_id' {self.task_id[:200]!r} is not a task this server knows; "
            "use the task_id returned by generate_image or edit_image"
        )


@dataclass
class Tracked:
    """A task this process holds: its latest record, and an event set (and replaced) at every change."""

    record: TaskRecord
    changed: anyio.Event = field(default_factory=anyio.Event)
    upstream_requests: int = 0  # creates, status reads and downloads sent for it by this process

    @property
    def task_id(self) -> str:
        return self.record.task_id


class TaskRegistry:
    """Held tasks by the server's id (and RunAPI's), their changes, and who may see them."""

    def __init__(self, store: TaskStore, images: ImageStore, clock: Clock) -> None:
        self.store = store
        self.images = images
        self.clock = clock
        self._tasks: dict[str, Tracked] = {}  # by the server's task id
        self._aliases: dict[str, str] = {}  # RunAPI's task id -> the server's
        # Owners of tasks read from the store for their images (a task's owner never changes after submit):
        # a gallery or history page asks for the same tasks again and again. Only found records are kept;
        # an image without a task record is looked up each time (its task may yet be saved, by another
        # instance sharing the store).
        self._owners: dict[str, str] = {}
        self._listeners: list[Listener] = []

    def __len__(self) -> int:
        return len(self._tasks)

    def all(self) -> list[Tracked]:
        return list(self._tasks.values())

    def held(self, task_id: str) -> Tracked | None:
        """The held task whose server id or RunAPI id is ``task_id``, whoever owns it."""
        return self._tasks.get(self._aliases.get(task_id, task_id))

    def hold(self, record: TaskRecord) -> Tracked:
        """The held task of ``record``, held from now if it was not (its record is then ``record``)."""
        tracked = self._tasks.get(record.task_id)
        if tracked is None:
            tracked = self._tasks[record.task_id] = Tracked(record=record)
            if record.upstream_id:
                self._aliases[record.upstream_id] = record.task_id
        return tracked

    async def commit(self, tracked: Tracked, record: TaskRecord) -> None:
        """``record`` is the task's state from now: stored, then its waiters woken and the listeners told."""
        self.refresh(tracked, record)
        await self.store.save(record)
        await self._changed(tracked, record)

    def refresh(self, tracked: Tracked, record: TaskRecord) -> None:
        """``record`` is the task's state from now, as read from the store (nothing is written, nobody told)."""
        tracked.record = record
        if record.upstream_id:
            self._aliases[record.upstream_id] = record.task_id

    async def adopt(self, record: TaskRecord) -> None:
        """``record`` was written by another process sharing the store: a held task takes it, and its
        waiters and the listeners are told, exactly as of a change made here (nothing is written). A task
        held here as ended keeps its end (an end is final: a write that raced it is stale)."""
        tracked = self.held(record.task_id)
        if tracked is not None:
            if tracked.record == record or (tracked.record.terminal and not record.terminal):
                return
            self.refresh(tracked, record)
        await self._changed(tracked, record)

    async def _changed(self, tracked: Tracked | None, record: TaskRecord) -> None:
        if tracked is not None:
            event, tracked.changed = tracked.changed, anyio.Event()
            event.set()
        snapshot = record.model_copy(deep=True)
        # As the task's owner: a listener may read whose work this is (a change heard from another process
        # arrives with no request behind it).
        owner = current_owner.set(record.owner)
        try:
            for listener in list(self._listeners):
                try:
                    await listener(snapshot)
                except Exception:  # a broken listener must not stop polling
                    log.exception("task listener failed")
        finally:
            current_owner.reset(owner)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def guarded(self, tracked: Tracked, doing: str, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run ``fn``; an unexpected exception becomes this task's note instead of ending the process.

        RunAPI's answers, image hosts and files are outside our control: a bug they trigger must cost
        one task at most. The exception goes to the log; the task keeps what it had, with the note.
        It runs as the task's owner: a job a request started, or one a restart, a callback or another
        instance's lease started with no request behind it, works for whoever the task belongs to.
        """
        try:
            with current_owner.scope(tracked.record.owner):
                await fn(*args)
        except Exception as exc:
            log.exception("task %s: unexpected error while %s", tracked.task_id, doing)
            try:
                note = (
                    f"internal error while {doing} ({type(exc).__name__}); "
                    "call get_task again to retry; the server log has the details"
                )
                await self.commit(tracked, tracked.record.noted(note, at=self.clock.time()))
            except Exception:
                log.exception("task %s: could not record the error", tracked.task_id)

    # -- who may see what ------------------------------------------------------------------------------
    @staticmethod
    def visible_to_caller(owner: str) -> bool:
        """The one access rule: what belongs to ``owner`` is visible to the current request's caller only
        when it is theirs. Everything else is answered as if it did not exist."""
        return owner == current_owner.get()

    async def lookup(self, task_id: str) -> Tracked:
        """The task ``task_id`` (the server's id or RunAPI's) if the caller may see it, held from now;
        raises :class:`UnknownTaskError` otherwise (another owner's task is not found, like one that never
        existed)."""
        if not isinstance(task_id, str) or not task_id.strip():
            raise UnknownTaskError(str(task_id))
        wanted = task_id.strip()
        tracked = self.held(wanted)
        record = tracked.record if tracked is not None else await self.store.get(wanted)
        if record is None or not self.visible_to_caller(record.owner):
            raise UnknownTaskError(task_id)
        return tracked if tracked is not None else self.hold(record)

    async def owner_of_image(self, image: ImageRecord) -> str:
        """Whose picture it is: its task's owner; a picture with no task record is the local user's."""
        task_id = image.task_id
        if not task_id:
            return LOCAL_OWNER
        tracked = self.held(task_id)
        if tracked is not None:
            return tracked.record.owner
        owner = self._owners.get(task_id)
        if owner is None:
            record = await self.store.get(task_id)
            if record is None:
                return LOCAL_OWNER
            owner = self._owners[task_id] = record.owner
        return owner

    async def visible_images(self, images: list[ImageRecord]) -> list[ImageRecord]:
        """Those of ``images`` the caller may see."""
        owners: dict[str, str] = {}
        visible: list[ImageRecord] = []
        for image in images:
            if image.task_id not in owners:
                owners[image.task_id] = await self.owner_of_image(image)
            if self.visible_to_caller(owners[image.task_id]):
                visible.append(image)
        return visible

    async def find_image(self, image_id: str) -> ImageRecord | None:
        """A library picture the caller may see, or None (as for one that does not exist)."""
        image = await self.images.lookup(image_id)
        if image is None or not self.visible_to_caller(await self.owner_of_image(image)):
            return None
        return image
