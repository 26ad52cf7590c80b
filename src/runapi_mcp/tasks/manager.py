"""The async polling manager: one per process, it owns every in-flight RunAPI task.

Each task gets one poll loop, however many tool calls wait on it; every status change is
fanned out to all waiters and listeners. When to poll is ``schedule.PollSchedule``'s business.

Whatever RunAPI, an image host or a file does, the worst outcome is that one task reports an
error: every loop the manager starts runs under a guard that turns an unexpected exception into
that task's error, so the task group (and every other task, waiter and the process) lives on.
Downloads have their own limiter, so image hosts that trickle bytes never hold the slots that
creates and polls need, and each output has an overall deadline. The client's retry policy is the
only retry layer: the manager never multiplies it.

With completion webhooks on (``callback_base``), every create carries a ``callback_url`` with a secret
of its own task; a callback with the right secret wakes the task's poll loop for one status read (its
body is never trusted), and polling goes on at a slow fallback pace in case the callback never comes.
"""

from __future__ import annotations

import hmac
import logging
import math
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
from anyio.abc import TaskGroup

from runapi_mcp.catalog import PreparedRequest
from runapi_mcp.client import (
    AuthenticationError,
    NotFoundError,
    RateLimitedError,
    RunAPIClient,
    RunAPIError,
    RunAPIStatusError,
    RunAPITransportError,
    TaskInfo,
)
from runapi_mcp.clock import SYSTEM_CLOCK, Clock, wait_for_event
from runapi_mcp.errors import UserError
from runapi_mcp.tasks.durations import DurationMemory, DurationModel
from runapi_mcp.tasks.images import ImageFileError, ImageNotFoundError, ImageStore
from runapi_mcp.tasks.records import LOCAL_OWNER, ImageRecord, StatusChange, TaskRecord, current_owner
from runapi_mcp.tasks.saving import SaveAsError, write_copy
from runapi_mcp.tasks.schedule import PollPolicy, PollSchedule, PollState
from runapi_mcp.tasks.store import MemoryTaskStore, TaskStore
from runapi_mcp.wording import count

log = logging.getLogger("runapi_mcp.tasks")

Listener = Callable[[TaskRecord], Awaitable[None]]
TickCallback = Callable[[TaskRecord], Awaitable[None]]

# A completed task whose outputs did not all download is tried again when asked for, but not more
# often than this: a host that is down should not be hammered by every get_task.
_REFETCH_AFTER_S = 10.0
# Polls that failed in a row before the task's error says so (one failure is usually a blip).
_REPORT_POLL_FAILURES_AFTER = 3


