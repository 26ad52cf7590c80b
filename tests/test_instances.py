"""Several server instances on one PostgreSQL schema and one shared directory (RUNAPI_MCP_HOME), against the
simulator: each task is polled by one instance at a time (its lease holder), and an instance that stops, or
is killed, hands its tasks to another, which finishes them with one create upstream each.

The instances are real servers: in-process apps (``open_app``, each with its own store, pool and instance
id) or a ``runapi-mcp serve`` subprocess killed with SIGKILL. The simulator logs each request's User-Agent,
which names the instance that sent it. PostgreSQL as in test_store_postgres.py (tests/postgres.py: skipped
without a database, required in CI).
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import psycopg
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.subscriptions import ResourceUpdated
from mcp.types import (
    BlobResourceContents,
    EmptyResult,
    ResourceUpdatedNotification,
    SubscribeRequest,
    SubscribeRequestParams,
)
from psycopg import sql

from runapi_mcp.app import App, open_app
from runapi_mcp.clock import SYSTEM_CLOCK, Clock
from runapi_mcp.http.app import HttpOptions
from runapi_mcp.http.links import FileLinks
from runapi_mcp.http.serve import http_server
from runapi_mcp.http.uvicorn_server import bind_socket
from runapi_mcp.simulator import Fault, Simulator
from runapi_mcp.tasks import LOCAL_OWNER, TaskRecord, current_owner
from runapi_mcp.tasks.pg_store import PostgresChangeFeed
from tests.postgres import database_url, drop_schema, need_postgres, new_schema, schema_url
from tests.support import FAST_POLICY, FakeClock, RawStdioServer, make_settings, server_env, text_of, until, wait_until
from tests.test_mcp_tasks import raw_client

pytestmark = pytest.mark.anyio

# Short leases, so a hand-over takes a second or two: renewed every 0.67 s, lapsed after 2 s without.
LEASE_TTL_S = 2.0


@dataclass
class Instance:
    app: App
    client: Client

    @property
    def id(self) -> str:
        return self.app.instance_id

    async def generate(self, prompt: str) -> dict[str, Any]:
        result = await self.client.call_tool("generate_image", {"prompt": prompt, "wait": False})
        assert not result.is_error, text_of(result)
        data: dict[str, Any] = result.structured_content or {}
        return data

    async def record(self, task_id: str) -> TaskRecord:
        """The task as the store has it."""
        record = await self.app.manager.store.get(task_id)
        assert record is not None
        return record

    async def held(self, task_id: str) -> TaskRecord:
        """The task as this instance's manager has it (as the local user, whose tasks these are)."""
        with current_owner.scope(LOCAL_OWNER):
            return await self.app.manager.get(task_id)


@dataclass
class Cluster:
    """Instances on one schema and one home (their shared directory)."""

    sim: Simulator
    home: Path
    inputs: Path
    schema: str

    def settings(self, **overrides: Any) -> Any:
        return make_settings(
            self.sim, self.home, self.inputs, database_url=schema_url(self.schema), lease_ttl_s=LEASE_TTL_S,
            **overrides,
        )

    @asynccontextmanager
    async def instance(self, clock: Clock = SYSTEM_CLOCK, **overrides: Any) -> AsyncIterator[Instance]:
        async with (
            open_app(self.settings(**overrides), policy=FAST_POLICY, clock=clock) as app,
            Client(app.server, mode="legacy") as client,
        ):
            assert app.instance_id and app.manager.store.shared
            yield Instance(app, client)

    @asynccontextmanager
    async def served(self, **overrides: Any) -> AsyncIterator[tuple[Instance, str]]:
        """An instance served over HTTP on loopback (``serve --transport http``, as deployed), and its base
        URL; its public URL is that address unless ``public_url`` names another (a load balancer's)."""
        sock = bind_socket("127.0.0.1", 0)
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        settings = self.settings(public_url=overrides.pop("public_url", base), **overrides)
        token = settings.auth_token.get_secret_value() if settings.auth_token else None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with (
            open_app(settings, policy=FAST_POLICY) as app,
            http_server(app, HttpOptions(port=0, public_url=settings.public_url), settings, sock=sock),
            httpx2.AsyncClient(headers=headers, timeout=30, trust_env=False) as http,
            Client(streamable_http_client(f"{base}/mcp", http_client=http), mode="legacy") as client,
        ):
            yield Instance(app, client), base

    def env(self) -> dict[str, str]:
        """A ``runapi-mcp serve`` subprocess's environment: the same schema, home and lease TTL."""
        return server_env(
            self.sim, self.home, self.inputs,
            RUNAPI_MCP_DATABASE_URL=schema_url(self.schema), RUNAPI_MCP_LEASE_TTL_S=str(LEASE_TTL_S),
        )


