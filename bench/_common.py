"""What the benchmarks share: the simulator in a child process, percentiles, /proc figures and the report's
PASS/FAIL lines and machine line.

The benchmarks are run as ``python bench/<name>.py``, so ``bench/`` is on ``sys.path`` and they import this
module as ``_common``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

from runapi_mcp.simulator import Simulator, SimulatorConfig


# -- the simulator, in a child process ---------------------------------------------------------------------
def _simulator_process(config: SimulatorConfig, conn: Connection) -> None:
    """Serves the simulator and answers ``(command, arg)`` over ``conn`` until any other command comes."""
    logging.basicConfig(level=logging.WARNING)
    with Simulator(config) as sim:
        conn.send((sim.base_url, time.monotonic()))
        while True:
            command, arg = conn.recv()
            if command == "completed_at":
                conn.send({task_id: sim.completed_at(task_id) for task_id in arg})
            elif command == "callbacks":
                conn.send([(c.status, c.error) for c in sim.callbacks])
            elif command == "take_log":
                log = [(r.method, r.path, r.time) for r in sim.requests]
                sim.clear_log()
                conn.send(log)
            elif command == "take_requests":
                requests = [(r.method, r.path, r.time, r.user_agent) for r in sim.requests]
                sim.clear_log()
                conn.send(requests)
            elif command == "counts":
                creates = sum(
                    1 for r in sim.requests
                    if r.method == "POST" and r.path.startswith("/api/v1/")
                    and not r.path.startswith("/api/v1/files") and r.path != "/api/v1/price_quotes"
                )
                polls = sum(
                    1 for r in sim.requests
                    if r.method == "GET" and r.path.startswith("/api/v1/") and r.path != "/api/v1/price_schedules"
                )
                downloads = sum(1 for r in sim.requests if r.path.startswith("/images/"))
                conn.send({"creates": creates, "tasks": sim.tasks_created, "polls": polls, "downloads": downloads})
            else:
                conn.send(None)
                return


class RemoteSimulator:
    """The simulator served from a child process (upstream is remote in real life: its rendering and HTTP must
    not count in, or compete for the GIL with, the process measured). ``time.monotonic()`` is the same clock in
    both (Linux: CLOCK_MONOTONIC), which is checked at start."""

    def __init__(self, config: SimulatorConfig) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._proc = context.Process(
            target=_simulator_process, args=(config, child), daemon=True, name="runapi-simulator"
        )
        before = time.monotonic()
        self._proc.start()
        try:
            self.base_url, child_now = self._conn.recv()
            if not before <= child_now <= time.monotonic():
                raise RuntimeError("the simulator process does not share this process's monotonic clock")
        except BaseException:
            self._proc.kill()
            self._proc.join(10)
            raise

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def _ask(self, command: str, arg: Any = None) -> Any:
        self._conn.send((command, arg))
        return self._conn.recv()

    def completed_at(self, task_ids: Iterable[str]) -> dict[str, float | None]:
        """The simulator's monotonic time each task completed (None: it has not)."""
        return cast(dict[str, float | None], self._ask("completed_at", list(task_ids)))

    def callbacks(self) -> list[tuple[int | None, str | None]]:
        """(HTTP status, error) of each completion callback made since the last ``take_log``."""
        return cast(list[tuple[int | None, str | None]], self._ask("callbacks"))

    def take_log(self) -> list[tuple[str, str, float]]:
        """The requests answered since the last call (method, path, arrival time)."""
        return cast(list[tuple[str, str, float]], self._ask("take_log"))

    def take_requests(self) -> list[tuple[str, str, float, str]]:
        """``take_log`` with each request's User-Agent (which of several server instances sent it)."""
        return cast(list[tuple[str, str, float, str]], self._ask("take_requests"))

    def counts(self) -> dict[str, int]:
        """Upstream requests so far: ``creates`` (task-creating POSTs, not uploads or price quotes), ``tasks``
        (distinct tasks created), ``polls`` (API GETs) and ``downloads`` (image GETs)."""
        return cast(dict[str, int], self._ask("counts"))

    def close(self) -> None:
        if self._proc.is_alive():
            self._ask("close")
        self._proc.join(10)


# -- figures -----------------------------------------------------------------------------------------------
def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def status_mb(name: str, pid: int | str = "self") -> float | None:
    """A memory figure of ``/proc/<pid>/status`` (``VmHWM``: peak RSS, ``VmRSS``: RSS) in MB; None if absent."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1]) / 1024  # kB
    return None


# -- the report --------------------------------------------------------------------------------------------
def print_checks(checks: Sequence[tuple[str, bool]], info: Callable[[str], bool] | None = None) -> bool:
    """A blank line, then a ``PASS``/``FAIL`` line a check; whether all passed. A check whose text ``info``
    accepts is information only: it prints ``info`` where it fails and does not count."""

    def counts(text: str) -> bool:
        return info is None or not info(text)

    print()
    for text, ok in checks:
        verdict = "PASS" if ok else "FAIL" if counts(text) else "info"
        print(f"{verdict:<4}  {text}")
    return all(ok for text, ok in checks if counts(text))


def print_machine(tail: str) -> None:
    """``machine: <n> cores usable`` and the run's own particulars (``tail``, from its punctuation on)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {cores} cores usable{tail}")
