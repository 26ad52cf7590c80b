"""The task manager: one per process, it owns every in-flight RunAPI task, as a facade over its parts.

- ``registry``: the tasks held, by the server's id and RunAPI's; every change (stored, then waiters and
  listeners told); and the one rule for who may see a task or a picture.
- ``poller``: one poll loop per task, however many tool calls wait on it, from the create to the end; which
  tasks this process polls is its ``TaskClaims``. When to poll is ``schedule.PollSchedule``'s business.
- ``fetcher``: a finished task's pictures, downloaded under their own limiter and copied to ``save_as``.
- ``waker``: completion callbacks (webhooks) that wake a task's poll loop for one status read.
- ``follower`` (with a store other instances share): their changes, heard on the store's change feed and
  told here as a change made here is; ``claims.LeaseClaims`` decides which tasks this instance polls.

Whatever RunAPI, an image host or a file does, the worst outcome is that one task reports an error: every
loop the manager starts runs under a guard that turns an unexpected exception into that task's error, so
the task group (and every other task, waiter and the process) lives on. Every time read and every wait goes
through the one injected clock, but for the renewal of leases (``claims.LeaseClaims``: they lapse on the
database's clock, so they are renewed on real time).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from runapi_mcp.catalog import PreparedRequest
from runapi_mcp.client import RunAPIClient, RunAPIError
from runapi_mcp.clock import SYSTEM_CLOCK, Clock, wait_for_event
from runapi_mcp.tasks.changes import TaskChange
from runapi_mcp.tasks.durations import DurationMemory, DurationModel
from runapi_mcp.tasks.fetcher import OutputFetcher
from runapi_mcp.tasks.follower import ChangeFollower
from runapi_mcp.tasks.images import ImageStore
from runapi_mcp.tasks.poller import LocalClaims, Poller, TaskClaims
from runapi_mcp.tasks.records import ImageRecord, StatusChange, TaskRecord, current_owner, new_task_id
from runapi_mcp.tasks.registry import Listener, TaskRegistry, Tracked, UnknownTaskError
from runapi_mcp.tasks.schedule import PollPolicy, PollSchedule
from runapi_mcp.tasks.store import HeldSpend, MemoryTaskStore, TaskStore
from runapi_mcp.tasks.waker import CompletionWaker
from runapi_mcp.wording import count

__all__ = ["Listener", "TaskEndedError", "TaskManager", "TickCallback", "UnknownTaskError"]

log = logging.getLogger("runapi_mcp.tasks")

TickCallback = Callable[[TaskRecord], Awaitable[None]]


class TaskEndedError(ValueError):
    """The task has ended (completed, failed or cancelled): there is nothing left to cancel."""

    def __init__(self, task_id: str, status: str) -> None:
        self.task_id = task_id
        self.status = status
        super().__init__(task_id)

    def __str__(self) -> str:
        return f"task {self.task_id[:200]!r} is already {self.status}; only a running task can be cancelled"


class TaskManager:
    """Creates tasks, polls them, downloads their images, and tells everyone who waits."""

    def __init__(
        self,
        client: RunAPIClient,
        images: ImageStore,
        store: TaskStore | None = None,
        *,
        policy: PollPolicy | None = None,
        max_concurrent_requests: int = 8,
        max_concurrent_downloads: int = 16,
        durations_memory: DurationMemory | None = None,
        callback_base: str | None = None,
        save_dirs: Sequence[Path] = (),
        clock: Clock = SYSTEM_CLOCK,
        claims: TaskClaims | None = None,
    ) -> None:
        """``claims`` decides which tasks this process polls (default: every unfinished one in ``store``)."""
        self.client = client
        self.images = images
        self.store: TaskStore = store or MemoryTaskStore()
        self.schedule = PollSchedule(policy or PollPolicy())
        self.clock = clock  # every time read and every wait goes through it: a test moves it by hand
        # Where learned durations outlive the process (a stdio server restarts with every client session).
        self._durations_memory = durations_memory
        self._registry = TaskRegistry(self.store, images, clock)
        self._waker = CompletionWaker(self._registry, clock, self.schedule.policy, callback_base)
        self._fetcher = OutputFetcher(
            client, images, self._registry, clock, self.schedule.policy,
            max_concurrent_downloads=max_concurrent_downloads, save_dirs=save_dirs,
        )
        self._poller = Poller(
            client, self._registry, self._waker, self._fetcher, self.schedule, clock,
            claims if claims is not None else LocalClaims(self.store),
            max_concurrent_requests=max_concurrent_requests, learned=self.save_durations,
        )
        # Other instances' changes, told here (a store only this process uses has none).
        self._follower = (
            ChangeFollower(self.store, self._registry, self._poller, self._waker, self._called_back)
            if self.store.shared
            else None
        )
        # Set when the process is shutting down: every wait returns what it has at once, so a tool call
        # still waiting gets its answer (the task id, "still running") before the connection closes.
        self._stopping = False

    @property
    def policy(self) -> PollPolicy:
        return self.schedule.policy

    @property
    def durations(self) -> DurationModel:
        return self.schedule.durations

    @property
    def save_dirs(self) -> tuple[Path, ...]:
        """Where save_as copies may be written (RUNAPI_MCP_ALLOWED_DIRS)."""
        return self._fetcher.save_dirs

    @save_dirs.setter
    def save_dirs(self, dirs: Sequence[Path]) -> None:
        self._fetcher.save_dirs = tuple(dirs)

    async def save_durations(self) -> None:
        """Keep what the schedule learned where it outlives the process (done after every finished task)."""
        if self._durations_memory is not None:
            await self._durations_memory.save(self.durations)  # a few KB

    # -- lifecycle ---------------------------------------------------------------------------------------
    @asynccontextmanager
    async def running(self) -> AsyncIterator[TaskManager]:
        """Run the manager's poll loops for as long as the block lasts."""
        async with anyio.create_task_group() as tg:
            self._poller.tg = self._waker.tg = tg
            try:
                if self._follower is not None:
                    await tg.start(self._follower.run)  # followed from before the take-up: nothing is missed
                if self._durations_memory is not None:
                    await self._durations_memory.load_into(self.durations)
                await self._resume(tg)
                tg.start_soon(self._poller.claims.keep, self._take, self._poller.let_go)
                yield self
            finally:
                self._poller.tg = self._waker.tg = None
                tg.cancel_scope.cancel()

    async def _resume(self, tg: anyio.abc.TaskGroup) -> None:
        """Take up what a previous process left: unfinished tasks, outputs not downloaded, partial files."""
        removed = await anyio.to_thread.run_sync(self.images.remove_partials, self.policy.download_deadline_s)
        if removed:
            log.info("removed %s left by an earlier run", count(removed, "partial download"))
        taken = await self._poller.take_up()
        for tracked in taken:
            if self._fetcher.wants_refetch(tracked):
                tg.start_soon(self._registry.guarded, tracked, "downloading the images", self._fetcher.refetch, tracked)
        if taken:
            log.info("resumed %s from the store", count(len(taken), "task"))

    def _take(self, record: TaskRecord) -> None:
        """A task the claims gave this process after the start (its holder stopped): taken up as at a start."""
        tracked = self._registry.hold(record)
        if tracked.record is not record:
            self._registry.refresh(tracked, record)  # the store's, newer than what was held here
        self._poller.follow(tracked)
        if self._fetcher.wants_refetch(tracked) and self._poller.tg is not None:
            self._poller.tg.start_soon(
                self._registry.guarded, tracked, "downloading the images", self._fetcher.refetch, tracked
            )

    def stop_waiting(self) -> None:
        """Shutting down: every wait (now and later) returns at once; tasks stay in the store and resume
        on the next start."""
        self._stopping = True
        for tracked in self._registry.all():
            tracked.changed.set()  # what every waiter sleeps on: it wakes, sees the stop and returns

    def add_listener(self, listener: Listener) -> None:
        """``listener(record)`` runs after every change of any task (e.g. resource-updated notices)."""
        self._registry.add_listener(listener)

    # -- creating ----------------------------------------------------------------------------------------
    async def submit(
        self,
        prepared: PreparedRequest,
        *,
        prompt: str | None,
        price_cents: int | None = None,
        save_as: str | None = None,
        spend_hold: HeldSpend | None = None,
    ) -> TaskRecord:
        """Record the task, then create it upstream (one idempotency key for every try) and start polling.

        The record exists before the create is sent: if RunAPI's answer is lost, the task stays
        "submitting" under the server's id and the create is re-sent with the same key until RunAPI
        answers (it never runs or bills a key twice). A definite refusal (bad request, no credits, bad
        key) marks the task failed and is raised. ``save_as`` (absolute, checked by the caller) is where
        copies of the pictures are written once they are in the library (``tasks.saving``). ``spend_hold``:
        the daily cap's hold that admitted the task, dropped as its record (with ``price_cents``) is written,
        and marked ``recorded`` once that write succeeded (the guard's release is then skipped).
        """
        now = self.clock.time()
        record = TaskRecord(
            task_id=new_task_id(now),
            idempotency_key=f"runapi-mcp-{uuid.uuid4().hex}",
            model=prepared.model.slug,
            service=prepared.action.service,
            action=prepared.action.endpoint,
            route=prepared.path,
            prompt=prompt,
            request=dict(prepared.body),
            resolution=prepared.body.get("output_resolution"),
            max_outputs=prepared.model.max_outputs,
            price_cents=price_cents,
            save_as=save_as,
            owner=current_owner.get(),
            callback_token=self._waker.new_token(prepared),
            created_at=now,
            updated_at=now,
            history=[StatusChange(status="submitting", at=now)],
        )
        await self.store.save(record, release_hold=spend_hold.hold_id if spend_hold is not None else None)
        if spend_hold is not None:
            spend_hold.recorded = True
        tracked = self._registry.hold(record)
        try:
            accepted = await self._poller.create_first(tracked)
        except RunAPIError as exc:
            await self._registry.commit(tracked, tracked.record.failed(str(exc), at=self.clock.time()))
            await self._poller.refused(tracked)
            raise
        # The poll loop takes it from here (and, while it is still "submitting", re-sends the create first).
        self._poller.follow(tracked)
        if not accepted:
            log.info("task %s stays submitting until RunAPI confirms it", tracked.task_id)
        return tracked.record.model_copy(deep=True)

    # -- reading and waiting -----------------------------------------------------------------------------
    async def get(self, task_id: str) -> TaskRecord:
        """The latest known state of a task (a copy).

        Resumes polling of a stored running task, and downloads again the outputs of a completed
        task that are not in the library yet (an image host that failed earlier).
        """
        tracked = await self._lookup(task_id)
        if self._fetcher.wants_refetch(tracked):
            await self._registry.guarded(tracked, "downloading the images", self._fetcher.refetch, tracked)
        return tracked.record.model_copy(deep=True)

    async def find(self, task_id: str) -> TaskRecord | None:
        try:
            return await self.get(task_id)
        except UnknownTaskError:
            return None

    async def find_image(self, image_id: str) -> ImageRecord | None:
        """A library image the current request's owner may see, or None (as for one that does not exist)."""
        return await self._registry.find_image(image_id)

    async def owner_of_image(self, image: ImageRecord) -> str:
        """Whose image it is: its task's owner; an image with no task record is the local user's."""
        return await self._registry.owner_of_image(image)

    async def visible_images(self, images: list[ImageRecord]) -> list[ImageRecord]:
        """Those of ``images`` whose task belongs to the current request's owner. An image with no task
        record (a library file of an earlier version, another home's) is the local user's."""
        return await self._registry.visible_images(images)

    async def wait(
        self,
        task_id: str,
        timeout_s: float,
        *,
        on_tick: TickCallback | None = None,
        tick_s: float = 1.0,
    ) -> TaskRecord:
        """Wait until the task ends or ``timeout_s`` passes; ``on_tick`` runs at every change and tick.

        Cancelling the caller only stops this wait: the poll loop belongs to the manager.
        """
        tracked = await self._lookup(task_id)
        deadline = self.clock.monotonic() + max(0.0, timeout_s)
        while not tracked.record.terminal and not self._stopping:
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                break
            await wait_for_event(self.clock, tracked.changed, min(tick_s, remaining))
            if on_tick is not None:
                await on_tick(tracked.record.model_copy(deep=True))
        return tracked.record.model_copy(deep=True)

    def estimated_progress(self, record: TaskRecord) -> float:
        """0..1: upstream's own progress where it reports one, else an estimate (``PollSchedule.progress``)."""
        if record.terminal:
            return 1.0
        polled = self._poller.polled(record.task_id)
        if polled is not None:
            elapsed = self.clock.monotonic() - polled.started
        else:
            elapsed = self.clock.time() - record.created_at
        return self.schedule.progress(record.kind_key, record.model, record.resolution, elapsed, record.progress)

    async def cancel(self, task_id: str, note: str) -> TaskRecord:
        """Stop tracking a running task for good: it becomes "cancelled", with ``note`` as its error.

        RunAPI has no cancel, so upstream the task may still finish (and be billed); here its poll loop
        ends without another look (a create not confirmed yet is not sent again), and whatever RunAPI
        reports later is ignored: the state is final, in the store too. Raises :class:`UnknownTaskError`
        (another owner's task included) and :class:`TaskEndedError` for a task that has ended.
        """
        tracked = await self._lookup(task_id)
        if tracked.record.terminal:
            raise TaskEndedError(tracked.task_id, tracked.record.status)
        await self._registry.commit(tracked, tracked.record.cancelled(note, at=self.clock.time()))
        self._waker.wake_now(tracked.task_id)  # the poll loop's sleep ends now, and the loop with it
        return tracked.record.model_copy(deep=True)

    def stats(self, task_id: str) -> dict[str, Any]:
        """How much this process asked RunAPI about the task: status reads, and every request (creates,
        reads, downloads)."""
        tracked = self._registry.held(task_id)
        if tracked is None:
            return {}
        polled = self._poller.polled(tracked.task_id)
        return {"polls": polled.polls if polled else 0, "upstream_requests": tracked.upstream_requests}

    # -- completion callbacks (webhooks) -----------------------------------------------------------------
    async def callback(self, task_id: str, token: str) -> bool:
        """RunAPI called back about the server's task ``task_id`` with ``token``: True when it is the task's.

        Then the task's poll loop reads the status at once (the callback's body is never trusted: the
        status read and the downloads decide), at most once per ``callback_min_gap_s`` however many
        callbacks come; a task already finished is acknowledged and nothing is done. False, with nothing
        changed or sent, for an unknown task, one created without a callback, or a wrong token: one answer
        for all three, so task ids cannot be probed. Not owner-checked: RunAPI is no user; the token is
        the credential.
        """
        record = await self._waker.verified(task_id, token)
        if record is None:
            return False
        if record.terminal:
            return True  # found done already (a poll, an earlier callback): RunAPI may stop calling
        tracked = self._registry.hold(record)
        self._called_back(tracked)
        if self._follower is not None and not self._poller.polls(tracked.task_id):
            # Another instance may poll it (the callback URL is the deployment's, not this instance's): the one
            # that does hears of the callback on the feed and reads the status now.
            await self.store.changes.announce(TaskChange(tracked.task_id, tracked.record.status, called_back=True))
        return True

    def _called_back(self, tracked: Tracked) -> None:
        """A valid callback for the task, received here or by another instance: its poll loop reads the
        status now (one that gave up, or never started, runs again; where another instance holds the
        task, the loop does not start and that instance reads it)."""
        if tracked.record.terminal:
            return
        self._poller.follow(tracked)
        self._poller.called_back(tracked.task_id)
        self._waker.called_back(tracked.task_id)

    # -- internals -----------------------------------------------------------------------------------------
    async def _lookup(self, task_id: str) -> Tracked:
        """The task if the caller may see it, polled from now if no loop polls it (one that gave up or
        stopped runs again)."""
        tracked = await self._registry.lookup(task_id)
        self._poller.follow(tracked)
        return tracked
