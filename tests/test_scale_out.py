"""Issue 17's proof: three ``runapi-mcp serve`` instances on one PostgreSQL schema and one shared directory,
behind a loopback proxy that round-robins stateless requests and pins 2025-era sessions (tests/proxy.py,
tests/cluster.py), driven by real MCP clients over streamable HTTP through the proxy.

- ``kill -9`` of one instance mid-task: every task completes exactly once, every call waiting on a surviving
  instance gets its result within 5 s of the task's lease expiring, and no task is polled by two instances at
  once; a client of the dead instance gets 404 for its session, starts a new one and finds its task done.
- RunAPI's webhook landing on one instance completes calls waiting on the others within 1 s.
- A daily cap of N tasks admits exactly N of 3N concurrent calls spread over the three.

Who polled what comes from the simulator's log (each instance names itself in its RunAPI ``User-Agent``),
never from the servers' own word. Each test starts its own three instances on a fresh schema (dropped after);
skipped without PostgreSQL, as tests/postgres.py says.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import httpx
import psycopg
import pytest
from mcp.client import Client
from mcp.types import CallToolResult

from runapi_mcp.simulator import Simulator
from tests.cluster import Cluster
from tests.postgres import database_url, drop_schema, need_postgres, new_schema, schema_url
from tests.support import text_of, until, upstream_creates

pytestmark = pytest.mark.anyio

LEASE_TTL_S = 3.0  # short, so the takeover comes soon (settings: RUNAPI_MCP_LEASE_TTL_S)
TAKEOVER_S = 5.0  # issue 17: a waiting call's result at most this long after its task's lease expired
WEBHOOK_S = 1.0  # issue 17: from RunAPI's callback to the result of a call waiting on another instance
GPT_1K_CENTS = 3  # the simulator's price of one gpt-image-2 picture at 1k
CALL_S = 60.0  # longest any call here may take before the test fails (a passing one never waits it out)


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh schema on the test database, as an operator makes one for a deployment; dropped after."""
    need_postgres()
    schema = new_schema()
    with psycopg.connect(database_url(), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"'.encode())
    try:
        yield schema_url(schema)
    finally:
        drop_schema(schema)


@asynccontextmanager
async def clients(cluster: Cluster, count: int) -> AsyncIterator[list[Client]]:
    """``count`` 2025-era clients, connected one after the other: the proxy pins the i-th to instance i."""
    async with AsyncExitStack() as stack:
        opened = [await stack.enter_async_context(cluster.client()) for _ in range(count)]
        assert list(cluster.proxy.sessions.values()) == list(range(count))
        yield opened


def polls(cluster: Cluster, sim: Simulator, upstream_id: str) -> list[tuple[int | None, float]]:
    """(instance, arrival time) of each status read of a task, as the simulator logged them."""
    return [
        (cluster.instance_of(r.user_agent), r.time)
        for r in sim.requests
        if r.method == "GET" and r.path.startswith("/api/v1/") and r.path.endswith(f"/{upstream_id}")
    ]


def runs(pollers: list[int | None]) -> list[int | None]:
    """The instances in the order they polled, each stretch of polls by one counted once: [0, 0, 1, 1] -> [0, 1]."""
    return [who for n, who in enumerate(pollers) if n == 0 or pollers[n - 1] != who]


def assert_polled_by_one_at_a_time(cluster: Cluster, sim: Simulator, upstream_id: str) -> list[int | None]:
    """No two instances polled the task at once: its polls come in one stretch per instance (0 0 1 1, never
    0 1 0), every one by a known instance. The stretches, in order."""
    pollers = [who for who, _ in polls(cluster, sim, upstream_id)]
    assert pollers and None not in pollers, pollers
    stretches = runs(pollers)
    assert len(stretches) == len(set(stretches)), f"{upstream_id} was polled by turns: {pollers}"
    return stretches


def status(result: CallToolResult) -> str:
    assert not result.is_error, text_of(result)
    return str((result.structured_content or {})["status"])


def leases(database: str, task_ids: list[str]) -> dict[str, tuple[str | None, float | None]]:
    """Each task's lease holder and deadline (epoch seconds, the database's clock), read from the database."""
    with psycopg.connect(database, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT task_id, lease_holder, lease_until FROM tasks WHERE task_id = ANY(%s)", (task_ids,)
        ).fetchall()
    return {row[0]: (row[1], row[2]) for row in rows}


def upstream_ids_by_prompt(sim: Simulator) -> dict[str, str]:
    return {str(sim.task_request(task_id).get("prompt")): task_id for task_id in sim.task_ids}


class Waiter:
    """A ``get_task(wait=true)`` call on one client: when it started waiting (its first progress
    notification), and when and what it answered."""

    def __init__(self, client: Client, task_id: str) -> None:
        self.client = client
        self.task_id = task_id
        self.waiting = anyio.Event()
        self.result: CallToolResult | None = None
        self.answered_at = 0.0  # time.time(): compared with lease deadlines on the database's clock

    async def run(self) -> None:
        async def progressed(progress: float, total: float | None, message: str | None) -> None:
            self.waiting.set()

        with anyio.fail_after(CALL_S):
            self.result = await self.client.call_tool(
                "get_task", {"task_id": self.task_id, "wait": True}, progress_callback=progressed
            )
        self.answered_at = time.time()


# -- kill -9 -----------------------------------------------------------------------------------------------


async def test_a_killed_instance_s_tasks_complete_once_on_the_others(
    sim: Simulator, database: str, tmp_path: Path
) -> None:
    env = {"RUNAPI_MCP_LEASE_TTL_S": f"{LEASE_TTL_S:g}"}
    with Cluster(sim.base_url, database, tmp_path, env=env) as cluster:
        victim = cluster.instances[0]
        prompts = [f"on the doomed instance {n}" for n in range(3)]
        kept_prompt = "on a surviving instance"
        for _ in range(len(prompts) + 1):
            sim.set_task_outcome(None, "running")  # every task runs until the test lets it finish
        sim.clear_log()
        cut: list[BaseException | CallToolResult] = []
        kept: list[BaseException | CallToolResult] = []

        async def create(client: Client, prompt: str, into: list[BaseException | CallToolResult]) -> None:
            try:
                with anyio.fail_after(CALL_S):
                    into.append(await client.call_tool("generate_image", {"prompt": prompt}))
            except Exception as exc:  # the victim's calls: their instance dies under them
                into.append(exc)

        async with clients(cluster, 3) as (on_victim, on_one, on_two):
            async with anyio.create_task_group() as tg:
                for prompt in prompts:
                    tg.start_soon(create, on_victim, prompt, cut)
                tg.start_soon(create, on_one, kept_prompt, kept)
                await until(lambda: len(sim.task_ids) == len(prompts) + 1, "the four creates upstream", CALL_S)
                ids = upstream_ids_by_prompt(sim)
                doomed = [ids[prompt] for prompt in prompts]
                await until(lambda: all(polls(cluster, sim, up) for up in doomed), "the victim polling them", CALL_S)
                # A call waiting on each surviving instance for each task, every one begun before the kill.
                waiters = [Waiter(client, up) for up in doomed for client in (on_one, on_two)]
                for waiter in waiters:
                    tg.start_soon(waiter.run)
                for waiter in waiters:
                    with anyio.fail_after(CALL_S):
                        await waiter.waiting.wait()

                victim.kill()
                task_ids = {up: await _task_id(on_one, up) for up in doomed}
                deadlines = leases(database, list(task_ids.values()))
                for up in [*doomed, ids[kept_prompt]]:
                    sim.set_task_outcome(up, "completed")  # done upstream now; nobody has the victim's tasks yet

            # The client whose session lived on the victim: 404, so it starts a new session (on a survivor)
            # and finds its tasks done.
            with pytest.raises(Exception, match="Session not found"):
                await on_victim.call_tool("list_tasks", {})
            async with cluster.client() as again:
                assert list(cluster.proxy.sessions.values())[-1] != 0
                for up in doomed:
                    assert status(await again.call_tool("get_task", {"task_id": up, "wait": True})) == "completed"

    # Every task created once upstream, and completed.
    assert len(upstream_creates(sim)) == sim.tasks_created == len(prompts) + 1
    assert [status(r) for r in kept if isinstance(r, CallToolResult)] == ["completed"]
    assert len(cut) == len(prompts)
    # Every waiting call on a survivor got the picture, within TAKEOVER_S of its task's lease running out.
    offset = time.time() - time.monotonic()  # the simulator logs monotonic times; leases are on the wall clock
    for waiter in waiters:
        assert waiter.result is not None and status(waiter.result) == "completed", waiter.task_id
        image = (waiter.result.structured_content or {})["images"][0]
        assert Path(image["path"]).is_file()  # in the shared directory
        holder, until_ = deadlines[task_ids[waiter.task_id]]
        assert cluster.holder_of(holder) == 0 and until_ is not None, (waiter.task_id, holder)
        assert waiter.answered_at - until_ <= TAKEOVER_S, (waiter.task_id, waiter.answered_at - until_)
    # Polling, as the simulator saw it: the victim, then one survivor, taking over only once the lease expired.
    for up in doomed:
        stretches = assert_polled_by_one_at_a_time(cluster, sim, up)
        assert stretches[0] == 0 and len(stretches) == 2, (up, stretches)
        _, until_ = deadlines[task_ids[up]]
        assert until_ is not None
        first_by_taker = next(at for who, at in polls(cluster, sim, up) if who != 0)
        assert first_by_taker + offset >= until_, (up, first_by_taker + offset - until_)
    assert assert_polled_by_one_at_a_time(cluster, sim, ids[kept_prompt]) == [1]


async def _task_id(client: Client, upstream_id: str) -> str:
    """The server's own task id of an upstream task (get_task takes either)."""
    result = await client.call_tool("get_task", {"task_id": upstream_id})
    assert not result.is_error, text_of(result)
    return str((result.structured_content or {})["task_id"])


# -- webhooks --------------------------------------------------------------------------------------------


async def test_a_webhook_to_one_instance_completes_calls_waiting_on_the_others(
    sim: Simulator, database: str, tmp_path: Path
) -> None:
    with Cluster(sim.base_url, database, tmp_path, webhooks=True) as cluster:
        # RunAPI's callbacks reach the proxy (the instances' public URL); this one sends them to instance 1.
        cluster.proxy.steer = lambda method, path: 1 if path.startswith("/callbacks/") else None
        sim.set_task_outcome(None, "running")
        sim.clear_log()
        made: list[CallToolResult] = []
        made_at: list[float] = []
        async with clients(cluster, 3) as (on_zero, _, on_two), anyio.create_task_group() as tg:

            async def create() -> None:
                with anyio.fail_after(CALL_S):
                    made.append(await on_zero.call_tool("generate_image", {"prompt": "called back elsewhere"}))
                made_at.append(time.monotonic())

            tg.start_soon(create)
            await until(lambda: sim.task_ids, "the create upstream", CALL_S)
            [upstream_id] = sim.task_ids
            waiter = Waiter(on_two, upstream_id)
            tg.start_soon(waiter.run)
            with anyio.fail_after(CALL_S):
                await waiter.waiting.wait()
            sim.set_task_outcome(upstream_id, "completed")
        # The picture's signed link opens through the balancer whichever instance it reaches (one key for all).
        link = (made[0].structured_content or {})["images"][0]["download_url"]
        async with httpx.AsyncClient(timeout=CALL_S) as http:
            opened = [await http.get(link) for _ in cluster.instances]

    assert [answer.status_code for answer in opened] == [200] * 3, [answer.text[:200] for answer in opened]
    assert len({answer.content for answer in opened}) == 1
    assert {r.backend for r in cluster.proxy.routed if r.path.startswith("/files/")} == {0, 1, 2}
    [callback] = sim.callbacks
    assert callback.status == 204, callback
    [routed] = [r for r in cluster.proxy.routed if r.path.startswith("/callbacks/")]
    assert routed.backend == 1
    assert [status(r) for r in made] == ["completed"]
    assert waiter.result is not None and status(waiter.result) == "completed"
    offset = time.time() - time.monotonic()
    assert made_at[0] - callback.time <= WEBHOOK_S, made_at[0] - callback.time  # waiting on instance 0
    assert waiter.answered_at - offset - callback.time <= WEBHOOK_S  # waiting on instance 2
    # The webhook woke one status read, by one instance (webhooks on: no poll before the callback).
    reads = polls(cluster, sim, upstream_id)
    assert len(reads) == 1 and reads[0][1] >= callback.time, reads
    assert reads[0][0] is not None


# -- the spend cap ---------------------------------------------------------------------------------------


async def test_a_cap_of_n_tasks_admits_n_of_3n_concurrent_calls_across_the_instances(
    sim: Simulator, database: str, tmp_path: Path
) -> None:
    n = 2
    env = {"RUNAPI_MCP_MAX_SPEND_CENTS": str(n * GPT_1K_CENTS)}
    with Cluster(sim.base_url, database, tmp_path, env=env) as cluster:
        sim.clear_log()
        results: list[CallToolResult] = []
        # The 2026 protocol: no session, so the proxy sends each call to the next instance in turn.
        async with cluster.client(mode="2026-07-28") as client, anyio.create_task_group() as tg:

            async def call(k: int) -> None:
                with anyio.fail_after(CALL_S):
                    results.append(await client.call_tool("generate_image", {"prompt": f"racer {k}", "wait": False}))

            for k in range(3 * n):
                tg.start_soon(call, k)
    admitted = [r for r in results if not r.is_error]
    refused = [r for r in results if r.is_error]
    assert len(admitted) == n and len(refused) == 2 * n, [text_of(r) for r in results]
    assert all("RUNAPI_MCP_MAX_SPEND_CENTS" in text_of(r) for r in refused)
    assert len(upstream_creates(sim)) == sim.tasks_created == n
    assert {r.backend for r in cluster.proxy.routed if r.method == "POST"} == {0, 1, 2}


# -- the documented deployment ---------------------------------------------------------------------------


def test_the_compose_example_is_the_deployment_proven_here() -> None:
    """docs/compose.yaml and docs/haproxy.cfg (docs/deployment.md) describe what the tests above run: instances
    built from the repository's Dockerfile on one database and one library, each behind the balancer, which
    pins a session to the instance that answered its initialize."""
    from ruamel.yaml import YAML

    docs = Path(__file__).resolve().parents[1] / "docs"
    compose = YAML(typ="safe").load((docs / "compose.yaml").read_text("utf-8"))
    instances = {name: service for name, service in compose["services"].items() if "build" in service}
    assert len(instances) == 3, sorted(instances)
    for service in instances.values():
        assert service["build"] == {"context": "..", "dockerfile": "Dockerfile"}
        assert service["command"][:3] == ["serve", "--transport", "http"]
        assert "library:/data" in service["volumes"]  # one RUNAPI_MCP_HOME for all
        assert service["environment"]["RUNAPI_MCP_DATABASE_URL"].endswith("@postgres:5432/runapi")
    assert len({str(service["environment"]) for service in instances.values()}) == 1  # the same settings
    balancer = (docs / "haproxy.cfg").read_text("utf-8")
    for name in instances:
        assert balancer.count(f"server {name} {name}:8000") == 2, name  # in both backends
    assert "stick store-response res.hdr(mcp-session-id)" in balancer
    assert "stick match req.hdr(mcp-session-id)" in balancer
