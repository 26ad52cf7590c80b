"""Many MCP sessions over streamable HTTP at once: every call completes, every progress stream is its own.

    .venv/bin/python bench/load.py [--clients 10] [--calls 20] [--time-scale 0.25] [--seed 0]

What a shared deployment meets: ``runapi-mcp serve --transport streamable-http`` as its own process (the
command an operator runs, with a bearer token and a fresh ``RUNAPI_MCP_HOME``), and ``--clients`` MCP
sessions, each an SDK client over streamable HTTP with the ``Authorization`` header, each making ``--calls``
``generate_image(wait=true)`` calls at once (200 in flight by default), every call with a progress callback
of its own. The RunAPI simulator runs in a child process (upstream is remote in real life); task durations
are 12 s +- 10 % times ``--time-scale`` (3 s by default). The server polls on its own real-time schedule
(a process started from the command line takes no scaled poll policy), so call times include what the
schedule costs while it learns these short tasks: the figures are about load, not about latency (that is
``bench/latency.py``).

Checks, each a PASS/FAIL line:

- every call completed: not an error, a task id, its picture saved in the server's library (the file there,
  not empty), every task id distinct, exactly one create upstream per call;
- every progress stream is strictly increasing, has at least one notification and ends at progress ==
  total (100/100), with nothing after it;
- no progress misrouted: the first message of each call names that call's task id (the server's
  ``ProgressReporter`` does so), and no message of any call names another task (server ids
  ``task-<hex>-<hex>`` and RunAPI's UUIDs alike); each session's raw progress notifications (its message
  handler sees every one) number exactly its callbacks' (none dropped by the client, none for a request
  the session did not make);
- a request without the token is refused (401) and ``/health`` answers without one;
- the server exits cleanly on SIGINT.

Figures: throughput (calls per second, first call sent to last answer), p50/p95/max call time, peak RSS of
the server process (``VmHWM`` from ``/proc/<pid>/status``, read just before it is stopped) and its CPU time.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
from mcp.client import Client
from mcp.client.session import IncomingMessage
from mcp.client.streamable_http import streamable_http_client
from mcp.types import ProgressNotification

from _common import RemoteSimulator, pct, print_checks, print_machine, status_mb
from runapi_mcp.simulator import SimulatorConfig

KEY = "sk-bench-load-0123456789abcdef01234"
MODEL = "gpt-image-2"
RESOLUTION = "1k"
ASPECT = "3:1"  # the smallest GPT Image 2 picture at 1k (1024 x 341): the load is the protocol, not PNGs
CALL_TIMEOUT_S = 600
# Any task id a progress message could name: the server's own and RunAPI's (the simulator's UUIDs).
TASK_ID = re.compile(r"task-[0-9a-f]{12}-[0-9a-f]{12}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# -- the server, as an operator starts it ------------------------------------------------------------------
class ServerProcess:
    """``runapi-mcp serve --transport streamable-http`` in a subprocess; stderr kept (its tail) for a report."""

    def __init__(self, base_url: str, home: Path, token: str, port: int) -> None:
        # Nothing of the caller's own RunAPI settings leaks in: the server sees the simulator only.
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNAPI_")}
        env.update({
            "RUNAPI_API_KEY": KEY,
            "RUNAPI_BASE_URL": base_url,
            "RUNAPI_MCP_HOME": str(home),
            "RUNAPI_MCP_ALLOWED_DIRS": str(home),
            "RUNAPI_MCP_AUTH_TOKEN": token,
            "RUNAPI_MCP_WAIT_S": str(CALL_TIMEOUT_S),
            "RUNAPI_MCP_LOG_LEVEL": "WARNING",
        })
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runapi_mcp", "serve", "--transport", "streamable-http",
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.stderr: collections.deque[str] = collections.deque(maxlen=40)
        # Drained all along: a full pipe would block the server's logging, and so the server.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip())

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n" + "\n".join(self.stderr))
            try:
                if httpx.get(f"{self.base}/health", timeout=1).json().get("status") == "ok":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"the server was not healthy within {timeout} s:\n" + "\n".join(self.stderr))

    def peak_rss_mb(self) -> float:
        peak = status_mb("VmHWM", self.proc.pid)
        if peak is None:
            raise RuntimeError(f"no VmHWM in /proc/{self.proc.pid}/status")
        return peak

    def cpu_s(self) -> float:
        # /proc/<pid>/stat: utime and stime (fields 14, 15) in clock ticks; the name (field 2) may hold spaces.
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 20) -> int | None:
        """SIGINT (what Ctrl-C and the container's STOPSIGNAL send); its exit code, None if it had to be killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


class LateNotifications(logging.Filter):
    """Counts, and keeps out of the output, one benign SDK log: a notification that reached a session's
    standalone GET stream after the client had closed its reader (the server announces
    ``resources/list_changed`` to every session as tasks finish, and sessions close as their own calls end).
    The SDK logs it as "Error parsing SSE message" with a Broken- or ClosedResourceError (the reader gone, or
    the stream already closed); any other error still shows."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.getMessage().startswith("Error parsing SSE message") and isinstance(
            exc, anyio.BrokenResourceError | anyio.ClosedResourceError
        ):
            self.count += 1
            return False
        return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the clients --------------------------------------------------------------------------------------------
@dataclass
class Call:
    client: int
    n: int
    started: float = 0.0
    ended: float = 0.0
    progress: list[tuple[float, float | None, str | None]] = field(default_factory=list)
    result: dict[str, Any] | None = None
    error: str | None = None

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def task_id(self) -> str | None:
        return (self.result or {}).get("task_id")

    def own_ids(self) -> set[str]:
        return {str(v) for v in ((self.result or {}).get("task_id"), (self.result or {}).get("runapi_task_id")) if v}


@dataclass
class Session:
    n: int
    calls: list[Call]
    raw_progress: int = 0  # progress notifications the session received, routed or not
    error: str | None = None


async def run_session(session: Session, url: str, token: str, mode: str) -> None:
    async def inbox(message: IncomingMessage) -> None:
        if isinstance(message, ProgressNotification):
            session.raw_progress += 1

    async def one(call: Call, client: Client) -> None:
        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            call.progress.append((progress, total, message))  # this call's own list: routing is checked

        args = {
            "prompt": f"load test: client {call.client} call {call.n}, a lighthouse at dusk",
            "model": MODEL, "aspect_ratio": ASPECT, "output_resolution": RESOLUTION,
            "wait": True, "timeout_s": CALL_TIMEOUT_S,
        }
        call.started = time.monotonic()
        try:
            result = await client.call_tool("generate_image", args, progress_callback=on_progress)
        except Exception as exc:  # a transport or protocol failure fails this call, not the bench
            call.error = f"{type(exc).__name__}: {exc}"
        else:
            if result.is_error:
                call.error = " ".join(getattr(block, "text", "") for block in result.content)[:300]
            call.result = result.structured_content or {}
        call.ended = time.monotonic()

    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=CALL_TIMEOUT_S + 60)
    )
    try:
        async with (
            http,
            Client(streamable_http_client(url, http_client=http), mode=mode, message_handler=inbox) as client,
            anyio.create_task_group() as tg,
        ):
            for call in session.calls:
                tg.start_soon(one, call, client)
    except Exception as exc:
        session.error = f"{type(exc).__name__}: {exc}"


# -- checks -------------------------------------------------------------------------------------------------
def saved(call: Call) -> bool:
    images = (call.result or {}).get("images") or []
    return bool(images) and all(
        isinstance(i, dict) and i.get("path") and Path(i["path"]).is_file() and Path(i["path"]).stat().st_size > 0
        for i in images
    )


def completed(call: Call) -> bool:
    return call.error is None and (call.result or {}).get("status") == "completed" and bool(call.task_id)


def stream_problem(call: Call) -> str | None:
    """Why this call's progress stream is wrong (None: it is right)."""
    values = [p for p, _, _ in call.progress]
    if not values:
        return "no progress at all"
    if any(b <= a for a, b in itertools.pairwise(values)):
        return f"not strictly increasing: {values}"
    last, total, _ = call.progress[-1]
    if total is None or total <= 0 or last != total:
        return f"does not end at progress == total: last {last} of {total}"
    return None


def routing_problem(call: Call) -> str | None:
    """Why a progress message of this call may belong to another (None: all are its own)."""
    messages = [m for _, _, m in call.progress if m is not None]
    if not messages:
        return "no progress message (the first names the task)"
    if not call.task_id or not messages[0].startswith(f"Task {call.task_id}"):
        return f"the first message does not name task {call.task_id}: {messages[0][:120]!r}"
    foreign = {found for m in messages for found in TASK_ID.findall(m)} - call.own_ids()
    return f"names other tasks: {sorted(foreign)}" if foreign else None


def auth_refused(base: str) -> bool:
    """No token: 401 at /mcp; /health open to all."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    headers = {"Accept": "application/json, text/event-stream"}
    refused = httpx.post(f"{base}/mcp", json=body, headers=headers, timeout=10).status_code == 401
    return refused and httpx.get(f"{base}/health", timeout=10).status_code == 200


async def drive(sessions: list[Session], url: str, token: str, mode: str) -> float:
    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        for session in sessions:
            tg.start_soon(run_session, session, url, token, mode)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10, help="MCP sessions, each its own client")
    parser.add_argument("--calls", type=int, default=20, help="generate_image calls at once per session")
    parser.add_argument("--time-scale", type=float, default=0.25, help="simulated task durations x this")
    parser.add_argument("--seed", type=int, default=0, help="seeds the simulated task durations")
    parser.add_argument("--mode", default="legacy", help="the clients' protocol negotiation: legacy, auto, or a "
                        "2026-era version (default legacy: the initialize handshake most clients speak)")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.calls < 1 or not 0 < args.time_scale <= 1:
        parser.error("need --clients >= 1, --calls >= 1 and 0 < --time-scale <= 1")
    if not Path("/proc/self/status").exists():
        parser.error("reads the server's peak RSS from /proc: Linux only")
    logging.basicConfig(level=logging.WARNING)
    for name in ("httpx", "httpx2", "mcp"):
        logging.getLogger(name).setLevel(logging.ERROR)
    late = LateNotifications()
    logging.getLogger("mcp.client.streamable_http").addFilter(late)

    config = SimulatorConfig(
        api_key=KEY, duration_jitter=0.10, time_scale=args.time_scale, seed=args.seed,
        initial_balance_cents=100_000_000, prerender=True,
    )
    sim = RemoteSimulator(config)
    token = secrets.token_urlsafe(24)
    n = args.clients * args.calls
    sessions = [Session(c, [Call(c, i) for i in range(args.calls)]) for c in range(args.clients)]
    server: ServerProcess | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="runapi-load-") as tmp:
            server = ServerProcess(sim.base_url, Path(tmp) / "home", token, free_port())
            server.wait_healthy()
            print(f"load benchmark: {args.clients} sessions x {args.calls} generate_image calls at once over "
                  f"streamable HTTP ({n} in flight), {MODEL} {RESOLUTION} {ASPECT}, tasks of "
                  f"{12 * args.time_scale:.1f} s +-10 %; server pid {server.proc.pid} on {server.base}, "
                  f"simulator pid {sim.pid}", flush=True)
            auth_ok = auth_refused(server.base)
            wall = anyio.run(drive, sessions, f"{server.base}/mcp", token, args.mode)
            calls = [call for session in sessions for call in session.calls]
            done = [c for c in calls if completed(c)]
            with_picture = [c for c in done if saved(c)]
            peak_mb, cpu = server.peak_rss_mb(), server.cpu_s()
            exit_code = server.stop()
        counts = sim.counts()
    finally:
        if server is not None:
            server.stop()
        sim.close()

    streams = {id(c): stream_problem(c) for c in calls}
    routes = {id(c): routing_problem(c) for c in calls}
    task_ids = {c.task_id for c in done}
    callbacks = {s.n: sum(len(c.progress) for c in s.calls) for s in sessions}
    unmatched = {s.n: (s.raw_progress, callbacks[s.n]) for s in sessions if s.raw_progress != callbacks[s.n]}
    times = [c.seconds for c in done]
    first = min(c.started for c in calls)
    last = max(c.ended for c in calls)
    notes = [len(c.progress) for c in calls]

    print()
    print(f"calls: {len(done)} completed of {n}, {len(with_picture)} with the picture saved, "
          f"{len(task_ids)} distinct task ids; upstream {counts['creates']} creates ({counts['tasks']} tasks)")
    for session in sessions:
        if session.error:
            print(f"  session {session.n} failed: {session.error}")
    for call in [c for c in calls if c.error][:5]:
        print(f"  client {call.client} call {call.n}: {call.error}")
    print(f"throughput: {n / (last - first):.1f} calls/s ({n} calls, first sent to last answered in "
          f"{last - first:.1f} s; {wall:.1f} s with connecting and closing the sessions)")
    print(f"call time: p50 {pct(times, 50):.2f} s, p95 {pct(times, 95):.2f} s, max {max(times, default=0):.2f} s")
    print(f"progress: {sum(notes)} notifications, {min(notes, default=0)}-{max(notes, default=0)} per call "
          f"(p50 {pct([float(x) for x in notes], 50):.0f})")
    print(f"server: peak RSS {peak_mb:.0f} MB, CPU {cpu:.1f} s user+sys ({cpu / n * 1000:.0f} ms per call); "
          f"exit code on SIGINT: {exit_code if exit_code is not None else 'none (killed)'}")
    bad_streams = [(c, p) for c in calls if (p := streams[id(c)])]
    bad_routes = [(c, p) for c in calls if (p := routes[id(c)])]
    for call, problem in (bad_streams + bad_routes)[:5]:
        print(f"  client {call.client} call {call.n} ({call.task_id}): {problem}")
    if late.count:
        print(f"  {late.count} notifications reached sessions already closing (the SDK client's GET stream; "
              "after all its calls had answered: no call's progress)")
    if unmatched:
        print(f"  sessions whose raw progress count differs from their callbacks' (raw, callbacks): {unmatched}")

    checks = [
        (f"all {n} calls completed with a task id and the picture saved", len(with_picture) == n),
        (f"{n} distinct tasks, exactly {n} creates upstream", len(task_ids) == n and counts["creates"] == n
         and counts["tasks"] == n),
        ("every progress stream strictly increasing, ending at progress == total", not bad_streams),
        ("every progress message its own call's (first names the task, none names another)", not bad_routes),
        ("no notification lost or misrouted (each session: raw progress == its callbacks')", not unmatched),
        ("no token: 401 at /mcp; /health answers without one", auth_ok),
        ("the server exits cleanly on SIGINT", exit_code == 0),
    ]
    passed = print_checks(checks)
    print_machine(f" (server, simulator and clients share them); time scale {args.time_scale:g}; seed {args.seed}; "
                  f"client mode {args.mode}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
