"""Completion webhooks: every create carries a callback URL with a secret of its task; RunAPI's callback
completes the task at once with one status read; anything else is refused and changes nothing.

The manager runs as ``open_app`` wires it, with ``public_url`` set; the callback routes are served by a
real uvicorn server on 127.0.0.1, which the simulator (a real HTTP server too) calls when a task ends.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from mcp.client import Client
from starlette.applications import Starlette

from runapi_mcp.app import App, open_app
from runapi_mcp.clock import SYSTEM_CLOCK, Clock
from runapi_mcp.http.webhook import CALLBACK_PATH, MAX_CALLBACK_BODY, callback_routes
from runapi_mcp.simulator import Fault, Simulator
from runapi_mcp.tasks import LOCAL_OWNER, PollPolicy, PollSchedule, PollState, TaskRecord, current_owner
from tests.support import FAST_POLICY, TIME_SCALE, FakeClock, make_settings, text_of, until, upstream_creates

pytestmark = pytest.mark.anyio

# Fallback polls far later than any task here takes: every status read a test counts is a callback's.
SLOW_FALLBACK = replace(FAST_POLICY, callback_fallback_s=5.0)


@dataclass
class Webhooked:
    app: App
    client: Client
    public_url: str
    completed: dict[str, float]  # the server's task id -> monotonic time the manager had it completed

    async def generate(self, prompt: str, **extra: Any) -> dict[str, Any]:
        result = await self.client.call_tool("generate_image", {"prompt": prompt, "wait": False, **extra})
        assert not result.is_error, text_of(result)
        data: dict[str, Any] = result.structured_content or {}
        return data

    async def wait(self, task_id: str, timeout_s: float) -> TaskRecord:
        """The manager's wait for a task, as the local user (whose tasks the client made): the test reaches
        past the MCP layer, which would otherwise say whose request it is."""
        with current_owner.scope(LOCAL_OWNER):
            return await self.app.manager.wait(task_id, timeout_s)

    async def record(self, task_id: str) -> TaskRecord:
        record = await self.app.manager.store.get(task_id)
        assert record is not None
        return record

    def url(self, task_id: str, token: str | None) -> str:
        query = "" if token is None else f"?token={token}"
        return f"{self.public_url}{CALLBACK_PATH}/{task_id}{query}"


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@asynccontextmanager
async def webhooked(
    sim: Simulator,
    home: Path,
    inputs: Path,
    *,
    policy: PollPolicy = SLOW_FALLBACK,
    public: bool = True,
    clock: Clock = SYSTEM_CLOCK,
) -> AsyncIterator[Webhooked]:
    """The server with webhooks on (``public_url`` is the callback server's address) and an MCP client;
    ``clock`` is the server's."""
    sock = _bound_socket()  # bound first: the settings need its port before the manager exists
    public_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = make_settings(sim, home, inputs, public_url=public_url if public else None)
    completed: dict[str, float] = {}

    async def note(record: TaskRecord) -> None:
        if record.status == "completed":
            completed.setdefault(record.task_id, time.monotonic())

    try:
        async with open_app(settings, policy=policy, clock=clock) as app, Client(app.server, mode="legacy") as client:
            app.manager.add_listener(note)
            config = uvicorn.Config(
                Starlette(routes=callback_routes(app.manager)),
                log_config=None,
                log_level="info",
                access_log=True,  # its lines carry the query: the token must be hidden in them
                lifespan="off",
            )
            server = uvicorn.Server(config)
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(server.serve, sockets=[sock]))
                await until(lambda: server.started, "the callback receiver listening", every=0.005)
                try:
                    yield Webhooked(app, client, public_url, completed)
                finally:
                    server.should_exit = True
    finally:
        sock.close()


def status_reads(sim: Simulator, upstream_id: str) -> list[Any]:
    return [r for r in sim.requests if r.method == "GET" and r.path.startswith("/api/") and r.path.endswith(
        "/" + upstream_id)]


# -- the create ------------------------------------------------------------------------------------------