@pytest.fixture
def cluster(sim: Simulator, home: Path, inputs: Path) -> Any:
    need_postgres()
    schema = new_schema()
    with psycopg.connect(database_url(), autocommit=True) as conn:  # an operator's schema, named in the URL
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield Cluster(sim, home, inputs, schema)
    finally:
        drop_schema(schema)


def status_reads(sim: Simulator, upstream_id: str, *, since: float = 0.0) -> list[Any]:
    return [
        r for r in sim.requests
        if r.method == "GET" and r.path.endswith("/" + upstream_id) and r.time >= since
    ]


def pollers(sim: Simulator, upstream_id: str, *, since: float = 0.0) -> list[str]:
    """The instances that read the task's status (each once, in the order of their first read), by the
    User-Agent they sent (``runapi-mcp/<version> (instance <id>)``)."""
    return list(dict.fromkeys(_instance(r.user_agent) for r in status_reads(sim, upstream_id, since=since)))


def _instance(user_agent: str) -> str:
    marker = "(instance "
    assert marker in user_agent, user_agent  # every request of an instance on a shared store names it
    return user_agent.split(marker, 1)[1].rstrip(")")


async def completed(instance: Instance, task_ids: list[str]) -> list[TaskRecord]:
    """The tasks once the store has them completed (whichever instance finished them)."""
    done: dict[str, TaskRecord] = {}

    async def look() -> None:
        for task_id in task_ids:
            if task_id not in done:
                record = await instance.record(task_id)
                if record.terminal:
                    done[task_id] = record

    async def all_done() -> bool:
        await look()
        return len(done) == len(task_ids)

    await until(all_done, "every task completed in the store", 20, every=0.02)
    return [done[task_id] for task_id in task_ids]


# -- leases: one poller per task ---------------------------------------------------------------------------


async def test_a_stopped_instances_tasks_are_shared_out_and_each_polled_by_one(cluster: Cluster) -> None:
    sim = cluster.sim
    for _ in range(6):
        sim.set_task_outcome(None, "running")  # RunAPI holds them until the test lets them finish
    async with AsyncExitStack() as stack:
        b = await stack.enter_async_context(cluster.instance())
        c = await stack.enter_async_context(cluster.instance())
        async with cluster.instance() as a:
            created = [await a.generate(f"handed over {n}") for n in range(6)]
            upstream = [data["runapi_task_id"] for data in created]
            # Each new task is claimed by the instance that made it, from before its create: A polls them all.
            await until(lambda: all(a.id in pollers(sim, u) for u in upstream), "A polling its tasks")
            assert all(pollers(sim, u) == [a.id] for u in upstream)
            creates = len([r for r in sim.requests if r.method == "POST"])
        stopped = time.monotonic()  # the simulator's clock (it runs in this process); A sends nothing more
        # A stopped cleanly and let its leases go: B and C take the tasks up at their next periodic claim.
        await until(
            lambda: all(pollers(sim, u, since=stopped) for u in upstream), "every task polled again after A stopped"
        )
        for u in upstream:
            sim.set_task_outcome(u, "completed")
        done = await completed(b, [data["task_id"] for data in created])
        assert all(r.status == "completed" and r.images[0].path for r in done), done
        for u in upstream:
            after = pollers(sim, u, since=stopped)
            assert len(after) == 1 and after[0] in (b.id, c.id), (u, after)  # one poller, never both
        # Nothing was created again: the tasks were running upstream, and a take-over only reads.
        assert len([r for r in sim.requests if r.method == "POST"]) == creates
        assert sim.tasks_created == 6


