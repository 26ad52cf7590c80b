"""Nothing lost: a task outlives the process that created it, and a lost create answer never pays twice.

The server runs as a real stdio subprocess, killed with SIGKILL at the worst moments, then started
again on the same RUNAPI_MCP_HOME; the simulator counts the tasks RunAPI created.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client

from runapi_mcp.app import open_app
from runapi_mcp.simulator import Fault, Simulator
from runapi_mcp.tasks import LOCAL_OWNER, current_owner
from tests.support import FAST_POLICY, RawStdioServer, make_settings, server_env, text_of, wait_until

pytestmark = pytest.mark.anyio

GENERATE = {"name": "generate_image", "arguments": {"prompt": "outlive the process", "wait": False}}


def _started(server: RawStdioServer) -> RawStdioServer:
    server.initialize("2025-06-18")
    return server


def _structured(answer: dict[str, Any]) -> dict[str, Any]:
    result = answer["result"]
    assert not result.get("isError"), result
    structured: dict[str, Any] = result["structuredContent"]
    return structured


def _get_task(server: RawStdioServer, task_id: str) -> dict[str, Any]:
    answer = server.request(
        "tools/call", {"name": "get_task", "arguments": {"task_id": task_id, "wait": True, "timeout_s": 20}}
    )
    return _structured(answer)


def test_a_task_running_when_the_server_is_killed_completes_after_a_restart(
    sim: Simulator, home: Path, inputs: Path
) -> None:
    env = server_env(sim, home, inputs)
    before = sim.tasks_created
    sim.set_task_outcome(None, "running")  # RunAPI keeps it running until released
    with _started(RawStdioServer(env)) as first:
        created = _structured(first.request("tools/call", GENERATE))
        first.proc.kill()  # SIGKILL: no clean-up of any kind
        first.proc.wait()
    assert created["status"] in ("pending", "processing")
    sim.set_task_outcome(created["runapi_task_id"], "completed")
    with _started(RawStdioServer(env)) as second:
        done = _get_task(second, created["task_id"])
        by_runapi_id = _get_task(second, created["runapi_task_id"])
        listed = second.request("resources/read", {"uri": f"runapi://tasks/{created['task_id']}"})
    assert done["status"] == "completed" and Path(done["images"][0]["path"]).is_file(), done
    assert by_runapi_id["task_id"] == created["task_id"]
    assert "completed" in listed["result"]["contents"][0]["text"]
    assert sim.tasks_created - before == 1


def test_a_kill_between_the_create_and_its_answer_creates_one_task(sim: Simulator, home: Path, inputs: Path) -> None:
    env = server_env(sim, home, inputs)
    before = sim.tasks_created
    # RunAPI takes its time to answer the create: the server dies while waiting for it.
    sim.inject(Fault("slow", delay=1.0, method="POST", path_contains="/gpt_image_2/"))
    with _started(RawStdioServer(env)) as first:
        first.send({"jsonrpc": "2.0", "id": 99, "method": "tools/call", "params": GENERATE})
        # The fault taken: the create has reached RunAPI, which holds it (the price quote is no create).
        wait_until(lambda: sim.faults == [], "the create to reach RunAPI")
        first.proc.kill()
        first.proc.wait()
    # The held create ends at RunAPI (this simulator drops it with its connection; RunAPI might create the
    # task) before the restart sends it again, with the same key.
    create = "/api/v1/gpt_image_2/"
    wait_until(lambda: [r for r in sim.requests if r.method == "POST" and create in r.path], "the held create's end")
    records = _records_in(home)
    assert len(records) == 1, records  # recorded before the create was sent
    with _started(RawStdioServer(env)) as second:
        done = _get_task(second, records[0])
    assert done["status"] == "completed" and Path(done["images"][0]["path"]).is_file(), done
    assert sim.tasks_created - before == 1  # the re-sent create (same key) was not a second task


def _records_in(home: Path) -> list[str]:
    """The task ids in the store of ``home``."""
    with sqlite3.connect(home / "tasks.sqlite3") as db:
        return [row[0] for row in db.execute("SELECT task_id FROM tasks ORDER BY created_at")]


async def test_lost_create_answers_leave_a_fetchable_task_that_is_created_once(
    sim: Simulator, home: Path, inputs: Path
) -> None:
    before = sim.tasks_created
    # Every answer the client's retries get is lost (RunAPI did create the task the first time).
    sim.inject(Fault("lose_response", method="POST", path_contains="/gpt_image_2/", times=3))
    async with (
        open_app(make_settings(sim, home, inputs), policy=FAST_POLICY) as app,
        Client(app.server, mode="legacy") as client,
    ):
        result = await client.call_tool("generate_image", {"prompt": "answer lost", "timeout_s": 0})
        assert not result.is_error, text_of(result)
        data = result.structured_content or {}
        assert data["status"] == "submitting" and data["runapi_task_id"] is None, data
        assert "not confirmed" in text_of(result)
        with anyio.fail_after(20):
            done = await client.call_tool("get_task", {"task_id": data["task_id"], "wait": True})
    finished = done.structured_content or {}
    assert finished["status"] == "completed" and finished["runapi_task_id"], finished
    assert sim.tasks_created - before == 1


async def test_a_restart_resumes_a_submitting_task_and_removes_old_partials(
    sim: Simulator, home: Path, inputs: Path
) -> None:
    before = sim.tasks_created
    settings = make_settings(sim, home, inputs)
    sim.inject(Fault("lose_response", method="POST", path_contains="/gpt_image_2/", times=3))
    async with open_app(settings, policy=FAST_POLICY) as app, Client(app.server, mode="legacy") as client:
        result = await client.call_tool("generate_image", {"prompt": "resumed", "wait": False})
        task_id = (result.structured_content or {})["task_id"]
        # The app closes at once: its background re-send of the create may or may not have gone out.
    images = settings.images_dir
    images.mkdir(parents=True, exist_ok=True)
    stale = [images / "old-0.download", images / ".old-0.png.0123.part", images / ".x.json.99.tmp"]
    for path in stale:
        path.write_bytes(b"half")
        old = time.time() - 3600
        os.utime(path, (old, old))
    fresh = images / "live-0.download"
    fresh.write_bytes(b"still coming")
    async with open_app(settings, policy=FAST_POLICY) as app:
        with anyio.fail_after(20), current_owner.scope(LOCAL_OWNER):  # the client's task, past the MCP layer
            final = await app.manager.wait(task_id, 15)
    assert final.status == "completed" and final.images and final.images[0].path, final
    assert sim.tasks_created - before == 1
    assert not any(path.exists() for path in stale) and fresh.exists()
