"""The real thing: ``runapi-mcp`` as a subprocess over stdio, against the simulator over loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from runapi_mcp.simulator import Simulator
from tests.support import SIM_KEY, RawStdioServer, server_env, text_of, wait_until

pytestmark = pytest.mark.anyio


async def test_stdio_client_generates_and_edits(sim: Simulator, home: Path, inputs: Path) -> None:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "runapi_mcp", "serve"], env=server_env(sim, home, inputs)
    )
    values: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        values.append(progress)

    async with Client(params, mode="legacy") as client:
        result = await client.call_tool("generate_image", {"prompt": "over stdio"}, progress_callback=on_progress)
        assert not result.is_error, text_of(result)
        data: dict[str, Any] = result.structured_content or {}
        assert data["status"] == "completed"
        assert Path(data["images"][0]["path"]).is_file()
        edit = await client.call_tool("edit_image", {"prompt": "now in blue", "images": [data["task_id"]]})
        assert edit.structured_content["status"] == "completed"
        bad = await client.call_tool("generate_image", {"prompt": "x", "output_resolution": "16k"})
        assert bad.is_error and "output_resolution" in text_of(bad)
    assert values and values == sorted(values)


def test_stdout_carries_only_protocol_and_the_key_stays_secret(sim: Simulator, home: Path, inputs: Path) -> None:
    """Raw JSON-RPC over the pipes: every stdout line is a JSON-RPC message; stderr has logs but no key."""
    env = {**os.environ, **server_env(sim, home, inputs)}
    messages = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "raw-test", "version": "0"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {
                "name": "generate_image",
                "arguments": {"prompt": "raw pipes"},
                "_meta": {"progressToken": "p1"},
            },
        },
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "check_balance", "arguments": {}}},
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "runapi_mcp", "serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert proc.stdin and proc.stdout
    seen: dict[int, dict[str, Any]] = {}
    lines: list[str] = []
    try:
        proc.stdin.write(json.dumps(messages[0]) + "\n")
        proc.stdin.flush()
        while 1 not in seen:
            line = proc.stdout.readline()
            lines.append(line)
            msg = json.loads(line)
            if "id" in msg:
                seen[msg["id"]] = msg
        for message in messages[1:]:
            proc.stdin.write(json.dumps(message) + "\n")
        proc.stdin.flush()
        while not {2, 3} <= set(seen):
            line = proc.stdout.readline()
            assert line, "server closed stdout early"
            lines.append(line)
            msg = json.loads(line)
            if "id" in msg:
                seen[msg["id"]] = msg
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    stderr = proc.stderr.read() if proc.stderr else ""
    for line in lines:
        assert json.loads(line)["jsonrpc"] == "2.0"
    progress = [json.loads(x) for x in lines if '"notifications/progress"' in x]
    assert progress and all(p["params"]["progressToken"] == "p1" for p in progress)
    assert seen[2]["result"]["structuredContent"]["status"] == "completed"
    assert "balance_cents" in seen[3]["result"]["structuredContent"]
    assert SIM_KEY not in "".join(lines)
    assert SIM_KEY not in stderr
    assert "created task" in stderr  # logs do go to stderr


def _serve_with(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runapi_mcp", "serve"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def test_bad_configuration_is_named(tmp_path: Path) -> None:
    proc = _serve_with({"RUNAPI_MCP_WAIT_S": "soon", "RUNAPI_API_KEY": SIM_KEY})
    assert proc.returncode == 2
    assert "RUNAPI_MCP_WAIT_S" in proc.stderr and proc.stdout == ""
    proc = _serve_with({"RUNAPI_BASE_URL": "ftp://nope", "RUNAPI_API_KEY": SIM_KEY})
    assert proc.returncode == 2 and "RUNAPI_BASE_URL" in proc.stderr and SIM_KEY not in proc.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_answers_the_waiting_call_and_ends_the_server(
    sim: Simulator, home: Path, inputs: Path, signum: signal.Signals
) -> None:
    sim.set_task_outcome(None, "running")  # the call would wait its whole 20 s
    with RawStdioServer(server_env(sim, home, inputs)) as server:
        server.initialize("2025-06-18")
        call = {"name": "generate_image", "arguments": {"prompt": "a long wait"}}
        server.send({"jsonrpc": "2.0", "id": 99, "method": "tools/call", "params": call})
        # The task's own status polled (not the price schedules read at start): the call is waiting.
        wait_until(
            lambda: [r for r in sim.requests if r.method == "GET" and "/api/v1/gpt_image_2/" in r.path],
            "the task polled",
        )
        server.proc.send_signal(signum)
        assert server.proc.wait(timeout=10) == 0  # stdin is still open: the signal alone ends it
        answers = server.remaining()
    answer = next(a for a in answers if a.get("id") == 99)
    data = answer["result"]["structuredContent"]
    assert data["status"] in ("pending", "processing") and data["task_id"]
