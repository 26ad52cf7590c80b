"""The shared server under abuse (issue 14): each attack replayed over real HTTP on loopback.

- one user opening session after session, while another user connects and calls a tool;
- a flood of connections sending headers one line a second, under a 256-descriptor limit (a subprocess),
  while another client's call completes;
- 100 concurrent 3.9 MiB request bodies (a subprocess: its peak RSS is read from /proc);
- the SSE streams' priming event and ``retry`` field (SEP-1699), and a replay that stays in its session.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import h11
import httpx
import pytest

from runapi_mcp.app import App, open_app
from runapi_mcp.http.app import HttpOptions
from runapi_mcp.http.serve import RunningServer, http_server
from runapi_mcp.simulator import Simulator
from tests.support import FAST_POLICY, free_port, healthy, make_settings, server_env, until, wait_until
from tests.test_auth_tokens import AUDIENCE, JWKS_PATH, Issuer, Keys, issuer, keys
from tests.test_http import TOKEN
from tests.test_http_users import connect as connect_user
from tests.test_http_users import token_for

pytestmark = pytest.mark.anyio

__all__ = ["issuer", "keys"]  # fixtures, defined beside the verifier's own tests

ACCEPT = "application/json, text/event-stream"
HELLO = {"capabilities": {}, "clientInfo": {"name": "abuse", "version": "1"}}


@asynccontextmanager
async def serving(
    sim: Simulator, home: Path, inputs: Path, issuer: Issuer | None = None, **overrides: Any
) -> AsyncIterator[tuple[App, RunningServer, str]]:
    if issuer is not None:
        overrides |= {"jwt_issuer": issuer.url, "jwt_audience": AUDIENCE, "jwt_jwks_url": issuer.url + JWKS_PATH}
    else:
        overrides.setdefault("auth_token", TOKEN)
    settings = make_settings(sim, home, inputs, **overrides)
    options = HttpOptions(port=0, jwt_issuer=settings.jwt_issuer)
    async with open_app(settings, policy=FAST_POLICY) as app, http_server(app, options, settings) as running:
        yield app, running, f"http://127.0.0.1:{running.port}"


async def initialize(http: httpx.AsyncClient, version: str = "2025-06-18") -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": version, **HELLO}}
    return await http.post("/mcp", json=body, headers={"Accept": ACCEPT})


def session_headers(answer: httpx.Response, version: str = "2025-06-18") -> dict[str, str]:
    return {"mcp-session-id": answer.headers["mcp-session-id"], "mcp-protocol-version": version, "Accept": ACCEPT}


def sse_events(text: str) -> list[dict[str, str]]:
    """The events of an SSE body, each as its fields (``data`` lines joined)."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            fields[name] = fields[name] + "\n" + value if name in fields and name == "data" else value
        if fields:
            events.append(fields)
    return events


# -- 1. sessions per user ------------------------------------------------------------------------------
async def test_one_user_cannot_fill_the_session_slots(
    sim: Simulator, home: Path, inputs: Path, issuer: Issuer, keys: Keys
) -> None:
    cap = 5
    alice = {"Authorization": f"Bearer {token_for(keys, issuer, 'alice')}"}
    bob_token = token_for(keys, issuer, "bob")
    async with (
        serving(sim, home, inputs, issuer, max_sessions_per_user=cap) as (_, _, base),
        httpx.AsyncClient(base_url=base, headers=alice, timeout=30) as http,
        AsyncExitStack() as streams,
    ):
        # Alice opens cap + 10 sessions: each opens (her least recently used idle one closes to make room).
        opened = []
        for _ in range(cap + 10):
            answer = await initialize(http)
            assert answer.status_code == 200, answer.text
            opened.append(session_headers(answer))
        ping = {"jsonrpc": "2.0", "id": 7, "method": "ping"}
        alive = [(await http.post("/mcp", json=ping, headers=h)).status_code for h in opened]
        assert alive == [404] * 10 + [200] * cap, alive  # she holds `cap`, the newest
        # Each of her sessions now busy (a GET stream open): her next session is refused, saying why.
        for headers in opened[-cap:]:
            get = await streams.enter_async_context(http.stream("GET", "/mcp", headers=headers))
            assert get.status_code == 200
        refused = await initialize(http)
        assert refused.status_code == 429 and refused.headers["retry-after"]
        error = refused.json()["error"]
        assert "RUNAPI_MCP_MAX_SESSIONS_PER_USER=5" in error["message"] and error["code"] == -32000
        # The legacy SSE transport: the same cap on her streams.
        for _ in range(cap):
            sse = await streams.enter_async_context(http.stream("GET", "/sse"))
            assert sse.status_code == 200
        assert (await http.get("/sse")).status_code == 429
        # Bob is untouched: a session and a tool call, over each transport.
        for transport in ("streamable-http", "sse"):
            async with connect_user(base, bob_token, transport) as bob:
                assert not (await bob.call_tool("list_tasks", {})).is_error
        # ...and nothing of Alice's was closed to make room for him.
        for headers in opened[-cap:]:
            assert (await http.post("/mcp", json=ping, headers=headers)).status_code == 200


