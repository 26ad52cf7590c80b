"""How long tasks of each kind (model + resolution) take, learned from the tasks that finished.

A poll only tells that a task finished somewhere between the look before and this one, so every
observation is an interval. Most are short (fine polls through the finish window: the middle is
within half a poll spacing of the truth). One kind is not: a task already finished at the first
look into the window is only known to have finished *before* that look. Dropping those would bias
the window late (only the tasks that finished after the first look would be counted), and guessing
a point for them either drags the window early for good or lets it creep late. So once there are
enough short observations, the window is the maximum-likelihood fit of a uniform finish time to all
of them, censored ones included: how many tasks beat the first look says how far below it the
window starts. Until then, a conservative window from the sample range (padded for few samples,
with a prior on the spread) keeps the first looks early while the data comes in.

A fresh install has learned nothing, yet its first session is the one a user judges: fine polls
across a guessed window would cost ~14 looks a task, coarse ones a late picture. So what is known
stands in, best first:

- The kind's own first tasks, from the very first one. Every duration lies within one distribution
  width of every other, so the next task finishes after the latest one seen minus a width and
  before the earliest plus a width, for any width assumed large enough (at least +-10 % of the mean,
  more if the samples spread wider). A task found done at its first look is taken to have run at
  least half that long (a geometric step: if it ran shorter still, the next one is found at half
  that again).
- Before the kind's first task: what the other resolutions of the model taught, scaled by the
  priors' ratios (an upstream slower or faster than the docs is so at every resolution).
- RunAPI's documented durations (GPT Image 2: 10-30 s), as a window of +-20 % around the prior, for
  as long as the model's tasks bear them out: the later of that start and the samples' one is kept,
  since both are conservative and every look before the start is a request spent on a task that
  cannot be done yet. One task finishing outside its documented window, or a second one found done
  at its first look (a right window starts before its tasks finish), and the docs are dropped for
  the whole model.

A model without documented durations has no window until its first task finishes (the schedule
closes in on a guess).

``DurationMemory`` keeps the model in the task store, per upstream: a stdio server restarts with
every client session, and a cold schedule costs about a third more requests than a warm one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from runapi_mcp.tasks.records import kind_key

if TYPE_CHECKING:
    from runapi_mcp.tasks.store import TaskStore

log = logging.getLogger("runapi_mcp.tasks")

_FORMAT = 1  # version of the saved entry; another version is ignored (the model starts fresh)

# Seconds a task of a model takes, by output resolution, before anything was learned.
# GPT Image 2 finishes in about 10-30 s depending on resolution (RunAPI's docs).
_GPT_IMAGE_2_S = {"1k": 12.0, "2k": 20.0, "4k": 28.0}
_PRIOR_S: dict[str, dict[str, float]] = {
    "gpt-image-2": _GPT_IMAGE_2_S,
    # GPT Image 2.5 publishes no timings; it takes GPT Image 2's fields and resolutions, so it starts from
    # GPT Image 2's and learns its own from the first tasks.
    "gpt-image-2.5-flare": _GPT_IMAGE_2_S,
    "gpt-image-2.5-sunburst": _GPT_IMAGE_2_S,
}
_DEFAULT_PRIOR_S = 20.0


def documented_seconds(model: str) -> dict[str, float]:
    """Seconds RunAPI documents a task of ``model`` takes, by output resolution (empty: not documented).
    The offline demo's simulator takes these, so its tasks finish where the poller expects real ones."""
    return dict(_PRIOR_S.get(model, {}))

_PRIOR_SPREAD = 0.35  # relative spread of an untimed kind (the prior is a guess)
# Half-width of the window around a documented prior, relative: RunAPI's own ends (10 s, 30 s) fall
# inside the 1k and 4k windows (9.6-14.4 s, 22.4-33.6 s), so a fresh install polls finely wherever
# the docs say a task may finish, and not before.
_PRIOR_WINDOW = 0.20
# Widening, relative to the prior, of each edge of a window borrowed from another resolution: the
# priors' ratios (12:20:28) are themselves a guess at how resolution scales the time.
_SHARED_SLACK = 0.05
_MIN_SPREAD = 0.10  # relative spread assumed until a kind has _SETTLED samples (a few close ones prove little)
_SETTLED = 8
_MIN_RANGE = 0.20  # relative width the sample-range window assumes at least (+-10 %)
_RANGE_AFTER = 5  # samples before the window comes from their range instead of mean +- sigmas
_FIT_AFTER = 12  # short observations before the window is fitted
_GRID = 40  # candidates per refinement step when fitting an edge of the window


