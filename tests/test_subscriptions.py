"""Live updates: 2025-era clients through resources/subscribe, 2026-era clients through subscriptions/listen.

The watched task is always made by another call (another session, ``wait: false``) and held running
by the simulator until the test lets it finish, so every status change happens while someone listens.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import anyio
import pytest
from mcp.client import Client
from mcp.client.session import IncomingMessage
from mcp.server.connection import Connection
from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.shared.dispatcher import CallOptions
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ResourcesListChanged, ResourceUpdated
from mcp.types import (
    EmptyResult,
    ResourceListChangedNotification,
    ResourceUpdatedNotification,
    SubscribeRequest,
    SubscribeRequestParams,
    TextResourceContents,
    UnsubscribeRequest,
    UnsubscribeRequestParams,
)

from runapi_mcp.app import App
from runapi_mcp.server import subscriptions
from runapi_mcp.server.subscriptions import LiveUpdates
from runapi_mcp.simulator import Fault, Simulator
from runapi_mcp.tasks import LOCAL_OWNER, TaskRecord, current_owner
from tests.support import Harness, RawStdioServer, server_env, text_of, wait_until

pytestmark = pytest.mark.anyio

WAIT_S = 10.0


class Inbox:
    """What one client was sent, in order; ``probe`` notes the task's stored status at each update."""

    def __init__(self, probe: Callable[[str], Awaitable[str]] | None = None) -> None:
        self.messages: list[IncomingMessage] = []
        self.statuses: list[str] = []
        self.probe = probe
        self._changed = anyio.Event()

    async def __call__(self, message: IncomingMessage) -> None:
        if isinstance(message, ResourceUpdatedNotification) and self.probe is not None:
            self.statuses.append(await self.probe(message.params.uri))
        self.messages.append(message)
        self._changed.set()
        self._changed = anyio.Event()

    def updated(self, uri: str) -> int:
        return sum(1 for m in self.messages if isinstance(m, ResourceUpdatedNotification) and m.params.uri == uri)

    def list_changed(self) -> int:
        return sum(1 for m in self.messages if isinstance(m, ResourceListChangedNotification))

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        with anyio.fail_after(WAIT_S):
            while True:
                changed = self._changed  # before the check: a message arriving after it still wakes us
                if condition():
                    return
                await changed.wait()


def stored_status(app: App) -> Callable[[str], Awaitable[str]]:
    async def probe(uri: str) -> str:
        record = await app.manager.store.get(uri.rsplit("/", 1)[-1])
        assert record is not None
        return record.status

    return probe


async def subscribe(client: Client, uri: str) -> None:
    request = SubscribeRequest(params=SubscribeRequestParams(uri=uri))
    await client.session.send_request(request, EmptyResult)


async def unsubscribe(client: Client, uri: str) -> None:
    request = UnsubscribeRequest(params=UnsubscribeRequestParams(uri=uri))
    await client.session.send_request(request, EmptyResult)


async def read_status(client: Client, uri: str) -> str:
    read = await client.read_resource(uri, cache_mode="bypass")
    contents = read.contents[0]
    assert isinstance(contents, TextResourceContents)
    return str(json.loads(contents.text)["status"])


async def until_stored(app: App, task_id: str, status: str) -> None:
    reached = anyio.Event()

    async def listener(record: TaskRecord) -> None:
        if record.task_id == task_id and record.status == status:
            reached.set()

    app.manager.add_listener(listener)  # before the look: a change in between is not missed
    record = await app.manager.store.get(task_id)
    if record is None or record.status != status:
        with anyio.fail_after(WAIT_S):
            await reached.wait()


async def held_task(harness: Harness, prompt: str) -> tuple[str, str]:
    """A task made by the harness's own session with ``wait: false``, held running upstream."""
    harness.sim.set_task_outcome(None, "running")
    made = await harness.call("generate_image", {"prompt": prompt, "wait": False})
    data = made.structured_content
    assert not made.is_error and data is not None, text_of(made)
    return str(data["task_id"]), str(data["runapi_task_id"])


async def test_both_eras_are_told_they_can_subscribe_and_hear_of_new_resources(harness: Harness) -> None:
    legacy = harness.client.server_capabilities.resources
    assert legacy is not None and legacy.subscribe is True and legacy.list_changed is True
    async with Client(harness.app.server, mode="auto") as modern:  # asks server/discover
        assert modern.protocol_version == "2026-07-28"
        resources = modern.server_capabilities.resources
        assert resources is not None and resources.subscribe is True and resources.list_changed is True


