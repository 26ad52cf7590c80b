"""1000 tasks in flight in one server process: all complete, none lost, and what they cost the process.

    .venv/bin/python bench/scale.py [--tasks 1000] [--time-scale 0.25] [--seed 0]

The server's own stack is driven directly, without an MCP client in the process: ``open_app`` wires it as
``runapi-mcp serve`` does (the SQLite task store and the image library in a fresh ``RUNAPI_MCP_HOME``, the
RunAPI client with its 8 request and 16 download slots, the polling manager), and every task goes through
``TaskManager.submit`` and ``TaskManager.wait``, the calls ``generate_image`` and ``get_task`` make. An
in-process MCP client would add its own sessions and parsed results to the figures; the tool layer's
per-call work (validation, the price quote, the reply) comes and goes with each call and is not what
1000 tasks *in flight* hold.

The simulator runs in a child process (it renders the pictures and answers the HTTP; upstream is remote in
real life), so this process's peak RSS (``VmHWM``) and CPU time (user + sys, ``RUSAGE_SELF``) are the
server's alone. All tasks are submitted at once: GPT Image 2 at 1k, aspect 3:1 (1024 x 341 PNGs of a few
tens of KB: disk and decoding do not dominate), durations 12 s +- 10 % times ``--time-scale`` (3 s by
default), the poll policy scaled alike (the documented window then starts at 2.4 s, so the first looks go
out while the last creates are still being sent, and polls queue for the 8 request slots at the peak).

Checks: every task completed with its picture saved in the library (the file there, not empty), exactly
``--tasks`` creates upstream (and as many distinct tasks), and peak RSS <= 150 MB.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from _common import RemoteSimulator, print_checks, print_machine, status_mb
from runapi_mcp.app import open_app
from runapi_mcp.catalog import get_catalog
from runapi_mcp.config import load_settings
from runapi_mcp.simulator import SimulatorConfig
from runapi_mcp.tasks import LOCAL_OWNER, PollPolicy, TaskRecord, current_owner

KEY = "sk-bench-scale-0123456789abcdef0123"
MODEL = "gpt-image-2"
RESOLUTION = "1k"
ASPECT = "3:1"  # the smallest picture GPT Image 2 makes at 1k (1024 x 341)
RSS_LIMIT_MB = 150.0


def _peak_rss_mb() -> float:
    peak = status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KB


def _rss_mb() -> float:
    rss = status_mb("VmRSS")
    return rss if rss is not None else float("nan")


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(args: argparse.Namespace, base_url: str, home: Path) -> dict[str, Any]:
    settings = load_settings(
        {"api_key": KEY, "base_url": base_url, "home": str(home), "allowed_dirs": str(home), "wait_s": 60},
        environ={},
        config_file=home / "no-config.json",
    )
    catalog = get_catalog()
    in_flight = peak_in_flight = 0
    found: dict[str, TaskRecord] = {}
    rss_before, cpu_before = _rss_mb(), _cpu_s()
    started = time.monotonic()
    async with open_app(settings, policy=PollPolicy().scaled(args.time_scale)) as app:
        manager = app.manager

        async def one(n: int) -> None:
            nonlocal in_flight, peak_in_flight
            prepared = catalog.prepare(
                "generate", MODEL, prompt=f"scale test picture {n}: a lighthouse",
                options={"aspect_ratio": ASPECT, "output_resolution": RESOLUTION},
            )
            record = await manager.submit(prepared, prompt=f"scale test picture {n}")
            in_flight += 1
            peak_in_flight = max(peak_in_flight, in_flight)
            # What get_task(wait) does; one wake-up per change, not a tick a second for each of 1000 waiters.
            done = await manager.wait(record.task_id, 600.0, tick_s=600.0)
            in_flight -= 1
            found[record.task_id] = done

        # Straight to the manager, as the local user (what the MCP layer sets for a request over stdio).
        with current_owner.scope(LOCAL_OWNER):
            async with anyio.create_task_group() as tg:
                for n in range(args.tasks):
                    tg.start_soon(one, n)
        wall = time.monotonic() - started
        stored = [await manager.store.get(task_id) for task_id in found]
    return {
        "wall": wall, "records": list(found.values()), "stored": stored, "peak_in_flight": peak_in_flight,
        "rss_before": rss_before, "cpu": _cpu_s() - cpu_before,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000, help="tasks submitted at once")
    parser.add_argument("--time-scale", type=float, default=0.25, help="task durations and poll intervals x this")
    parser.add_argument("--seed", type=int, default=0, help="seeds the simulated task durations")
    args = parser.parse_args(argv)
    if args.tasks < 1 or not 0 < args.time_scale <= 1:
        parser.error("need --tasks >= 1 and 0 < --time-scale <= 1")
    logging.basicConfig(level=logging.WARNING)
    for name in ("httpx", "runapi_mcp", "mcp"):
        logging.getLogger(name).setLevel(logging.WARNING)

    config = SimulatorConfig(
        api_key=KEY, duration_jitter=0.10, time_scale=args.time_scale, seed=args.seed,
        initial_balance_cents=100_000_000, prerender=True,
    )
    sim = RemoteSimulator(config)
    try:
        print(f"scale benchmark: {args.tasks} x {MODEL} {RESOLUTION} {ASPECT} submitted at once, tasks of "
              f"{12 * args.time_scale:.1f} s +-10 %, simulator pid {sim.pid}, this process pid {os.getpid()}",
              flush=True)
        with tempfile.TemporaryDirectory(prefix="runapi-scale-") as tmp:
            result = anyio.run(run, args, sim.base_url, Path(tmp))
            records: list[TaskRecord] = result["records"]
            saved = [
                r for r in records
                if r.status == "completed" and r.images
                and all(i.path is not None and Path(i.path).is_file() and Path(i.path).stat().st_size > 0
                        for i in r.images)
            ]
            stored_ok = sum(1 for r in result["stored"] if r is not None and r.status == "completed")
            library_mb = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file()) / 2**20
        counts = sim.counts()
    finally:
        sim.close()
    peak = _peak_rss_mb()
    total_cpu = _cpu_s()

    statuses: dict[str, int] = {}
    for r in records:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    n = args.tasks
    print()
    print(f"tasks: {len(records)} finished of {n} submitted ({', '.join(f'{v} {k}' for k, v in statuses.items())}); "
          f"{len(saved)} with their picture saved in the library; {stored_ok} completed in the task store")
    print(f"in flight at once: {result['peak_in_flight']} at most")
    print(f"upstream: {counts['creates']} creates ({counts['tasks']} distinct tasks), {counts['polls']} status GETs "
          f"({counts['polls'] / n:.1f} per task), {counts['downloads']} downloads")
    print(f"wall: {result['wall']:.1f} s for the {n} tasks (submit to last completion)")
    print(f"CPU of this process: {result['cpu']:.1f} s user+sys during the run ({result['cpu'] / n * 1000:.1f} ms "
          f"per task), {total_cpu:.1f} s in all (imports and start-up included)")
    print(f"RSS of this process: {result['rss_before']:.0f} MB before the server started, peak {peak:.0f} MB; "
          f"library and store on disk {library_mb:.0f} MB")
    checks = [
        (f"all {n} tasks completed with their picture saved", len(saved) == n and stored_ok == n),
        (f"exactly {n} creates upstream ({counts['creates']}, {counts['tasks']} distinct tasks)",
         counts["creates"] == n and counts["tasks"] == n),
        (f"peak RSS {peak:.0f} MB <= {RSS_LIMIT_MB:.0f} MB", peak <= RSS_LIMIT_MB),
    ]
    passed = print_checks(checks)
    print_machine(f" (the simulator's rendering and HTTP share them); time scale {args.time_scale:g}; seed {args.seed}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
