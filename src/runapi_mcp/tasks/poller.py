"""The poller: one loop per task this process polls, from the create until the task ends.

Each task gets one poll loop, however many tool calls wait on it. The loop sends the create again while
RunAPI has not confirmed it (same idempotency key: RunAPI never runs or bills a key twice), then reads the
task's status when ``schedule.PollSchedule`` says, sleeping in the completion waker so that a callback
ends the sleep. A completed task's outputs go to the output fetcher; what its duration taught goes to the
schedule.

Which tasks this process polls is one seam, :class:`TaskClaims`: today every unfinished task in the store
(:class:`LocalClaims`: one process owns the store); with several instances on one database, a lease there.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import anyio
from anyio.abc import TaskGroup

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
from runapi_mcp.clock import Clock
from runapi_mcp.tasks.fetcher import OutputFetcher
from runapi_mcp.tasks.records import TaskRecord
from runapi_mcp.tasks.registry import TaskRegistry, Tracked
from runapi_mcp.tasks.schedule import PollSchedule, PollState
from runapi_mcp.tasks.store import StoreError, TaskStore
from runapi_mcp.tasks.waker import CompletionWaker, hide_callback_token

log = logging.getLogger("runapi_mcp.tasks")

# Polls that failed in a row before the task's note says so (one failure is usually a blip).
_REPORT_POLL_FAILURES_AFTER = 3


class TaskClaims(Protocol):
    """Which tasks this process polls: it runs a task's poll loop only while it holds the task's claim.

    Over the stores' leases (``store.leases``, held by an id of this instance for a while,
    ``claims.LeaseClaims``): ``take_up`` and ``claim`` claim due tasks (the latter one task, by id),
    ``release`` lets one go, and ``keep`` renews what is held and claims, periodically, what other
    instances let lapse."""

    async def take_up(self) -> list[TaskRecord]:
        """The tasks to take up now (at start): claimed for this process. Unfinished ones are polled, and
        completed ones with outputs not in the library are downloaded again."""
        ...

    async def claim(self, record: TaskRecord) -> TaskRecord | None:
        """The task's record if this process holds its claim, from now if it did not (a new task, one asked
        for or called back about that no loop here polls): the store's record when claimed just now (newer
        than one this process read earlier), else ``record``. None: another process polls it."""
        ...

    async def release(self, record: TaskRecord) -> None:
        """This process stopped polling the task (``record`` as it stands): it ended, or its loop gave up.
        (A loop stopped by the process stopping releases nothing: its claim lapses, or the next start takes
        it up again.)"""
        ...

    async def keep(self, take: Callable[[TaskRecord], None], lose: Callable[[str], None]) -> None:
        """Runs as long as the manager does: keeps this process's claims (a lease renewed before it lapses),
        hands ``take`` every task claimed after the start (one whose holder stopped), and tells ``lose`` of a
        claim this process lost (renewed too late: another process may poll the task from now)."""
        ...


class LocalClaims:
    """One process owns the store (SQLite, memory): every unfinished task in it is this process's to poll."""

    def __init__(self, store: TaskStore) -> None:
        self._store = store

    async def take_up(self) -> list[TaskRecord]:
        return await self._store.unfinished()

    async def claim(self, record: TaskRecord) -> TaskRecord | None:
        return record

    async def release(self, record: TaskRecord) -> None:
        return None

    async def keep(self, take: Callable[[TaskRecord], None], lose: Callable[[str], None]) -> None:
        return None  # nobody else polls these tasks: nothing to renew, nothing to take over


@dataclass
class _Loop:
    """One task's polling: its schedule state, and whether a loop (or submit's first create) is running."""

    poll: PollState
    polling: bool = False
    started: float = 0.0  # when the current poll loop began (give-up is measured from here)
    create_sent: float = 0.0  # monotonic time the create was last sent (0: not by this process)
    first_create: bool = False  # submit() is sending the create: the loop starts when it returns
    claimed: bool = False  # this process holds the task's claim and polls it (or sends its first create)
    lost: bool = False  # the claim was lost while the loop ran: it stops at its next look
    again: bool = False  # followed again while it was stopping for a lost claim: a new loop runs once it ends


def poll_state(record: TaskRecord, clock: Clock) -> PollState:
    """A task's schedule state, started when the task was created (on the monotonic clock)."""
    elapsed = max(0.0, clock.time() - record.created_at)
    return PollState(
        kind=record.kind_key,
        model=record.model,
        resolution=record.resolution,
        started=clock.monotonic() - elapsed,
        progress=record.progress,
    )