async def test_an_instance_killed_mid_task_hands_its_tasks_over_each_created_once(cluster: Cluster) -> None:
    """A ``serve`` subprocess with one task running upstream and one whose create is on its way (RunAPI
    slow to answer) is killed with SIGKILL. The instance beside it never polled them while it lived; once
    their leases lapse it takes both up: the running one is polled to the end, the other's create is sent
    again with its idempotency key (RunAPI replays it), and each is created upstream once."""
    sim = cluster.sim
    sim.set_task_outcome(None, "running")
    generate = {"name": "generate_image", "arguments": {"prompt": "outlive the instance", "wait": False}}

    def run_and_kill() -> tuple[dict[str, Any], str, int]:
        """In a worker thread (the in-process instance runs on meanwhile)."""
        with RawStdioServer(cluster.env()) as doomed:
            doomed.initialize("2025-06-18")
            answer = doomed.request("tools/call", generate, timeout=60)["result"]
            assert not answer.get("isError"), answer
            upstream_id = answer["structuredContent"]["runapi_task_id"]
            wait_until(lambda: status_reads(sim, upstream_id), "the subprocess polling its task")
            # The next create takes RunAPI a second to answer: the instance dies while it waits.
            sim.inject(Fault("slow", delay=1.0, method="POST", path_contains="/gpt_image_2/", times=1))
            doomed.send({"jsonrpc": "2.0", "id": 99, "method": "tools/call", "params": generate})
            wait_until(lambda: sim.faults == [], "the slow create reached RunAPI")
            polled_by = pollers(sim, upstream_id)
            doomed.proc.kill()
            doomed.proc.wait()
            assert len(polled_by) == 1, polled_by
            return answer["structuredContent"], polled_by[0], doomed.proc.returncode

    async with cluster.instance() as b:
        running, doomed_id, code = await anyio.to_thread.run_sync(run_and_kill)
        killed = time.monotonic()
        assert code == -9 and doomed_id != b.id  # B left the task to its holder while the holder lived
        records = (await b.app.manager.store.page(limit=10)).records
        assert len(records) == 2
        submitting = next(r for r in records if r.task_id != running["task_id"])
        assert submitting.status == "submitting"  # recorded before its create went out, never answered
        sim.set_task_outcome(running["runapi_task_id"], "completed")
        with anyio.fail_after(20):
            done = [
                (await b.client.call_tool("get_task", {"task_id": r.task_id, "wait": True, "timeout_s": 15}))
                for r in records
            ]
        for result in done:
            data = result.structured_content or {}
            assert data.get("status") == "completed" and Path(data["images"][0]["path"]).is_file(), text_of(result)
        assert sim.tasks_created == 2  # the re-sent create (same key) was RunAPI's replay, not a second task
        for record in records:
            upstream_id = (await b.record(record.task_id)).upstream_id
            assert upstream_id is not None
            assert pollers(sim, upstream_id, since=killed) == [b.id]
        resent = [r for r in sim.requests if r.method == "POST" and r.idempotency_key == submitting.idempotency_key]
        assert [_instance(r.user_agent) for r in resent] == [doomed_id, b.id]


# -- the change feed: what happens on one instance is heard on every other -----------------------------------


