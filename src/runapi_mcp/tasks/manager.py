"""The async polling manager: one per process, it owns every in-flight RunAPI task.

Each task gets one poll loop, however many tool calls wait on it; every status change is
fanned out to all waiters and listeners. Polls are scheduled from a learned estimate of how
long tasks of that model and resolution take (``durations.DurationModel``): an early look on
every task (refusals and instant failures show in seconds), a jump to one poll spacing past the
earliest likely finish, dense polls through the likely window, then a back-off.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
from anyio.abc import TaskGroup

from runapi_mcp.catalog import PreparedRequest
from runapi_mcp.client import (
    AuthenticationError,
    NotFoundError,
    RateLimitedError,
    RunAPIClient,
    RunAPIError,
    TaskInfo,
)
from runapi_mcp.tasks.durations import DurationFile, DurationModel
from runapi_mcp.tasks.images import ImageStore
from runapi_mcp.tasks.records import ImageRecord, TaskRecord
from runapi_mcp.tasks.store import MemoryTaskStore, TaskStore

log = logging.getLogger("runapi_mcp.tasks")

Listener = Callable[[TaskRecord], Awaitable[None]]
TickCallback = Callable[[TaskRecord], Awaitable[None]]

class UnknownTaskError(KeyError):
    """No task with that id was created through this server."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(task_id)

    def __str__(self) -> str:
        return (
            f"'task_id' {self.task_id!r} is not a task this server knows; "
            "use the task_id returned by generate_image or edit_image"
        )


@dataclass(frozen=True)
class PollPolicy:
    """When to look at a running task. Times are seconds; the benchmark scales them with the clock."""

    early_check_s: float = 1.5  # the early look every task gets (instant failures, quick models)
    # Spacing of polls through the likely finish window. Detection lag is about uniform on 0..fine_interval_s
    # (p50 ~0.3 s, p95 ~0.57 s before the download and preview, which take up to ~0.15 s for 4K; targets
    # 0.5 s and 1.0 s). With the fitted window a 10-30 s task with +-10 % jitter still costs ~8 % fewer
    # requests than a plain 5-s loop, early look included (bench/latency.py measures both).
    fine_interval_s: float = 0.6
    # An untimed kind's window (the prior's, +-70 %) is polled every spread x this instead (at least
    # fine_interval_s): fine polls across it would cost ~25 polls a task before anything is learned.
    untimed_window_step: float = 0.25
    coarse_max_s: float = 5.0
    backoff_factor: float = 1.5
    window_sigmas: float = 2.0
    give_up_s: float = 15 * 60
    download_attempts: int = 3
    prior_scale: float = 1.0  # multiplies the built-in duration priors (a simulator's scaled clock)

    def scaled(self, factor: float) -> PollPolicy:
        """The same policy on a clock running ``1/factor`` times faster (benchmarks, tests)."""
        return replace(
            self,
            early_check_s=self.early_check_s * factor,
            fine_interval_s=self.fine_interval_s * factor,
            coarse_max_s=self.coarse_max_s * factor,
            prior_scale=self.prior_scale * factor,
        )