@dataclass(frozen=True, slots=True)
class _Observation:
    low: float  # seconds after creation the task was last seen running
    high: float  # seconds after creation it was first seen finished
    censored: bool  # found finished at the first look into the window: only ``high`` says much
    short: bool  # at most ``short_interval`` wide (two poll spacings): its middle is close to the truth


class DurationModel:
    """Learns where tasks of each kind finish; the poll schedule asks it for a finish window."""

    def __init__(
        self,
        *,
        alpha: float = 0.3,
        prior_scale: float = 1.0,
        window: int = 32,
        margin: float = 0.0,
        short_interval: float = 1.4,
        sigmas: float = 2.0,
    ) -> None:
        self._alpha = alpha
        self._prior_scale = prior_scale
        self._window = window
        self._margin = margin  # extra seconds past the latest likely finish
        self._short = short_interval
        self._sigmas = sigmas  # the width of the mean +- sigmas window, while there are too few samples
        self._stats: dict[str, tuple[float, float, int]] = {}  # EWMA mean, spread, samples
        self._points: dict[str, deque[float]] = {}  # the values the sample-range window is drawn from
        self._observations: dict[str, deque[_Observation]] = {}
        # Cached windows, all dropped on every new observation (a kind's window may borrow from others).
        self._windows: dict[tuple[str, float], tuple[float, float] | None] = {}

    def prior(self, model: str, resolution: str | None) -> float:
        documented = self._documented(model, resolution)
        return _DEFAULT_PRIOR_S * self._prior_scale if documented is None else documented

    def learned(self, key: str) -> bool:
        return key in self._stats

    def estimate(self, key: str, model: str, resolution: str | None) -> tuple[float, float]:
        """(expected seconds, spread in seconds) for a kind of task."""
        if key in self._stats:
            mean, dev, n = self._stats[key]
            return mean, dev if n >= _SETTLED else max(dev, mean * _MIN_SPREAD)
        mean = self.prior(model, resolution)
        return mean, mean * _PRIOR_SPREAD

    def finish_window(self, key: str, sigmas: float) -> tuple[float, float] | None:
        """(earliest, latest) likely finish of a kind in seconds, or None while nothing is known.

        ``key`` is :func:`kind_key` (``model@resolution``): a kind not timed yet borrows from
        the other resolutions of its model and from the documented priors.
        """
        if (key, sigmas) not in self._windows:
            self._windows[key, sigmas] = self._window_of(key, sigmas)
        return self._windows[key, sigmas]

    def _window_of(self, key: str, sigmas: float) -> tuple[float, float] | None:
        observations = self._observations.get(key, ())
        if sum(o.short for o in observations) >= _FIT_AFTER:
            return self._fit(list(observations))
        points = self._points.get(key, ())
        if len(points) >= _RANGE_AFTER:
            # The sample range understates the true one by about a range/(n-1) at each end (the unbiased
            # end points of a uniform sample); few samples, a wider window, never narrower than the floor.
            low, high = min(points), max(points)
            pad = max(high - low, _MIN_RANGE * self._stats[key][0]) / (len(points) - 1)
            return low - pad - self._margin, high + pad + self._margin
        if key in self._stats and not observations:  # a mean alone (a file without the intervals)
            mean, dev = self.estimate(key, "", None)
            return mean - sigmas * dev, mean + sigmas * dev
        return self._first_window(key, list(observations))

    def _first_window(self, key: str, observations: list[_Observation]) -> tuple[float, float] | None:
        """The window of a kind with fewer than ``_RANGE_AFTER`` samples: see the module's docstring."""
        model, resolution = _split_kind(key)
        prior = self._documented(model, resolution)
        slack = 0.0
        if observations:
            typical = self._stats[key][0]
        elif prior is None:
            return None
        else:
            # The other resolutions' tasks count as this kind's, scaled by the ratio of the priors; that
            # ratio is a guess too, hence the slack. Once the kind has a task of its own, that says more.
            typical = prior
            for other, other_prior in self._documented_kinds(model):
                if other == key or other not in self._stats:
                    continue
                ratio = prior / other_prior
                observations += [
                    _Observation(o.low * ratio, o.high * ratio, o.censored, o.short)
                    for o in self._observations.get(other, ())
                ]
                typical = self._stats[other][0] * ratio  # for the width's floor
                slack = _SHARED_SLACK * prior
        documented = None if prior is None else _widened(prior, _PRIOR_WINDOW)
        if not observations:
            return documented
        low, high = _few_window(observations, _MIN_RANGE * typical)
        window = (low - slack, high + slack + self._margin)
        if documented is not None and self._docs_hold(model):
            window = _later(window, documented)
        return window

    def _documented(self, model: str, resolution: str | None) -> float | None:
        """The prior of a kind whose duration RunAPI documents (scaled like every prior), else None."""
        seconds = _PRIOR_S.get(model, {}).get(resolution or "1k")
        return None if seconds is None else seconds * self._prior_scale

    def _documented_kinds(self, model: str) -> list[tuple[str, float]]:
        """(kind key, prior) of each resolution of ``model`` whose duration RunAPI documents."""
        return [(kind_key(model, r), seconds * self._prior_scale) for r, seconds in _PRIOR_S.get(model, {}).items()]

    def _docs_hold(self, model: str) -> bool:
        """Whether the tasks of a documented model finished where the docs say.

        Each could have finished inside its documented window, and at most one was found done at its
        first look into it: a right window starts before its kind's tasks finish, so one may be a fluke,
        a second says the windows start too late. (Tasks found done at the first look into a learned
        window, later, say nothing about the docs.) One resolution failing the docs fails them for all:
        the upstream is not the one they describe.
        """
        early = 0
        for key, prior in self._documented_kinds(model):
            low, high = _widened(prior, _PRIOR_WINDOW)
            for o in self._observations.get(key, ()):
                if o.high <= low or o.low >= high:
                    return False
                early += o.censored and o.high <= low + self._short  # the jump lands a fine spacing in
        return early <= 1

    def observe(self, key: str, low: float, high: float | None = None) -> None:
        """A task of this kind finished after ``low`` and by ``high`` seconds (exactly ``low`` if no high)."""
        high = low if high is None else high
        short = high - low <= self._short
        window = None if short else self.finish_window(key, self._sigmas)
        # Done at the first look into the window (a long gap back to the early look): it finished before
        # that look, and how long before is not known. The window may have moved past that look since the
        # task jumped (others of its kind finished meanwhile): last seen running before the window is what
        # counts.
        censored = window is not None and low < window[0]
        if window is not None and censored:
            # For the range window: the window's start (it finished before the look, maybe well before);
            # the window opens a little earlier next time rather than creeping later. Not below half the
            # look, though, as the first few tasks' window assumes: a cautious start after tasks that beat
            # a guessed window would otherwise stay in the range for the next 32 tasks of the kind.
            point: float | None = max(min(window[0], high), high / 2)
        elif short or key not in self._stats:
            point = (low + high) / 2
        else:
            point = None  # a long gap past the window (a back-off): counts for the mean only
        earlier = self._observations.setdefault(key, deque(maxlen=self._window))
        if short and earlier and all(o.censored for o in earlier):
            # The mean so far is made of window starts (a guess, when the tasks beat the window every
            # time): the first task timed closely replaces it, as the first sample replaces the prior.
            self._stats.pop(key, None)
        earlier.append(_Observation(low, high, censored, short))
        self._windows.clear()
        if point is not None:
            self._points.setdefault(key, deque(maxlen=self._window)).append(point)
        self._update_stats(key, (low + high) / 2 if point is None else point)

    def _update_stats(self, key: str, seconds: float) -> None:
        if key not in self._stats:
            # The first sample replaces the prior; its spread starts wide and narrows with data.
            self._stats[key] = (seconds, seconds * 0.15, 1)
            return
        mean, dev, n = self._stats[key]
        a = max(self._alpha, 1.0 / (n + 1))
        new_mean = mean + a * (seconds - mean)
        new_dev = dev + a * (abs(seconds - mean) * math.sqrt(math.pi / 2) - dev)
        self._stats[key] = (new_mean, max(new_dev, new_mean * 0.02), n + 1)

    def _fit(self, observations: list[_Observation]) -> tuple[float, float]:
        """Maximum-likelihood uniform finish window for interval-censored observations, padded.

        Each observation's likelihood is the share of the window inside its interval: censored ones
        pull the lower edge below their look, short ones keep the window tight, long ones (the cold
        start, a back-off past the window) count for what they say and no more.
        """
        low = min(o.high for o in observations)
        high = max(o.high for o in observations)
        low_range = (max((o.low for o in observations if o.censored), default=0.0), low)
        high_range = (max(o.low for o in observations), high)
        for _ in range(2):  # coordinate ascent: the lower edge, then the upper one
            low = _argmax(partial(_log_likelihood_of_low, observations, high), *low_range)
            high = _argmax(partial(_log_likelihood, observations, low), *high_range)
        # The fitted edges of a uniform sample sit inside the true ones by about a width/(n-1) each.
        pad = (high - low) / (len(observations) - 1)
        return low - pad, high + pad + self._margin

    def snapshot(self) -> dict[str, dict[str, float]]:
        return {k: {"mean_s": m, "spread_s": d, "samples": n} for k, (m, d, n) in self._stats.items()}

    # -- persistence (DurationMemory): a stdio server restarts with every client session ------------
    def to_json(self) -> dict[str, Any]:
        return {
            key: {
                "stats": list(stats),
                "points": list(self._points.get(key, ())),
                "observations": [[o.low, o.high, o.censored, o.short] for o in self._observations.get(key, ())],
            }
            for key, stats in self._stats.items()
        }

    def load_json(self, kinds: dict[str, Any]) -> None:
        """Take over what an earlier run learned; ValueError (and nothing changed) on a malformed document."""
        loaded: dict[str, tuple[tuple[float, float, int], list[float], list[_Observation]]] = {}
        try:
            for key, kind in kinds.items():
                mean, dev, n = (float(v) for v in kind["stats"])
                points = [float(v) for v in kind["points"]]
                observations = [
                    _Observation(float(lo), float(hi), bool(censored), bool(short))
                    for lo, hi, censored, short in kind["observations"]
                ]
                values = (mean, dev, n, *points, *(v for o in observations for v in (o.low, o.high)))
                if not all(math.isfinite(v) and v >= 0 for v in values):
                    raise ValueError(f"a negative or infinite value for {key!r}")
                loaded[str(key)] = ((mean, dev, int(n)), points, observations)
        except (AttributeError, KeyError, TypeError) as exc:
            raise ValueError(f"malformed entry: {exc!r}") from exc
        for key, (stats, points, observations) in loaded.items():
            self._stats[key] = stats
            self._points[key] = deque(points, maxlen=self._window)
            self._observations[key] = deque(observations, maxlen=self._window)
        self._windows.clear()


