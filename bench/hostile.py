"""Peak memory and wall time of the server under the worst outputs an upstream can send.

``runapi-mcp serve`` runs as a real stdio subprocess (its peak RSS is read from /proc, so the
simulator and this client do not count), spoken to by the SDK's MCP client, against the
simulator over loopback. Scenarios, one server for all of them, in this order:

- ``baseline``: one normal GPT Image 2 task (its time is "the usual time");
- ``bomb``: a task whose output is a decompression-bomb PNG (60000 x 60000 declared, ~0.5 MB);
- ``four huge``: a gpt-4o-image task with four 20000 x 14000 outputs (280 MP each, ~1.3 MB each);
- ``trickle``: eight tasks whose image hosts send one byte every 5 s, then one normal task.

It prints peak RSS, each scenario's wall time, and the normal task's time under the trickle as
a ratio of the baseline. Targets: peak RSS under 1 GB; the normal task within 1.5x its usual time
(plus one poll spacing: 0.6 s x the time scale). Run: ``.venv/bin/python bench/hostile.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from _common import status_mb
from runapi_mcp.simulator import Fault, Simulator, SimulatorConfig

KEY = "sk-bench-hostile-0123456789abcdef"
RSS_LIMIT_MB = 1024.0


def _server_pid(marker: str) -> int | None:
    """The pid of the ``runapi-mcp serve`` child started with ``marker`` in its environment."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in environ and b"runapi_mcp" in cmdline:
            return int(entry.name)
    return None


def _peak_rss_mb(pid: int) -> float:
    peak = status_mb("VmHWM", pid)
    if peak is None:
        raise RuntimeError("no VmHWM in /proc status")
    return peak


async def _timed(label: str, call: Callable[[], Awaitable[Any]], rows: list[tuple[str, float, str]]) -> Any:
    started = time.monotonic()
    result = await call()
    seconds = time.monotonic() - started
    text = " ".join(getattr(block, "text", "") for block in result.content)
    status = (result.structured_content or {}).get("status", "error" if result.is_error else "?")
    rows.append((label, seconds, f"{status}: {text.splitlines()[0][:100] if text else ''}"))
    print(f"  {label:<48} {seconds:7.2f} s   {rows[-1][2]}", file=sys.stderr)
    return result


async def run(time_scale: float) -> int:
    config = SimulatorConfig(api_key=KEY, time_scale=time_scale, prerender=True)
    marker = f"RUNAPI_BENCH_HOSTILE={os.getpid()}-{time.time_ns()}"
    rows: list[tuple[str, float, str]] = []
    with Simulator(config) as sim, tempfile.TemporaryDirectory() as home:
        env = {
            "RUNAPI_API_KEY": KEY,
            "RUNAPI_BASE_URL": sim.base_url,
            "RUNAPI_MCP_HOME": home,
            "RUNAPI_MCP_LOG_LEVEL": "WARNING",
            marker.split("=")[0]: marker.split("=")[1],
        }
        params = StdioServerParameters(command=sys.executable, args=["-m", "runapi_mcp", "serve"], env=env)
        async with Client(params, mode="legacy") as client:
            pid = _server_pid(marker)
            assert pid is not None, "could not find the server process"

            def generate(prompt: str, **extra: Any) -> Callable[[], Awaitable[Any]]:
                return lambda: client.call_tool("generate_image", {"prompt": prompt, **extra})

            # Warm up once: imports, first connections (not measured).
            await generate("warm-up")()
            baseline = await _timed("baseline: one normal task", generate("a calm lake"), rows)
            assert baseline.structured_content["status"] == "completed"

            sim.inject(Fault("bomb", times=1))
            await _timed("bomb: 60000x60000 PNG output", generate("a bomb"), rows)

            sim.inject(Fault("huge_image", times=4))
            await _timed(
                "four huge: 4 x 20000x14000 outputs",
                generate("four huge", model="gpt-4o-image", aspect_ratio="1:1", params={"output_count": 4}),
                rows,
            )

            left = sim.faults
            assert not left, f"faults not used up: {left}"
            sim.inject(Fault("trickle", delay=5.0, chunk=1, times=8))
            async with anyio.create_task_group() as tg:
                for n in range(8):
                    tg.start_soon(client.call_tool, "generate_image", {"prompt": f"trickle {n}", "wait": False})
            with anyio.fail_after(120):
                while sim.open_streams < 8:  # noqa: ASYNC110 (a counter of the simulator thread: nothing to wait on)
                    await anyio.sleep(0.1)
            normal = await _timed("trickle: normal task beside 8 trickling hosts", generate("a normal one"), rows)
            peak = _peak_rss_mb(pid)

    usual = rows[0][1]
    under = rows[-1][1]
    allowed = 1.5 * usual + 0.6 * time_scale
    print(f"time scale {time_scale} (GPT Image 2 1k task: {12 * time_scale:.1f} s in the simulator)")
    for label, seconds, what in rows:
        print(f"  {label:<48} {seconds:7.2f} s   {what}")
    print(f"peak RSS of the server: {peak:.0f} MB (limit {RSS_LIMIT_MB:.0f} MB)")
    print(f"normal task beside trickling hosts: {under:.2f} s vs {usual:.2f} s alone ({under / usual:.2f}x)")
    rss_ok = peak < RSS_LIMIT_MB
    time_ok = normal.structured_content["status"] == "completed" and under <= allowed
    print(f"{'PASS' if rss_ok else 'FAIL'}: peak RSS under 1 GB")
    print(f"{'PASS' if time_ok else 'FAIL'}: the normal task completes within its usual time (<= {allowed:.2f} s)")
    return 0 if rss_ok and time_ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--time-scale", type=float, default=0.25, help="Simulator task durations x this")
    args = parser.parse_args()
    return anyio.run(run, args.time_scale)


if __name__ == "__main__":
    sys.exit(main())