async def test_incomplete_requests_and_idle_sessions_time_out(
    sim: Simulator, home: Path, inputs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(sim, home, inputs, header_timeout_s=1, body_timeout_s=1, session_idle_s=1) as (_, _, base):
        port = int(base.rsplit(":", 1)[1])
        auth = {"Authorization": f"Bearer {TOKEN}"}
        ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
        async with httpx.AsyncClient(base_url=base, headers=auth) as http:
            session = session_headers(await initialize(http))
            idle = session_headers(await initialize(http))
            assert (await http.post("/mcp", json=ping, headers=idle)).status_code == 200
            idle_since = time.monotonic()

        def request_head(method: str, path: str, headers: dict[str, str]) -> bytes:
            lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in headers.items())]
            return ("\r\n".join(lines) + "\r\n\r\n").encode()

        def scenario(what: str) -> tuple[float, bytes]:
            """Start an incomplete request; how long until the server answers or closes, and what it says."""
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                if what == "body":  # a request whose body never ends
                    fields = {**auth, **session, "Content-Type": "application/json", "Content-Length": "1000"}
                    conn.sendall(request_head("POST", "/mcp", fields) + b'{"jsonrpc"')
                elif what == "kept alive":  # one request answered, then headers that never end
                    conn.sendall(request_head("GET", "/health", {}))
                    answered = b""
                    while b'"version"' not in answered:
                        answered += conn.recv(4096)
                    conn.sendall(b"GET /health HTTP/1.1\r\nX-Slow: 1\r\n")
                started = time.monotonic()  # "silent": connected, nothing sent
                answer = conn.recv(4096)
                return time.monotonic() - started, answer

        results: dict[str, tuple[float, bytes]] = {}

        async def run(what: str) -> None:
            results[what] = await anyio.to_thread.run_sync(scenario, what)

        async with anyio.create_task_group() as tg:
            for what in ("body", "kept alive", "silent"):
                tg.start_soon(run, what)
        # A session with nothing in flight for session_idle_s is gone. Real time: the HTTP layer's idle timer
        # runs on the event loop's clock, and asking about the session before then would keep it alive.
        await anyio.sleep(max(0.0, idle_since + 1.3 - time.monotonic()))
        async with httpx.AsyncClient(base_url=base, headers=auth) as http:
            assert (await http.post("/mcp", json=ping, headers=idle)).status_code == 404
    assert all(took < 2.5 for took, _ in results.values()), results
    assert results["body"][1] == b"" and results["silent"][1] == b""  # closed
    assert results["kept alive"][1].startswith(b"HTTP/1.1 408"), results
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


async def test_the_body_budget_counts_chunked_bodies_as_they_come(sim: Simulator, home: Path, inputs: Path) -> None:
    budget = 64 * 1024
    auth = {"Authorization": f"Bearer {TOKEN}", "Accept": ACCEPT, "Content-Type": "application/json"}
    hello = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", **HELLO}}

    async def chunked(data: bytes) -> AsyncIterator[bytes]:  # no Content-Length: httpx sends it chunked
        for start in range(0, len(data), 8192):
            yield data[start : start + 8192]

    async with (
        serving(sim, home, inputs, user_body_budget_bytes=budget) as (_, _, base),
        httpx.AsyncClient(base_url=base, headers=auth, timeout=30) as http,
    ):
        small = await http.post("/mcp", content=chunked(json.dumps(hello).encode()))
        assert small.status_code == 200 and small.headers["mcp-session-id"]
        big = json.dumps({**hello, "padding": "x" * 2 * budget}).encode()
        over = await http.post("/mcp", content=chunked(big))
        assert over.status_code == 503 and over.headers["retry-after"] == "1"
        assert "RUNAPI_MCP_USER_BODY_BUDGET_BYTES" in over.json()["error"]["message"]
        declared = await http.post("/mcp", content=big)  # with its Content-Length: larger than the whole budget
        assert declared.status_code == 413


