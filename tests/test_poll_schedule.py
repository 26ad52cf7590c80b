"""The task manager's poll schedule and duration learning, on a fake clock (no HTTP)."""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from pathlib import Path

import pytest

from runapi_mcp.client import RunAPIClient
from runapi_mcp.tasks import ImageStore, PollPolicy, PollSchedule, PollState, TaskManager
from runapi_mcp.tasks.durations import DurationFile, DurationModel


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    return now


def _manager(tmp_path: Path) -> TaskManager:
    return TaskManager(RunAPIClient("sk-test", "http://127.0.0.1:9"), ImageStore(tmp_path), policy=PollPolicy())


def _tracked(started: float, resolution: str = "1k") -> PollState:
    return PollState(kind=f"gpt-image-2@{resolution}", model="gpt-image-2", resolution=resolution, started=started)


def _teach(manager: TaskManager, kind: str, mean: float) -> None:
    """Finished tasks of ``kind`` that took ``mean`` seconds +- 5 %."""
    for factor in (0.95, 1.05, 0.97, 1.03, 1.0, 0.96, 1.04, 1.0):
        manager.durations.observe(kind, mean * factor)


def _schedule(manager: TaskManager, tracked: PollState, clock: list[float], until: float) -> list[float]:
    """Poll times (seconds after start) the manager picks until ``until`` seconds, no task finishing."""
    times: list[float] = []
    while True:
        clock[0] += manager.schedule.next_delay(tracked, clock[0])
        elapsed = clock[0] - tracked.started
        if elapsed > until:
            return times
        times.append(round(elapsed, 3))
        tracked.polled(clock[0])


def test_every_task_looks_early_then_learned_kinds_jump_to_their_window(tmp_path: Path, clock: list[float]) -> None:
    manager = _manager(tmp_path)
    cold = _schedule(manager, _tracked(clock[0]), clock, 12)
    assert cold[0] == PollPolicy().early_check_s
    _teach(manager, "gpt-image-2@1k", 12.0)
    window = manager.durations.finish_window("gpt-image-2@1k", 2.0)
    assert window is not None
    warm = _schedule(manager, _tracked(clock[0]), clock, window[1])
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
    # Five close samples prove little: the window assumes at least +-10 % of the mean (~11 s) as its range.
    pad = 0.2 * 11.0 / 4
    assert (low, high) == pytest.approx((10 - pad - 0.5, 12 + pad + 0.5), abs=0.05)
    for seconds in (10.0, 11.0, 12.0, 11.5, 10.5) * 6:
        model.observe("k", seconds)
    low30, high30 = model.finish_window("k", 2.0) or (0.0, 0.0)
    assert low < low30 < 10 and 12 < high30 < high


def _run_tasks(manager: TaskManager, clock: list[float], durations: list[float], resolution: str) -> list[int]:
    """Run tasks one after another through the manager's schedule; the polls each one took."""
    polls: list[int] = []
    for duration in durations:
        tracked = _tracked(clock[0], resolution)
        while True:
            clock[0] += manager.schedule.next_delay(tracked, clock[0])
            tracked.polled(clock[0])
            if clock[0] - tracked.started >= duration:
                break
        manager._learn(tracked)
        polls.append(tracked.polls)
        clock[0] += 1.0
    return polls


def _five_second_loop_polls(duration: float) -> int:
    return 1 + math.ceil(duration / 5.0)  # a look right after the create, then every 5 s


@pytest.mark.parametrize(
    ("resolution", "low", "high", "most"),
    [("1k", 10.8, 13.2, 0.92), ("4k", 24.3, 29.7, 0.99)],  # gpt-image-2: 12 s and 27 s +-10 %
)
def test_the_fitted_window_finds_the_true_edges_and_beats_a_five_second_loop(
    tmp_path: Path, clock: list[float], resolution: str, low: float, high: float, most: float
) -> None:
    manager = _manager(tmp_path)
    rng = random.Random(7)
    durations = [rng.uniform(low, high) for _ in range(80)]
    polls = _run_tasks(manager, clock, durations, resolution)
    fitted = manager.durations.finish_window(f"gpt-image-2@{resolution}", 2.0) or (0.0, 0.0)
    assert fitted[0] == pytest.approx(low, abs=0.6) and fitted[1] == pytest.approx(high + 0.3, abs=0.8)
    steady = slice(40, None)
    ours = sum(polls[steady])
    loop = sum(_five_second_loop_polls(d) for d in durations[steady])
    # The early look included. The wider window of a longer task costs more fine polls; the mix of 1k/2k/4k
    # is what bench/latency.py measures.
    assert ours < most * loop


def test_a_faster_service_pulls_the_window_earlier(tmp_path: Path, clock: list[float]) -> None:
    manager = _manager(tmp_path)
    rng = random.Random(3)
    _run_tasks(manager, clock, [rng.uniform(24.3, 29.7) for _ in range(40)], "4k")
    before = manager.durations.finish_window("gpt-image-2@4k", 2.0) or (0.0, 0.0)
    # Upstream got 20 % faster: most tasks are done at the first look into the window (censored).
    _run_tasks(manager, clock, [rng.uniform(19.4, 23.8) for _ in range(32)], "4k")
    after = manager.durations.finish_window("gpt-image-2@4k", 2.0) or (0.0, 0.0)
    assert after[0] < before[0] - 3.0 and after[0] < 20.5