async def test_each_create_carries_a_callback_url_with_the_tasks_own_token(
    sim: Simulator, home: Path, inputs: Path
) -> None:
    sim.set_task_outcome(None, "running")
    sim.set_task_outcome(None, "running")
    async with webhooked(sim, home, inputs) as hooked:
        first, second = await hooked.generate("first"), await hooked.generate("second")
        records = [await hooked.record(first["task_id"]), await hooked.record(second["task_id"])]
        for data, record in zip((first, second), records, strict=True):
            token = record.callback_token
            assert token is not None and len(token) >= 40  # token_urlsafe(32): 256 bits
            body = sim.task_request(data["runapi_task_id"])
            assert body["callback_url"] == hooked.url(record.task_id, token)
            # The request kept (and written to the library's sidecars) is the caller's: no token in it.
            assert "callback_url" not in record.request
        assert records[0].callback_token != records[1].callback_token
        for data in (first, second):
            sim.set_task_outcome(data["runapi_task_id"], "completed")
        with anyio.fail_after(10):
            for data in (first, second):
                await hooked.wait(data["task_id"], 10)


async def test_a_caller_s_own_callback_url_is_kept_and_the_task_polled_as_usual(
    sim: Simulator, home: Path, inputs: Path
) -> None:
    async with webhooked(sim, home, inputs) as hooked:
        data = await hooked.generate("theirs", params={"callback_url": "https://hooks.example/theirs"})
        record = await hooked.record(data["task_id"])
        assert record.callback_token is None
        assert sim.task_request(data["runapi_task_id"])["callback_url"] == "https://hooks.example/theirs"
        with anyio.fail_after(10):
            done = await hooked.wait(data["task_id"], 10)
    assert done.status == "completed"  # found by the usual polls (the fallback would take 5 s)
    assert sim.callbacks == []  # the simulator calls loopback URLs only


async def test_a_create_re_sent_after_a_lost_answer_is_the_same_body(sim: Simulator, home: Path, inputs: Path) -> None:
    before = sim.tasks_created
    sim.inject(Fault("lose_response", method="POST", path_contains="/gpt_image_2/", times=3))
    async with webhooked(sim, home, inputs) as hooked:
        data = await hooked.generate("answer lost", timeout_s=0)
        with anyio.fail_after(20):
            done = await hooked.wait(data["task_id"], 15)
    assert done.status == "completed", done
    creates = [r for r in upstream_creates(sim) if r.path.startswith("/api/v1/gpt_image_2/")]
    assert len(creates) >= 4 and all(r.json == creates[0].json for r in creates)
    assert "token=" in creates[0].json["callback_url"]
    assert sim.tasks_created - before == 1  # a different body would have been a 409, never a task


# -- callbacks ------------------------------------------------------------------------------------------


async def test_a_valid_callback_completes_the_task_at_once_with_one_status_read(
    sim: Simulator, home: Path, inputs: Path
) -> None:
    async with webhooked(sim, home, inputs) as hooked:
        data = await hooked.generate("called back")
        with anyio.fail_after(10):
            done = await hooked.wait(data["task_id"], 10)
        upstream = data["runapi_task_id"]
        assert done.status == "completed" and done.images and done.images[0].path, done
        assert Path(done.images[0].path).is_file()
        # One create and one status read: the callback's (the fallback look would come 5 s later).
        assert len(status_reads(sim, upstream)) == 1
        assert len([r for r in upstream_creates(sim) if r.path.startswith("/api/v1/gpt_image_2/")]) == 1
        [callback] = sim.callbacks
        assert callback.status == 204 and callback.task_status == "completed"
        finished = sim.completed_at(upstream)
        assert finished is not None
        # Completed (status read, image downloaded and saved) promptly after RunAPI finished.
        await until(lambda: data["task_id"] in hooked.completed, "the listener heard of it")
        assert hooked.completed[data["task_id"]] - finished < 0.5


async def test_a_failed_task_is_reported_by_its_callback(sim: Simulator, home: Path, inputs: Path) -> None:
    sim.inject(Fault("fail_task", reason="content policy violation"))
    async with webhooked(sim, home, inputs) as hooked:
        data = await hooked.generate("refused upstream")
        with anyio.fail_after(10):
            done = await hooked.wait(data["task_id"], 10)
    assert done.status == "failed" and "content policy" in (done.error or "")
    assert len(status_reads(sim, data["runapi_task_id"])) == 1
    assert [c.task_status for c in sim.callbacks] == ["failed"]


