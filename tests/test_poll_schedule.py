"""The task manager's poll schedule and duration learning, on a fake clock (no HTTP)."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from runapi_mcp.client import RunAPIClient
from runapi_mcp.tasks import ImageStore, PollPolicy, TaskManager, TaskRecord
from runapi_mcp.tasks.manager import DurationModel, _Tracked


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    return now


def _manager(tmp_path: Path) -> TaskManager:
    return TaskManager(RunAPIClient("sk-test", "http://127.0.0.1:9"), ImageStore(tmp_path), policy=PollPolicy())


def _tracked(started: float, resolution: str = "1k") -> _Tracked:
    record = TaskRecord(
        task_id=f"t-{started}", idempotency_key="k", model="gpt-image-2", service="gpt_image_2",
        action="text_to_image", route="/api/v1/gpt_image_2/text_to_image", resolution=resolution,
    )
    return _Tracked(record=record, started=started)


def _teach(manager: TaskManager, kind: str, mean: float) -> None:
    """Finished tasks of ``kind`` that took ``mean`` seconds +- 5 %."""
    for factor in (0.95, 1.05, 0.97, 1.03, 1.0, 0.96, 1.04, 1.0):
        manager.durations.observe(kind, mean * factor)


def _schedule(manager: TaskManager, tracked: _Tracked, clock: list[float], until: float) -> list[float]:
    """Poll times (seconds after start) the manager picks until ``until`` seconds, no task finishing."""
    times: list[float] = []
    while True:
        clock[0] += manager._next_delay(tracked, None)
        elapsed = clock[0] - tracked.started
        if elapsed > until:
            return times
        times.append(round(elapsed, 3))
        tracked.polls += 1
        tracked.prev_poll, tracked.last_poll = tracked.last_poll, clock[0]


def test_every_task_looks_early_then_learned_kinds_jump_to_their_window(tmp_path: Path, clock: list[float]) -> None:
    manager = _manager(tmp_path)
    cold = _schedule(manager, _tracked(clock[0]), clock, 12)
    assert cold[0] == PollPolicy().early_check_s
    _teach(manager, "gpt-image-2@1k", 12.0)
    warm = _schedule(manager, _tracked(clock[0]), clock, 14)
    window = manager.durations.finish_window("gpt-image-2@1k", 2.0)
    assert window is not None
    # The early look, then one look a fine interval past the earliest likely finish, then fine polls.
    assert warm[0] == PollPolicy().early_check_s
    fine = PollPolicy().fine_interval_s
    assert window[0] < 12 * 0.95 and warm[1] == pytest.approx(window[0] + fine, abs=1e-3)
    assert [round(b - a, 3) for a, b in itertools.pairwise(warm[1:])] == [fine] * (len(warm) - 2)
    assert len(cold) > len(warm)


def test_a_task_found_done_at_the_jump_is_learned_at_the_window_start(tmp_path: Path, clock: list[float]) -> None:
    manager = _manager(tmp_path)
    _teach(manager, "gpt-image-2@4k", 27.0)
    window = manager.durations.finish_window("gpt-image-2@4k", 2.0)
    assert window is not None
    jump = window[0] + PollPolicy().fine_interval_s
    tracked = _tracked(clock[0], "4k")
    tracked.polls, tracked.prev_poll, tracked.last_poll = 2, clock[0] + 1.5, clock[0] + jump
    manager._learn(tracked)
    # It finished somewhere between the early look and the jump: recording the window's start (not the
    # middle of the gap, not the jump) lets the window open earlier next time and never creep later.
    after = manager.durations.finish_window("gpt-image-2@4k", 2.0)
    assert after is not None and after[0] < window[0]


def test_the_finish_window_is_wider_with_few_samples() -> None:
    model = DurationModel(margin=0.5)
    assert model.finish_window("k", 2.0) is None
    for seconds in (10.0, 11.0, 12.0, 11.5, 10.5):
        model.observe("k", seconds)
    low, high = model.finish_window("k", 2.0) or (0.0, 0.0)
    assert (low, high) == pytest.approx((10 - 2 / 4 - 0.5, 12 + 2 / 4 + 0.5))
    for seconds in (10.0, 11.0, 12.0, 11.5, 10.5) * 6:
        model.observe("k", seconds)
    low30, high30 = model.finish_window("k", 2.0) or (0.0, 0.0)
    assert low < low30 < 10 and 12 < high30 < high