def test_a_slower_service_pushes_the_window_later(tmp_path: Path, clock: list[float]) -> None:
    manager = _manager(tmp_path)
    rng = random.Random(5)
    _run_tasks(manager, clock, [rng.uniform(10.8, 13.2) for _ in range(40)], "1k")
    before = manager.durations.finish_window("gpt-image-2@1k", 2.0) or (0.0, 0.0)
    _run_tasks(manager, clock, [rng.uniform(14.0, 17.2) for _ in range(32)], "1k")  # 30 % slower
    after = manager.durations.finish_window("gpt-image-2@1k", 2.0) or (0.0, 0.0)
    assert after[0] > before[0] + 2.0 and after[1] > 16.5


def test_learned_durations_outlive_the_process(tmp_path: Path, clock: list[float]) -> None:
    saved = DurationFile(tmp_path / "state" / "durations.json", "https://runapi.ai")
    client = RunAPIClient("sk-test", "http://127.0.0.1:9")
    first = TaskManager(client, ImageStore(tmp_path / "a"), policy=PollPolicy(), durations_file=saved)
    rng = random.Random(11)
    _run_tasks(first, clock, [rng.uniform(24.3, 29.7) for _ in range(30)], "4k")
    assert saved.path.is_file()
    window = first.durations.finish_window("gpt-image-2@4k", 2.0)

    # A restarted server (a new stdio session) starts where the last one stopped: no cold approach.
    second = TaskManager(client, ImageStore(tmp_path / "b"), policy=PollPolicy(), durations_file=saved)
    assert second.durations.finish_window("gpt-image-2@4k", 2.0) == window
    fresh = _manager(tmp_path)
    warm_polls = _run_tasks(second, clock, [27.0], "4k")[0]
    cold_polls = _run_tasks(fresh, clock, [27.0], "4k")[0]
    assert warm_polls <= 7 < cold_polls


def test_durations_are_kept_per_upstream(tmp_path: Path, clock: list[float]) -> None:
    path = tmp_path / "durations.json"
    client = RunAPIClient("sk-test", "http://127.0.0.1:9")
    runapi = TaskManager(client, ImageStore(tmp_path), durations_file=DurationFile(path, "https://runapi.ai"))
    _run_tasks(runapi, clock, [12.0] * 6, "1k")
    # A proxy with other timings neither sees nor clobbers RunAPI's.
    proxy = TaskManager(client, ImageStore(tmp_path), durations_file=DurationFile(path, "https://proxy.example/"))
    assert not proxy.durations.learned("gpt-image-2@1k")
    _run_tasks(proxy, clock, [3.0] * 6, "1k")
    again = TaskManager(client, ImageStore(tmp_path), durations_file=DurationFile(path, "https://runapi.ai"))
    assert again.durations.estimate("gpt-image-2@1k", "gpt-image-2", "1k")[0] == pytest.approx(12.0, abs=0.7)
    proxy_again = DurationModel()
    DurationFile(path, "https://proxy.example").load_into(proxy_again)
    assert proxy_again.estimate("gpt-image-2@1k", "gpt-image-2", "1k")[0] == pytest.approx(3.0, abs=0.7)


def test_the_sections_saved_longest_ago_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "durations.json"
    model = DurationModel()
    model.observe("gpt-image-2@1k", 12.0)
    for n in range(4):
        DurationFile(path, f"https://upstream-{n}.example", keep=3).save(model)
    upstreams = json.loads(path.read_text())["upstreams"]
    assert sorted(upstreams) == [f"https://upstream-{n}.example" for n in (1, 2, 3)]


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        '{"format": 99, "upstreams": {}}',
        '{"format": 1, "upstreams": {"https://runapi.ai": {"kinds": {"gpt-image-2@1k": '
        '{"stats": [12, 1, 3], "points": [-5], "observations": []}}}}}',
        '{"format": 1, "upstreams": {"https://runapi.ai": {"kinds": {"gpt-image-2@1k": {"stats": [12, 1]}}}}}',
        '{"format": 1, "upstreams": {"https://runapi.ai": [1, 2]}}',
        "[1, 2, 3]",
    ],
)
def test_a_bad_durations_file_is_ignored_with_a_warning(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "durations.json"
    path.write_text(content)
    file = DurationFile(path, "https://runapi.ai")
    model = DurationModel()
    file.load_into(model)
    assert not model.learned("gpt-image-2@1k")
    assert "ignoring the learned task durations" in caplog.text
    model.observe("gpt-image-2@1k", 12.0)
    file.save(model)  # and it is replaced by a good one
    again = DurationModel()
    file.load_into(again)
    assert again.learned("gpt-image-2@1k")


def test_a_task_far_past_its_window_backs_off_to_the_coarse_spacing_without_overflow() -> None:
    schedule = PollSchedule(PollPolicy().scaled(0.025))
    state = PollState(kind="gpt-image-2@1k", model="gpt-image-2", resolution="1k", started=0.0, polls=5)
    # 1.5 ** (10 x overtime) overflowed a float once the overrun was large compared with the mean.
    for now in (10.0, 1e3, 1e6):
        assert 0 < schedule.next_delay(state, now) <= schedule.policy.coarse_max_s
    assert schedule.next_delay(state, 1e6, retry_after=30.0) == 30.0