async def test_both_eras_hear_each_change_of_a_task_another_session_made(harness: Harness) -> None:
    app = harness.app
    inbox = Inbox(stored_status(app))
    async with (
        Client(app.server, mode="legacy", message_handler=inbox) as watcher,
        Client(app.server, mode="2026-07-28") as modern,
    ):
        # The first status poll is answered late, so the task is still pending when the watcher subscribes.
        harness.sim.inject(Fault("slow", delay=0.5, method="GET", path_contains="/api/v1/gpt_image_2"))
        task_id, upstream = await held_task(harness, "watched by two eras")
        uri = f"runapi://tasks/{task_id}"
        await inbox.wait_for(lambda: inbox.list_changed() == 1)  # the new task, to a session that made none
        await subscribe(watcher, uri)
        assert await read_status(watcher, uri) == "pending"
        async with modern.listen(resource_subscriptions=[uri], resources_list_changed=True) as listen:
            await inbox.wait_for(lambda: "processing" in inbox.statuses)
            harness.sim.set_task_outcome(upstream, "completed")

            modern_statuses: list[str] = []
            modern_listed = False
            with anyio.fail_after(WAIT_S):
                async for event in listen:
                    if isinstance(event, ResourceUpdated) and event.uri == uri:
                        modern_statuses.append(await read_status(modern, uri))
                    modern_listed = modern_listed or isinstance(event, ResourcesListChanged)
                    if modern_statuses[-1:] == ["completed"] and modern_listed:
                        break
        # The completed task's image was announced after its update: both have arrived.
        await inbox.wait_for(lambda: inbox.list_changed() == 2)
    # One update at least for each status change after the subscription (progress notes may add more).
    record = await app.manager.store.get(task_id)
    assert record is not None and [h.status for h in record.history] == [
        "submitting",
        "pending",
        "processing",
        "completed",
    ]
    assert inbox.statuses[0] == "processing" and inbox.statuses[-1] == "completed"
    assert inbox.updated(uri) == len(inbox.statuses)
    assert "completed" in modern_statuses


async def test_after_unsubscribe_nothing_more_and_a_client_gone_is_forgotten(harness: Harness) -> None:
    app = harness.app
    inbox = Inbox()
    async with Client(app.server, mode="legacy", message_handler=inbox) as watcher:
        task_id, upstream = await held_task(harness, "watched, then not")
        uri = f"runapi://tasks/{task_id}"
        await subscribe(watcher, uri)
        known = app.server.live.client_count
        async with Client(app.server, mode="legacy") as leaver:
            await subscribe(leaver, uri)
            assert app.server.live.client_count == known + 1
        assert app.server.live.client_count == known  # its connection closed: dropped with it

        await until_stored(app, task_id, "processing")
        await unsubscribe(watcher, uri)
        before, listed = inbox.updated(uri), inbox.list_changed()
        harness.sim.set_task_outcome(upstream, "completed")
        # list_changed for the image comes after any update of the same change: none came.
        await inbox.wait_for(lambda: inbox.list_changed() == listed + 1)
        assert inbox.updated(uri) == before
        assert await read_status(watcher, uri) == "completed"


async def test_the_index_and_a_task_by_runapis_id_are_updated_too(harness: Harness) -> None:
    inbox = Inbox()
    async with Client(harness.app.server, mode="legacy", message_handler=inbox) as watcher:
        await subscribe(watcher, "runapi://tasks")
        task_id, upstream = await held_task(harness, "for the index")
        by_runapi_id = f"runapi://tasks/{upstream}"
        await subscribe(watcher, by_runapi_id)
        listed = inbox.list_changed()
        harness.sim.set_task_outcome(upstream, "completed")
        await inbox.wait_for(lambda: inbox.list_changed() == listed + 1)  # the image, after the updates
        assert inbox.updated(by_runapi_id) >= 1 and inbox.updated("runapi://tasks") >= 2
        assert inbox.updated(f"runapi://tasks/{task_id}") == 0  # not subscribed under the server's id
        assert await read_status(watcher, by_runapi_id) == "completed"