class UnknownTaskError(UserError, KeyError):
    """No task with that id was created through this server."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(task_id)

    def __str__(self) -> str:
        return (
            f"'task_id' {self.task_id[:200]!r} is not a task this server knows; "
            "use the task_id returned by generate_image or edit_image"
        )


class TaskEndedError(ValueError):
    """The task has ended (completed, failed or cancelled): there is nothing left to cancel."""

    def __init__(self, task_id: str, status: str) -> None:
        self.task_id = task_id
        self.status = status
        super().__init__(task_id)

    def __str__(self) -> str:
        return f"task {self.task_id[:200]!r} is already {self.status}; only a running task can be cancelled"


@dataclass
class _Tracked:
    record: TaskRecord
    poll: PollState
    changed: anyio.Event = field(default_factory=anyio.Event)
    polling: bool = False
    loop_started: float = 0.0  # when the current poll loop began (give-up is measured from here)
    upstream_requests: int = 0
    fetching: anyio.Lock = field(default_factory=anyio.Lock)
    create_sent: float = 0.0  # monotonic time the create was last sent (0: not by this process)
    last_fetch: float = 0.0  # monotonic time outputs were last downloaded (or tried)
    # Set by a completion callback: the poll loop's sleep ends and it reads the status at once.
    wake: anyio.Event = field(default_factory=anyio.Event)
    last_wake: float = -math.inf  # monotonic time a callback last set ``wake`` (floods are rate-limited)
    wake_deferred: bool = False  # a callback inside the gap is kept: it wakes the loop when the gap ends

    @property
    def task_id(self) -> str:
        return self.record.task_id


def _poll_state(record: TaskRecord, clock: Clock) -> PollState:
    elapsed = max(0.0, clock.time() - record.created_at)
    return PollState(
        kind=record.kind_key,
        model=record.model,
        resolution=record.resolution,
        started=clock.monotonic() - elapsed,
        progress=record.progress,
    )


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
    ) -> None:
        self.client = client
        # Every time read and every wait goes through it: a test moves it by hand.
        self.clock = clock
        self.images = images
        self.store: TaskStore = store or MemoryTaskStore()
        self.schedule = PollSchedule(policy or PollPolicy())
        # Where learned durations outlive the process (a stdio server restarts with every client session).
        self._durations_memory = durations_memory
        self._limiter = anyio.CapacityLimiter(max_concurrent_requests)  # creates and polls
        # Downloads stream to disk (little memory each) but may meet slow hosts: their own, wider limiter.
        self._downloads = anyio.CapacityLimiter(max_concurrent_downloads)
        self._tracked: dict[str, _Tracked] = {}  # by the server's task id
        self._aliases: dict[str, str] = {}  # RunAPI's task id -> the server's
        # Owners of tasks read from the store for their images (a task's owner never changes after submit):
        # a gallery or history page asks for the same tasks again and again. Only found records are kept;
        # an image without a task record is looked up each time (its task may yet be saved, by another
        # instance sharing the store).
        self._owners: dict[str, str] = {}
        self._listeners: list[Listener] = []
        self._tg: TaskGroup | None = None
        # Where RunAPI reaches this server's completion callbacks (Settings.callback_base); None: polling only.
        self._callback_base = callback_base.rstrip("/") if callback_base else None
        # Set when the process is shutting down: every wait returns what it has at once, so a tool call
        # still waiting gets its answer (the task id, "still running") before the connection closes.
        self._stopping = False
        # Where save_as copies may be written (RUNAPI_MCP_ALLOWED_DIRS): read when each copy is written, so a
        # task taken up after a restart is held to the directories allowed then.
        self.save_dirs: tuple[Path, ...] = tuple(save_dirs)

    @property
    def policy(self) -> PollPolicy:
        return self.schedule.policy

    @property
    def durations(self) -> DurationModel:
        return self.schedule.durations

    async def save_durations(self) -> None:
        """Keep what the schedule learned where it outlives the process (done after every finished task)."""
        if self._durations_memory is not None:
            await self._durations_memory.save(self.durations)

    # -- lifecycle -----------------------------------------------------------------------
    @asynccontextmanager
    async def running(self) -> AsyncIterator[TaskManager]:
        """Run the manager's poll loops for as long as the block lasts."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                if self._durations_memory is not None:
                    await self._durations_memory.load_into(self.durations)
                await self._resume()
                yield self
            finally:
                self._tg = None
                tg.cancel_scope.cancel()

    async def _resume(self) -> None:
        """Take up what a previous process left: unfinished tasks, outputs not downloaded, partial files."""
        removed = await anyio.to_thread.run_sync(self.images.remove_partials, self.policy.download_deadline_s)
        if removed:
            log.info("removed %s left by an earlier run", count(removed, "partial download"))
        for record in await self.store.unfinished():
            tracked = self._track(record)
            if self._wants_refetch(tracked) and self._tg is not None:
                self._tg.start_soon(self._guarded, tracked, "downloading the images", self._refetch, tracked)
        if self._tracked:
            log.info("resumed %s from the store", count(len(self._tracked), "task"))

    def stop_waiting(self) -> None:
        """Shutting down: every wait (now and later) returns at once; tasks stay in the store and resume
        on the next start."""
        self._stopping = True
        for tracked in self._tracked.values():
            tracked.changed.set()  # what every waiter sleeps on: it wakes, sees the stop and returns

    def add_listener(self, listener: Listener) -> None:
        """``listener(record)`` runs after every change of any task (e.g. resource-updated notices)."""
        self._listeners.append(listener)

    # -- creating ------------------------------------------------------------------------
    async def submit(
        self,
        prepared: PreparedRequest,
        *,
        prompt: str | None,
        price_cents: int | None = None,
        save_as: str | None = None,
    ) -> TaskRecord:
        """Record the task, then create it upstream (one idempotency key for every try) and start polling.

        The record exists before the create is sent: if RunAPI's answer is lost, the task stays
        "submitting" under the server's id and the create is re-sent with the same key until RunAPI
        answers (it never runs or bills a key twice). A definite refusal (bad request, no credits, bad
        key) marks the task failed and is raised. ``save_as`` (absolute, checked by the caller) is where
        copies of the pictures are written once they are in the library (``tasks.saving``).
        """
        now = self.clock.time()
        record = TaskRecord(
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
            callback_token=self._new_callback_token(prepared),
            created_at=now,
            updated_at=now,
            history=[StatusChange(status="submitting", at=now)],
        )
        await self.store.save(record)
        tracked = _Tracked(record=record, poll=_poll_state(record, self.clock))
        self._tracked[record.task_id] = tracked
        try:
            accepted = await self._create(tracked)
        except RunAPIError as exc:
            await self._update(tracked, status="failed", error=str(exc))
            raise
        # The poll loop takes it from here (and, while it is still "submitting", re-sends the create first).
        self._track(tracked.record)
        if not accepted:
            log.info("task %s stays submitting until RunAPI confirms it", tracked.task_id)
        return tracked.record.model_copy(deep=True)

    async def _create(self, tracked: _Tracked) -> bool:
        """Send the create once (the client retries per its policy). True when RunAPI accepted it; False
        when its answer never came (the task stays "submitting"); raises on a definite refusal."""
        record = tracked.record
        tracked.create_sent = self.clock.monotonic()
        try:
            async with self._limiter:
                tracked.upstream_requests += 1
                info = await self.client.create_task(
                    record.route, self._create_body(record), idempotency_key=record.idempotency_key
                )
        except RunAPIError as exc:
            _hide_callback_token(record, exc)  # an answer quoting the body's callback_url
            if not _unconfirmed(exc):
                raise
            if exc.task_id is not None:
                # The answer was an error but named the task (X-RunAPI-Task-Id): it exists upstream. Track it
                # by that id; sending the create again could only find the same task, at best.
                log.warning("task %s: the create answered %s but names RunAPI task %s; tracking it",
                            record.task_id, exc.status_code, exc.task_id)
                return await self._accepted(tracked, exc.task_id, None)
            log.warning("task %s: RunAPI has not confirmed the create (%s); it will be sent again", record.task_id, exc)
            await self._update(
                tracked,
                error=f"RunAPI has not confirmed the create yet ({exc}); it is sent again with the same "
                "idempotency key until RunAPI answers, so it is never paid for twice",
            )
            return False
        if info.replayed:
            log.info("task %s: RunAPI replayed the create (same key): %s, not a second charge", record.task_id, info.id)
        return await self._accepted(tracked, info.id, info)

    async def _accepted(self, tracked: _Tracked, upstream_id: str, info: TaskInfo | None) -> bool:
        """RunAPI has the task ``upstream_id``: record it and apply what the create's answer said, if any."""
        record = tracked.record
        self._aliases[upstream_id] = record.task_id
        log.info("created task %s = RunAPI %s (%s %s)", record.task_id, upstream_id, record.model, record.action)
        await self._update(tracked, upstream_id=upstream_id, status="pending", error=None)
        tracked.poll = _poll_state(tracked.record, self.clock)
        tracked.poll.started = self.clock.monotonic()  # the task runs upstream from now (a re-send may be late)
        if info is not None:
            await self._guarded(tracked, "reading the create answer", self._apply, tracked, info)
        return True

    # -- reading and waiting -------------------------------------------------------------
    async def get(self, task_id: str) -> TaskRecord:
        """The latest known state of a task (a copy).

        Resumes polling of a stored running task, and downloads again the outputs of a completed
        task that are not in the library yet (an image host that failed earlier).
        """
        tracked = await self._lookup(task_id)
        if self._wants_refetch(tracked):
            await self._guarded(tracked, "downloading the images", self._refetch, tracked)
        return tracked.record.model_copy(deep=True)

    async def find(self, task_id: str) -> TaskRecord | None:
        try:
            return await self.get(task_id)
        except UnknownTaskError:
            return None

    async def find_image(self, image_id: str) -> ImageRecord | None:
        """A library image the current request's owner may see, or None (as for one that does not exist)."""
        image = await self.images.lookup(image_id)
        if image is None:
            return None
        return image if (await self.visible_images([image])) else None

    async def owner_of_image(self, image: ImageRecord) -> str:
        """Whose image it is: its task's owner; an image with no task record is the local user's."""
        task_id = image.task_id
        if not task_id:
            return LOCAL_OWNER
        tracked = self._tracked.get(self._aliases.get(task_id, task_id))
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
        """Those of ``images`` whose task belongs to the current request's owner. An image with no task
        record (a library file of an earlier version, another home's) is the local user's."""
        owner = current_owner.get()
        owners: dict[str, str] = {}
        visible: list[ImageRecord] = []
        for image in images:
            if image.task_id not in owners:
                owners[image.task_id] = await self.owner_of_image(image)
            if owners[image.task_id] == owner:
                visible.append(image)
        return visible

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
        tracked = self._tracked.get(record.task_id)
        elapsed = self.clock.monotonic() - tracked.poll.started if tracked else self.clock.time() - record.created_at
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
        await self._update(tracked, status="cancelled", error=note, completed_at=self.clock.time())
        tracked.wake.set()  # the poll loop's sleep ends now, and the loop with it
        return tracked.record.model_copy(deep=True)

    def stats(self, task_id: str) -> dict[str, Any]:
        tracked = self._tracked.get(task_id)
        if tracked is None:
            return {}
        return {"polls": tracked.poll.polls, "upstream_requests": tracked.upstream_requests}

    # -- completion callbacks (webhooks) ------------------------------------------------
    async def callback(self, task_id: str, token: str) -> bool:
        """RunAPI called back about the server's task ``task_id`` with ``token``: True when it is the task's.

        Then the task's poll loop reads the status at once (the callback's body is never trusted: the
        status read and the downloads decide), at most once per ``callback_min_gap_s`` however many
        callbacks come; a task already finished is acknowledged and nothing is done. False, with nothing
        changed or sent, for an unknown task, one created without a callback, or a wrong token: one answer
        for all three, so task ids cannot be probed. Not owner-checked: RunAPI is no user; the token is
        the credential.
        """
        if not (isinstance(task_id, str) and isinstance(token, str)) or not (0 < len(token) <= 256):
            return False
        if not 0 < len(task_id) <= 256:
            return False
        tracked = self._tracked.get(task_id)  # by the server's id only: that is what the callback URL names
        record = tracked.record if tracked is not None else await self.store.get(task_id)
        if record is None or record.task_id != task_id or record.callback_token is None:
            return False  # (the store finds a task by RunAPI's id too: the URL names the server's)
        if not hmac.compare_digest(record.callback_token.encode(), token.encode("utf-8", "replace")):
            return False
        if record.terminal:
            return True  # found done already (a poll, an earlier callback): RunAPI may stop calling
        if tracked is None or (not tracked.polling and record.status != "submitting"):
            # A loop that gave up (or never started) runs again; but not beside a submit() still sending
            # the create (its loop starts when that returns, and sees the wake then).
            tracked = self._track(record)
        now = self.clock.monotonic()
        tracked.poll.called_back = tracked.poll.called_back or now
        gap = self.policy.callback_min_gap_s
        if now - tracked.last_wake >= gap:
            self._wake(tracked)
        elif not tracked.wake_deferred and self._tg is not None:
            # Inside the gap: not dropped (it may be the completion's own callback), but read once when the
            # gap ends, however many more come meanwhile.
            tracked.wake_deferred = True
            self._tg.start_soon(self._wake_later, tracked, tracked.last_wake + gap - now)
        return True

    def _wake(self, tracked: _Tracked) -> None:
        tracked.last_wake = self.clock.monotonic()
        tracked.wake.set()
        log.info("task %s: RunAPI called back; reading its status", tracked.task_id)

    async def _wake_later(self, tracked: _Tracked, delay: float) -> None:
        await self.clock.sleep(delay)
        tracked.wake_deferred = False
        if not tracked.record.terminal:
            self._wake(tracked)

    def _new_callback_token(self, prepared: PreparedRequest) -> str | None:
        """A fresh secret for a new task's callback URL, when webhooks are on and the model takes one.

        A callback_url the caller set is theirs and is kept: that task is polled as usual instead."""
        if self._callback_base is None or "callback_url" not in prepared.model.fields:
            return None
        if "callback_url" in prepared.body:
            return None
        return secrets.token_urlsafe(32)

    def _create_body(self, record: TaskRecord) -> dict[str, Any]:
        """The create's body: the request, plus the callback URL of a task that has a token.

        Built from the record each time, so a create re-sent after a lost answer is the same body (same
        key, same body: RunAPI returns the task it made). The URL stays out of ``record.request``, which
        is written to the library's sidecar files: the token is kept in the store only."""
        if record.callback_token is None or self._callback_base is None:
            return record.request
        url = f"{self._callback_base}/{quote(record.task_id, safe='')}?token={record.callback_token}"
        return {**record.request, "callback_url": url}

    def _next_look(self, tracked: _Tracked, retry_after: float | None) -> float:
        """Seconds until the next status read: the fallback pace for a task this server will be called
        back about (read afresh: a restart without webhooks polls a task created with them as usual)."""
        tracked.poll.callback = tracked.record.callback_token is not None and self._callback_base is not None
        return self.schedule.next_delay(tracked.poll, self.clock.monotonic(), retry_after)

    async def _nap(self, tracked: _Tracked, seconds: float) -> bool:
        """Sleep ``seconds``, less if a completion callback wakes the task; True when one did."""
        if not await wait_for_event(self.clock, tracked.wake, seconds):
            return False
        tracked.wake = anyio.Event()
        return True

    # -- internals: bookkeeping ----------------------------------------------------------
    async def _lookup(self, task_id: str) -> _Tracked:
        if not isinstance(task_id, str) or not task_id.strip():
            raise UnknownTaskError(str(task_id))
        wanted = task_id.strip()
        tracked = self._tracked.get(self._aliases.get(wanted, wanted))
        record = tracked.record if tracked is not None else await self.store.get(wanted)
        # Another user's task is not found: the same answer as for an id that never existed.
        if record is None or record.owner != current_owner.get():
            raise UnknownTaskError(task_id)
        return self._track(record)  # (re)starts a poll loop that gave up or stopped

    def _track(self, record: TaskRecord) -> _Tracked:
        tracked = self._tracked.get(record.task_id)
        if tracked is None:
            tracked = _Tracked(record=record, poll=_poll_state(record, self.clock))
            self._tracked[record.task_id] = tracked
            if record.upstream_id:
                self._aliases[record.upstream_id] = record.task_id
        if not tracked.record.terminal and not tracked.polling and self._tg is not None:
            tracked.polling = True
            tracked.loop_started = self.clock.monotonic()
            self._tg.start_soon(self._poll_loop, tracked)
        return tracked

    async def _guarded(
        self, tracked: _Tracked, doing: str, fn: Callable[..., Awaitable[None]], *args: Any
    ) -> None:
        """Run ``fn``; an unexpected exception becomes this task's error instead of ending the process.

        RunAPI's answers, image hosts and files are outside our control: a bug they trigger must cost
        one task at most. The exception goes to the log; the task keeps what it had, with the error.
        """
        try:
            await fn(*args)
        except Exception as exc:
            log.exception("task %s: unexpected error while %s", tracked.task_id, doing)
            try:
                await self._update(
                    tracked,
                    error=f"internal error while {doing} ({type(exc).__name__}); "
                    "call get_task again to retry; the server log has the details",
                )
            except Exception:
                log.exception("task %s: could not record the error", tracked.task_id)

    async def _update(self, tracked: _Tracked, **changes: Any) -> None:
        changes = {k: v for k, v in changes.items() if v is not None or k == "error"}
        if tracked.record.status == "cancelled":
            # Final: a create answer, poll or download still in flight when the task was cancelled
            # must not bring it back to life or replace the note saying why it stopped.
            for key in ("status", "error", "completed_at"):
                changes.pop(key, None)
        tracked.record = tracked.record.updated(at=self.clock.time(), **changes)
        tracked.poll.progress = tracked.record.progress
        await self.store.save(tracked.record)
        event, tracked.changed = tracked.changed, anyio.Event()
        event.set()
        snapshot = tracked.record.model_copy(deep=True)
        for listener in list(self._listeners):
            try:
                await listener(snapshot)
            except Exception:  # a broken listener must not stop polling
                log.exception("task listener failed")

    # -- internals: polling --------------------------------------------------------------
    async def _poll_loop(self, tracked: _Tracked) -> None:
        try:
            await self._guarded(tracked, "polling RunAPI", self._poll_until_done, tracked)
        finally:
            tracked.polling = False

    async def _submit_until_accepted(self, tracked: _Tracked) -> bool:
        """Re-send the create of a "submitting" task (same key) until RunAPI answers; False if it refused."""
        delay = self.policy.fine_interval_s * 4
        while tracked.record.status == "submitting":
            # Right after a try that went unanswered, wait before the next; a resumed task goes at once.
            woken = await self._nap(tracked, max(0.0, tracked.create_sent + delay - self.clock.monotonic()))
            if tracked.record.terminal:  # cancelled meanwhile: a create RunAPI never confirmed is not re-sent
                return False
            try:
                if await self._create(tracked):
                    if woken:  # RunAPI said it ended: read its status now rather than at the fallback pace
                        tracked.wake.set()
                    return True
            except RunAPIError as exc:
                await self._update(tracked, status="failed", error=str(exc))
                return False
            delay = min(delay * 2, self.policy.coarse_max_s * 12)
        return not tracked.record.terminal

    async def _poll_until_done(self, tracked: _Tracked) -> None:
        retry_after: float | None = None
        failures = 0
        policy = self.policy
        if tracked.record.status == "submitting" and not await self._submit_until_accepted(tracked):
            return
        while not tracked.record.terminal:
            await self._nap(tracked, self._next_look(tracked, retry_after))
            if tracked.record.terminal:  # cancelled meanwhile: no further look
                return
            retry_after = None
            if self.clock.monotonic() - tracked.loop_started > policy.give_up_s:
                await self._update(
                    tracked,
                    error=f"RunAPI has not finished this task within {policy.give_up_s / 60:.0f} min; "
                    "call get_task again later",
                )
                return
            tracked.poll.polled(self.clock.monotonic())
            try:
                async with self._limiter:
                    tracked.upstream_requests += 1
                    info = await self.client.get_task(tracked.record.route, tracked.record.upstream_id or "")
            except NotFoundError as exc:
                await self._update(tracked, status="failed", error=f"RunAPI does not know this task: {exc}")
                return
            except AuthenticationError as exc:
                await self._update(tracked, error=str(exc))
                return
            except RateLimitedError as exc:
                retry_after = exc.retry_after or policy.coarse_max_s
                continue
            except RunAPIError as exc:
                failures += 1
                retry_after = min(policy.coarse_max_s * 4, policy.fine_interval_s * 2 ** min(failures, 16))
                log.warning("polling %s failed (%s); retrying in %.1fs", tracked.task_id, exc, retry_after)
                if failures >= _REPORT_POLL_FAILURES_AFTER:
                    # A waiting user sees why nothing moves (the task itself may be fine upstream).
                    await self._update(tracked, error=f"polling failed {failures} times in a row: {exc}")
                continue
            if failures >= _REPORT_POLL_FAILURES_AFTER and not tracked.record.terminal:
                await self._update(tracked, error=None)  # polling works again: the note is stale
            failures = 0
            retry_after = info.retry_after
            await self._apply(tracked, info)

    async def _apply(self, tracked: _Tracked, info: TaskInfo) -> None:
        record = tracked.record
        if info.cost_cents is not None and info.cost_cents != record.cost_cents:
            # What RunAPI says the task cost counts as its spend from now on (a cancelled task's too: RunAPI
            # has no cancel, and the charge is real).
            await self._update(tracked, cost_cents=info.cost_cents)
            record = tracked.record
        if record.status == "cancelled":
            return  # an answer that was in flight when the task was cancelled: nothing is downloaded
        if info.status == "completed":
            if record.status != "completed":
                await self._complete(tracked, info)
            return
        if info.status == "failed":
            await self._update(tracked, status="failed", error=info.error or "RunAPI reported the task failed")
            return
        changed_status = info.status if info.status != record.status else None
        progress = info.progress
        if progress is not None and record.progress is not None:
            progress = max(progress, record.progress)
        if changed_status or progress != record.progress:
            await self._update(tracked, status=changed_status, progress=progress)

    def _learn(self, poll: PollState) -> None:
        """Learn the task's duration from when it was last seen running and first seen done."""
        self.schedule.learn(poll, self.clock.monotonic())

    # -- internals: outputs --------------------------------------------------------------
    async def _complete(self, tracked: _Tracked, info: TaskInfo) -> None:
        record = tracked.record
        self._learn(tracked.poll)
        urls = list(dict.fromkeys(image.url for image in info.images))  # in order, each once
        listed = max(info.listed_images, len(urls))
        cap = record.max_outputs if record.max_outputs is not None else len(urls)
        notes: list[str] = []
        if listed > min(cap, len(urls)):
            distinct = f" ({len(urls)} distinct)" if len(urls) < listed else ""
            notes.append(
                f"RunAPI listed {listed} images{distinct}; kept the first {min(cap, len(urls))} "
                f"(this model makes at most {cap})"
            )
        urls = urls[:cap]
        images = await self._download_all(
            tracked, [self.images.undownloaded(record.task_id, i, u) for i, u in enumerate(urls)]
        )
        # Before the task reads "completed": whoever it wakes sees where the copies went.
        images = await self._save_copies(tracked, images)
        await self._update(
            tracked,
            status="completed",
            progress=1.0,
            images=images,
            remote_urls=urls,
            error=_download_note(images, notes),
            completed_at=self.clock.time(),
        )
        # After the update: the waiters (woken by it) need not wait for a store write about the schedule.
        await self.save_durations()  # a few KB, once per finished task

    def _wants_refetch(self, tracked: _Tracked) -> bool:
        """A completed task with outputs not in the library, last tried long enough ago."""
        return tracked.record.missing_outputs and self.clock.monotonic() - tracked.last_fetch >= _REFETCH_AFTER_S

    async def _refetch(self, tracked: _Tracked) -> None:
        if tracked.fetching.locked():
            return  # another call is downloading them right now: no second download of the same files
        async with tracked.fetching:
            if not self._wants_refetch(tracked):  # it may have finished while this call looked
                return
            images = await self._download_all(tracked, list(tracked.record.images))
            images = await self._save_copies(tracked, images)
            await self._update(tracked, images=images, error=_download_note(images, []))

    async def _download_all(self, tracked: _Tracked, images: list[ImageRecord]) -> list[ImageRecord]:
        """Every output not yet in the library downloaded side by side; a failure is noted on its image."""
        results = list(images)

        async def fetch(n: int, image: ImageRecord) -> None:
            results[n] = await self._download(tracked, image)

        tracked.last_fetch = self.clock.monotonic()
        async with anyio.create_task_group() as tg:
            for n, image in enumerate(images):
                if image.path is None and image.url:
                    tg.start_soon(fetch, n, image)
        return results

    async def _save_copies(self, tracked: _Tracked, images: list[ImageRecord]) -> list[ImageRecord]:
        """The save_as copy of every picture in the library that has none yet (each is tried once).

        A copy that cannot be written is noted on its image (``save_error``); it never fails the task."""
        save_as = tracked.record.save_as
        if save_as is None:
            return images
        results = list(images)
        for n, image in enumerate(images):
            if image.path is None or image.saved_as is not None or image.save_error is not None:
                continue
            try:
                saved = await anyio.to_thread.run_sync(
                    write_copy, self.images, image, save_as, len(images), self.save_dirs
                )
            except (SaveAsError, ImageNotFoundError) as exc:
                reason = str(exc)
            except Exception as exc:
                log.exception("task %s: copying image %d to save_as failed unexpectedly", tracked.task_id, image.index)
                reason = f"internal error while copying ({type(exc).__name__})"
            else:
                log.info("task %s: image %d copied to %s", tracked.task_id, image.index, saved)
                results[n] = image.model_copy(update={"saved_as": str(saved)})
                continue
            log.warning("task %s: image %d not copied to save_as: %s", tracked.task_id, image.index, reason)
            results[n] = image.model_copy(update={"save_error": reason})
        return results

    async def _download(self, tracked: _Tracked, image: ImageRecord) -> ImageRecord:
        assert image.url is not None
        try:
            async with self._downloads:
                tracked.upstream_requests += 1
                deadline = self.policy.download_deadline_s
                # The client keeps the deadline; this is a backstop. Both are on the event loop's clock, not
                # ``self.clock``: they bound real I/O, which a test's clock does not speed up.
                with anyio.fail_after(deadline + 5):
                    saved = await self.images.download(
                        self.client, tracked.record, image.index, image.url, deadline_s=deadline
                    )
            return saved.model_copy(update={"error": None})
        except (RunAPIError, ImageFileError) as exc:
            reason = str(exc)
        except TimeoutError:
            reason = f"the image host did not deliver within {self.policy.download_deadline_s:.0f} s"
        except OSError as exc:
            reason = f"could not save it in the library ({exc.strerror or type(exc).__name__})"
        except Exception as exc:
            log.exception("task %s: downloading image %d failed unexpectedly", tracked.task_id, image.index)
            reason = f"internal error while downloading ({type(exc).__name__})"
        log.warning("task %s: image %d not downloaded: %s", tracked.task_id, image.index, reason)
        return ImageRecord.model_validate({**image.model_dump(), "error": reason})


