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

``DurationFile`` keeps the model in a small JSON file, per upstream: a stdio server restarts with
every client session, and a cold schedule costs about twice the requests of a warm one.
"""

from __future__ import annotations

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
from typing import Any

log = logging.getLogger("runapi_mcp.tasks")

_FORMAT = 1  # version of the saved file; another version is ignored (the model starts fresh)

# Seconds a task of a model takes, by output resolution, before anything was learned.
# GPT Image 2 finishes in about 10-30 s depending on resolution (RunAPI's docs).
_PRIOR_S: dict[str, dict[str, float]] = {
    "gpt-image-2": {"1k": 12.0, "2k": 20.0, "4k": 28.0},
}
_DEFAULT_PRIOR_S = 20.0
_PRIOR_SPREAD = 0.35  # relative spread of an untimed kind (the prior is a guess)
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
        self._fitted: dict[str, tuple[float, float]] = {}  # cached fits, dropped on every new observation

    def prior(self, model: str, resolution: str | None) -> float:
        return _PRIOR_S.get(model, {}).get(resolution or "1k", _DEFAULT_PRIOR_S) * self._prior_scale

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
        """(earliest, latest) likely finish of a kind in seconds, or None while nothing is known."""
        if key in self._fitted:
            return self._fitted[key]
        observations = self._observations.get(key, ())
        if sum(o.short for o in observations) >= _FIT_AFTER:
            window = self._fit(list(observations))
            self._fitted[key] = window
            return window
        points = self._points.get(key)
        if points is None or len(points) < _RANGE_AFTER:
            if key not in self._stats:
                return None
            mean, dev = self.estimate(key, "", None)
            return mean - sigmas * dev, mean + sigmas * dev
        # The sample range understates the true one by about a range/(n-1) at each end (the unbiased end
        # points of a uniform sample); few samples, a wider window, and never narrower than the prior says.
        low, high = min(points), max(points)
        pad = max(high - low, _MIN_RANGE * self._stats[key][0]) / (len(points) - 1)
        return low - pad - self._margin, high + pad + self._margin

    def observe(self, key: str, low: float, high: float | None = None) -> None:
        """A task of this kind finished after ``low`` and by ``high`` seconds (exactly ``low`` if no high)."""
        high = low if high is None else high
        short = high - low <= self._short
        window = None if short or key not in self._stats else self.finish_window(key, self._sigmas)
        # Done at the first look into the window (a long gap back to the early look): it finished before
        # that look, and how long before is not known.
        censored = window is not None and low < window[0] < high
        if window is not None and censored:
            # For the range window: the window's start (it finished before the look, maybe well before);
            # the window opens a little earlier next time rather than creeping later.
            point: float | None = window[0]
        elif short or key not in self._stats:
            point = (low + high) / 2
        else:
            point = None  # a long gap past the window (a back-off): counts for the mean only
        self._observations.setdefault(key, deque(maxlen=self._window)).append(
            _Observation(low, high, censored, short)
        )
        self._fitted.pop(key, None)
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

    # -- persistence (DurationFile): a stdio server restarts with every client session --------------
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
            self._fitted.pop(key, None)


class DurationFile:
    """Learned durations on disk, one section per upstream (RunAPI, a proxy, the demo's simulator).

    Durations are facts about an upstream: a proxy's must not shape the polls sent to RunAPI. The
    sections saved longest ago are dropped beyond ``keep``. Saving reads the file again so that servers
    sharing a home keep each other's sections (the last writer wins within a section).
    """

    def __init__(self, path: Path, upstream: str, *, keep: int = 8) -> None:
        self.path = path
        self.upstream = upstream.rstrip("/")
        self._keep = keep

    def load_into(self, model: DurationModel) -> None:
        """Load this upstream's section; a missing, unreadable or malformed file leaves ``model`` as it is."""
        try:
            section = self._read().get(self.upstream)
            if section is not None:
                if not isinstance(section, dict):
                    raise ValueError(f"the section for {self.upstream} is not an object")
                model.load_json(section.get("kinds", {}))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring the learned task durations in %s (%s); starting fresh", self.path, exc)

    def save(self, model: DurationModel) -> None:
        """Write this upstream's section atomically (a crash leaves the old file or the new one)."""
        try:
            sections = self._read()
        except (OSError, ValueError):
            sections = {}  # missing or unreadable: start the file again
        sections[self.upstream] = {"saved_at": time.time(), "kinds": model.to_json()}
        newest = sorted(sections, key=lambda u: _saved_at(sections[u]), reverse=True)[: self._keep]
        document = {"format": _FORMAT, "upstreams": {u: sections[u] for u in newest}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(document, separators=(",", ":")), "utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("could not save the learned task durations to %s: %s", self.path, exc)

    def _read(self) -> dict[str, Any]:
        data = json.loads(self.path.read_text("utf-8"))
        if not isinstance(data, dict) or data.get("format") != _FORMAT or not isinstance(data.get("upstreams"), dict):
            raise ValueError(f"not a format-{_FORMAT} duration file")
        return dict(data["upstreams"])


def _saved_at(section: Any) -> float:
    value = section.get("saved_at") if isinstance(section, dict) else None
    return float(value) if isinstance(value, int | float) else 0.0


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
