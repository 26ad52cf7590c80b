"""The container image: the Dockerfile's invariants and its healthcheck (anywhere), then the image itself
built and run (stdio and streamable HTTP, against the session simulator) where a container engine runs.

The engine tests use ``--network host``: the container reaches the simulator on the host's loopback, and
the HTTP test reaches the container's port without publishing it. Set ``CONTAINER_ENGINE=podman`` to use
Podman. Without a running engine (``docker info`` fails) they are skipped at once, with the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from runapi_mcp.simulator import Simulator
from tests.support import SIM_KEY, RawStdioServer, free_port, text_of, wait_until

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"
ENGINE = os.environ.get("CONTAINER_ENGINE", "docker")
TOKEN = "test-bearer-token-3f9c2a71d4e8b605"
TEST_PACKAGES = ("pytest", "hypothesis", "ruff", "mypy")


# -- the Dockerfile, parsed -------------------------------------------------------------------------------
@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> tuple[list[Instruction], list[Stage]]:
    """Instructions (continuations joined, comments dropped) and the stages they make up."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):  # comments may sit inside a continuation too
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), " ".join(args.split())))
        pending = ""
    assert not pending, "a continuation runs off the end of the Dockerfile"
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = [w for w in instruction.args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name, []))
        elif stages:
            stages[-1].instructions.append(instruction)
    return instructions, stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def test_the_dockerfile_is_multi_stage_and_the_runtime_holds_only_the_wheel() -> None:
    instructions, stages = parse_dockerfile(DOCKERFILE.read_text("utf-8"))
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    builder, runtime = stages[0], stages[-1]
    python_slim = r"python:(\$\{PYTHON_VERSION\}|3\.1[1-9])-slim"
    assert re.fullmatch(python_slim, runtime.base), runtime.base
    build_args = dict(i.args.partition("=")[::2] for i in instructions if i.keyword == "ARG")
    assert re.fullmatch(r"3\.1[1-9]", build_args.get("PYTHON_VERSION") or "3.11")
    assert any("pip wheel" in run for run in builder.all("RUN")), "the builder builds wheels"
    installs = [run for run in runtime.all("RUN") if "pip install" in run]
    assert installs, "the runtime installs the wheels"
    for run in installs:
        assert "--no-index" in run and "/wheels" in run, "only the builder's wheels, no second resolution"
        assert "[" not in run.split("pip install", 1)[1], "no extras (the test extras above all)"
    for run in runtime.all("RUN"):
        assert not any(pkg in run.split() for pkg in TEST_PACKAGES), run
        assert not re.search(r"apt-get install|apk add|gcc|build-essential", run), "no compilers at runtime"
    assert not any("src" in c.split()[0] for c in runtime.all("COPY")), "no sources in the runtime stage"
    env = " ".join(runtime.all("ENV"))
    assert "PIP_NO_CACHE_DIR=1" in env or all("--no-cache-dir" in run for run in installs)
    assert "RUNAPI_MCP_HOME=/data" in env


def test_the_runtime_runs_as_a_fixed_non_root_user_with_data_as_its_volume() -> None:
    _, stages = parse_dockerfile(DOCKERFILE.read_text("utf-8"))
    runtime = stages[-1]
    users = runtime.all("USER")
    assert users, "a USER in the runtime stage"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) >= 1000, f"a fixed numeric uid, not root: {users[-1]}"
    assert not group or (group.isdigit() and int(group) != 0)
    runs = " ".join(runtime.all("RUN"))
    assert f"--uid {user}" in runs and f"chown {user}:" in runs and "/data" in runs, "/data owned by the user"
    volumes = [v for args in runtime.all("VOLUME") for v in (exec_form(args) if args.startswith("[") else args.split())]
    assert "/data" in volumes
    # The ownership has to be set before VOLUME: later changes to a volume path are discarded.
    keywords = [(i.keyword, i.args) for i in runtime.instructions]
    chown_at = next(n for n, (k, a) in enumerate(keywords) if k == "RUN" and "chown" in a)
    volume_at = next(n for n, (k, _) in enumerate(keywords) if k == "VOLUME")
    assert chown_at < volume_at