class Poller:
    """Creates tasks upstream and polls them until they end."""

    def __init__(
        self,
        client: RunAPIClient,
        registry: TaskRegistry,
        waker: CompletionWaker,
        fetcher: OutputFetcher,
        schedule: PollSchedule,
        clock: Clock,
        claims: TaskClaims,
        *,
        max_concurrent_requests: int = 8,
        learned: Callable[[], Awaitable[None]],
    ) -> None:
        self._client = client
        self._registry = registry
        self._waker = waker
        self._fetcher = fetcher
        self.schedule = schedule
        self._clock = clock
        self.claims = claims
        self._learned = learned  # called after a finished task taught the schedule (to keep what it learned)
        self._limiter = anyio.CapacityLimiter(max_concurrent_requests)  # creates and polls
        self._loops: dict[str, _Loop] = {}  # by the server's task id
        self.tg: TaskGroup | None = None  # where the poll loops run (set while the manager runs)

    # -- which tasks are polled ------------------------------------------------------------------------
    async def take_up(self) -> list[Tracked]:
        """Hold and follow every task the claims give this process (at start)."""
        taken = [self._registry.hold(record) for record in await self.claims.take_up()]
        for tracked in taken:
            self.follow(tracked)
        return taken

    def follow(self, tracked: Tracked) -> None:
        """Poll the task until it ends, unless a loop here polls it already (or submit is sending its
        create: the loop starts when that returns). A loop that gave up or stopped runs again."""
        loop = self._loop(tracked)
        if tracked.record.terminal or self.tg is None:
            return
        if loop.polling or loop.first_create:
            # A loop that lost its claim stops at its next look, whatever happens meanwhile: asked for again
            # (the claim taken back, a look, a callback), the task gets a loop of its own once it has.
            loop.again = loop.again or loop.lost
            return
        loop.polling = True
        loop.started = self._clock.monotonic()
        self.tg.start_soon(self._run, tracked, loop)

    def polls(self, task_id: str) -> bool:
        """Whether this process holds the task's claim and polls it (its changes are written here)."""
        loop = self._loops.get(task_id)
        return loop is not None and loop.claimed

    def let_go(self, task_id: str) -> None:
        """The task's claim was lost (another process may poll it now): its loop stops at its next look."""
        loop = self._loops.get(task_id)
        if loop is not None and loop.claimed:
            loop.claimed, loop.lost = False, True
            tracked = self._registry.held(task_id)
            if loop.polling and tracked is not None and not tracked.record.terminal:  # (an end clears the lease)
                log.warning("task %s: this instance's lease on it lapsed; it stops polling it here", task_id)
                self._waker.wake_now(task_id)

    def polled(self, task_id: str) -> PollState | None:
        """The task's schedule state, if this process has followed it."""
        loop = self._loops.get(task_id)
        return loop.poll if loop is not None else None

    def called_back(self, task_id: str) -> None:
        """A valid callback for the task arrived now: its duration is timed by the first one."""
        loop = self._loops.get(task_id)
        if loop is not None:
            loop.poll.called_back = loop.poll.called_back or self._clock.monotonic()

    def _loop(self, tracked: Tracked) -> _Loop:
        loop = self._loops.get(tracked.task_id)
        if loop is None:
            loop = self._loops[tracked.task_id] = _Loop(poll=poll_state(tracked.record, self._clock))
        return loop

    async def _run(self, tracked: Tracked, loop: _Loop) -> None:
        try:
            if not await self._claim(tracked, loop):
                return  # another process polls it: its changes reach the store from there
            await self._registry.guarded(tracked, "polling RunAPI", self._poll_until_done, tracked, loop)
            if loop.claimed:
                await self.claims.release(tracked.record)
        except Exception as exc:
            # The claim could not be taken or let go (a shared store that is away): not polled here for now. A
            # claim not renewed lapses, and a later look here, or another instance's claim, takes the task up.
            _claims_failed(tracked, exc)
        finally:
            loop.polling = loop.claimed = False
            if loop.again:
                loop.again = False
                self.follow(tracked)

    async def _claim(self, tracked: Tracked, loop: _Loop) -> bool:
        """Take (or keep) the task's claim; the record becomes the store's when that is newer."""
        claimed = await self.claims.claim(tracked.record)
        if claimed is None:
            return False
        if claimed is not tracked.record and claimed != tracked.record:
            # Claimed from the store: another process polled it until now, and what it wrote is the latest.
            self._registry.refresh(tracked, claimed)
        loop.claimed, loop.lost = True, False
        return True

    # -- the create ------------------------------------------------------------------------------------
    async def create_first(self, tracked: Tracked) -> bool:
        """Send a new task's create (submit); as :meth:`_create`. No loop starts meanwhile."""
        loop = self._loop(tracked)
        loop.first_create = True
        try:
            # Claimed before the create goes out: no other process takes the new task up meanwhile. Were one
            # to claim it first (in the moment since it was stored), this create and that one's carry the
            # same key: RunAPI makes the task once. The create goes out even if the claim fails: the task is
            # stored, and the caller is answered for it.
            try:
                await self._claim(tracked, loop)
            except Exception as exc:
                _claims_failed(tracked, exc)
            return await self._create(tracked, loop)
        finally:
            loop.first_create = False

    async def refused(self, tracked: Tracked) -> None:
        """RunAPI refused the first create (the task is failed): its claim is let go."""
        loop = self._loop(tracked)
        if loop.claimed and not loop.polling:
            loop.claimed = False
            try:
                await self.claims.release(tracked.record)
            except Exception as exc:  # the caller is told of the refusal, not of this
                _claims_failed(tracked, exc)

    async def _create(self, tracked: Tracked, loop: _Loop) -> bool:
        """Send the create once (the client retries per its policy). True when RunAPI accepted it; False
        when its answer never came (the task stays "submitting"); raises on a definite refusal."""
        record = tracked.record
        loop.create_sent = self._clock.monotonic()
        try:
            async with self._limiter:
                tracked.upstream_requests += 1
                info = await self._client.create_task(
                    record.route, self._waker.create_body(record), idempotency_key=record.idempotency_key
                )
        except RunAPIError as exc:
            hide_callback_token(record, exc)  # an answer quoting the body's callback_url
            if not _unconfirmed(exc):
                raise
            if exc.task_id is not None:
                # The answer was an error but named the task (X-RunAPI-Task-Id): it exists upstream. Track it
                # by that id; sending the create again could only find the same task, at best.
                log.warning("task %s: the create answered %s but names RunAPI task %s; tracking it",
                            record.task_id, exc.status_code, exc.task_id)
                return await self._accepted(tracked, loop, exc.task_id, None)
            log.warning("task %s: RunAPI has not confirmed the create (%s); it will be sent again", record.task_id, exc)
            note = (
                f"RunAPI has not confirmed the create yet ({exc}); it is sent again with the same "
                "idempotency key until RunAPI answers, so it is never paid for twice"
            )
            await self._registry.commit(tracked, tracked.record.noted(note, at=self._clock.time()))
            return False
        if info.replayed:
            log.info("task %s: RunAPI replayed the create (same key): %s, not a second charge", record.task_id, info.id)
        return await self._accepted(tracked, loop, info.id, info)

    async def _accepted(self, tracked: Tracked, loop: _Loop, upstream_id: str, info: TaskInfo | None) -> bool:
        """RunAPI has the task ``upstream_id``: record it and apply what the create's answer said, if any."""
        record = tracked.record
        log.info("created task %s = RunAPI %s (%s %s)", record.task_id, upstream_id, record.model, record.action)
        await self._registry.commit(tracked, record.accepted(upstream_id, at=self._clock.time()))
        loop.poll = poll_state(tracked.record, self._clock)
        loop.poll.started = self._clock.monotonic()  # the task runs upstream from now (a re-send may be late)
        if info is not None:
            await self._registry.guarded(tracked, "reading the create answer", self._apply, tracked, loop, info)
        return True

    async def _submit_until_accepted(self, tracked: Tracked, loop: _Loop) -> bool:
        """Re-send the create of a "submitting" task (same key) until RunAPI answers; False if it refused."""
        delay = self.schedule.policy.fine_interval_s * 4
        while tracked.record.status == "submitting":
            # Right after a try that went unanswered, wait before the next; a resumed task goes at once.
            wait = max(0.0, loop.create_sent + delay - self._clock.monotonic())
            woken = await self._waker.nap(tracked.task_id, wait)
            if tracked.record.terminal:  # cancelled meanwhile: a create RunAPI never confirmed is not re-sent
                return False
            if loop.lost:  # another process holds the task now: it sends the create (same key) from there
                return False
            try:
                if await self._create(tracked, loop):
                    if woken:  # RunAPI said it ended: read its status now rather than at the fallback pace
                        self._waker.wake_now(tracked.task_id)
                    return True
            except RunAPIError as exc:
                await self._registry.commit(tracked, tracked.record.failed(str(exc), at=self._clock.time()))
                return False
            delay = min(delay * 2, self.schedule.policy.coarse_max_s * 12)
        return not tracked.record.terminal

    # -- polling ---------------------------------------------------------------------------------------
    async def _poll_until_done(self, tracked: Tracked, loop: _Loop) -> None:
        retry_after: float | None = None
        failures = 0
        policy = self.schedule.policy
        if tracked.record.status == "submitting" and not await self._submit_until_accepted(tracked, loop):
            return
        while not tracked.record.terminal:
            await self._waker.nap(tracked.task_id, self._next_look(tracked, loop, retry_after))
            if tracked.record.terminal:  # cancelled meanwhile: no further look
                return
            if loop.lost:  # another process holds the task now: it looks from there
                return
            retry_after = None
            if self._clock.monotonic() - loop.started > policy.give_up_s:
                note = (
                    f"RunAPI has not finished this task within {policy.give_up_s / 60:.0f} min; "
                    "call get_task again later"
                )
                await self._note(tracked, note)
                return
            loop.poll.polled(self._clock.monotonic())
            try:
                async with self._limiter:
                    tracked.upstream_requests += 1
                    info = await self._client.get_task(tracked.record.route, tracked.record.upstream_id or "")
            except NotFoundError as exc:
                failed = tracked.record.failed(f"RunAPI does not know this task: {exc}", at=self._clock.time())
                await self._registry.commit(tracked, failed)
                return
            except AuthenticationError as exc:
                await self._note(tracked, str(exc))
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
                    await self._note(tracked, f"polling failed {failures} times in a row: {exc}")
                continue
            if failures >= _REPORT_POLL_FAILURES_AFTER and not tracked.record.terminal:
                await self._note(tracked, None)  # polling works again: the note is stale
            failures = 0
            retry_after = info.retry_after
            await self._apply(tracked, loop, info)

    def _next_look(self, tracked: Tracked, loop: _Loop, retry_after: float | None) -> float:
        """Seconds until the next status read: the fallback pace for a task this server will be called
        back about."""
        loop.poll.callback = self._waker.calls_back(tracked.record)
        loop.poll.progress = tracked.record.progress
        return self.schedule.next_delay(loop.poll, self._clock.monotonic(), retry_after)

    async def _apply(self, tracked: Tracked, loop: _Loop, info: TaskInfo) -> None:
        """What a status read (or the create's answer) says, applied to the task."""
        record = tracked.record
        if info.cost_cents is not None and info.cost_cents != record.cost_cents:
            # What RunAPI says the task cost counts as its spend from now on (a cancelled task's too: RunAPI
            # has no cancel, and the charge is real).
            await self._registry.commit(tracked, record.costed(info.cost_cents, at=self._clock.time()))
            record = tracked.record
        if record.status == "cancelled":
            return  # an answer that was in flight when the task was cancelled: nothing is downloaded
        if info.status == "completed":
            if record.status != "completed":
                self.schedule.learn(loop.poll, self._clock.monotonic())
                await self._fetcher.complete(tracked, info)
                # After the completion: the waiters (woken by it) need not wait for a store write about the
                # schedule.
                await self._learned()
            return
        if info.status == "failed":
            failed = record.failed(info.error or "RunAPI reported the task failed", at=self._clock.time())
            await self._registry.commit(tracked, failed)
            return
        progress = info.progress
        if progress is None:
            progress = record.progress  # not reported this time: what was reported stands
        elif record.progress is not None:
            progress = max(progress, record.progress)  # never backwards
        if info.status != record.status or progress != record.progress:
            progressed = record.progressed(info.status, progress, at=self._clock.time())
            await self._registry.commit(tracked, progressed)

    async def _note(self, tracked: Tracked, note: str | None) -> None:
        await self._registry.commit(tracked, tracked.record.noted(note, at=self._clock.time()))


def _claims_failed(tracked: Tracked, exc: Exception) -> None:
    if isinstance(exc, StoreError):
        log.warning("task %s: could not claim or release it in the task store: %s", tracked.task_id, exc)
    else:
        log.error("task %s: claiming or releasing it failed", tracked.task_id, exc_info=exc)


def _unconfirmed(exc: RunAPIError) -> bool:
    """Whether a failed create may still go through: no answer at all, or a server error or throttling
    (the task may exist and is asked for again with its key), rather than a refusal.

    An answer that came but cannot be read (RunAPIResponseError, after the client's own second try) is
    a failure to report, not to repeat: the same key would bring back the same unreadable answer."""
    if isinstance(exc, RunAPIStatusError):
        code = exc.status_code  # None: refused here, before sending (no key, a body that cannot be sent)
        return code is not None and (code >= 500 or code in (408, 409, 425, 429))
    return isinstance(exc, RunAPITransportError)