class DurationMemory:
    """Learned durations in the task store, one entry per upstream (RunAPI, a proxy, the demo's simulator).

    Durations are facts about an upstream: a proxy's must not shape the polls sent to RunAPI, so each
    upstream has its own state key. ``legacy_file`` is the ``durations.json`` of earlier versions: its
    section for this upstream is taken over once, when the store has nothing for it yet, then the file
    is renamed so it is not read again.
    """

    def __init__(self, store: TaskStore, upstream: str, *, legacy_file: Path | None = None) -> None:
        self.store = store
        self.upstream = upstream.rstrip("/")
        self.key = f"durations:{self.upstream}"
        self._legacy_file = legacy_file

    async def load_into(self, model: DurationModel) -> None:
        """Load this upstream's entry; a missing or malformed one leaves ``model`` as it is (and is logged)."""
        try:
            saved = await self.store.load_state(self.key)
        except Exception as exc:  # a store error must not stop the server: it starts cold
            log.warning("could not read the learned task durations (%s); starting fresh", exc)
            return
        if saved is None and self._legacy_file is not None:
            saved = await anyio.to_thread.run_sync(self._take_over_legacy_file)
            if saved is not None:
                await self._write(saved)
        if saved is None:
            return
        try:
            kinds = saved.get("kinds") if isinstance(saved, dict) and saved.get("format") == _FORMAT else None
            if not isinstance(kinds, dict):
                raise ValueError(f"not a format-{_FORMAT} entry")
            model.load_json(kinds)
        except ValueError as exc:
            log.warning("ignoring the learned task durations for %s (%s); starting fresh", self.upstream, exc)

    async def save(self, model: DurationModel) -> None:
        """Keep the model (a few KB, once per finished task); a store error is logged, not raised."""
        await self._write({"format": _FORMAT, "saved_at": time.time(), "kinds": model.to_json()})

    async def _write(self, entry: dict[str, Any]) -> None:
        try:
            await self.store.save_state(self.key, entry)
        except Exception as exc:  # the schedule works without memory; a task must not fail for it
            log.warning("could not save the learned task durations: %s", exc)

    def _take_over_legacy_file(self) -> dict[str, Any] | None:
        path = self._legacy_file
        if path is None:
            return None
        try:
            document = json.loads(path.read_text("utf-8"))
            section = document["upstreams"][self.upstream] if document.get("format") == _FORMAT else None
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            section = None  # unreadable, or nothing for this upstream: nothing to take over
        if not isinstance(section, dict) or not isinstance(section.get("kinds"), dict):
            return None
        with contextlib.suppress(OSError):  # taken over all the same: the store's entry is read first from now on
            os.replace(path, path.with_name(path.name + ".imported"))
        log.info("took over the learned task durations from %s", path)
        return {"format": _FORMAT, "saved_at": time.time(), "kinds": section["kinds"]}