def test_entrypoint_default_command_port_and_healthcheck() -> None:
    _, stages = parse_dockerfile(DOCKERFILE.read_text("utf-8"))
    runtime = stages[-1]
    assert exec_form(runtime.all("ENTRYPOINT")[-1]) == ["runapi-mcp"]
    assert exec_form(runtime.all("CMD")[-1]) == ["serve"], "stdio by default"
    assert "8000" in " ".join(runtime.all("EXPOSE")).split()
    checks = runtime.all("HEALTHCHECK")
    assert checks and checks[-1].upper() != "NONE"
    command = exec_form(checks[-1].split(" CMD ", 1)[1])
    assert command[0] == "python" and command[1].endswith("healthcheck.py"), command
    copies = " ".join(runtime.all("COPY"))
    assert f"docker/healthcheck.py {command[1]}" in copies, "the script the HEALTHCHECK runs is in the image"
    timeout = re.search(r"--timeout=(\d+)s", checks[-1])
    assert timeout and int(timeout.group(1)) > 4, "the script's own 4 s timeout fits inside the check's"


def test_the_build_context_leaves_local_state_out() -> None:
    lines = {line.strip() for line in (ROOT / ".dockerignore").read_text("utf-8").splitlines()}
    for needed in (".venv", ".git", "**/__pycache__", "*.egg-info", ".pytest_cache", ".mypy_cache", ".hypothesis"):
        assert needed in lines, needed
    for kept in ("src", "pyproject.toml", "README.md", "LICENSE", "docker", "docker/healthcheck.py"):
        assert kept not in lines and f"/{kept}" not in lines, f"{kept} is needed by the build"


# -- the healthcheck script, against stand-in servers (anywhere with /proc) -----------------------------
FAKE_SERVER = """
import http.server, json, os, sys, time
answer = os.environ.get("FAKE_HEALTH", "ok")
ports = [a.split("=")[1] for a in sys.argv if a.startswith("--port=")]
ports += [sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--port"]
port = int(ports[0]) if ports else 0
if answer == "none" or not port:
    time.sleep(60)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"status": answer}).encode()
        self.send_response(200 if self.path == "/health" and answer == "ok" else 503)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""

needs_proc = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="the healthcheck reads /proc (Linux)")


def wait_for_port(port: int, proc: subprocess.Popen[Any]) -> None:
    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}) before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return False
        return True

    wait_until(listening, f"a listener on port {port}", 20)


def healthcheck(pid: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), str(pid)], capture_output=True, text=True, timeout=20, check=False
    )


@pytest.fixture
def fake_server(tmp_path: Path) -> Iterator[Any]:
    """Starts ``python .../runapi-mcp <args>`` (a stand-in with the real server's command line)."""
    script = tmp_path / "runapi-mcp"
    script.write_text(FAKE_SERVER, "utf-8")
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str, health: str = "ok") -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, str(script), *args], env={**os.environ, "FAKE_HEALTH": health}, text=True
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


@needs_proc
def test_healthcheck_reports_a_stdio_server_healthy(fake_server: Any) -> None:
    for args in ((), ("serve",), ("serve", "--transport", "stdio"), ("demo",), ("--transport=sse", "simulate")):
        proc = fake_server(*args, health="none")
        result = healthcheck(proc.pid)
        assert result.returncode == 0, (args, result.stderr)


@needs_proc
def test_healthcheck_asks_an_http_server_for_health(fake_server: Any) -> None:
    port = free_port()
    proc = fake_server("serve", "--transport", "streamable-http", "--host", "0.0.0.0", f"--port={port}")
    wait_for_port(port, proc)
    assert healthcheck(proc.pid).returncode == 0


@needs_proc
@pytest.mark.parametrize("health", ["none", "degraded"])
def test_healthcheck_fails_an_http_server_that_does_not_answer_ok(fake_server: Any, health: str) -> None:
    port = free_port()
    proc = fake_server("serve", "--transport", "http", "--port", str(port), health=health)
    if health != "none":
        wait_for_port(port, proc)
    result = healthcheck(proc.pid)
    assert result.returncode == 1 and f"127.0.0.1:{port}/health" in result.stderr, result.stderr


def _serve_help() -> str:
    return subprocess.run(
        [sys.executable, "-m", "runapi_mcp", "serve", "--help"], capture_output=True, text=True, check=False
    ).stdout