async def test_wrong_tokens_and_unknown_tasks_are_404_and_change_nothing(
    sim: Simulator, home: Path, inputs: Path
) -> None:
    sim.set_task_outcome(None, "running")  # held: the simulator does not call back meanwhile
    clock = FakeClock()  # the server's: its poll loop sleeps on it until the fallback look
    async with webhooked(sim, home, inputs, clock=clock) as hooked, httpx.AsyncClient() as http:
        data = await hooked.generate("held")
        task_id, upstream = data["task_id"], data["runapi_task_id"]
        await clock.sleeping(1)
        asleep_until = clock.wakes()  # the fallback look: the only thing due
        before = await hooked.record(task_id)
        token = before.callback_token
        assert token is not None
        probes = [
            hooked.url(task_id, ("y" if token[0] == "x" else "x") + token[1:]),  # one character off (1 in 64 began with x)
            hooked.url(task_id, token[:-1]),
            hooked.url(task_id, ""),
            hooked.url(task_id, None),
            hooked.url(task_id, "y" * 5000),
            hooked.url("task-000000000000-000000000000", token),  # another (unknown) task
            hooked.url(upstream, token),  # RunAPI's id: the URL names the server's own
        ]
        answers = [await http.post(url, json={"id": upstream, "status": "completed"}) for url in probes]
        assert [a.status_code for a in answers] == [404] * len(probes)
        assert len({a.content for a in answers}) == 1  # the same answer for every one: nothing to probe
        assert answers[0].json() == {"error": "not found"}
        wrong_method = await http.get(hooked.url(task_id, token))
        assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
        # None of them woke the poll loop (a wake ends its nap at once): it still sleeps until its fallback.
        assert clock.wakes() == asleep_until
        assert status_reads(sim, upstream) == []  # no upstream request for any of them
        after = await hooked.record(task_id)
        assert after == before  # not even updated_at moved
        # The real one still works: released, the simulator calls back and the task completes.
        sim.set_task_outcome(upstream, "completed")
        with anyio.fail_after(10):
            done = await hooked.wait(task_id, 10)
    assert done.status == "completed" and len(status_reads(sim, upstream)) == 1


async def test_a_lost_callback_is_caught_by_the_fallback_poll(sim: Simulator, home: Path, inputs: Path) -> None:
    sim.inject(Fault("drop_callback"))
    async with webhooked(sim, home, inputs, policy=FAST_POLICY) as hooked:
        data = await hooked.generate("callback lost")
        with anyio.fail_after(15):
            done = await hooked.wait(data["task_id"], 10)
    assert done.status == "completed" and done.images and done.images[0].path, done
    assert [c.error for c in sim.callbacks] == ["dropped"]
    reads = status_reads(sim, data["runapi_task_id"])
    # No early look: the first read is the fallback's, past the task's likely end and the fallback pace.
    assert 1 <= len(reads) <= 2
    # From when the create reached RunAPI (the simulator's clock), not from when the call returned: on a
    # loaded machine the call's answer may come late, and the look would seem early.
    [create] = [r for r in upstream_creates(sim) if r.path.startswith("/api/v1/gpt_image_2/")]
    assert reads[0].time - create.time >= FAST_POLICY.callback_fallback_s * 0.9


async def test_a_late_callback_still_completes_the_task_with_one_read(
    sim: Simulator, home: Path, inputs: Path
) -> None:
    sim.inject(Fault("slow_callback", delay=0.6))
    async with webhooked(sim, home, inputs) as hooked:
        data = await hooked.generate("called back late")
        with anyio.fail_after(10):
            done = await hooked.wait(data["task_id"], 10)
        await until(lambda: data["task_id"] in hooked.completed, "the listener heard of it")
    upstream = data["runapi_task_id"]
    finished = sim.completed_at(upstream)
    assert done.status == "completed" and finished is not None
    [callback] = sim.callbacks
    assert callback.status == 204 and callback.time - finished >= 0.6
    assert hooked.completed[data["task_id"]] >= callback.time  # it was the callback that did it
    assert len(status_reads(sim, upstream)) == 1


