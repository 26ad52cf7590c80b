"""When to look at a running task next: plain arithmetic over the clock, testable without a manager.

Every task gets an early look (refusals and instant failures show in seconds). A kind (model +
resolution) with a finish window to trust then jumps to one poll spacing past the window's earliest
likely finish and polls finely through it (``durations.DurationModel``): a kind that has been timed,
one whose model was timed at another resolution, or one whose duration RunAPI documents, so even a
fresh install's first task is found within a spacing of finishing. A kind with none of that closes in
on a guessed duration geometrically instead, since fine polls across a guessed window would cost ~25
polls a task before anything is learned. Past the window the spacing backs off gently. A model that
reports its own progress sets the pace of its task. A task RunAPI calls back when it ends (completion
webhooks) is woken by the callback, and polled only at a slow fallback pace in case it never comes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from runapi_mcp.client import DEFAULT_DOWNLOAD_DEADLINE_S
from runapi_mcp.tasks.durations import DurationModel

# Share of a task's progress bar its finish window fills; the rest waits for the download (or an overrun).
_WINDOW_SHARE = 0.95


@dataclass(frozen=True)
class PollPolicy:
    """When to look at a running task. Times are seconds; the benchmark scales them with the clock."""

    early_check_s: float = 1.5  # the early look every task gets (instant failures, quick models)
    # Spacing of polls through the likely finish window. Detection lag is about uniform on 0..fine_interval_s
    # (p50 ~0.3 s, p95 ~0.57 s before the download and preview, which take up to ~0.15 s for 4K; targets
    # 0.5 s and 1.0 s). With the fitted window a 10-30 s task with +-10 % jitter still costs ~8 % fewer
    # requests than a plain 5-s loop, early look included (bench/latency.py measures both).
    fine_interval_s: float = 0.6
    # A kind without a window to trust (no sample, no documented duration) polls its guessed window (the
    # prior's, +-70 %) every spread x this instead (at least fine_interval_s): fine polls across it would
    # cost ~25 polls a task before anything is learned.
    untimed_window_step: float = 0.25
    coarse_max_s: float = 5.0
    backoff_factor: float = 1.5
    window_sigmas: float = 2.0
    give_up_s: float = 15 * 60
    prior_scale: float = 1.0  # multiplies the built-in duration priors (a simulator's scaled clock)
    # Longest a single output may take to download, all attempts and redirects included: a host that
    # trickles bytes cannot hold a download slot (or the task) for longer.
    download_deadline_s: float = DEFAULT_DOWNLOAD_DEADLINE_S
    # With completion webhooks (a task created with our callback_url), RunAPI's callback wakes the task and
    # polls only catch a callback that never came: no early look (a refused or failed task is called back
    # too), the first look past the kind's latest likely finish plus callback_margin_s and no sooner than
    # callback_fallback_s, then one every callback_fallback_s. A task whose callback arrives costs one read.
    callback_margin_s: float = 5.0
    callback_fallback_s: float = 30.0
    # Callbacks wake a task at most this often: a flood of valid callbacks costs at most one status read
    # per interval. A guard against the caller, not part of the task's clock, so ``scaled`` keeps it.
    callback_min_gap_s: float = 1.0

    def scaled(self, factor: float) -> PollPolicy:
        """The same policy on a clock running ``1/factor`` times faster (benchmarks, tests)."""
        return replace(
            self,
            early_check_s=self.early_check_s * factor,
            fine_interval_s=self.fine_interval_s * factor,
            coarse_max_s=self.coarse_max_s * factor,
            prior_scale=self.prior_scale * factor,
            callback_margin_s=self.callback_margin_s * factor,
            callback_fallback_s=self.callback_fallback_s * factor,
        )


@dataclass
class PollState:
    """What the schedule knows of one task: its kind and when it was looked at (monotonic seconds)."""

    kind: str
    model: str
    resolution: str | None
    started: float
    polls: int = 0
    last_poll: float = 0.0
    prev_poll: float = 0.0
    progress: float | None = None  # the model's own progress, 0..1, where it reports one
    callback: bool = False  # RunAPI calls this task back when it ends: polls are only the fallback
    called_back: float = 0.0  # when the first valid completion callback for it arrived (0: none yet)

    def polled(self, now: float) -> None:
        """Count a look made at ``now``."""
        self.polls += 1
        self.prev_poll, self.last_poll = self.last_poll, now


class PollSchedule:
    """The poll schedule of every task of one manager, and what it learns from finished tasks."""

    def __init__(self, policy: PollPolicy, durations: DurationModel | None = None) -> None:
        self.policy = policy
        # Observations up to two fine spacings wide count as short; half a spacing of margin past the
        # latest likely finish keeps the fine polls going a little longer before backing off.
        self.durations = durations or DurationModel(
            prior_scale=policy.prior_scale,
            margin=policy.fine_interval_s / 2,
            short_interval=2 * policy.fine_interval_s,
            sigmas=policy.window_sigmas,
        )

    def progress(self, kind: str, model: str, resolution: str | None, elapsed: float, reported: float | None) -> float:
        """0..0.99: how far along a running task of this kind is ``elapsed`` seconds after its creation.

        With a finish window (a, b) to trust, it is the share of the expected total time that has passed,
        given that the task still runs: elapsed over the window's middle before a, and over the middle of
        what is left of the window (elapsed..b) inside it, so the bar moves steadily and stands near the
        end whenever the task may finish (a task found done at a says about 80 %, not the ~50 % of a
        curve that ignores the window). The last 5 % are kept for the download and for an overrun, past b
        crept through ever slower. A kind without a window approaches 1 over the guessed mean, never
        reaching it. A model's own progress is trusted where it reports one.
        """
        window = self.durations.finish_window(kind, self.policy.window_sigmas)
        elapsed = max(0.0, elapsed)
        if window is None or window[1] <= 0:
            mean, _ = self.durations.estimate(kind, model, resolution)
            guess = 1.0 - math.exp(-elapsed / max(mean, 0.1))
        else:
            start, end = max(0.0, window[0]), window[1]
            if elapsed < end:
                expected_total = (max(start, elapsed) + end) / 2
                guess = _WINDOW_SHARE * elapsed / expected_total
            else:
                guess = _WINDOW_SHARE + (0.99 - _WINDOW_SHARE) * (1.0 - math.exp(-(elapsed - end) / end))
        if reported is not None:
            guess = max(guess * 0.5, reported)
        return min(0.99, guess)

    def expected(self, state: PollState) -> float:
        """Seconds a task of this kind is expected to take in all."""
        return self.durations.estimate(state.kind, state.model, state.resolution)[0]

    def next_delay(self, state: PollState, now: float, retry_after: float | None = None) -> float:
        """Seconds from ``now`` until the next look (never less than RunAPI's ``Retry-After``)."""
        policy = self.policy
        elapsed = now - state.started
        mean, spread = self.durations.estimate(state.kind, state.model, state.resolution)
        if state.progress is not None and 0.05 < state.progress < 1.0:
            # The model reports its own progress: trust its pace for this task.
            mean, spread = elapsed / state.progress, max(spread * 0.5, policy.fine_interval_s)
        spread = max(spread, policy.fine_interval_s / 2)
        window_start = mean - policy.window_sigmas * spread
        window_end = mean + policy.window_sigmas * spread
        # A window worth jumping into: the kind's own samples, another resolution's, or documented
        # durations (``DurationModel.finish_window``). Read afresh at every look, so the tasks in flight
        # follow what the first of their kind to finish taught (a task asleep until its jump, from then).
        window = self.durations.finish_window(state.kind, policy.window_sigmas)
        timed = window is not None
        if window is not None and state.progress is None:
            window_start, window_end = window
        if state.callback:
            # The callback wakes the task when it ends; these looks only catch one that never came.
            first = max(window_end + policy.callback_margin_s, policy.callback_fallback_s)
            target = first if state.polls == 0 else max(first, elapsed + policy.callback_fallback_s)
        elif state.polls == 0:
            # Every task gets an early look: a refused or instantly failed task is reported in seconds.
            target = min(policy.early_check_s, max(window_start, policy.fine_interval_s))
        elif elapsed + policy.fine_interval_s < window_start:
            # Jump to the window when there is one to trust; a mere guess may be far off, so close in
            # on it geometrically. The jump lands one fine interval past the earliest likely finish: a
            # task done before it waits no longer than between two fine polls, and the poll that would
            # have found nothing is saved.
            if timed:
                target = window_start + policy.fine_interval_s
            else:
                target = min(window_start, max(elapsed * 2, elapsed + policy.fine_interval_s))
        elif elapsed <= window_end:
            step = policy.fine_interval_s
            if not timed:
                step = max(step, spread * policy.untimed_window_step)
            target = elapsed + step
        else:
            # Past the window: start at the fine spacing and back off as the overrun grows.
            overtime = (elapsed - window_end) / max(mean, 1e-3)
            step = policy.fine_interval_s * policy.backoff_factor ** min(10 * overtime, 60.0)
            target = elapsed + min(policy.coarse_max_s, step)
        delay = max(0.0, target - elapsed)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    def learn(self, state: PollState, now: float) -> None:
        """A task was found finished at its last look: it finished between the look before and that one."""
        seen = (state.last_poll or now) - state.started
        before = (state.prev_poll or state.started) - state.started
        if state.prev_poll < state.called_back <= (state.last_poll or now):
            # Found done by the read a callback asked for. RunAPI calls back when a task ends, so it ended
            # by the callback, and (a prompt callback) not much before: as close a bound as a fine poll's.
            # A late callback teaches a late window, which the first looks into it then correct.
            seen = state.called_back - state.started
            before = max(before, seen - self.policy.fine_interval_s)
        self.durations.observe(state.kind, before, seen)