def _split_kind(key: str) -> tuple[str, str | None]:
    """(model, resolution) of a :func:`kind_key`; a key of another shape has no model."""
    model, at, resolution = key.rpartition("@")
    if not at:
        return "", None
    return model, None if resolution == "default" else resolution


def _few_window(observations: list[_Observation], floor: float) -> tuple[float, float]:
    """The window from a kind's first few finished tasks (before the range or the fit), unpadded.

    Every duration lies within one distribution width of every other, so the next task finishes after
    the latest finish seen minus a width and before the earliest plus a width. Each task is taken at
    the bounds its looks give (the middle of a short interval: within half a spacing of the truth). A
    task found done at its first look into the window may have finished well before it: it is taken
    to have run at least half that time (a geometric step, like the approach of an untimed kind: if it
    ran shorter still, the next one is found at half that again). The width is the largest of
    ``floor`` (one sample says nothing of the spread), the spread the tasks prove (one finished after
    another was already done), and the range of the short ones stretched to the expected full width
    (n samples of a uniform span (n-1)/(n+1) of it).
    """
    highs = [(o.low + o.high) / 2 if o.short else o.high for o in observations]
    earliest = min(highs)
    # A task found done at its first look ran at least half that long, or as long as another took.
    lows = [
        (o.low + o.high) / 2 if o.short else min(o.high / 2, earliest) if o.censored else o.low
        for o in observations
    ]
    middles = [(o.low + o.high) / 2 for o in observations if o.short]
    latest = max(lows)
    width = max(floor, latest - earliest)
    if len(middles) > 1:
        width = max(width, (max(middles) - min(middles)) * (len(middles) + 1) / (len(middles) - 1))
    return latest - width, earliest + width


