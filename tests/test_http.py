"""The server over real HTTP on loopback: streamable HTTP and SSE, auth, Host/Origin checks, files.

One process serves both transports (``--transport http``); every test that speaks MCP runs on each.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp.client import Client
from mcp.client.session import IncomingMessage
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import ResourceUpdatedNotification

from runapi_mcp.app import App, open_app
from runapi_mcp.config import ConfigError
from runapi_mcp.http.app import HttpOptions
from runapi_mcp.http.serve import RunningServer, check_exposure, http_server
from runapi_mcp.simulator import Fault, Simulator
from tests.support import (
    FAST_POLICY,
    SIM_KEY,
    free_port,
    healthy,
    make_settings,
    server_env,
    text_of,
    until,
    upstream_creates,
    wait_until,
)

pytestmark = pytest.mark.anyio

TOKEN = "test-shared-token-0123456789abcdef"
TRANSPORTS = ["streamable-http", "sse"]


@asynccontextmanager
async def serving(
    sim: Simulator, home: Path, inputs: Path, **overrides: Any
) -> AsyncIterator[tuple[App, RunningServer, str]]:
    settings = make_settings(sim, home, inputs, **overrides)
    async with (
        open_app(settings, policy=FAST_POLICY) as app,
        http_server(app, HttpOptions(port=0, public_url=settings.public_url), settings) as running,
    ):
        yield app, running, f"http://127.0.0.1:{running.port}"


def connect(base: str, transport: str, token: str | None = TOKEN, *, terminate: bool = True, **kw: Any) -> Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    stream: AbstractAsyncContextManager[Any]
    if transport == "sse":
        stream = sse_client(f"{base}/sse", headers=headers)
    else:
        http = httpx2.AsyncClient(headers=headers, timeout=30)
        stream = streamable_http_client(f"{base}/mcp", http_client=http, terminate_on_close=terminate)
    return Client(stream, mode="legacy", **kw)


@pytest.fixture
async def served(sim: Simulator, home: Path, inputs: Path) -> AsyncIterator[tuple[App, RunningServer, str]]:
    async with serving(sim, home, inputs, auth_token=TOKEN) as value:
        yield value


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_tool_call_with_progress_over_each_transport(
    served: tuple[App, RunningServer, str], transport: str
) -> None:
    _, _, base = served
    seen: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, message))

    async with connect(base, transport) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert {"generate_image", "edit_image", "get_task", "list_tasks"} <= tools
        result = await client.call_tool("generate_image", {"prompt": "a red kite"}, progress_callback=on_progress)
    assert not result.is_error, text_of(result)
    data = result.structured_content
    assert data is not None and data["status"] == "completed" and data["images"][0]["path"]
    values = [value for value, _ in seen]
    assert values and values == sorted(values) and len(set(values)) == len(values)
    assert data["task_id"] in (seen[0][1] or "")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resource_updates_reach_the_subscriber_and_only_it(
    served: tuple[App, RunningServer, str], sim: Simulator, transport: str
) -> None:
    _, _, base = served
    sim.inject(Fault("slow", delay=0.3, method="GET", path_contains="/api/v1/gpt_image_2"))
    watcher_inbox: list[IncomingMessage] = []
    maker_inbox: list[IncomingMessage] = []

    async def watcher_messages(message: IncomingMessage) -> None:
        watcher_inbox.append(message)

    async def maker_messages(message: IncomingMessage) -> None:
        maker_inbox.append(message)

    async with (
        connect(base, transport, message_handler=watcher_messages) as watcher,
        connect(base, transport, message_handler=maker_messages) as maker,
    ):
        started = await maker.call_tool("generate_image", {"prompt": "a lighthouse", "wait": False})
        task_id = (started.structured_content or {})["task_id"]
        await watcher.subscribe_resource(f"runapi://tasks/{task_id}")
        done = await maker.call_tool("get_task", {"task_id": task_id, "wait": True})
        assert (done.structured_content or {})["status"] == "completed"
        await until(lambda: any(_updated(m, task_id) for m in watcher_inbox), "the watcher's update")
    assert not any(_updated(m, task_id) for m in maker_inbox)  # it did not subscribe


def _updated(message: IncomingMessage, task_id: str) -> bool:
    return isinstance(message, ResourceUpdatedNotification) and str(message.params.uri).endswith(task_id)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_no_token_or_a_wrong_one_is_refused(served: tuple[App, RunningServer, str], transport: str) -> None:
    _, _, base = served
    path = "/mcp" if transport == "streamable-http" else "/sse"
    async with httpx.AsyncClient(base_url=base) as http:
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {TOKEN}"}):
            if transport == "sse":
                answer = await http.get(path, headers=headers)
            else:
                answer = await http.post(path, headers={**headers, "Content-Type": "application/json"}, json={})
            assert answer.status_code == 401, (headers, answer.status_code)
            assert "WWW-Authenticate" in answer.headers
        refused = await http.post("/messages/?session_id=" + "0" * 32, json={})
        assert refused.status_code == 401
    with pytest.raises(Exception):  # noqa: B017 - the client surfaces the 401 as its own error type
        async with connect(base, transport, token="wrong-token") as client:
            await client.list_tools()


async def test_health_needs_no_auth_and_shows_nothing_private(served: tuple[App, RunningServer, str]) -> None:
    _, _, base = served
    async with httpx.AsyncClient(base_url=base) as http:
        answer = await http.get("/health")
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "ok"
    assert set(body) <= {"status", "version"}
    assert SIM_KEY not in answer.text and TOKEN not in answer.text


@pytest.mark.parametrize("path", ["/health", "/mcp", "/sse", "/files/x"])
async def test_a_bad_host_or_origin_is_refused(served: tuple[App, RunningServer, str], path: str) -> None:
    _, _, base = served
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=base) as http:
        bad_host = await http.get(path, headers={**auth, "Host": "evil.example"})
        assert bad_host.status_code == 421
        bad_origin = await http.get(path, headers={**auth, "Origin": "http://evil.example"})
        assert bad_origin.status_code == 403
        rebound = await http.get(path, headers={**auth, "Host": "evil.example:80", "Origin": "http://evil.example"})
        assert rebound.status_code in (403, 421)


async def test_the_full_image_is_served_to_its_owner_behind_auth(served: tuple[App, RunningServer, str]) -> None:
    # A 4K picture: the inline preview stays under the 1 MiB SSE event the Python client accepts.
    _, _, base = served
    async with connect(base, "streamable-http") as client:
        result = await client.call_tool("generate_image", {"prompt": "a blue boat", "output_resolution": "4k"})
    image = (result.structured_content or {})["images"][0]
    image_id = image["uri"].removeprefix("runapi://images/")
    link = image["download_url"]
    assert link.startswith(f"{base}/files/{image_id}?exp=") and "&sig=" in link
    assert link in text_of(result)
    async with httpx.AsyncClient(base_url=base) as http:
        assert (await http.get(f"/files/{image_id}")).status_code == 401
        # The signed link opens the picture without the token (a browser tab, the Apps view's "open")...
        opened = await http.get(link)
        assert opened.status_code == 200 and opened.content == Path(image["path"]).read_bytes()
        # ...and nothing else: a changed signature, expiry or image id falls back to asking for the token.
        forged = [
            link[:-4] + ("AAAA" if not link.endswith("AAAA") else "BBBB"),
            link.replace("?exp=", "?exp=9"),
            link.replace(f"/files/{image_id}?", "/files/no-such-image?"),
        ]
        for url in forged:
            assert (await http.get(url)).status_code == 401, url
        answer = await http.get(f"/files/{image_id}", headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 200
        assert answer.headers["content-type"] == image["mime_type"]
        assert answer.content == Path(image["path"]).read_bytes()
        assert answer.headers["x-content-type-options"] == "nosniff"
        missing = await http.get("/files/no-such-image", headers={"Authorization": f"Bearer {TOKEN}"})
        assert missing.status_code == 404
        traversal = await http.get("/files/..%2F..%2Fetc%2Fpasswd", headers={"Authorization": f"Bearer {TOKEN}"})
        assert traversal.status_code == 404


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::"])
def test_serving_off_loopback_without_auth_is_refused(sim: Simulator, home: Path, inputs: Path, host: str) -> None:
    settings = make_settings(sim, home, inputs)
    with pytest.raises(ConfigError, match="RUNAPI_MCP_AUTH_TOKEN"):
        check_exposure(settings, HttpOptions(host=host))
    check_exposure(make_settings(sim, home, inputs, auth_token=TOKEN), HttpOptions(host=host))
    check_exposure(settings, HttpOptions(host="127.0.0.1"))


async def test_loopback_without_auth_serves_without_a_token(sim: Simulator, home: Path, inputs: Path) -> None:
    async with serving(sim, home, inputs) as (_, _, base), connect(base, "streamable-http", token=None) as client:
        assert not (await client.call_tool("list_tasks", {})).is_error


class RawSession:
    """MCP over streamable HTTP on the wire, one request at a time (what a client does, byte for byte)."""

    def __init__(self, http: httpx.AsyncClient, version: str) -> None:
        self.http = http
        self.version = version
        self.headers: dict[str, str] = {}
        self.next_id = 1

    async def start(self) -> None:
        hello = {"protocolVersion": self.version, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
        init = await self.http.post("/mcp", json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello})
        self.headers = {"mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": self.version}
        await self.http.post("/mcp", headers=self.headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        message = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
        async with self.http.stream("POST", "/mcp", headers=self.headers, json=message) as response:
            async for line in response.aiter_lines():
                if line.startswith("data:") and line[5:].strip():  # not a priming event (SEP-1699)
                    answer = json.loads(line[5:])
                    if answer.get("id") == self.next_id:
                        if "error" in answer:
                            raise AssertionError(f"{method}: {answer['error']}")
                        return dict(answer["result"])
        raise AssertionError(f"{method}: no answer")


async def raw_tool_call(base: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """One tools/call over streamable HTTP on the wire (a session of its own, no listening stream): the
    answer as the server sent it, even when the server shuts down right after."""
    version = "2025-06-18"
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
        hello = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
        init = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello})
        session = {"mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": version}
        await http.post("/mcp", headers=session, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        request = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
        async with http.stream("POST", "/mcp", headers=session, json=request) as response:
            async for line in response.aiter_lines():
                if line.startswith("data:") and line[5:].strip():  # not a priming event (SEP-1699)
                    message = json.loads(line[5:])
                    if message.get("id") == 2:
                        return dict(message["result"])
    raise AssertionError("the call got no answer")


async def test_sigterm_answers_waiting_calls_and_the_task_resumes_on_the_next_start(
    sim: Simulator, home: Path, inputs: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, **server_env(sim, home, inputs, RUNAPI_MCP_AUTH_TOKEN=TOKEN)}
    command = [sys.executable, "-m", "runapi_mcp", "serve", "--transport", "http", "--port", str(port)]
    # The task is held running upstream until the server is gone: only the restart can finish it.
    sim.set_task_outcome(None, "running")
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: healthy(base), "the server to start", 20)
        answers: list[dict[str, Any]] = []
        async with anyio.create_task_group() as tg:

            async def call() -> None:
                answers.append(await raw_tool_call(base, "generate_image", {"prompt": "a slow dawn"}))

            tg.start_soon(call)
            await until(lambda: upstream_creates(sim), "the create upstream")
            first.send_signal(signal.SIGTERM)
        result = answers[0]
        assert not result.get("isError"), result
        data = result["structuredContent"]
        assert data["status"] in ("pending", "processing", "submitting")
        task_id, upstream_id = data["task_id"], data["runapi_task_id"]
        assert first.wait(timeout=20) == 0
        assert first.stdout is not None and first.stdout.read() == b""  # nothing but logs, on stderr
    finally:
        if first.poll() is None:
            first.kill()
    sim.set_task_outcome(upstream_id, "completed")
    second = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: healthy(base), "the server to start again", 20)
        async with connect(base, "sse") as client:
            done = await client.call_tool("get_task", {"task_id": task_id, "wait": True})
        assert (done.structured_content or {})["status"] == "completed", text_of(done)
        assert len(upstream_creates(sim)) == 1
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=20)


async def test_the_mcp_tasks_flow_over_streamable_http(served: tuple[App, RunningServer, str], sim: Simulator) -> None:
    _, _, base = served
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
        session = RawSession(http, "2025-11-25")
        await session.start()
        listed = await session.request("tools/list", {})
        support = {t["name"]: t.get("execution", {}).get("taskSupport") for t in listed["tools"]}
        assert support["generate_image"] == "optional"
        sim.set_task_outcome(None, "running")
        created = await session.request(
            "tools/call", {"name": "generate_image", "arguments": {"prompt": "as a task"}, "task": {"ttl": 60000}}
        )
        task = created["task"]
        assert task["status"] == "working"
        assert (await session.request("tasks/get", {"taskId": task["taskId"]}))["status"] == "working"
        assert any(t["taskId"] == task["taskId"] for t in (await session.request("tasks/list", {}))["tasks"])
        record = await served[0].manager.store.get(task["taskId"])
        assert record is not None and record.upstream_id
        sim.set_task_outcome(record.upstream_id, "completed")
        result = await session.request("tasks/result", {"taskId": task["taskId"]})
        assert result["structuredContent"]["status"] == "completed"
        assert any(block["type"] == "image" for block in result["content"])
        assert (await session.request("tasks/get", {"taskId": task["taskId"]}))["status"] == "completed"


async def test_runapi_calls_back_through_the_served_app(sim: Simulator, home: Path, inputs: Path) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    public = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = make_settings(sim, home, inputs, auth_token=TOKEN, public_url=public)
    async with (
        open_app(settings, policy=FAST_POLICY) as app,
        http_server(app, HttpOptions(port=0, public_url=public), settings, sock=sock),
        connect(public, "streamable-http") as client,
    ):
        result = await client.call_tool("generate_image", {"prompt": "called back"})
        data = result.structured_content or {}
        assert data["status"] == "completed", text_of(result)
        called = [c for c in sim.callbacks if data["task_id"] in c.url]
        assert called and called[0].status == 204
        record = await app.manager.store.get(data["task_id"])
        assert record is not None and record.callback_token
        async with httpx.AsyncClient(base_url=public) as http:
            wrong = await http.post(f"/callbacks/runapi/{data['task_id']}?token=wrong", json={})
            unknown = await http.post(f"/callbacks/runapi/task-nope?token={record.callback_token}", json={})
            right = await http.post(f"/callbacks/runapi/{data['task_id']}?token={record.callback_token}", json={})
        assert wrong.status_code == unknown.status_code == 404 and wrong.json() == unknown.json()
        assert right.status_code == 204  # already completed: acknowledged, nothing to do
