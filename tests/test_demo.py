"""The offline demo's timing: its simulator's tasks finish where the poller looks for them, and its bar moves."""

from __future__ import annotations

import itertools

import pytest

from runapi_mcp.commands.demo import DEMO_MODEL, simulator_config
from runapi_mcp.server.tools import TICK_S
from runapi_mcp.tasks import PollPolicy, PollSchedule, PollState
from runapi_mcp.tasks.records import kind_key

POLICY = PollPolicy()
# The largest step the demo's bar may take between two updates, the last one (to 100 %) included: a task
# found done at the earliest edge of its duration reads ~80 % the tick before (the old demo: 55 % -> 100 %).
MAX_STEP_POINTS = 25.0


def _demo_durations() -> list[tuple[str, float]]:
    """(resolution, seconds) of the demo simulator's tasks: each resolution's shortest, typical, longest."""
    config = simulator_config("sk-demo-test")
    jitter = config.duration_jitter
    return [
        (resolution, seconds * factor)
        for resolution, seconds in config.durations.items()
        for factor in (1 - jitter, 1.0, 1 + jitter)
    ]


def _run(resolution: str, duration: float) -> tuple[float, list[float]]:
    """A demo task of ``duration`` seconds through a fresh install's poll schedule, on the schedule's clock:
    when a status read finds it done, and the bar's values (one a progress tick, 100 when found)."""
    schedule = PollSchedule(POLICY)  # the demo's upstream is new every run: nothing learned
    state = PollState(kind=kind_key(DEMO_MODEL, resolution), model=DEMO_MODEL, resolution=resolution, started=0.0)
    now = 0.0
    while now < duration:
        now += schedule.next_delay(state, now)
        state.polled(now)
    found = now
    ticks = [k * TICK_S for k in range(int(found / TICK_S) + 1) if k * TICK_S < found]
    bar = [100 * schedule.progress(state.kind, DEMO_MODEL, resolution, t, None) for t in ticks]
    return found, [*bar, 100.0]


@pytest.mark.parametrize(("resolution", "duration"), _demo_durations())
def test_the_demo_finds_its_picture_within_a_poll_of_ready(resolution: str, duration: float) -> None:
    found, _ = _run(resolution, duration)
    # Ready upstream at ``duration``: the first status read after it finds it. The old demo's tasks (6 s at
    # 1k) finished before the documented window (9.6-14.4 s) and sat ready until its first look, 4-7 s.
    assert duration <= found <= duration + POLICY.fine_interval_s + 1e-9


@pytest.mark.parametrize(("resolution", "duration"), _demo_durations())
def test_the_demo_bar_moves_steadily_to_done(resolution: str, duration: float) -> None:
    _, bar = _run(resolution, duration)
    steps = [b - a for a, b in itertools.pairwise(bar)]
    assert min(steps) >= 0, bar
    # A steady bar: no update jumps by more than MAX_STEP_POINTS, so it stands near the end when the picture
    # comes (the old bar, elapsed over a 12 s mean on an exponential, read 55-63 % then).
    assert max(steps) <= MAX_STEP_POINTS, bar
    assert bar[-2] >= 100 - MAX_STEP_POINTS


def test_the_demo_simulator_takes_the_durations_runapi_documents() -> None:
    # The simulator's durations are keyed by resolution, the poller's windows by model and resolution: each
    # resolution the demo offers has a documented window, and every duration the demo draws lies inside it.
    schedule = PollSchedule(POLICY)
    for resolution, duration in _demo_durations():
        window = schedule.durations.finish_window(kind_key(DEMO_MODEL, resolution), POLICY.window_sigmas)
        assert window is not None
        assert window[0] <= duration <= window[1], (resolution, duration, window)