def _widened(seconds: float, relative: float) -> tuple[float, float]:
    return seconds * (1 - relative), seconds * (1 + relative)


def _later(window: tuple[float, float], other: tuple[float, float]) -> tuple[float, float]:
    """Two conservative windows for the same kind: the later start is still conservative, and so is the
    later end (an end that comes too early costs latency, one too late costs nothing)."""
    return max(window[0], other[0]), max(window[1], other[1])


def _argmax(f: Callable[[float], float], a: float, b: float) -> float:
    """The best of a grid over [a, b], refined twice around the best point."""
    best = a
    for _ in range(3):
        step = (b - a) / _GRID
        best = max((a + step * (i + 0.5) for i in range(_GRID)), key=f)
        a, b = best - step, best + step
    return best


def _log_likelihood_of_low(observations: list[_Observation], high: float, low: float) -> float:
    return _log_likelihood(observations, low, high)


def _log_likelihood(observations: list[_Observation], low: float, high: float) -> float:
    if high <= low:
        return -math.inf
    # Each interval counts with the share of it inside the window (its probability up to a constant
    # factor); an exact duration counts if inside. The density 1/width comes in once per observation.
    total = 0.0
    for o in observations:
        width = o.high - o.low
        if width <= 0:
            if not low <= o.low <= high:
                return -math.inf
            continue
        inside = min(o.high, high) - max(o.low, low)
        if inside <= 0:
            return -math.inf
        total += math.log(inside / width)
    return total - len(observations) * math.log(high - low)