def _unconfirmed(exc: RunAPIError) -> bool:
    """Whether a failed create may still go through: no answer at all, or a server error or throttling
    (the task may exist and is asked for again with its key), rather than a refusal.

    An answer that came but cannot be read (RunAPIResponseError, after the client's own second try) is
    a failure to report, not to repeat: the same key would bring back the same unreadable answer."""
    if isinstance(exc, RunAPIStatusError):
        code = exc.status_code  # None: refused here, before sending (no key, a body that cannot be sent)
        return code is not None and (code >= 500 or code in (408, 409, 425, 429))
    return isinstance(exc, RunAPITransportError)


def _download_note(images: list[ImageRecord], notes: list[str]) -> str | None:
    """The task's error text about its outputs: what is missing and why (None when all is well)."""
    missing = [image for image in images if image.path is None]
    parts = list(notes)
    if missing:
        parts.append(
            f"downloaded {len(images) - len(missing)} of {count(len(images), 'image')}; "
            + "; ".join(f"image {image.index}: {image.error or 'not downloaded'}" for image in missing)
            + "; the RunAPI URLs are kept: call get_task again to retry"
        )
    return "; ".join(parts) or None


def _hide_callback_token(record: TaskRecord, exc: RunAPIError) -> None:
    """Cut the task's webhook secret out of an error RunAPI answered to its create (a 422 may quote the
    body's ``callback_url``): the error reaches the caller, the log and the store."""
    token = record.callback_token
    if token and token in exc.message:
        exc.message = exc.message.replace(token, "***")