async def test_a_task_finishing_on_one_instance_is_heard_on_another(cluster: Cluster) -> None:
    """B holds a task A polls (a call on B waits on it) and never polls it; when it completes on A, B's waiting
    get_task and tasks/result answer, B's resource subscriber and listen stream hear of it: all through the
    change feed (B's held record is read from the store only when a change is announced)."""
    sim = cluster.sim
    sim.set_task_outcome(None, "running")
    async with cluster.instance() as a, cluster.instance() as b:
        data = await a.generate("heard elsewhere")
        task_id, upstream = data["task_id"], data["runapi_task_id"]
        uri = f"runapi://tasks/{task_id}"
        updates: list[str] = []

        async def note(message: Any) -> None:
            if isinstance(message, ResourceUpdatedNotification) and message.params.uri == uri:
                updates.append(str(message.params.uri))

        answers: dict[str, Any] = {}
        async with (
            Client(b.app.server, mode="legacy", message_handler=note) as watcher,
            Client(b.app.server, mode="2026-07-28") as modern,
            raw_client(b.app.server) as tasks_client,
            anyio.create_task_group() as tg,
        ):

            async def wait_on_b() -> None:
                args = {"task_id": task_id, "wait": True, "timeout_s": 20}
                answers["get_task"] = await b.client.call_tool("get_task", args)

            async def result_on_b() -> None:
                answers["tasks/result"] = await tasks_client.request("tasks/result", {"taskId": task_id})

            tg.start_soon(wait_on_b)
            await until(lambda: b.app.manager.stats(task_id) != {}, "B holding the task (its call waiting)")
            tg.start_soon(result_on_b)
            await watcher.session.send_request(SubscribeRequest(params=SubscribeRequestParams(uri=uri)), EmptyResult)
            async with modern.listen(resource_subscriptions=[uri]) as listen:
                sim.set_task_outcome(upstream, "completed")
                with anyio.fail_after(20):
                    async for event in listen:
                        if isinstance(event, ResourceUpdated) and event.uri == uri and (
                            await b.held(task_id)
                        ).status == "completed":
                            break
            await until(lambda: len(answers) == 2, "both waiting calls answered", 20)
            await until(lambda: bool(updates), "B's resource subscriber told")
        got = answers["get_task"].structured_content or {}
        assert got.get("status") == "completed" and Path(got["images"][0]["path"]).is_file(), got
        assert answers["tasks/result"]["structuredContent"]["status"] == "completed"
        assert pollers(sim, upstream) == [a.id]  # B never polled it: it heard


async def test_a_cancel_on_one_instance_ends_the_polling_on_another(cluster: Cluster) -> None:
    """A task A polls, cancelled through B: A hears of it, its poll loop ends without another look, and what
    RunAPI reports later changes nothing (A runs on a clock the test moves)."""
    sim = cluster.sim
    sim.set_task_outcome(None, "running")
    clock = FakeClock()
    async with cluster.instance(clock=clock) as a, cluster.instance() as b:
        data = await a.generate("cancelled elsewhere")
        task_id, upstream = data["task_id"], data["runapi_task_id"]
        await clock.sleeping(1)  # A's poll loop asleep until its next look
        async with raw_client(b.app.server) as tasks_client:
            cancelled = await tasks_client.request("tasks/cancel", {"taskId": task_id})
        assert cancelled["status"] == "cancelled"
        await until(lambda: not clock.wakes(), "A's poll loop ended")  # woken by the feed, not by its clock
        assert (await a.held(task_id)).status == "cancelled"
        reads = len(status_reads(sim, upstream))
        sim.set_task_outcome(upstream, "completed")
        assert await clock.advance(FAST_POLICY.give_up_s * 2) == 0  # nothing sleeps: no poll loop runs
        assert len(status_reads(sim, upstream)) == reads
        assert (await b.record(task_id)).status == "cancelled"
        assert pollers(sim, upstream) in ([], [a.id])


async def test_a_change_missed_while_the_feed_was_down_is_read_when_it_is_back(cluster: Cluster) -> None:
    """The feed's connection drops (every instance's listener is cut off): once it listens again, B reads
    the tasks it holds again, and a change it never heard of (written here with no notification, as if it
    had been sent while B was away) reaches its waiters and listeners. A, which polls the task, runs on a
    clock the test holds still: it writes nothing over that change."""
    sim = cluster.sim
    sim.set_task_outcome(None, "running")
    clock = FakeClock()
    async with cluster.instance(clock=clock) as a, cluster.instance() as b:
        data = await a.generate("missed")
        task_id = data["task_id"]
        await clock.sleeping(1)  # A's poll loop asleep until the test moves its clock
        held = await b.held(task_id)  # B holds it from now: it reads the store only when told to
        told: list[TaskRecord] = []

        async def listener(record: TaskRecord) -> None:
            told.append(record)

        b.app.manager.add_listener(listener)
        changed = held.noted("written while the feed was down", at=held.updated_at + 1)
        with psycopg.connect(schema_url(cluster.schema), autocommit=True) as conn:
            conn.execute(  # the record alone: no NOTIFY goes with it
                sql.SQL("UPDATE {}.tasks SET record = %s WHERE task_id = %s").format(sql.Identifier(cluster.schema)),
                (changed.model_dump_json(), task_id),
            )
            feed = a.app.manager.store.changes
            assert isinstance(feed, PostgresChangeFeed)
            cut = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                (feed.application_name,),
            ).fetchall()
            assert len(cut) == 2  # A's listener and B's
        await until(lambda: any(r.error == changed.error for r in told), "B reading the task again")
        assert (await b.held(task_id)).error == changed.error