@dataclass
class _Tracked:
    record: TaskRecord
    started: float  # monotonic time the task was created (or resumed)
    changed: anyio.Event = field(default_factory=anyio.Event)
    polling: bool = False
    polls: int = 0
    last_poll: float = 0.0
    prev_poll: float = 0.0
    loop_started: float = 0.0  # when the current poll loop began (give-up is measured from here)
    upstream_requests: int = 0


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
        durations_file: DurationFile | None = None,
    ) -> None:
        self.client = client
        self.images = images
        self.store: TaskStore = store or MemoryTaskStore()
        self.policy = policy or PollPolicy()
        # Observations up to two fine spacings wide count as short; half a spacing of margin past the
        # latest likely finish keeps the fine polls going a little longer before backing off.
        self.durations = DurationModel(
            prior_scale=self.policy.prior_scale,
            margin=self.policy.fine_interval_s / 2,
            short_interval=2 * self.policy.fine_interval_s,
            sigmas=self.policy.window_sigmas,
        )
        # Where learned durations outlive the process (a stdio server restarts with every client session).
        self._durations_file = durations_file
        if durations_file is not None:
            durations_file.load_into(self.durations)
        self._limiter = anyio.CapacityLimiter(max_concurrent_requests)
        self._tracked: dict[str, _Tracked] = {}
        self._listeners: list[Listener] = []
        self._tg: TaskGroup | None = None

    # -- lifecycle -----------------------------------------------------------------------
    @asynccontextmanager
    async def running(self) -> AsyncIterator[TaskManager]:
        """Run the manager's poll loops for as long as the block lasts."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                for record in await self.store.list(limit=1000, active_only=True):
                    self._track(record)
                yield self
            finally:
                self._tg = None
                tg.cancel_scope.cancel()

    def add_listener(self, listener: Listener) -> None:
        """``listener(record)`` runs after every change of any task (e.g. resource-updated notices)."""
        self._listeners.append(listener)

    # -- creating ------------------------------------------------------------------------
    async def submit(self, prepared: PreparedRequest, *, prompt: str | None) -> TaskRecord:
        """Create the task upstream (one idempotency key for every retry of it) and start polling."""
        key = f"runapi-mcp-{uuid.uuid4().hex}"
        async with self._limiter:
            info = await self.client.create_task(prepared.path, prepared.body, idempotency_key=key)
        record = TaskRecord(
            task_id=info.id,
            idempotency_key=key,
            model=prepared.model.slug,
            service=prepared.action.service,
            action=prepared.action.endpoint,
            route=prepared.path,
            prompt=prompt,
            request={k: v for k, v in prepared.body.items() if k != "prompt"},
            resolution=prepared.body.get("output_resolution"),
        )
        tracked = self._track(record)
        tracked.upstream_requests += 1
        log.info("created task %s (%s %s)", record.task_id, record.model, record.action)
        await self._apply(tracked, info)
        return tracked.record.model_copy(deep=True)

    # -- reading and waiting -------------------------------------------------------------
    async def get(self, task_id: str) -> TaskRecord:
        """The latest known state of a task (a copy). Resumes polling of a stored running task."""
        tracked = await self._lookup(task_id)
        return tracked.record.model_copy(deep=True)

    async def find(self, task_id: str) -> TaskRecord | None:
        try:
            return await self.get(task_id)
        except UnknownTaskError:
            return None

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
        deadline = anyio.current_time() + max(0.0, timeout_s)
        while not tracked.record.terminal:
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                break
            event = tracked.changed
            with anyio.move_on_after(min(tick_s, remaining)):
                await event.wait()
            if on_tick is not None:
                await on_tick(tracked.record.model_copy(deep=True))
        return tracked.record.model_copy(deep=True)

    def estimated_progress(self, record: TaskRecord) -> float:
        """0..1: upstream's own progress where it reports one, else elapsed over expected time."""
        if record.terminal:
            return 1.0
        tracked = self._tracked.get(record.task_id)
        elapsed = time.monotonic() - tracked.started if tracked else time.time() - record.created_at
        mean, _ = self.durations.estimate(record.kind_key, record.model, record.resolution)
        guess = 1.0 - math.exp(-elapsed / max(mean, 0.1))  # approaches 1, never reaches it
        if record.progress is not None:
            guess = max(guess * 0.5, record.progress)
        return min(0.99, guess)

    def stats(self, task_id: str) -> dict[str, Any]:
        tracked = self._tracked.get(task_id)
        if tracked is None:
            return {}
        return {"polls": tracked.polls, "upstream_requests": tracked.upstream_requests}

    # -- internals -----------------------------------------------------------------------
    async def _lookup(self, task_id: str) -> _Tracked:
        if not isinstance(task_id, str) or not task_id.strip():
            raise UnknownTaskError(str(task_id))
        tracked = self._tracked.get(task_id.strip())
        if tracked is not None:
            return self._track(tracked.record)  # restarts a poll loop that gave up or stopped
        record = await self.store.get(task_id.strip())
        if record is None:
            raise UnknownTaskError(task_id)
        return self._track(record)

    def _track(self, record: TaskRecord) -> _Tracked:
        tracked = self._tracked.get(record.task_id)
        if tracked is None:
            elapsed = max(0.0, time.time() - record.created_at)
            tracked = _Tracked(record=record, started=time.monotonic() - elapsed)
            self._tracked[record.task_id] = tracked
        if not tracked.record.terminal and not tracked.polling and self._tg is not None:
            tracked.polling = True
            tracked.loop_started = time.monotonic()
            self._tg.start_soon(self._poll_loop, tracked)
        return tracked

    def _next_delay(self, tracked: _Tracked, retry_after: float | None) -> float:
        record, policy = tracked.record, self.policy
        now = time.monotonic()
        elapsed = now - tracked.started
        mean, spread = self.durations.estimate(record.kind_key, record.model, record.resolution)
        if record.progress is not None and 0.05 < record.progress < 1.0:
            # The model reports its own progress: trust its pace for this task.
            mean, spread = elapsed / record.progress, max(spread * 0.5, policy.fine_interval_s)
        spread = max(spread, policy.fine_interval_s / 2)
        window_start = mean - policy.window_sigmas * spread
        window_end = mean + policy.window_sigmas * spread
        learned = self.durations.learned(record.kind_key)
        if learned and record.progress is None:
            window = self.durations.finish_window(record.kind_key, policy.window_sigmas)
            if window is not None:
                window_start, window_end = window
        if tracked.polls == 0:
            # Every task gets an early look: a refused or instantly failed task is reported in seconds.
            target = min(policy.early_check_s, max(window_start, policy.fine_interval_s))
        elif elapsed + policy.fine_interval_s < window_start:
            # Jump to the window once this kind of task has been timed; until then the prior may be
            # far off, so close in on it geometrically. The jump lands one fine interval past the
            # earliest likely finish: a task done before it waits no longer than between two fine
            # polls, and the poll that would have found nothing is saved.
            if learned:
                target = window_start + policy.fine_interval_s
            else:
                target = min(window_start, max(elapsed * 2, elapsed + policy.fine_interval_s))
        elif elapsed <= window_end:
            step = policy.fine_interval_s
            if not learned:
                step = max(step, spread * policy.untimed_window_step)
            target = elapsed + step
        else:
            # Past the window: start at the fine spacing and back off as the overrun grows.
            overtime = (elapsed - window_end) / max(mean, 1e-3)
            step = policy.fine_interval_s * policy.backoff_factor ** (10 * overtime)
            target = elapsed + min(policy.coarse_max_s, step)
        delay = max(0.0, target - elapsed)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    async def _poll_loop(self, tracked: _Tracked) -> None:
        retry_after: float | None = None
        failures = 0
        try:
            while not tracked.record.terminal:
                await anyio.sleep(self._next_delay(tracked, retry_after))
                retry_after = None
                if time.monotonic() - tracked.loop_started > self.policy.give_up_s:
                    await self._update(tracked, error="RunAPI has not finished this task within "
                                       f"{self.policy.give_up_s / 60:.0f} min; call get_task again later")
                    return
                tracked.polls += 1
                tracked.prev_poll, tracked.last_poll = tracked.last_poll, time.monotonic()
                try:
                    async with self._limiter:
                        tracked.upstream_requests += 1
                        info = await self.client.get_task(tracked.record.route, tracked.record.task_id)
                except NotFoundError as exc:
                    await self._update(tracked, status="failed", error=f"RunAPI does not know this task: {exc}")
                    return
                except AuthenticationError as exc:
                    await self._update(tracked, error=str(exc))
                    return
                except RateLimitedError as exc:
                    retry_after = exc.retry_after or self.policy.coarse_max_s
                    continue
                except RunAPIError as exc:
                    failures += 1
                    retry_after = min(self.policy.coarse_max_s * 4, self.policy.fine_interval_s * 2**failures)
                    log.warning("polling %s failed (%s); retrying in %.1fs", tracked.record.task_id, exc, retry_after)
                    continue
                failures = 0
                retry_after = info.retry_after
                await self._apply(tracked, info)
        finally:
            tracked.polling = False

    async def _apply(self, tracked: _Tracked, info: TaskInfo) -> None:
        record = tracked.record
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

    async def _complete(self, tracked: _Tracked, info: TaskInfo) -> None:
        record = tracked.record
        self._learn(tracked)
        urls = [img.url for img in info.images]
        errors: list[str] = []
        results: dict[int, ImageRecord] = {}

        async def fetch(i: int, url: str) -> None:
            try:
                results[i] = await self._download(tracked, i, url)
            except RunAPIError as exc:
                errors.append(f"image {i}: {exc}")
                results[i] = self.images.undownloaded(record.task_id, i, url)

        async with anyio.create_task_group() as tg:
            for i, url in enumerate(urls):
                tg.start_soon(fetch, i, url)
        images = [results[i] for i in sorted(results)]
        error = None
        if errors:
            error = f"downloaded {len(urls) - len(errors)} of {len(urls)} images; " + "; ".join(errors)
        await self._update(
            tracked, status="completed", progress=1.0, images=images, remote_urls=urls, error=error,
            completed_at=time.time(),
        )

    def _learn(self, tracked: _Tracked) -> None:
        """Learn the task's duration: it completed between the previous look and this one."""
        record = tracked.record
        seen = (tracked.last_poll or time.monotonic()) - tracked.started
        before = (tracked.prev_poll or tracked.started) - tracked.started
        self.durations.observe(record.kind_key, before, seen)
        if self._durations_file is not None:
            self._durations_file.save(self.durations)  # a few KB, once per finished task

    async def _download(self, tracked: _Tracked, index: int, url: str) -> ImageRecord:
        attempts = self.policy.download_attempts
        for attempt in range(1, attempts + 1):
            try:
                async with self._limiter:
                    tracked.upstream_requests += 1
                    return await self.images.download(self.client, tracked.record, index, url)
            except NotFoundError:
                raise
            except RunAPIError as exc:
                if attempt == attempts:
                    raise
                log.warning("download of %s image %d failed (%s); retrying", tracked.record.task_id, index, exc)
                await anyio.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    async def _update(self, tracked: _Tracked, **changes: Any) -> None:
        changes = {k: v for k, v in changes.items() if v is not None or k == "error"}
        tracked.record = tracked.record.model_copy(update={**changes, "updated_at": time.time()})
        await self.store.save(tracked.record)
        event, tracked.changed = tracked.changed, anyio.Event()
        event.set()
        snapshot = tracked.record.model_copy(deep=True)
        for listener in list(self._listeners):
            try:
                await listener(snapshot)
            except Exception:  # a broken listener must not stop polling
                log.exception("task listener failed")
