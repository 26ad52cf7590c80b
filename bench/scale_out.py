"""Several instances behind a load balancer: calls per second, polls per task, completion-to-client latency and
server CPU per call, at 1, 2 and 3 instances.

    .venv/bin/python bench/scale_out.py [--calls 120] [--concurrency 24] [--time-scale 0.25] [--instances 1,2,3]

Needs PostgreSQL: ``RUNAPI_MCP_TEST_DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``), a
fresh schema for each configuration, dropped after it.

Each configuration is tests/cluster.py's deployment (docs/deployment.md): k server processes on one PostgreSQL
schema and one shared ``RUNAPI_MCP_HOME``, behind the loopback proxy of tests/proxy.py (2025-era sessions pinned
by ``Mcp-Session-Id``), against the simulator in a child process. Each instance serves as ``runapi-mcp serve
--transport http`` does, with one difference the command line cannot express: its poll policy is scaled with
the simulator's clock (``--time-scale``, as bench/scale.py and bench/latency.py scale it), so this script
starts the instances itself (``--serve PORT``, what ``serve_http`` does with a scaled policy).

``--concurrency`` MCP clients (2025-era sessions, which the proxy spreads over the instances in turn) call
``generate_image(wait=true)`` back to back until ``--calls`` calls are done: GPT Image 2 at 1k, aspect 3:1,
12 s +- 10 % times ``--time-scale``. A warm-up round (one call per client) runs first and is not counted.

- calls/s: the measured calls / the measured round's wall time.
- polls per task: status reads the simulator logged for the measured tasks / tasks; and the tasks that more
  than one instance polled (each instance names itself in its User-Agent): 0 is the contract.
- completion to client, p50 and p95: when the client had the result - when the simulator's task completed.
- server CPU per call: user + system time of every instance (``/proc/<pid>/stat``) over the measured round /
  calls. Background work (lease renewals, the change feed's listener) counts: it is the deployment's cost.

Ratios to one instance are printed beside the figures: the machine is shared, and absolute figures move with
what else runs on it. The clients, the proxy and the simulator run on the same cores as the servers, so
calls/s shows what the instances cost one another here, not what a deployment on separate machines gains.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import anyio
from mcp.client import Client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/cluster.py and tests/proxy.py: the deployment the tests start too

from tests.cluster import Cluster  # noqa: E402
from tests.postgres import database_url, drop_schema, new_schema, schema_url  # noqa: E402
from tests.support import SIM_KEY  # noqa: E402

from _common import RemoteSimulator, pct, print_checks, print_machine  # noqa: E402
from runapi_mcp.simulator import SimulatorConfig  # noqa: E402

ARGS = {"aspect_ratio": "3:1", "output_resolution": "1k"}  # GPT Image 2's smallest 1k picture (1024 x 341)
POLL_RATIO_LIMIT = 1.15  # polls per task at k instances over one instance's: "unchanged", less the noise


@dataclass
class Figures:
    instances: int
    calls: int
    wall_s: float
    tasks: int
    polls: int
    shared_tasks: int  # polled by more than one instance
    latencies: list[float]
    cpu_s: float
    failed: int

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.wall_s

    @property
    def polls_per_task(self) -> float:
        return self.polls / max(1, self.tasks)

    @property
    def cpu_ms_per_call(self) -> float:
        return self.cpu_s / max(1, self.calls) * 1000


# -- an instance ---------------------------------------------------------------------------------------------
def serve(port: int, time_scale: float) -> int:
    """One instance: ``serve_http`` with the poll policy scaled by ``time_scale``; settings from the
    environment, as ``runapi-mcp serve`` reads them."""
    from runapi_mcp.app import configure_logging, open_app
    from runapi_mcp.config import load_settings
    from runapi_mcp.http.app import HttpOptions
    from runapi_mcp.http.serve import http_server
    from runapi_mcp.tasks import PollPolicy

    settings = load_settings({})
    configure_logging(settings)
    options = HttpOptions(transports=frozenset({"streamable-http"}), port=port, public_url=settings.public_url)

    async def main() -> None:
        async with (
            open_app(settings, policy=PollPolicy().scaled(time_scale)) as app,
            http_server(app, options, settings) as running,
        ):
            await running.stopped.wait()

    anyio.run(main)
    return 0


# -- a configuration -----------------------------------------------------------------------------------------
async def drive(cluster: Cluster, args: argparse.Namespace, sim: RemoteSimulator) -> Figures:
    async with AsyncExitStack() as stack:
        # 2025-era sessions, opened one after the other: the proxy pins them to the instances in turn.
        clients = [await stack.enter_async_context(cluster.client()) for _ in range(args.concurrency)]

        async def call(client: Client, n: int) -> tuple[str | None, float]:
            result = await client.call_tool(
                "generate_image", {"prompt": f"a lighthouse, picture {n}", **ARGS, "wait": True}
            )
            data = result.structured_content or {}
            done = not result.is_error and data.get("status") == "completed"
            return (data.get("runapi_task_id") if done else None), time.monotonic()

        async with anyio.create_task_group() as tg:  # warm-up: every session's first call
            for n, client in enumerate(clients):
                tg.start_soon(call, client, -1 - n)
        sim.take_requests()
        cpu_before = sum(i.cpu_s() for i in cluster.instances)
        done: list[tuple[str | None, float]] = []
        next_call = iter(range(args.calls))
        started = time.monotonic()

        async def worker(client: Client) -> None:
            for n in next_call:
                done.append(await call(client, n))

        async with anyio.create_task_group() as tg:
            for client in clients:
                tg.start_soon(worker, client)
        wall = time.monotonic() - started
        cpu = sum(i.cpu_s() for i in cluster.instances) - cpu_before
    requests = sim.take_requests()
    ids = {up for up, _ in done if up is not None}
    completed = sim.completed_at(ids)
    latencies = [at - c for up, at in done if up is not None and (c := completed.get(up)) is not None]
    pollers: dict[str, set[int | None]] = defaultdict(set)
    polls = 0
    for method, path, _, agent in requests:
        up = path.rsplit("/", 1)[-1]
        if method == "GET" and path.startswith("/api/v1/") and up in ids:
            polls += 1
            pollers[up].add(cluster.instance_of(agent))
    return Figures(
        instances=len(cluster.instances), calls=len(done), wall_s=wall, tasks=len(ids), polls=polls,
        shared_tasks=sum(1 for who in pollers.values() if len(who) > 1), latencies=latencies, cpu_s=cpu,
        failed=sum(1 for up, _ in done if up is None),
    )


def measure(k: int, args: argparse.Namespace, sim: RemoteSimulator) -> Figures:
    import psycopg

    schema = new_schema()
    with psycopg.connect(database_url(), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"'.encode())
    try:
        with tempfile.TemporaryDirectory(prefix="runapi-scale-out-") as shared:
            script = str(Path(__file__).resolve())
            scale = str(args.time_scale)
            cluster = Cluster(
                sim.base_url, schema_url(schema), Path(shared), count=k,
                env={"RUNAPI_MCP_LOG_LEVEL": "WARNING", "RUNAPI_MCP_MAX_SESSIONS_PER_USER": str(args.concurrency + 8)},
                command=lambda port: [sys.executable, script, "--serve", str(port), "--time-scale", scale],
            )
            with cluster:
                figures: Figures = anyio.run(drive, cluster, args, sim)
                return figures
    finally:
        drop_schema(schema)


# -- the report ----------------------------------------------------------------------------------------------
def report(rows: list[Figures], args: argparse.Namespace) -> bool:
    base = rows[0]
    print()
    print(f"{'instances':>9}  {'calls/s':>13}  {'polls/task':>16}  {'polled by 2+':>12}  {'p50 s':>6}  "
          f"{'p95 s':>14}  {'CPU ms/call':>17}")
    for row in rows:
        p50, p95 = pct(row.latencies, 50), pct(row.latencies, 95)
        print(
            f"{row.instances:>9}  {row.calls_per_s:>6.2f} ({row.calls_per_s / base.calls_per_s:>4.2f}x)  "
            f"{row.polls_per_task:>6.2f} ({row.polls_per_task / base.polls_per_task:>4.2f}x)  "
            f"{row.shared_tasks:>12}  {p50:>6.2f}  {p95:>6.2f} ({p95 / pct(base.latencies, 95):>4.2f}x)  "
            f"{row.cpu_ms_per_call:>7.1f} ({row.cpu_ms_per_call / base.cpu_ms_per_call:>4.2f}x)"
        )
    checks = [
        (f"every call completed ({sum(r.failed for r in rows)} did not)", all(r.failed == 0 for r in rows)),
        ("no task polled by two instances", all(r.shared_tasks == 0 for r in rows)),
        *[
            (f"polls per task at {r.instances} instances within {POLL_RATIO_LIMIT:g}x of one instance's "
             f"({r.polls_per_task / base.polls_per_task:.2f}x)",
             r.polls_per_task <= base.polls_per_task * POLL_RATIO_LIMIT)
            for r in rows[1:]
        ],
    ]
    passed = print_checks(checks)
    print_machine(
        f" (clients, proxy and simulator share them with the instances); time scale {args.time_scale:g}; "
        f"{args.calls} calls, {args.concurrency} at a time"
    )
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=120, help="measured calls per configuration")
    parser.add_argument("--concurrency", type=int, default=24, help="MCP clients calling at once")
    parser.add_argument("--time-scale", type=float, default=0.25, help="task durations and poll intervals x this")
    parser.add_argument("--instances", default="1,2,3", help="the configurations, comma separated")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)  # one instance (internal)
    args = parser.parse_args(argv)
    if args.serve is not None:
        return serve(args.serve, args.time_scale)
    counts = [int(k) for k in args.instances.split(",")]
    if args.calls < 1 or args.concurrency < 1 or not 0 < args.time_scale <= 1 or min(counts) < 1:
        parser.error("need --calls >= 1, --concurrency >= 1, 0 < --time-scale <= 1 and instances >= 1")
    logging.basicConfig(level=logging.WARNING)
    for name in ("httpx", "mcp", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # A notification still arriving on a session's stream as its client closes is logged as an error: only
    # the end of the run does that.
    logging.getLogger("mcp.client.streamable_http").setLevel(logging.CRITICAL)
    config = SimulatorConfig(
        api_key=SIM_KEY, duration_jitter=0.10, time_scale=args.time_scale, initial_balance_cents=100_000_000,
        prerender=True,
    )
    sim = RemoteSimulator(config)
    try:
        print(f"scale-out benchmark: {args.calls} x generate_image(wait=true), {args.concurrency} clients at once, "
              f"tasks of {12 * args.time_scale:.1f} s +-10 %; instances {args.instances}", flush=True)
        rows = []
        for k in counts:
            rows.append(measure(k, args, sim))
            print(f"  {k} instance{'s' if k > 1 else ''}: {rows[-1].wall_s:.1f} s", flush=True)
    finally:
        sim.close()
    return 0 if report(rows, args) else 1


if __name__ == "__main__":
    sys.exit(main())