# -- webhooks: RunAPI's callback may reach any instance ----------------------------------------------------


async def test_a_callback_reaching_another_instance_completes_the_call_waiting_here(cluster: Cluster) -> None:
    """A task polled by A, whose callback URL is the deployment's (here B's address, as a load balancer might
    route it): RunAPI calls B back when the task ends; B does not poll it, and passes the news on the feed;
    A reads the status at once and the call waiting on A completes. A's clock stands still: its poll loop
    reads nothing of its own accord, so the one status read is the callback's."""
    sim = cluster.sim
    clock = FakeClock()
    async with cluster.served() as (b, b_base), cluster.instance(clock=clock, public_url=b_base) as a:
        data = await a.generate("called back elsewhere")
        task_id, upstream = data["task_id"], data["runapi_task_id"]
        with anyio.fail_after(20):
            done = await a.client.call_tool("get_task", {"task_id": task_id, "wait": True, "timeout_s": 20})
        got = done.structured_content or {}
        assert got.get("status") == "completed" and Path(got["images"][0]["path"]).is_file(), text_of(done)
        [callback] = sim.callbacks
        assert callback.url.startswith(f"{b_base}/callbacks/runapi/{task_id}?token=") and callback.status == 204
        assert pollers(sim, upstream) == [a.id] and len(status_reads(sim, upstream)) == 1
        assert (await b.record(task_id)).status == "completed"


# -- the shared directory: any instance serves any picture ------------------------------------------------

TOKEN = "instances-shared-token-8f3e1c"


async def test_a_picture_made_on_one_instance_is_served_by_another(cluster: Cluster) -> None:
    """A and B share the image library (one RUNAPI_MCP_HOME) and the database, and need a bearer token. A
    picture made on A, whose links name the deployment's address (here B's), is served by B: through the
    signed link A made (the links' key is kept in the store, the same for every instance), its resource URI
    and B's gallery. A link signed with another key is refused there."""
    async with (
        cluster.served(auth_token=TOKEN) as (b, b_base),
        cluster.served(auth_token=TOKEN, public_url=b_base) as (a, _),
    ):
        made = await a.client.call_tool("generate_image", {"prompt": "made on A", "wait": True})
        data = made.structured_content or {}
        assert data.get("status") == "completed", text_of(made)
        image = data["images"][0]
        image_id, link = image["uri"].removeprefix("runapi://images/"), image["download_url"]
        assert link.startswith(f"{b_base}/files/{image_id}?exp=") and "&sig=" in link
        on_disk = Path(image["path"]).read_bytes()
        async with httpx.AsyncClient(timeout=30, trust_env=False) as browser:  # no token: the link is the proof
            served = await browser.get(link)
            assert served.status_code == 200 and served.content == on_disk
            forged = FileLinks().url(f"{b_base}/files", LOCAL_OWNER, image_id)  # a key of another process's own
            assert (await browser.get(forged)).status_code == 401
            gallery = await browser.get(f"{b_base}/gallery", headers={"Authorization": f"Bearer {TOKEN}"})
            assert gallery.status_code == 200 and image_id in gallery.text
            thumb = await browser.get(f"{b_base}/gallery/thumbs/{image_id}", headers={"Authorization": f"Bearer {TOKEN}"})
            assert thumb.status_code == 200 and thumb.headers["content-type"].startswith("image/")
        read = await b.client.read_resource(f"runapi://images/{image_id}")
        [contents] = read.contents
        assert isinstance(contents, BlobResourceContents) and base64.b64decode(contents.blob) == on_disk