async def test_a_flood_of_valid_callbacks_costs_a_bounded_number_of_status_reads(
    sim: Simulator, home: Path, inputs: Path
) -> None:
    sim.set_task_outcome(None, "running")
    clock = FakeClock()  # the server's: the test moves it, so "no read meanwhile" is proved, not waited for
    async with webhooked(sim, home, inputs, clock=clock) as hooked, httpx.AsyncClient() as http:
        data = await hooked.generate("flooded")
        task_id, upstream = data["task_id"], data["runapi_task_id"]
        url = hooked.url(task_id, (await hooked.record(task_id)).callback_token)

        async def burst() -> None:
            async with anyio.create_task_group() as tg:
                for _ in range(40):
                    tg.start_soon(http.post, url)

        async def reads_reach(count: int) -> None:
            await until(lambda: len(status_reads(sim, upstream)) >= count, f"{count} status reads", 5)

        await burst()
        await reads_reach(1)
        # At rest: the poll loop until its fallback look, and the one wake kept for when the gap ends.
        await clock.sleeping(2)
        gap = SLOW_FALLBACK.callback_min_gap_s
        assert await clock.advance(gap - 0.01) == 0  # nothing due inside the one-second gap...
        assert len(status_reads(sim, upstream)) == 1  # ...so 40 valid callbacks made one read...
        # ...and one more when the gap ends (a callback inside it is kept, not dropped: it may be the
        # completion's own), however many came meanwhile.
        assert await clock.advance(0.02) == 1
        await reads_reach(2)
        await clock.sleeping(1)
        assert clock.wakes()[0] - clock.monotonic() >= SLOW_FALLBACK.callback_fallback_s * 0.99
        assert await clock.advance(3.5) == 0  # no callbacks, no reads (the fallback is 5 s away)
        assert len(status_reads(sim, upstream)) == 2
        assert (await hooked.record(task_id)).status in ("pending", "processing")  # the reads said: running
        sim.set_task_outcome(upstream, "completed")
        with anyio.fail_after(5):  # the completion's callback: the clock stands still, no fallback comes
            done = await hooked.wait(task_id, 3)
        assert done.status == "completed"
        # A finished task: acknowledged, and nothing is done: no loop is left to wake, whatever time passes.
        reads = len(status_reads(sim, upstream))
        assert (await http.post(url)).status_code == 204
        assert await clock.advance(60.0) == 0
        assert len(status_reads(sim, upstream)) == reads


async def test_a_large_body_is_not_read_past_the_cap(sim: Simulator, home: Path, inputs: Path) -> None:
    sim.set_task_outcome(None, "running")
    async with webhooked(sim, home, inputs) as hooked, httpx.AsyncClient() as http:
        data = await hooked.generate("large body")
        url = hooked.url(data["task_id"], (await hooked.record(data["task_id"])).callback_token)
        answer = await http.post(url, content=b"x" * (MAX_CALLBACK_BODY * 4))
        assert answer.status_code == 204
        sim.set_task_outcome(data["runapi_task_id"], "completed")
        with anyio.fail_after(10):
            assert (await hooked.wait(data["task_id"], 10)).status == "completed"


async def test_a_restart_without_webhooks_polls_a_task_created_with_them(
    sim: Simulator, home: Path, inputs: Path
) -> None:
    sim.set_task_outcome(None, "running")
    async with webhooked(sim, home, inputs) as hooked:
        data = await hooked.generate("outlives its callback server")
    sim.set_task_outcome(data["runapi_task_id"], "completed")  # its callback goes to a server that is gone
    async with webhooked(sim, home, inputs, public=False) as plain:
        started = time.monotonic()
        with anyio.fail_after(10):
            done = await plain.wait(data["task_id"], 10)
        took = time.monotonic() - started
    assert done.status == "completed"
    assert took < SLOW_FALLBACK.callback_fallback_s / 2  # the usual polls found it, not the fallback


# -- nothing leaks ----------------------------------------------------------------------------------------