# -- 9. SSE priming events ----------------------------------------------------------------------------
async def test_sse_streams_start_with_a_priming_event(sim: Simulator, home: Path, inputs: Path) -> None:
    version = "2025-11-25"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        serving(sim, home, inputs) as (_, _, base),
        httpx.AsyncClient(base_url=base, headers=auth, timeout=30) as http,
    ):
        answer = await initialize(http, version)
        assert answer.headers["content-type"].startswith("text/event-stream")
        headers = session_headers(answer, version)
        await http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "list_tasks", "arguments": {}}}
        answered = await http.post("/mcp", json=call, headers=headers)
        first, *rest = sse_events(answered.text)
        assert first["id"] and first["data"] == "" and first["retry"] == "3000", first
        assert json.loads(rest[0]["data"])["id"] == 2
        # The priming event's id resumes the stream: the answer is replayed after it...
        resume = {**headers, "Last-Event-ID": first["id"]}
        async with http.stream("GET", "/mcp", headers=resume) as replay:
            async for line in replay.aiter_lines():
                if line.startswith("data:") and line[5:].strip():
                    assert json.loads(line[5:])["id"] == 2
                    break
        # ...and only in its own session: another session replays nothing of it.
        other = session_headers(await initialize(http, version), version)
        with anyio.move_on_after(1):
            async with http.stream("GET", "/mcp", headers={**other, "Last-Event-ID": first["id"]}) as foreign:
                assert '"id":2' not in (await foreign.aread()).decode()
        # The legacy SSE stream: its first event carries the retry field.
        async with http.stream("GET", "/sse") as legacy:
            head = ""
            async for chunk in legacy.aiter_text():
                head += chunk
                if "\n\n" in head.replace("\r\n", "\n"):
                    break
        endpoint = sse_events(head)[0]
        assert endpoint["event"] == "endpoint" and endpoint["retry"] == "3000", endpoint


# -- 2 and 3: a server process of its own (a real descriptor limit, a real RSS) --------------------------------------------------------------
def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 256))  # soft 128: the server raises it to the hard 256