@needs_proc
def test_healthcheck_against_the_real_http_server(tmp_path: Path) -> None:
    if "--transport" not in _serve_help():
        pytest.skip("runapi-mcp serve has no --transport yet")
    port = free_port()
    env = {
        **os.environ,
        "RUNAPI_API_KEY": SIM_KEY,
        "RUNAPI_MCP_HOME": str(tmp_path / "home"),
        "RUNAPI_MCP_AUTH_TOKEN": TOKEN,
    }
    argv = [sys.executable, "-m", "runapi_mcp", "serve", "--transport", "streamable-http", "--port", str(port)]
    with subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True) as proc:
        try:
            wait_for_port(port, proc)
            result = healthcheck(proc.pid)
            assert result.returncode == 0, result.stderr
            assert httpx.get(f"http://127.0.0.1:{port}/health").json()["status"] == "ok"
        finally:
            proc.kill()


# -- the image, built and run -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def engine() -> str:
    """The container engine's command, or a skip saying why there is none (fast: one ``info`` call)."""
    if shutil.which(ENGINE) is None:
        pytest.skip(f"no container engine: {ENGINE!r} is not on PATH")
    try:
        info = subprocess.run([ENGINE, "info"], capture_output=True, text=True, timeout=10, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip(f"no container engine: `{ENGINE} info` did not answer within 10 s")
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["no reason given"])[-1][:200]
        pytest.skip(f"no container engine running (`{ENGINE} info` failed: {reason})")
    return ENGINE


@pytest.fixture(scope="module")
def image(engine: str) -> Iterator[str]:
    tag = f"runapi-mcp:test-{uuid.uuid4().hex[:8]}"
    build = subprocess.run(
        [engine, "build", "-t", tag, str(ROOT)], capture_output=True, text=True, timeout=900, check=False
    )
    assert build.returncode == 0, build.stderr[-4000:]
    yield tag
    subprocess.run([engine, "image", "rm", "-f", tag], capture_output=True, check=False, timeout=60)


def container_env(sim: Simulator, **extra: str) -> list[str]:
    env = {"RUNAPI_API_KEY": SIM_KEY, "RUNAPI_BASE_URL": sim.base_url, "RUNAPI_MCP_LOG_LEVEL": "DEBUG", **extra}
    return [arg for name, value in env.items() for arg in ("-e", f"{name}={value}")]


def inspect(engine: str, name: str, template: str) -> str:
    result = subprocess.run(
        [engine, "inspect", "--format", template, name], capture_output=True, text=True, timeout=30, check=False
    )
    return result.stdout.strip()


def wait_healthy(engine: str, name: str) -> None:
    status = ""

    def healthy_or_stopped() -> bool:
        nonlocal status
        status = inspect(engine, name, "{{if .State.Health}}{{.State.Health.Status}}{{end}}")
        return status == "healthy" or inspect(engine, name, "{{.State.Running}}") == "false"

    with contextlib.suppress(AssertionError):  # not healthy in time: the logs say why
        wait_until(healthy_or_stopped, f"container {name} healthy", 90, every=0.5)
    if status == "healthy":
        return
    logs = subprocess.run([engine, "logs", name], capture_output=True, text=True, timeout=30, check=False)
    raise AssertionError(f"container {name} not healthy ({status or 'no status'}): {logs.stderr[-3000:]}")


# Health checks every second instead of every 30 s, so a test sees the verdict quickly.
FAST_HEALTH = ["--health-interval=1s", "--health-start-period=30s"]


class ContainerStdio(RawStdioServer):
    """``docker run -i`` spoken to in raw JSON-RPC lines, like :class:`RawStdioServer` does a subprocess."""

    def __init__(self, argv: list[str]) -> None:  # same state as the parent's, another command
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8"
        )
        self.lines: list[str] = []
        self.messages: list[dict[str, Any]] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._next_id = 0
        threading.Thread(target=self._read, daemon=True).start()