async def test_the_token_appears_in_no_log_and_no_result(
    sim: Simulator, home: Path, inputs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with webhooked(sim, home, inputs) as hooked, httpx.AsyncClient() as http:
        result = await hooked.client.call_tool("generate_image", {"prompt": "keep the secret", "timeout_s": 20})
        data = result.structured_content or {}
        task_id = data["task_id"]
        token = (await hooked.record(task_id)).callback_token
        assert token is not None and data["status"] == "completed", text_of(result)
        await http.post(hooked.url(task_id, token))  # a late duplicate: logged by uvicorn's access log
        await http.post(hooked.url(task_id, token[::-1]))  # a wrong one: logged as refused
        got = await hooked.client.call_tool("get_task", {"task_id": task_id})
        listed = await hooked.client.call_tool("list_tasks", {})
        resource = await hooked.client.read_resource(f"runapi://tasks/{task_id}")
    shown = [
        text_of(result), json.dumps(result.structured_content), text_of(got), json.dumps(got.structured_content),
        text_of(listed), json.dumps(listed.structured_content), resource.model_dump_json(),
    ]
    for text in shown:
        assert token not in text and token[::-1] not in text
    for sidecar in (home / "images").glob("*.json"):
        assert token not in sidecar.read_text()
    # Everything this process logged, except what the callers logged: the simulator's thread (it stands
    # in for RunAPI) and this test's own HTTP client posting callbacks (the server never requests one).
    ours = [
        r for r in caplog.records
        if not (r.threadName or "").startswith("runapi-sim")
        and not (r.name.startswith(("httpx", "httpcore")) and CALLBACK_PATH in r.getMessage())
    ]
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in ours)
    assert token not in logged and token[::-1] not in logged
    assert "callbacks/runapi" in logged and "token=[hidden]" in logged  # the access log was there, hidden


# -- the schedule (pure arithmetic) ------------------------------------------------------------------------


def test_the_fallback_pace_skips_the_early_look_and_polls_every_fallback_interval() -> None:
    policy = PollPolicy()
    schedule = PollSchedule(policy)
    state = PollState(kind="gpt-image-2@4k", model="gpt-image-2", resolution="4k", started=0.0, callback=True)
    window = schedule.durations.finish_window(state.kind, policy.window_sigmas)
    assert window is not None  # documented: 28 s +- 20 %
    first = schedule.next_delay(state, 0.0)
    assert first == pytest.approx(max(window[1] + policy.callback_margin_s, policy.callback_fallback_s))
    assert first >= 30.0
    state.polled(first)
    assert schedule.next_delay(state, first) == pytest.approx(policy.callback_fallback_s)
    # A read a callback asked for, early: the next fallback look still waits a full interval.
    state.polled(first + 3.0)
    assert schedule.next_delay(state, first + 3.0) == pytest.approx(policy.callback_fallback_s)
    plain = PollState(kind="gpt-image-2@4k", model="gpt-image-2", resolution="4k", started=0.0)
    assert schedule.next_delay(plain, 0.0) == pytest.approx(policy.early_check_s)
    # Scaled with the clock, like every other interval.
    assert policy.scaled(TIME_SCALE).callback_fallback_s == pytest.approx(30.0 * TIME_SCALE)


def test_a_task_found_done_after_its_callback_is_timed_by_the_callback() -> None:
    policy = PollPolicy()
    schedule = PollSchedule(policy)
    state = PollState(kind="gpt-image-2@1k", model="gpt-image-2", resolution="1k", started=100.0, callback=True)
    state.called_back = 112.0
    state.polled(112.01)  # the read the callback asked for found it done
    schedule.learn(state, 112.02)
    mean, _ = schedule.durations.estimate(state.kind, state.model, state.resolution)
    # Within a fine spacing below the callback (not the whole 12 s since the create).
    assert 12.0 - policy.fine_interval_s <= mean <= 12.0


def test_an_error_quoting_the_callback_url_does_not_show_the_token() -> None:
    from runapi_mcp.client import BadRequestError
    from runapi_mcp.tasks.waker import hide_callback_token

    record = TaskRecord(
        idempotency_key="k", model="gpt-image-2", service="gpt_image_2", action="text_to_image", route="/x",
        callback_token="s3cret-token-value-0123456789",
    )  # fmt: skip
    error = BadRequestError(
        "callback_url https://h/callbacks/runapi/t?token=s3cret-token-value-0123456789 is not reachable",
        status_code=422,
    )
    hide_callback_token(record, error)
    assert "s3cret-token-value" not in str(error) and "token=***" in str(error)
