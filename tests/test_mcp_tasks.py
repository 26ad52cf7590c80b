"""MCP Tasks (spec 2025-11-25) against the simulator: task-augmented image tool calls, tasks/*, status
notifications, and nothing of it for clients on any other protocol version.

The server runs in-process; the client side is the SDK's JSON-RPC dispatcher over the in-memory
transport, spoken raw: the SDK client validates a ``tools/call`` answer as ``CallToolResult`` (so a
``CreateTaskResult`` cannot pass it) and drops ``notifications/tasks/status``, and raw requests also
let a client pin any handshake version. The SDK client itself checks that it reads what is advertised.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client
from mcp.client._memory import InMemoryTransport
from mcp.server.mcpserver import MCPServer
from mcp.shared.dispatcher import DispatchContext
from mcp.shared.exceptions import MCPError
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher
from mcp.shared.transport_context import TransportContext
from mcp.types import INVALID_PARAMS, METHOD_NOT_FOUND, GetTaskRequest, GetTaskRequestParams, GetTaskResult

from runapi_mcp.app import open_app
from runapi_mcp.server.mcp_tasks import (
    DEFAULT_TTL_MS,
    MAX_POLL_MS,
    MAX_TTL_MS,
    MIN_POLL_MS,
    MIN_TTL_MS,
    RELATED_TASK_META_KEY,
    TASK_TOOLS,
    TaskCore,
    clamp_ttl,
    mcp_status,
)
from runapi_mcp.server.results import CANCELLED_NOTE
from runapi_mcp.simulator import Simulator
from runapi_mcp.tasks import LOCAL_OWNER, TaskRecord, current_owner
from tests.support import FAST_POLICY, FakeClock, Harness, make_settings, price_quotes, until, upstream_creates

pytestmark = pytest.mark.anyio

WAIT_S = 10.0
TASKS = "2025-11-25"


@dataclass
class RawClient:
    """A client connection spoken in raw JSON-RPC: requests answer dicts, errors raise MCPError."""

    dispatcher: JSONRPCDispatcher[Any]
    init: dict[str, Any]
    notes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def request(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return await self.dispatcher.send_raw_request(method, params, {"timeout": WAIT_S})

    async def call_as_task(self, name: str, arguments: dict[str, Any], **task: Any) -> dict[str, Any]:
        return await self.request(
            "tools/call", {"name": name, "arguments": arguments, "task": task, "_meta": {"progressToken": "p1"}}
        )

    def notifications(self, method: str) -> list[dict[str, Any]]:
        return [params for name, params in self.notes if name == method]

    async def wait_for_note(self, method: str, predicate: Any) -> dict[str, Any]:
        await until(lambda: [n for n in self.notifications(method) if predicate(n)], f"a {method}", WAIT_S)
        return [n for n in self.notifications(method) if predicate(n)][-1]


@asynccontextmanager
async def raw_client(server: MCPServer[Any], version: str = TASKS) -> AsyncIterator[RawClient]:
    async def on_request(_dctx: DispatchContext[TransportContext], method: str, _params: Any) -> dict[str, Any]:
        raise MCPError(code=METHOD_NOT_FOUND, message=f"this test client serves no {method}")

    notes: list[tuple[str, dict[str, Any]]] = []

    async def on_notify(_dctx: DispatchContext[TransportContext], method: str, params: Any) -> None:
        notes.append((method, dict(params or {})))

    async with InMemoryTransport(server) as (read, write):
        dispatcher: JSONRPCDispatcher[Any] = JSONRPCDispatcher(read, write)
        async with anyio.create_task_group() as tg:
            await tg.start(dispatcher.run, on_request, on_notify)
            init = await dispatcher.send_raw_request(
                "initialize",
                {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
                {"timeout": WAIT_S},
            )
            await dispatcher.notify("notifications/initialized", None)
            yield RawClient(dispatcher, init, notes)
            tg.cancel_scope.cancel()


async def error_of(request: Any) -> MCPError:
    with pytest.raises(MCPError) as caught:
        await request
    return caught.value


def polls_of(sim: Simulator, upstream_id: str) -> int:
    return sum(1 for r in sim.requests if r.method == "GET" and r.path.endswith(upstream_id))


# -- what each protocol version is told ------------------------------------------------------------
@pytest.mark.parametrize("version", [TASKS, "2025-06-18", "2024-11-05"])
async def test_tasks_are_offered_only_to_2025_11_25_clients(harness: Harness, version: str) -> None:
    async with raw_client(harness.app.server, version) as client:
        capabilities = client.init["capabilities"]
        tools = (await client.request("tools/list"))["tools"]
        plain = await client.request(
            "tools/call", {"name": "generate_image", "arguments": {"prompt": "asked as a task"}, "task": {}}
        )
        if version == TASKS:
            assert capabilities["tasks"] == {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
            support = {t["name"]: t.get("execution", {}).get("taskSupport") for t in tools}
            assert support == {t["name"]: ("optional" if t["name"] in TASK_TOOLS else None) for t in tools}
            assert set(plain) == {"task"}  # a task was made
            return
        # Older versions see exactly what they saw before: no field of the feature, the task ignored.
        assert "tasks" not in capabilities and all("execution" not in t for t in tools)
        assert not plain.get("isError") and "task" not in plain and " completed in " in plain["content"][0]["text"]
        for method in ("tasks/get", "tasks/result", "tasks/cancel"):
            assert (await error_of(client.request(method, {"taskId": "x"}))).error.code == METHOD_NOT_FOUND
        assert (await error_of(client.request("tasks/list"))).error.code == METHOD_NOT_FOUND


async def test_the_sdk_client_reads_the_offer_and_2026_clients_get_none(harness: Harness) -> None:
    assert harness.client.protocol_version == TASKS
    tasks = harness.client.server_capabilities.tasks
    assert tasks is not None and tasks.requests is not None and tasks.requests.tools is not None
    listed = {
        t.name: t.execution.task_support if t.execution else None for t in (await harness.client.list_tools()).tools
    }
    assert listed == {name: ("optional" if name in TASK_TOOLS else None) for name in listed}
    async with Client(harness.app.server, mode="2026-07-28") as modern:
        discovered = await modern.session.send_discover("2026-07-28")
        assert "tasks" not in discovered["capabilities"]
        assert "io.modelcontextprotocol/tasks" not in discovered["capabilities"].get("extensions", {})
        assert all(t.execution is None for t in (await modern.list_tools()).tools)
        request = GetTaskRequest(params=GetTaskRequestParams(task_id="x"))
        failed = await error_of(modern.session.send_request(request, GetTaskResult))
        assert failed.error.code == METHOD_NOT_FOUND


# -- a task from creation to result ----------------------------------------------------------------
async def test_a_task_augmented_generate_image_runs_as_an_mcp_task(harness: Harness) -> None:
    async with raw_client(harness.app.server) as client:
        started = time.monotonic()
        created = (await client.call_as_task("generate_image", {"prompt": "a lighthouse"}, ttl=120_000))["task"]
        assert time.monotonic() - started < 2.0  # answered once created, not when the image is done
        task_id = created["taskId"]
        assert task_id.startswith("task-") and created["status"] == "working" and created["ttl"] == 120_000
        assert MIN_POLL_MS <= created["pollInterval"] <= MAX_POLL_MS
        assert created["createdAt"].endswith("Z") and created["lastUpdatedAt"]

        first = await client.request("tasks/get", {"taskId": task_id})
        assert first["status"] in ("working", "completed") and first["ttl"] == 120_000
        result = await client.request("tasks/result", {"taskId": task_id})  # blocks until the task ends
        done = await client.request("tasks/get", {"taskId": task_id})
        assert done["status"] == "completed" and "pollInterval" not in done
        assert "1 image;" in done["statusMessage"]

        # The same result the plain tool call returns, tied to the task.
        assert result["_meta"][RELATED_TASK_META_KEY] == {"taskId": task_id}
        assert not result.get("isError") and "resultType" not in result
        assert [b["type"] for b in result["content"]] == ["text", "image", "resource_link"]
        assert result["content"][2]["uri"].startswith("runapi://images/")
        assert result["structuredContent"]["task_id"] == task_id
        assert result["structuredContent"]["status"] == "completed"

        # The task id is this server's: get_task and tasks/list know it by the same id.
        tool = await client.request("tools/call", {"name": "get_task", "arguments": {"task_id": task_id}})
        assert tool["structuredContent"]["status"] == "completed"
        listed = (await client.request("tasks/list"))["tasks"]
        assert [t["taskId"] for t in listed] == [task_id] and listed[0]["status"] == "completed"

        status = await client.wait_for_note("notifications/tasks/status", lambda n: n["status"] == "completed")
        assert status["taskId"] == task_id and "_meta" not in status
        progress = [n for n in client.notifications("notifications/progress") if n["progressToken"] == "p1"]
        values = [n["progress"] for n in progress]
        assert values and values[-1] == 100 and all(b > a for a, b in itertools.pairwise(values))
    assert len(upstream_creates(harness.sim)) == 1


async def test_a_plain_call_is_unchanged_for_a_tasks_client(harness: Harness) -> None:
    async with raw_client(harness.app.server) as client:
        result = await client.request("tools/call", {"name": "generate_image", "arguments": {"prompt": "plain"}})
    assert "task" not in result and result["structuredContent"]["status"] == "completed"
    assert [b["type"] for b in result["content"]] == ["text", "image", "resource_link"]
    assert not client.notifications("notifications/tasks/status")


# -- cancelling ------------------------------------------------------------------------------------
async def test_cancelling_a_running_task_stops_tracking_it_for_good(sim: Simulator, home: Path, inputs: Path) -> None:
    sim.set_task_outcome(None, "running")  # RunAPI never finishes it on its own
    # The server's clock: the test moves it, so "no poll after the cancel" is proved by moving time on, not
    # by waiting (wall time from now: a ttl counted from a past date would have ended).
    clock = FakeClock(wall=time.time())
    async with (
        open_app(make_settings(sim, home, inputs), policy=FAST_POLICY, clock=clock) as app,
        raw_client(app.server) as client,
    ):
        task_id = (await client.call_as_task("generate_image", {"prompt": "held"}))["task"]["taskId"]
        with current_owner.scope(LOCAL_OWNER):  # the client's task, read past the MCP layer
            upstream = (await app.manager.get(task_id)).upstream_id
        assert upstream is not None
        await clock.sleeping(1)  # the poll loop, at rest until its first look
        assert await clock.advance(clock.wakes()[0] - clock.monotonic()) == 1
        await until(lambda: polls_of(sim, upstream) == 1, "the first look")  # polling has begun
        await clock.sleeping(1)  # and at rest until the next

        blocked: list[dict[str, Any]] = []

        async def wait_for_result() -> None:
            blocked.append(await client.request("tasks/result", {"taskId": task_id}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_result)
            await clock.sleeping(2)  # tasks/result is in, waiting (its tick beside the poll loop's nap)...
            assert not blocked  # ...while the task runs
            cancelled = await client.request("tasks/cancel", {"taskId": task_id})
        assert cancelled["status"] == "cancelled" and cancelled["taskId"] == task_id
        assert blocked[0]["structuredContent"]["status"] == "cancelled"  # the waiting tasks/result ends with it
        assert CANCELLED_NOTE in cancelled["statusMessage"]
        await until(lambda: not clock.wakes(), "the poll loop to end")  # its nap ended by the cancel
        assert await clock.advance(3600) == 0 and polls_of(sim, upstream) == 1  # an hour on: no look

        sim.set_task_outcome(upstream, "completed")  # RunAPI finishes it after all: still cancelled here
        assert (await client.request("tasks/get", {"taskId": task_id}))["status"] == "cancelled"
        result = await client.request("tasks/result", {"taskId": task_id})  # ended: answers at once
        assert result["structuredContent"]["status"] == "cancelled" and "was cancelled" in result["content"][0]["text"]
        tool = await client.request("tools/call", {"name": "get_task", "arguments": {"task_id": task_id}})
        assert tool["structuredContent"]["status"] == "cancelled"
        await client.wait_for_note("notifications/tasks/status", lambda n: n["status"] == "cancelled")
        # None of these took it up again: no loop sleeps, however much time passes.
        assert clock.wakes() == [] and await clock.advance(3600) == 0 and polls_of(sim, upstream) == 1

        again = await error_of(client.request("tasks/cancel", {"taskId": task_id}))
        assert again.error.code == INVALID_PARAMS and "already cancelled" in again.error.message

    # A restarted server keeps it cancelled and does not take it up again.
    restart_clock = FakeClock(wall=time.time())
    async with (
        open_app(make_settings(sim, home, inputs), policy=FAST_POLICY, clock=restart_clock) as restarted,
        raw_client(restarted.server) as client,
    ):
        assert (await client.request("tasks/get", {"taskId": task_id}))["status"] == "cancelled"
        assert restart_clock.wakes() == [] and await restart_clock.advance(3600) == 0
    assert polls_of(sim, upstream) == 1


async def test_cancelling_an_ended_task_or_an_unknown_one_is_an_error(harness: Harness) -> None:
    async with raw_client(harness.app.server) as client:
        task_id = (await client.call_as_task("generate_image", {"prompt": "quick"}))["task"]["taskId"]
        await client.request("tasks/result", {"taskId": task_id})  # answers once the task has ended
        ended = await error_of(client.request("tasks/cancel", {"taskId": task_id}))
        assert ended.error.code == INVALID_PARAMS and "already completed" in ended.error.message
        assert (await client.request("tasks/get", {"taskId": task_id}))["status"] == "completed"

        for method in ("tasks/get", "tasks/result", "tasks/cancel"):
            unknown = await error_of(client.request(method, {"taskId": "task-nope"}))
            assert unknown.error.code == INVALID_PARAMS and "'task-nope'" in unknown.error.message
        missing = await error_of(client.request("tasks/get", {}))
        assert missing.error.code == INVALID_PARAMS and "taskId" in missing.error.message
        cursor = await error_of(client.request("tasks/list", {"cursor": "not-ours"}))
        assert cursor.error.code == INVALID_PARAMS and "'cursor'" in cursor.error.message


async def test_another_owners_task_is_not_found(harness: Harness) -> None:
    theirs = TaskRecord(
        idempotency_key="k", model="gpt-image-2", service="gpt_image_2", action="text_to_image",
        route="/api/v1/gpt_image_2/text_to_image", owner="someone-else", status="completed",
    )  # fmt: skip
    await harness.app.manager.store.save(theirs)
    async with raw_client(harness.app.server) as client:
        for method in ("tasks/get", "tasks/result", "tasks/cancel"):
            failed = await error_of(client.request(method, {"taskId": theirs.task_id}))
            assert failed.error.code == INVALID_PARAMS
        assert (await client.request("tasks/list"))["tasks"] == []


# -- refused before anything is created ------------------------------------------------------------
async def test_a_bad_task_augmented_call_gets_the_plain_error_and_spends_nothing(harness: Harness) -> None:
    async with raw_client(harness.app.server) as client:
        bad_value = await client.call_as_task("generate_image", {"prompt": "x", "aspect_ratio": "7:5"})
        bad_name = await client.call_as_task("generate_image", {"prompt": "x", "size": "big"})
        bad_factor = await client.call_as_task("upscale_image", {"image": _pixel(), "factor": 3})
        not_a_task = await error_of(client.call_as_task("list_models", {}))
        bad_ttl = await error_of(client.call_as_task("generate_image", {"prompt": "x"}, ttl="soon"))
        listed = (await client.request("tasks/list"))["tasks"]
    for result, field_name in ((bad_value, "'aspect_ratio'"), (bad_name, "'size'"), (bad_factor, "'factor'")):
        assert result["isError"] is True and "task" not in result
        assert field_name in result["content"][0]["text"]
    assert not_a_task.error.code == METHOD_NOT_FOUND and "list_models" in not_a_task.error.message
    assert bad_ttl.error.code == INVALID_PARAMS and "ttl" in bad_ttl.error.message
    assert listed == [] and upstream_creates(harness.sim) == [] and price_quotes(harness.sim) == []


# -- the mapping, without a session ------------------------------------------------------------------
async def test_the_core_maps_every_state_and_bounds_ttl_and_poll_interval(harness: Harness) -> None:
    core = TaskCore(harness.app.manager, harness.app.server.image_tools)
    base = TaskRecord(
        idempotency_key="k", model="gpt-image-2", service="gpt_image_2", action="text_to_image",
        route="/api/v1/gpt_image_2/text_to_image",
    )  # fmt: skip
    expected = {"submitting": "working", "pending": "working", "processing": "working",
                "completed": "completed", "failed": "failed", "cancelled": "cancelled"}  # fmt: skip
    for state, status in expected.items():
        record = base.model_copy(update={"status": state, "error": "why" if state == "failed" else None})
        view = core.view(record)
        assert mcp_status(record) == status == view.status
        assert view.ttl_ms == DEFAULT_TTL_MS and view.message
        assert (view.poll_interval_ms is None) == record.terminal
    assert core.view(base.model_copy(update={"status": "failed", "error": "why"})).message == "why"
    old = base.model_copy(update={"created_at": time.time() - 3600})
    assert MIN_POLL_MS <= core.poll_interval_ms(old) <= core.poll_interval_ms(base) <= MAX_POLL_MS
    assert clamp_ttl(None) == DEFAULT_TTL_MS and clamp_ttl(1) == MIN_TTL_MS and clamp_ttl(10**15) == MAX_TTL_MS
    core.remember_ttl(base.task_id, 90_000)
    assert core.view(base).ttl_ms == 90_000


def _pixel() -> str:
    """A tiny PNG as a data: URI (an image any edit or upscale accepts)."""
    return "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