@contextmanager
def server_process(env: dict[str, str], stderr: Path, *, low_fd_limit: bool = False) -> Iterator[tuple[int, str]]:
    """``runapi-mcp serve --transport http`` as a subprocess: (pid, base URL)."""
    port = free_port()
    command = [sys.executable, "-m", "runapi_mcp", "serve", "--transport", "http", "--port", str(port)]
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=err,
            preexec_fn=_low_fd_limit if low_fd_limit else None,
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def started() -> bool:
            assert proc.poll() is None, stderr.read_text()[-2000:]
            return healthy(base)

        wait_until(started, "the server to start", 20)
        yield proc.pid, base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _status_kb(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {name}")


async def tool_call(base: str, token: str, tool: str, arguments: dict[str, Any], *, retry_for: float = 0) -> float:
    """initialize, initialized, tools/call on one connection; how long it took. A 503 is retried after its
    Retry-After (as a client should) for up to ``retry_for`` seconds."""
    started = time.monotonic()
    auth = {"Authorization": f"Bearer {token}"}
    while True:
        try:
            async with httpx.AsyncClient(base_url=base, headers=auth, timeout=20) as http:
                answer = await initialize(http)
                if answer.status_code == 503 and time.monotonic() - started < retry_for:
                    # Real time: a client honouring Retry-After is part of what the abuse tests measure.
                    await anyio.sleep(float(answer.headers.get("retry-after", "1")))
                    continue
                headers = session_headers(answer)
                await http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
                call = {
                    "jsonrpc": "2.0",
                    "id": 2,
                    "method": "tools/call",
                    "params": {"name": tool, "arguments": arguments},
                }
                result = await http.post("/mcp", json=call, headers=headers)
                message = json.loads([e for e in sse_events(result.text) if e.get("data")][-1]["data"])
                assert not message["result"].get("isError"), message
                return time.monotonic() - started
        except httpx.TransportError:
            if time.monotonic() - started > retry_for:
                raise
            await anyio.sleep(0.5)  # a client's pause before reconnecting to a server (a subprocess) under attack


# Clients sending a request's headers one line a second, reconnecting when the server closes them (the script
# bench/abuse.py runs too).
SLOW_HEADERS = Path(__file__).resolve().parents[1] / "bench" / "slow_headers.py"


async def slow_headers(pid: int, base: str, token: str) -> dict[str, Any]:
    """400 slow-header clients (more than the server's descriptors), reconnecting whenever closed, while
    another client makes a call. (The header deadline itself: ``test_incomplete_requests_and_idle_...``.)"""
    port = base.rsplit(":", 1)[1]
    # Each client waits 0.25 s before reconnecting (bench/abuse.py's reconnect at once).
    attack = subprocess.Popen(
        [sys.executable, str(SLOW_HEADERS), port, "400", "0.25"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert attack.stdin is not None and attack.stdout is not None
    figures: dict[str, Any] = {"took": [], "fds": []}
    try:
        assert await anyio.to_thread.run_sync(attack.stdout.readline) == "ready\n"
        # Real time: the attack is clients trickling a header line a second; each a line or two into it.
        await anyio.sleep(1)
        figures["took"].append(await tool_call(base, token, "list_tasks", {}, retry_for=8))
        figures["fds"].append(len(os.listdir(f"/proc/{pid}/fd")))
        out, _ = attack.communicate("", timeout=20)
    finally:
        if attack.poll() is None:
            attack.kill()
    figures["attacker"] = json.loads(out)
    return figures


# -- 3. request bodies in parallel ----------------------------------------------------------------------
BIG = 3_900 * 1024  # bytes of prompt: a 3.9 MiB request body, just under the 4 MiB per-request cap


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def big_call(port: int, headers: dict[str, str], call_id: int, filler: bytes) -> Answer:
    """A tools/call whose body is ~3.9 MiB, on a raw socket of its own: the filler (the same bytes for every
    call) is sent as it is, never copied, so the 100 calls cost this process little."""
    message = {"jsonrpc": "2.0", "id": call_id, "method": "tools/call"}
    message["params"] = {"name": "generate_image", "arguments": {"prompt": "@@"}}
    head, tail = json.dumps(message).encode().split(b"@@")
    length = len(head) + len(filler) + len(tail)
    fields = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json", "Content-Length": str(length)}
    conn = h11.Connection(h11.CLIENT)
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(
            sock,
            conn.send(h11.Request(method="POST", target="/mcp", headers=[*fields.items(), *headers.items()])) or b"",
        )
        for part in (head, filler, tail):
            for chunk in conn.send_with_data_passthrough(h11.Data(data=part)) or []:
                await loop.sock_sendall(sock, chunk)
        conn.send(h11.EndOfMessage())
        answer = Answer(0, {}, b"")
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await loop.sock_recv(sock, 65536))
            elif isinstance(event, h11.Response):
                answer.status = event.status_code
                answer.headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                answer.body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return answer


async def big_bodies(pid: int, base: str, attackers: list[str], token: str) -> dict[str, Any]:
    """100 concurrent 3.9 MiB calls, from ``attackers`` in turn, while another user makes a call."""
    port = int(base.rsplit(":", 1)[1])
    filler = b"x" * BIG
    figures: dict[str, Any] = {"start_kb": _status_kb(pid, "VmRSS"), "answers": [], "took": []}
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak (VmHWM) from here
    sessions = []
    for attacker in attackers:
        auth = {"Authorization": f"Bearer {attacker}"}
        async with httpx.AsyncClient(base_url=base, headers=auth, timeout=30) as http:
            sessions.append({**auth, **session_headers(await initialize(http))})

    async def attack(n: int) -> None:
        try:
            figures["answers"].append(await big_call(port, sessions[n % len(sessions)], 100 + n, filler))
        except OSError as exc:
            figures["answers"].append(exc)

    async def other() -> None:
        await anyio.sleep(0.2)  # real time: the other user comes once the 100 bodies are streaming in
        figures["took"].append(await tool_call(base, token, "list_tasks", {}))

    async with anyio.create_task_group() as tg:
        for n in range(100):
            tg.start_soon(attack, n)
        tg.start_soon(other)
    figures["peak_kb"] = _status_kb(pid, "VmHWM")
    # The heap is trimmed a second after the last body: back near where it started.
    limit = figures["start_kb"] + 200 * 1024
    await until(lambda: _status_kb(pid, "VmRSS") < limit, "the heap trimmed after the last body", 5, every=0.1)
    figures["rest_kb"] = _status_kb(pid, "VmRSS")
    return figures


async def test_one_server_process_under_a_low_descriptor_limit(
    sim: Simulator, home: Path, inputs: Path, tmp_path: Path, issuer: Issuer, keys: Keys
) -> None:
    """Slow headers, then 100 big bodies, against one ``runapi-mcp serve`` process whose open-file limit is
    256 (its soft limit starts at 128: the server raises it to the hard one)."""
    env = server_env(
        sim, home, inputs, RUNAPI_MCP_LOG_LEVEL="INFO", RUNAPI_MCP_HEADER_TIMEOUT_S="3",
        RUNAPI_MCP_JWT_ISSUER=issuer.url, RUNAPI_MCP_JWT_AUDIENCE=AUDIENCE,
        RUNAPI_MCP_JWT_JWKS_URL=issuer.url + JWKS_PATH,
    )  # fmt: skip
    stderr = tmp_path / "stderr.log"
    bob = token_for(keys, issuer, "bob")
    attackers = [token_for(keys, issuer, f"mallory-{n}") for n in range(5)]  # 5 users, 20 calls each
    with server_process(env, stderr, low_fd_limit=True) as (pid, base):
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert any(line.split()[3:5] == ["256", "256"] for line in limits.splitlines() if "open files" in line)
        slow = await slow_headers(pid, base, bob)
        after_slow = stderr.stat().st_size
        bodies = await big_bodies(pid, base, attackers, bob)
        assert await anyio.to_thread.run_sync(lambda: httpx.get(f"{base}/health").status_code) == 200
    log = stderr.read_text()
    answers = bodies["answers"]
    statuses = Counter(a.status if isinstance(a, Answer) else type(a).__name__ for a in answers)
    print(f"\nslow headers: attacker {slow['attacker']}; the other user's calls took "
          f"{[round(t, 2) for t in slow['took']]} s; server descriptors {slow['fds']}; stderr {after_slow} bytes"
          f"\nbig bodies: {dict(statuses)}; the other user's call {bodies['took'][0]:.2f} s; RSS "
          f"{bodies['start_kb'] // 1024} MB at the start, peak {bodies['peak_kb'] // 1024} MB, "
          f"{bodies['rest_kb'] // 1024} MB once trimmed; stderr {len(log)} bytes in all")  # fmt: skip
    # Slow headers: the other user is served; the server never runs out of descriptors, nor floods its log.
    assert max(slow["took"]) < 10 and max(slow["fds"]) < 256
    assert slow["attacker"]["connections"] > 400 and slow["attacker"]["closed_by_server"] > 0
    # Big bodies: every call answered (a 503 with Retry-After over the budget), memory bounded.
    busy = [a for a in answers if isinstance(a, Answer) and a.status == 503]
    assert set(statuses) == {200, 503}, statuses
    assert busy and all(a.headers["retry-after"] == "1" for a in busy)
    assert "RUNAPI_MCP_BODY_BUDGET_BYTES" in json.loads(busy[0].body)["error"]["message"]
    served = [a for a in answers if isinstance(a, Answer) and a.status == 200]
    assert all(json.loads(sse_events(a.body.decode())[-1]["data"])["id"] >= 100 for a in served)
    assert bodies["took"][0] < 10
    assert bodies["peak_kb"] < 600 * 1024
    assert bodies["rest_kb"] < bodies["start_kb"] + 200 * 1024
    assert len(log) < 20_000 and "Traceback" not in log, log[-3000:]