@pytest.mark.parametrize("uri", ["runapi://tasks/task-nope", "runapi://images/nope-0", "https://example.com/x"])
async def test_subscribing_to_what_is_not_there_is_refused(harness: Harness, uri: str) -> None:
    with pytest.raises(MCPError) as refused:
        await subscribe(harness.client, uri)
    assert "'uri'" in refused.value.error.message and uri in refused.value.error.message


class _Outbound:
    """A client's channel as the connection sees it: taking, failing, or never returning."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.sent: list[str] = []

    async def notify(self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None) -> None:
        if self.behaviour == "fails":
            raise RuntimeError("the client is gone")
        if self.behaviour == "stuck":
            await anyio.sleep_forever()
        self.sent.append(method)

    async def send_raw_request(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> dict[str, Any]:
        raise AssertionError("no requests expected")


async def test_a_failing_or_stuck_client_costs_only_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subscriptions, "SEND_DEADLINE_S", 0.2)

    async def exists(uri: str) -> bool:
        return True

    live = LiveUpdates(InMemorySubscriptionBus(), exists)
    channels = {name: _Outbound(name) for name in ("fails", "stuck", "takes")}
    connections = []
    for channel in channels.values():
        connection = Connection(channel, protocol_version="2025-06-18")
        connection.initialized.set()
        connections.append(connection)
        ctx = cast(Any, SimpleNamespace(session=SimpleNamespace(_connection=connection), protocol_version="2025-06-18"))
        with current_owner.scope(LOCAL_OWNER):  # what the MCP layer's owner middleware sets for a request
            await live.subscribe(ctx, SubscribeRequestParams(uri="runapi://tasks/t1"))
    record = TaskRecord(task_id="t1", idempotency_key="k", model="m", service="s", action="a", route="/r")
    started = time.monotonic()
    await live.task_changed(record)
    assert time.monotonic() - started < 1.0
    assert channels["takes"].sent == ["notifications/resources/updated", "notifications/resources/list_changed"]
    assert live.client_count == 3
    for connection in connections:
        await connection.exit_stack.aclose()
    assert live.client_count == 0


def test_a_raw_2025_06_18_client_over_stdio(sim: Simulator, home: Path, inputs: Path) -> None:
    """The wire itself: initialize at 2025-06-18, subscribe, and the notifications as a client reads them.

    The subprocess polls on the real schedule (a first look after 1.5 s), so the task is subscribed to
    long before the server sees it change; the simulator finishes it meanwhile (pending -> completed)."""
    with RawStdioServer(server_env(sim, home, inputs)) as server:
        init = server.initialize("2025-06-18")["result"]
        assert init["capabilities"]["resources"] == {"subscribe": True, "listChanged": True}
        call = server.request("tools/call", {"name": "generate_image", "arguments": {"prompt": "raw", "wait": False}})
        data = call["result"]["structuredContent"]
        uri = f"runapi://tasks/{data['task_id']}"

        def updates() -> list[int]:
            return [
                n
                for n, m in enumerate(server.messages)
                if m.get("method") == "notifications/resources/updated" and m["params"]["uri"] == uri
            ]

        def listed() -> list[int]:
            return [
                n for n, m in enumerate(server.messages) if m.get("method") == "notifications/resources/list_changed"
            ]

        def until(condition: Callable[[], bool]) -> None:
            def read_then_check() -> bool:
                server.request("ping")  # notifications are read while a request waits for its answer
                return condition()

            wait_until(read_then_check, "the notifications", WAIT_S, every=0.02)

        assert data["status"] == "pending" and len(listed()) == 1  # the new task, announced before the answer
        assert server.request("resources/subscribe", {"uri": uri})["result"] == {}
        assert updates() == []
        until(lambda: len(listed()) == 2)  # the completed task's image, after the completion's update
        assert updates() and max(updates()) < listed()[1]
        read = server.request("resources/read", {"uri": uri})["result"]
        assert json.loads(read["contents"][0]["text"])["status"] == "completed"

        assert server.request("resources/unsubscribe", {"uri": uri})["result"] == {}
        refused = server.request("resources/subscribe", {"uri": "runapi://tasks/unknown"})
        assert refused["error"]["code"] == -32602 and "'uri'" in refused["error"]["message"]
        stderr = server.close()
    assert "Traceback" not in stderr