@pytest.mark.timeout(900)
def test_the_image_holds_no_build_tools_and_data_belongs_to_the_user(engine: str, image: str) -> None:
    probe = (
        "import importlib.util, json, os, shutil; "
        f"print(json.dumps({{'uid': os.getuid(), 'data_uid': os.stat('/data').st_uid, "
        f"'home': os.environ.get('RUNAPI_MCP_HOME'), 'compilers': [c for c in ('gcc', 'cc', 'make') if shutil.which(c)], "
        f"'test_packages': [p for p in {TEST_PACKAGES!r} if importlib.util.find_spec(p)]}}))"
    )
    result = subprocess.run(
        [engine, "run", "--rm", "--entrypoint", "python", image, "-c", probe],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts == {"uid": 10001, "data_uid": 10001, "home": "/data", "compilers": [], "test_packages": []}


@pytest.mark.timeout(900)
def test_the_container_serves_stdio_and_is_healthy(engine: str, image: str, sim: Simulator) -> None:
    name = f"runapi-mcp-test-{uuid.uuid4().hex[:8]}"
    argv = [engine, "run", "-i", "--rm", "--name", name, "--network", "host", *FAST_HEALTH, *container_env(sim), image]
    try:
        with ContainerStdio(argv) as server:
            init = server.initialize("2025-06-18")["result"]
            assert init["serverInfo"]["name"]
            tools = {t["name"] for t in server.request("tools/list", timeout=60)["result"]["tools"]}
            assert {"generate_image", "edit_image", "get_task", "list_models", "check_balance"} <= tools
            call = server.request(
                "tools/call", {"name": "generate_image", "arguments": {"prompt": "from a container"}}, timeout=60
            )["result"]
            assert not call.get("isError"), call
            assert call["structuredContent"]["status"] == "completed"
            assert call["structuredContent"]["images"][0]["path"].startswith("/data/images/")
            wait_healthy(engine, name)  # no port in stdio mode, and still healthy by design
            stderr = server.close()
        assert server.proc.returncode == 0, stderr[-3000:]
        assert SIM_KEY not in stderr
    finally:
        subprocess.run([engine, "rm", "-f", name], capture_output=True, check=False, timeout=60)


@pytest.mark.timeout(900)
def test_the_container_refuses_an_open_port_without_auth(engine: str, image: str, sim: Simulator) -> None:
    argv = [engine, "run", "--rm", "--network", "host", *container_env(sim), image,
            "serve", "--transport", "streamable-http", "--host", "0.0.0.0", "--port", str(free_port())]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0, f"started without auth on 0.0.0.0: {shlex.join(argv)}"
    assert "RUNAPI_MCP_AUTH_TOKEN" in result.stderr or "auth" in result.stderr.lower(), result.stderr


@pytest.fixture
def http_container(engine: str, image: str, sim: Simulator) -> Iterator[tuple[str, int]]:
    """The image serving streamable HTTP on the host's network, with a bearer token; healthy when yielded."""
    port = free_port()
    name = f"runapi-mcp-test-{uuid.uuid4().hex[:8]}"
    argv = [
        engine, "run", "-d", "--rm", "--name", name, "--network", "host", *FAST_HEALTH,
        *container_env(sim, RUNAPI_MCP_AUTH_TOKEN=TOKEN), image,
        "serve", "--transport", "streamable-http", "--host", "0.0.0.0", "--port", str(port),
    ]
    started = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert started.returncode == 0, started.stderr
    try:
        wait_healthy(engine, name)
        yield name, port
    finally:
        subprocess.run([engine, "rm", "-f", name], capture_output=True, check=False, timeout=60)


@pytest.mark.anyio
@pytest.mark.timeout(900)
async def test_the_container_serves_streamable_http_with_bearer_auth(
    engine: str, http_container: tuple[str, int]
) -> None:
    name, port = http_container
    assert inspect(engine, name, "{{.Config.User}}") == "10001:10001"
    url = f"http://127.0.0.1:{port}/mcp"
    async with httpx.AsyncClient() as plain:
        assert (await plain.get(f"http://127.0.0.1:{port}/health")).json()["status"] == "ok"
        refused = await plain.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert refused.status_code == 401
    values: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        values.append(progress)

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=httpx2.Timeout(30, read=120))
    async with http, Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
        result = await client.call_tool("generate_image", {"prompt": "over streamable HTTP"}, progress_callback=on_progress)
    assert not result.is_error, text_of(result)
    data: dict[str, Any] = result.structured_content or {}
    assert data["status"] == "completed" and data["images"][0]["path"].startswith("/data/images/")
    assert values and values == sorted(values) and values[-1] == 100

    def stop() -> float:
        began = time.monotonic()
        done = subprocess.run([engine, "stop", name], capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return time.monotonic() - began

    # Under 8 s: the server ended on STOPSIGNAL, rather than being killed after docker's 10 s grace.
    assert await anyio.to_thread.run_sync(stop) < 8
