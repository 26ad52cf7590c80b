"""How a stdio server ends when its client ends the session the way Claude Code does.

Claude Code sends SIGINT, then SIGTERM 100 ms later, then SIGKILL at about 500 ms. The server answers the
tool calls still waiting (the task id, "still running"), closes its store and exits before the SIGTERM
lands; the next start takes the task up again.
"""

from __future__ import annotations

import json
import os
import select
import signal
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from runapi_mcp.simulator import Simulator
from tests.support import RawStdioServer, server_env

pytestmark = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="exit timing is measured with a pidfd (Linux)")

# Claude Code's schedule: SIGTERM this long after SIGINT, SIGKILL at about 0.5 s.
SIGTERM_AFTER_S = 0.1
SIGKILL_AT_S = 0.5
# The goal is under 0.1 s (typically a few ms); the bound leaves room for a loaded 2-core CI machine.
EXIT_BOUND_S = 0.3


def _wait_for_message(server: RawStdioServer, method: str, timeout: float = 20.0) -> None:
    """Read the server's output until a ``method`` message (every line kept, as ``RawStdioServer`` does)."""
    deadline = time.monotonic() + timeout
    while True:
        line = server._queue.get(timeout=max(0.0, deadline - time.monotonic()))
        assert line is not None, f"the server closed stdout before a {method}"
        server.lines.append(line)
        server.messages.append(json.loads(line))
        if server.messages[-1].get("method") == method:
            return


def stop_like_claude_code(server: RawStdioServer) -> tuple[float, list[str]]:
    """SIGINT, SIGTERM 100 ms later, SIGKILL at 500 ms (each only while the process lives): the seconds
    from SIGINT to the process's exit, and the signals sent."""
    pidfd = os.pidfd_open(server.proc.pid)  # readable once the process has ended (no reaping race)
    sent = ["SIGINT"]
    try:
        start = time.monotonic()
        server.proc.send_signal(signal.SIGINT)
        for delay, signum in ((SIGTERM_AFTER_S, signal.SIGTERM), (SIGKILL_AT_S, signal.SIGKILL)):
            if select.select([pidfd], [], [], max(0.0, start + delay - time.monotonic()))[0]:
                break
            signal.pidfd_send_signal(pidfd, signum)
            sent.append(signum.name)
        else:
            select.select([pidfd], [], [], 10)
        elapsed = time.monotonic() - start
    finally:
        os.close(pidfd)
    return elapsed, sent


@contextmanager
def _server(env: dict[str, str], *, waiting: bool = True) -> Iterator[RawStdioServer]:
    """A server, initialized; ``waiting``: with one generate_image call (id 99) waiting on a task that keeps
    running. Stopped (if still running) and its pipes closed afterwards."""
    server = RawStdioServer(env)
    try:
        with server:
            server.initialize("2025-06-18")
            if waiting:
                call = {"name": "generate_image", "arguments": {"prompt": "a long wait", "timeout_s": 60}}
                params = {**call, "_meta": {"progressToken": "wait"}}
                server.send({"jsonrpc": "2.0", "id": 99, "method": "tools/call", "params": params})
                # The call reports its first progress once the task is created, right as it starts waiting.
                _wait_for_message(server, "notifications/progress")
            yield server
    finally:
        for pipe in (server.proc.stdin, server.proc.stdout, server.proc.stderr):
            if pipe is not None:
                pipe.close()


def test_sigint_then_sigterm_answers_the_waiting_call_and_exits_before_the_sigterm(
    sim: Simulator, home: Path, inputs: Path
) -> None:
    sim.set_task_outcome(None, "running")  # the call would wait its whole 60 s
    env = server_env(sim, home, inputs)
    with _server(env) as server:
        elapsed, sent = stop_like_claude_code(server)
        assert server.proc.wait(timeout=10) == 0, sent
        answers = server.remaining()
    print(f"\nexit {elapsed * 1000:.1f} ms after SIGINT; signals sent: {', '.join(sent)}")
    assert "SIGKILL" not in sent
    assert elapsed < EXIT_BOUND_S, f"exited {elapsed:.3f} s after SIGINT"
    # The waiting call got its answer before the process ended: its task id, still running.
    answer = next(a for a in answers if a.get("id") == 99)
    data = answer["result"]["structuredContent"]
    assert not answer["result"].get("isError") and data["status"] in ("pending", "processing")
    task_id = data["task_id"]
    assert task_id in answer["result"]["content"][0]["text"]

    # The next start takes the task up again: polls it, and a wait sees it finish.
    sim.set_task_outcome(data["runapi_task_id"], "completed")
    with _server(env, waiting=False) as again:
        args = {"task_id": task_id, "wait": True, "timeout_s": 10}
        result = again.request("tools/call", {"name": "get_task", "arguments": args})["result"]
        assert result["structuredContent"]["status"] == "completed", result
        assert "resumed 1 task from the store" in again.close()


def test_a_second_signal_ends_the_stop_at_once(sim: Simulator, home: Path, inputs: Path) -> None:
    """SIGINT and SIGTERM together (a supervisor in a hurry): the stop waits for nothing, still a clean exit."""
    sim.set_task_outcome(None, "running")
    with _server(server_env(sim, home, inputs)) as server:
        start = time.monotonic()
        server.proc.send_signal(signal.SIGINT)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=10) == 0
        elapsed = time.monotonic() - start
        server.remaining()  # whatever was written is whole JSON-RPC lines
    assert elapsed < EXIT_BOUND_S + 0.1  # Popen.wait polls: a coarser clock than the pidfd's


def test_stdin_closed_and_a_signal_at_once_is_a_clean_quick_exit(sim: Simulator, home: Path, inputs: Path) -> None:
    """A client that closes its end and signals: the signal lands while the server winds down after the
    EOF; the process still ends at once, cleanly (before, the interpreter's own exit outlasted the SIGTERM)."""
    sim.set_task_outcome(None, "running")
    with _server(server_env(sim, home, inputs)) as server:
        assert server.proc.stdin is not None
        server.proc.stdin.close()
        elapsed, sent = stop_like_claude_code(server)
        assert server.proc.wait(timeout=10) == 0, sent
        server.remaining()
    assert sent == ["SIGINT"] and elapsed < EXIT_BOUND_S, (sent, elapsed)


def main(runs: int) -> None:
    """``python -m tests.test_signals [RUNS]``: the typical figure, the median of RUNS stops (10 by default)."""
    import tempfile

    from runapi_mcp.simulator import SimulatorConfig
    from tests.support import SIM_KEY

    times: list[float] = []
    with Simulator(SimulatorConfig(api_key=SIM_KEY)) as sim, tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp, "inputs")
        inputs.mkdir()
        for run in range(runs):
            home = Path(tmp, f"home{run}")
            home.mkdir()
            sim.set_task_outcome(None, "running")
            with _server(server_env(sim, home, inputs)) as server:
                elapsed, sent = stop_like_claude_code(server)
                code = server.proc.wait(timeout=10)
                answered = any(a.get("id") == 99 for a in server.remaining())
            times.append(elapsed)
            print(f"{elapsed * 1000:6.1f} ms  exit code {code}, signals {', '.join(sent)}, call answered: {answered}")
    median, worst = statistics.median(times) * 1000, max(times) * 1000
    print(f"SIGINT to exit: median {median:.1f} ms, max {worst:.1f} ms over {runs} runs")


if __name__ == "__main__":
    import sys

    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
