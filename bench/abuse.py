"""A shared server under a hostile user (issue 14): what the attacker gets, and what another user sees.

    .venv/bin/python bench/abuse.py [--fd-limit 1024] [--sessions 500] [--slow 1100] [--bodies 100] [--rest-s 20]
                                    [--loose]

``runapi-mcp serve --transport http`` runs as its own process, as an operator starts it: per-user OAuth tokens
(JWTs signed by a stand-in issuer on loopback), a fresh ``RUNAPI_MCP_HOME``, logs at INFO to a file, and its
open-file limit set to ``--fd-limit`` (soft and hard, as on a default Linux box). The RunAPI simulator runs in a
child process. Three attacks, one after the other:

- **sessions**: one user opens ``--sessions`` sessions (20 initialize requests at a time), then opens a GET
  stream on each session it still has and tries 50 more; meanwhile another user connects and calls a tool.
- **slow headers**: ``--slow`` connections (from a process of their own) each send a request's headers one
  line a second, reconnecting whenever the server closes them; meanwhile another user makes 5 calls.
- **big bodies**: ``--bodies`` concurrent ``tools/call`` requests of 3.9 MiB each, from 5 users; meanwhile
  another user makes a call. The RSS is read at the peak and ``--rest-s`` seconds after the last answer.

For each: what the attacker got, the other user's call times and whether they succeeded, the server's peak RSS
(``VmHWM``, reset before each attack through ``/proc/<pid>/clear_refs``) and RSS at rest, its open descriptors
and the bytes it wrote to stderr. The other user's call is ``initialize``, ``notifications/initialized`` and
``tools/call list_tasks`` over streamable HTTP, on a connection of its own (a 503 is retried after its
``Retry-After``, as a client should). ``--loose`` sets every limit to its maximum: roughly what the attacks did
before the limits existed (the connection gate at ``accept()`` and the log throttling stay).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import h11
import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from _common import RemoteSimulator, pct, print_checks, print_machine, status_mb
from runapi_mcp.simulator import SimulatorConfig

KEY = "sk-bench-abuse-0123456789abcdef0123"
AUDIENCE = "https://mcp.bench.test/mcp"
ACCEPT = "application/json, text/event-stream"
VERSION = "2025-06-18"
BIG = 3_900 * 1024  # a prompt of 3.9 MiB: the body just under the 4 MiB per-request cap
CAP = 20  # RUNAPI_MCP_MAX_SESSIONS_PER_USER's default
LOOSE = {
    "RUNAPI_MCP_MAX_SESSIONS_PER_USER": "100000",
    "RUNAPI_MCP_SESSION_IDLE_S": "86400",
    "RUNAPI_MCP_HEADER_TIMEOUT_S": "600",
    "RUNAPI_MCP_BODY_TIMEOUT_S": "3600",
    "RUNAPI_MCP_MAX_CONNECTIONS": "1000000",
    "RUNAPI_MCP_BODY_BUDGET_BYTES": str(1 << 40),
    "RUNAPI_MCP_USER_BODY_BUDGET_BYTES": str(1 << 40),
}


# -- the issuer: per-user tokens ---------------------------------------------------------------------------
class Issuer:
    """A stand-in OAuth issuer on loopback: its key set at /jwks.json, and tokens for any subject."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = {**RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True), "kid": "k1", "use": "sig"}
        document = json.dumps({"keys": [jwk]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200 if self.path == "/jwks.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(document)))
                self.end_headers()
                self.wfile.write(document)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def token(self, subject: str) -> str:
        now = int(time.time())
        claims = {"iss": self.url, "aud": AUDIENCE, "sub": subject, "iat": now, "exp": now + 3600}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "k1"})

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- the server process ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``runapi-mcp serve --transport http`` under an open-file limit, its stderr in a file."""

    def __init__(self, env: dict[str, str], stderr: Path, fd_limit: int) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.stderr = stderr

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

        command = [sys.executable, "-m", "runapi_mcp", "serve", "--transport", "http", "--port", str(self.port)]
        with stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=err, preexec_fn=limit
            )
        deadline = time.monotonic() + 30
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{stderr.read_text()[-2000:]}")
            time.sleep(0.05)

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def mb(self, name: str) -> float:
        return status_mb(name, self.proc.pid) or 0.0

    def reset_peak(self) -> None:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stderr_bytes(self) -> int:
        return self.stderr.stat().st_size

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Watch:
    """What a scenario did to the server: RSS at its start, peak and rest, descriptors, stderr bytes."""

    server: Server
    start_mb: float = 0.0
    peak_mb: float = 0.0
    rest_mb: float = 0.0
    fds_max: int = 0
    stderr_start: int = 0
    stderr_bytes: int = 0

    @contextmanager
    def around(self) -> Iterator[Watch]:
        self.server.reset_peak()
        self.start_mb = self.server.mb("VmRSS")
        self.stderr_start = self.server.stderr_bytes()
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.1):
                try:
                    self.fds_max = max(self.fds_max, self.server.fds())
                except OSError:
                    return

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            self.peak_mb = self.server.mb("VmHWM")
            self.stderr_bytes = self.server.stderr_bytes() - self.stderr_start

    def rest(self) -> None:
        self.rest_mb = self.server.mb("VmRSS")

    def line(self) -> str:
        return (
            f"server RSS {self.start_mb:.0f} MB at the start, peak {self.peak_mb:.0f} MB, {self.rest_mb:.0f} MB at "
            f"rest; at most {self.fds_max} descriptors open; {self.stderr_bytes} bytes to stderr"
        )


# -- clients -----------------------------------------------------------------------------------------------
def sse_messages(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.startswith("data:") and line[5:].strip():
            out.append(json.loads(line[5:]))
    return out


@dataclass
class Outcome:
    ok: bool
    seconds: float
    note: str = ""


async def other_users_call(base: str, token: str, *, retry_for: float = 10.0) -> Outcome:
    """initialize, initialized and tools/call list_tasks on a connection of its own; 503s retried."""
    started = time.monotonic()
    auth = {"Authorization": f"Bearer {token}", "Accept": ACCEPT}
    note = ""
    while True:
        try:
            async with httpx.AsyncClient(base_url=base, headers=auth, timeout=30) as http:
                hello = {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "bob", "version": "1"}}
                init = await http.post(
                    "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello}
                )
                if init.status_code == 503 and time.monotonic() - started < retry_for:
                    note = "retried after a 503"
                    await anyio.sleep(float(init.headers.get("retry-after", "1")))
                    continue
                if init.status_code != 200:
                    return Outcome(False, time.monotonic() - started, f"initialize: HTTP {init.status_code}")
                session = {"mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": VERSION}
                await http.post("/mcp", headers=session, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
                params = {"name": "list_tasks", "arguments": {}}
                call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params}
                answer = await http.post("/mcp", headers=session, json=call)
                messages = [m for m in sse_messages(answer.text) if m.get("id") == 2]
                ok = bool(messages) and "result" in messages[0] and not messages[0]["result"].get("isError")
                return Outcome(ok, time.monotonic() - started, note or ("" if ok else answer.text[:100]))
        except httpx.HTTPError as exc:
            if time.monotonic() - started > retry_for:
                return Outcome(False, time.monotonic() - started, f"{type(exc).__name__}: {exc}"[:100])
            note = f"retried after {type(exc).__name__}"
            await anyio.sleep(0.5)


async def initialize(http: httpx.AsyncClient) -> httpx.Response:
    hello = {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "mallory", "version": "1"}}
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello}
    return await http.post("/mcp", json=body, headers={"Accept": ACCEPT})


def describe(outcomes: list[Outcome]) -> str:
    times = [o.seconds for o in outcomes]
    ok = sum(o.ok for o in outcomes)
    notes = sorted({o.note for o in outcomes if o.note})
    return (
        f"{ok}/{len(outcomes)} succeeded, {' '.join(f'{t:.2f}' for t in times)} s"
        + (f" (p50 {pct(times, 50):.2f} s)" if len(times) > 2 else "")
        + (f"; {'; '.join(notes)}" if notes else "")
    )


# -- 1. sessions -------------------------------------------------------------------------------------------
@dataclass
class SessionsResult:
    opened: Counter[int] = field(default_factory=Counter)
    alive: int = 0
    closed: int = 0
    busy_tries: Counter[int] = field(default_factory=Counter)
    refusal: str = ""
    other: list[Outcome] = field(default_factory=list)


async def sessions_attack(server: Server, issuer: Issuer, count: int) -> SessionsResult:
    result = SessionsResult()
    auth = {"Authorization": f"Bearer {issuer.token('mallory')}"}
    limits = httpx.Limits(max_connections=40, max_keepalive_connections=40)
    async with httpx.AsyncClient(base_url=server.base, headers=auth, timeout=30, limits=limits) as http:
        ids: list[str] = []
        gate = anyio.Semaphore(20)

        async def open_one() -> None:
            async with gate:
                answer = await initialize(http)
            result.opened[answer.status_code] += 1
            if answer.status_code == 200:
                ids.append(answer.headers["mcp-session-id"])

        async with anyio.create_task_group() as tg:
            for _ in range(count):
                tg.start_soon(open_one)
        ping = {"jsonrpc": "2.0", "id": 9, "method": "ping"}
        alive = []
        for session_id in ids:
            headers = {"mcp-session-id": session_id, "mcp-protocol-version": VERSION, "Accept": ACCEPT}
            if (await http.post("/mcp", json=ping, headers=headers)).status_code == 200:
                alive.append(headers)
        result.alive, result.closed = len(alive), len(ids) - len(alive)
        async with AsyncExitStack() as streams:
            # Every session it has (at most the cap's worth), busy: a GET stream open on each.
            getter = await streams.enter_async_context(
                httpx.AsyncClient(base_url=server.base, headers=auth, timeout=30, limits=httpx.Limits())
            )
            for headers in alive[:CAP]:
                await streams.enter_async_context(getter.stream("GET", "/mcp", headers=headers))
            for _ in range(50):
                answer = await initialize(http)
                result.busy_tries[answer.status_code] += 1
                if answer.status_code == 429:
                    result.refusal = answer.json()["error"]["message"]
            result.other.append(await other_users_call(server.base, issuer.token("bob")))
    return result


# -- 2. slow headers ---------------------------------------------------------------------------------------
SLOW_HEADERS = Path(__file__).with_name("slow_headers.py")  # the clients, a script of their own


async def slow_headers_attack(server: Server, issuer: Issuer, count: int) -> tuple[dict[str, int], list[Outcome]]:
    attack = subprocess.Popen(  # noqa: ASYNC220 - started once; its pipes are read off the event loop
        [sys.executable, str(SLOW_HEADERS), str(server.port), str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert attack.stdin is not None and attack.stdout is not None
    outcomes = []
    try:
        with anyio.fail_after(60):
            ready = await anyio.to_thread.run_sync(attack.stdout.readline)
        if ready.strip() != "ready":
            raise RuntimeError(f"the slow-header clients did not start: {ready!r}")
        await anyio.sleep(2)  # each a line or two into its headers
        for _ in range(5):
            outcomes.append(await other_users_call(server.base, issuer.token("bob")))
        out, _ = attack.communicate("", timeout=30)
    finally:
        if attack.poll() is None:
            attack.kill()
    return json.loads(out.strip().splitlines()[-1]), outcomes


# -- 3. big bodies -----------------------------------------------------------------------------------------
async def big_call(port: int, headers: dict[str, str], call_id: int, filler: bytes) -> int | str:
    """A ~3.9 MiB tools/call on a raw socket of its own (the filler sent as it is, never copied): its status."""
    message = {"jsonrpc": "2.0", "id": call_id, "method": "tools/call"}
    message["params"] = {"name": "generate_image", "arguments": {"prompt": "@@"}}
    head, tail = json.dumps(message).encode().split(b"@@")
    fields = {
        "Host": f"127.0.0.1:{port}",
        "Content-Type": "application/json",
        "Content-Length": str(len(head) + len(filler) + len(tail)),
        **headers,
    }
    conn = h11.Connection(h11.CLIENT)
    loop = asyncio.get_running_loop()
    try:
        with socket.socket() as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            request = h11.Request(method="POST", target="/mcp", headers=list(fields.items()))
            await loop.sock_sendall(sock, conn.send(request) or b"")
            for part in (head, filler, tail):
                for chunk in conn.send_with_data_passthrough(h11.Data(data=part)) or []:
                    await loop.sock_sendall(sock, chunk)
            conn.send(h11.EndOfMessage())
            status = 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await loop.sock_recv(sock, 65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return status
    except (OSError, h11.ProtocolError) as exc:
        return type(exc).__name__


async def big_bodies_attack(server: Server, issuer: Issuer, count: int) -> tuple[Counter[int | str], list[Outcome]]:
    filler = b"x" * BIG
    sessions = []
    for n in range(5):
        auth = {"Authorization": f"Bearer {issuer.token(f'mallory-{n}')}"}
        async with httpx.AsyncClient(base_url=server.base, headers=auth, timeout=30) as http:
            init = await initialize(http)
        session = {"mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": VERSION}
        sessions.append({**auth, **session, "Accept": ACCEPT})
    statuses: Counter[int | str] = Counter()
    outcomes: list[Outcome] = []

    async def attack(n: int) -> None:
        statuses[await big_call(server.port, sessions[n % len(sessions)], 100 + n, filler)] += 1

    async def other() -> None:
        await anyio.sleep(0.2)
        outcomes.append(await other_users_call(server.base, issuer.token("bob")))

    async with anyio.create_task_group() as tg:
        for n in range(count):
            tg.start_soon(attack, n)
        tg.start_soon(other)
    return statuses, outcomes


# -- the run -----------------------------------------------------------------------------------------------
async def run(args: argparse.Namespace, server: Server, issuer: Issuer) -> list[tuple[str, bool]]:
    checks: list[tuple[str, bool]] = []
    baseline = [await other_users_call(server.base, issuer.token("bob")) for _ in range(3)]
    print(f"\nbefore any attack, the other user's call: {describe(baseline)}")
    usual = pct([o.seconds for o in baseline], 50)

    print(f"\n[sessions] one user opens {args.sessions} sessions, 20 at a time; then a GET stream on each it has, "
          "and 50 more")  # fmt: skip
    with Watch(server).around() as watch:
        sessions = await sessions_attack(server, issuer, args.sessions)
    await anyio.sleep(2)
    watch.rest()
    print(f"  attacker: initialize answered {dict(sessions.opened)}; of those sessions {sessions.alive} still "
          f"open, {sessions.closed} closed to make room; with every one busy, 50 more: "
          f"{dict(sessions.busy_tries)}")  # fmt: skip
    if sessions.refusal:
        print(f"  refusal: {sessions.refusal}")
    print(f"  other user: {describe(sessions.other)}")
    print(f"  {watch.line()}")
    checks += [
        (f"sessions: the attacker holds at most {CAP} sessions", sessions.alive <= CAP),
        ("sessions: with all of its sessions busy, the attacker's next ones are refused (429)",
         sessions.busy_tries.get(429, 0) == 50),
        ("sessions: the other user's session and call succeed", all(o.ok for o in sessions.other)),
    ]  # fmt: skip

    print(f"\n[slow headers] {args.slow} connections sending headers one line a second, reconnecting when closed; "
          f"the server's open-file limit is {args.fd_limit}")  # fmt: skip
    with Watch(server).around() as watch:
        seen, slow = await slow_headers_attack(server, issuer, args.slow)
    await anyio.sleep(2)
    watch.rest()
    print(f"  attacker: {seen['connections']} connections made, {seen['closed_by_server']} closed by the server "
          f"({seen['408']} with 408, {seen['503']} with 503), {seen['connect_failed']} connects failed")  # fmt: skip
    print(f"  other user, 5 calls during the attack: {describe(slow)}")
    print(f"  {watch.line()}")
    checks += [
        ("slow headers: the other user's 5 calls succeed, each within 10 s",
         all(o.ok and o.seconds < 10 for o in slow)),
        (f"slow headers: the server stays under its {args.fd_limit} descriptors", watch.fds_max < args.fd_limit),
        ("slow headers: under 100 KB of stderr during the attack", watch.stderr_bytes < 100_000),
    ]  # fmt: skip

    print(f"\n[big bodies] {args.bodies} concurrent tools/call of 3.9 MiB from 5 users; RSS {args.rest_s:g} s later")
    with Watch(server).around() as watch:
        statuses, big = await big_bodies_attack(server, issuer, args.bodies)
    await anyio.sleep(args.rest_s)
    watch.rest()
    print(f"  attacker: {dict(statuses)} (200: handled, 503: over the body budget, with Retry-After)")
    print(f"  other user: {describe(big)}")
    print(f"  {watch.line()}")
    answered = sum(n for status, n in statuses.items() if status in (200, 503))
    checks += [
        (f"big bodies: all {args.bodies} calls answered (200 or 503), none dropped", answered == args.bodies),
        ("big bodies: the other user's call succeeds", all(o.ok for o in big)),
        ("big bodies: peak RSS under 600 MB", watch.peak_mb < 600),
        (f"big bodies: {args.rest_s:g} s later, RSS within 200 MB of the start", watch.rest_mb < watch.start_mb + 200),
    ]  # fmt: skip
    print(f"\n(the other user's usual call: {usual:.2f} s)")
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fd-limit", type=int, default=1024, help="the server's open-file limit (soft and hard)")
    parser.add_argument("--sessions", type=int, default=500, help="sessions the first attacker opens")
    parser.add_argument("--slow", type=int, default=1100, help="slow-header connections")
    parser.add_argument("--bodies", type=int, default=100, help="concurrent 3.9 MiB calls")
    parser.add_argument("--rest-s", type=float, default=20.0, help="seconds after the bodies to read RSS at rest")
    parser.add_argument("--loose", action="store_true", help="every limit at its maximum (before the limits)")
    args = parser.parse_args(argv)
    if not Path("/proc/self/status").exists():
        parser.error("reads the server's RSS and descriptors from /proc: Linux only")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.slow + 200 and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process holds the attack's sockets
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.ERROR)

    sim = RemoteSimulator(SimulatorConfig(api_key=KEY, time_scale=0.05, prerender=True))
    issuer = Issuer()
    server: Server | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="runapi-abuse-") as tmp:
            env = {
                "RUNAPI_API_KEY": KEY,
                "RUNAPI_BASE_URL": sim.base_url,
                "RUNAPI_MCP_HOME": str(Path(tmp) / "home"),
                "RUNAPI_MCP_ALLOWED_DIRS": tmp,
                "RUNAPI_MCP_LOG_LEVEL": "INFO",
                "RUNAPI_MCP_JWT_ISSUER": issuer.url,
                "RUNAPI_MCP_JWT_AUDIENCE": AUDIENCE,
                "RUNAPI_MCP_JWT_JWKS_URL": f"{issuer.url}/jwks.json",
                **(LOOSE if args.loose else {}),
            }
            started = time.monotonic()
            server = Server(env, Path(tmp) / "stderr.log", args.fd_limit)
            limits = "every limit at its maximum" if args.loose else "default limits"
            print(f"abuse benchmark: server pid {server.proc.pid} on {server.base} (open files {args.fd_limit}, "
                  f"{limits}), simulator pid {sim.pid}")  # fmt: skip
            checks = anyio.run(run, args, server, issuer)
            total_stderr = server.stderr_bytes()
            server.stop()
            print(f"stderr: {total_stderr} bytes in all; run took {time.monotonic() - started:.0f} s")
    finally:
        if server is not None:
            server.stop()
        issuer.close()
        sim.close()
    passed = print_checks(checks)
    print_machine(f" (server, simulator and attackers share them); open files {args.fd_limit}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
