"""Test helpers shared by the test modules (fixtures stay in conftest.py)."""

from __future__ import annotations

import heapq
import inspect
import io
import itertools
import json
import os
import queue
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.lowlevel
import httpx
import pytest
from mcp.client import Client
from PIL import Image

from runapi_mcp.app import App
from runapi_mcp.config import Settings, load_settings
from runapi_mcp.simulator import Simulator
from runapi_mcp.tasks import PollPolicy, TaskRecord, TaskStore

SIM_KEY = "sk-test-5f2a9c1e7b3d4a60b8e1c2d3f4a5b6c7"
# Tasks take 0.3-0.6 s here; the poll policy is scaled to match so the suite stays fast.
TIME_SCALE = 0.025
FAST_POLICY = PollPolicy().scaled(TIME_SCALE)


# How long a wait for something that does happen may take before the test fails: generous, since a loaded
# 2-core machine can be slow; a passing test never waits it out.
WAIT_S = 10.0
# How often a wait looks again at state it cannot be woken by (another thread's, another process's).
LOOK_EVERY_S = 0.01


def make_settings(sim: Simulator, home: Path, inputs: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "api_key": SIM_KEY,
        "base_url": sim.base_url,
        "home": str(home),
        "allowed_dirs": str(inputs),
        "wait_s": 20,
    }
    values.update(overrides)
    return load_settings(values, environ={}, config_file=home / "no-config.json")


@dataclass
class Harness:
    app: App
    client: Client
    sim: Simulator

    async def call(self, name: str, args: dict[str, Any] | None = None, **kw: Any) -> Any:
        return await self.client.call_tool(name, args or {}, **kw)


def text_of(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


# Where an upload starts: the three-step upload of local bytes (prepare, PUT to storage, confirm) and the
# upload of a remote or inline source.
UPLOAD_PATHS = ("/api/v1/files/prepare", "/api/v1/files")


def upstream_creates(sim: Simulator) -> list[Any]:
    """Requests that could have created (and charged) an upstream task (a price quote or an upload creates
    no task)."""
    return [
        r
        for r in sim.requests
        if r.method == "POST"
        and r.path.startswith("/api/v1/")
        and not r.path.startswith("/api/v1/files")
        and r.path != "/api/v1/price_quotes"
    ]


def uploads(sim: Simulator) -> list[Any]:
    """The uploads started: one request per file, whichever way it went up."""
    return [r for r in sim.requests if r.method == "POST" and r.path.rstrip("/") in UPLOAD_PATHS]


def sent_anything(sim: Simulator) -> list[Any]:
    """Every request but reads of RunAPI's model availability (the price schedules): what a refusal sends."""
    return [r for r in sim.requests if not (r.method == "GET" and r.path == "/api/v1/price_schedules")]


def price_quotes(sim: Simulator) -> list[Any]:
    """The price quotes asked for (each task is quoted before anything is uploaded or created)."""
    return [r for r in sim.requests if r.method == "POST" and r.path == "/api/v1/price_quotes"]


def server_env(sim: Simulator, home: Path, inputs: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``runapi-mcp serve`` subprocess wired to the simulator."""
    return {
        "RUNAPI_API_KEY": SIM_KEY,
        "RUNAPI_BASE_URL": sim.base_url,
        "RUNAPI_MCP_HOME": str(home),
        "RUNAPI_MCP_ALLOWED_DIRS": str(inputs),
        "RUNAPI_MCP_LOG_LEVEL": "DEBUG",
        **extra,
    }


class RawStdioServer:
    """``runapi-mcp serve`` as a subprocess spoken to in raw JSON-RPC lines, as any client's wire would.

    Every stdout line is kept (``lines``) so tests can check that nothing but protocol was written.
    Reads have a deadline: a server that stops answering fails the test instead of hanging it.
    """

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runapi_mcp", "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **env},
            text=True,
            encoding="utf-8",
        )
        self.lines: list[str] = []
        self.messages: list[dict[str, Any]] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def request(self, method: str, params: dict[str, Any] | None = None, *, timeout: float = 30) -> dict[str, Any]:
        """Send a request and return its response (notifications that arrive meanwhile are kept)."""
        self._next_id += 1
        request_id = self._next_id
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer to {method} within {timeout} s")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise EOFError(f"the server closed stdout before answering {method}")
            self.lines.append(line)
            parsed = json.loads(line)  # every stdout line must be JSON-RPC
            assert parsed.get("jsonrpc") == "2.0", line
            self.messages.append(parsed)
            if parsed.get("id") == request_id and "method" not in parsed:
                return cast(dict[str, Any], parsed)

    def initialize(self, version: str) -> dict[str, Any]:
        answer = self.request(
            "initialize",
            {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "raw-test", "version": "0"}},
        )
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return answer

    def remaining(self, timeout: float = 10) -> list[dict[str, Any]]:
        """Every message written until the server closed stdout (it must end within ``timeout``)."""
        out: list[dict[str, Any]] = []
        while (line := self._queue.get(timeout=timeout)) is not None:
            self.lines.append(line)
            out.append(json.loads(line))
        self.messages += out
        return out

    def notifications(self, method: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("method") == method]

    def close(self) -> str:
        """Stop the server; its stderr."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.stderr.read() if self.proc.stderr else ""

    def __enter__(self) -> RawStdioServer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.close()


@dataclass
class PausedWrite:
    """``saved`` is set once the record is written; the call writing it waits for ``resume``."""

    saved: anyio.Event
    resume: anyio.Event


def pause_after_writing(monkeypatch: pytest.MonkeyPatch, store: TaskStore, prompt: str) -> PausedWrite:
    """Stop the call that first writes the record of a task with ``prompt`` right after that write, before
    what it does next (the create upstream), until ``resume``: an ordering set by events, not by timing."""
    paused = PausedWrite(anyio.Event(), anyio.Event())
    save = store.save

    async def save_then_pause(record: TaskRecord, **options: Any) -> None:
        await save(record, **options)
        if record.prompt == prompt and not paused.saved.is_set():
            paused.saved.set()
            await paused.resume.wait()

    monkeypatch.setattr(store, "save", save_then_pause)
    return paused


async def calls_around_a_paused_write(
    monkeypatch: pytest.MonkeyPatch, sim: Simulator, first: Harness, other: Harness
) -> tuple[Any, Any, Any]:
    """A call on ``first`` (prompt "first", not waiting) stops between writing its task's record and sending
    the create (:func:`pause_after_writing`); meanwhile ``other`` makes two more ("second", "third"); then
    the first goes on. The three results, in that order."""
    paused = pause_after_writing(monkeypatch, first.app.manager.store, "first")
    results: list[Any] = []

    async def call_first() -> None:
        results.append(await first.call("generate_image", {"prompt": "first", "wait": False}))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call_first)
        with anyio.fail_after(WAIT_S):
            await paused.saved.wait()
        assert upstream_creates(sim) == []  # the first call is inside its create, nothing sent yet
        second = await other.call("generate_image", {"prompt": "second", "wait": False})
        third = await other.call("generate_image", {"prompt": "third", "wait": False})
        paused.resume.set()
    return results[0], second, third


class FakeClock:
    """A clock the test moves by hand (a ``runapi_mcp.clock.Clock``): ``sleep`` returns once ``advance`` has
    moved time to its end, so a test proves "nothing happened for 5 s" by advancing 5 s, not by waiting.

    Wall time moves with monotonic time, from ``wall`` (a fixed moment: what is stored is the same every run).
    With ``autojump`` every sleep moves time by its length and returns at once (waits a test only counts).
    ``slept`` keeps the length of every sleep asked for, in order.
    """

    def __init__(self, *, start: float = 1000.0, wall: float = 1_767_225_600.0, autojump: bool = False) -> None:
        self._now = start
        self._wall_offset = wall - start
        self._autojump = autojump
        self._sleeps: list[tuple[float, int, anyio.Event]] = []  # a heap: (end, order, set at the end)
        self._order = itertools.count()
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if self._autojump:
            self._now += max(0.0, seconds)
        if self._autojump or seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        entry = (self._now + seconds, next(self._order), anyio.Event())
        heapq.heappush(self._sleeps, entry)
        try:
            await entry[2].wait()
        finally:
            if entry in self._sleeps:  # cancelled before its end: no longer asleep
                self._sleeps.remove(entry)
                heapq.heapify(self._sleeps)

    def wakes(self) -> list[float]:
        """When the sleeps now pending end, soonest first."""
        return sorted(end for end, _, _ in self._sleeps)

    async def advance(self, seconds: float) -> int:
        """Move time ``seconds`` on, ending every sleep due by then in the order they end (each sleeper runs
        until it waits again before the next is woken, unless it waits on I/O); how many sleeps ended."""
        target = self._now + seconds
        woken = 0
        while self._sleeps and self._sleeps[0][0] <= target:
            end, _, event = heapq.heappop(self._sleeps)
            self._now = max(self._now, end)
            event.set()
            woken += 1
            for _ in range(_SETTLE_CHECKPOINTS):
                await anyio.lowlevel.checkpoint()
        self._now = max(self._now, target)
        await anyio.lowlevel.checkpoint()
        return woken

    async def sleeping(self, count: int = 1, *, within: float = 10.0) -> None:
        """Return once ``count`` sleeps are pending (a loop has come to rest); fails after ``within`` real
        seconds."""
        with anyio.fail_after(within):
            while len(self._sleeps) < count:
                await anyio.sleep(0.002)


# Checkpoints a woken sleeper gets before the next is woken: enough for a loop to reach its next sleep when
# nothing it awaits is I/O (a few task switches for the cancel scopes and task groups on the way).
_SETTLE_CHECKPOINTS = 20
# -- waiting for something to happen -------------------------------------------------------------------------
# For state no event announces (the simulator's thread, a subprocess, a file): look again until it holds, and
# fail, saying what was awaited, if it does not ``within`` its limit. Never a fixed sleep: a fast machine goes
# on at once, a slow one is given the whole limit.
def wait_until(
    condition: Callable[[], object], what: str, within: float = WAIT_S, *, every: float = LOOK_EVERY_S
) -> None:
    """Block until ``condition()`` is true (from synchronous tests); AssertionError naming ``what`` after
    ``within`` seconds. The condition may raise to fail at once (a process that died)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {within:g} s: {what}")
        time.sleep(every)


async def until(
    condition: Callable[[], object], what: str, within: float = WAIT_S, *, every: float = LOOK_EVERY_S
) -> None:
    """``wait_until`` for async tests: the event loop runs meanwhile. ``condition`` may be async (a look
    that reads a store)."""
    with anyio.move_on_after(within):
        while True:
            held = condition()
            if inspect.isawaitable(held):
                held = await held
            if held:
                return
            await anyio.sleep(every)
    raise AssertionError(f"not within {within:g} s: {what}")


def free_port() -> int:
    """A loopback port nothing listens on now (for a server to start on, or a connection to be refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthy(base: str) -> bool:
    """Whether the server at ``base`` answers its health check now (one still starting refuses the
    connection)."""
    try:
        return httpx.get(f"{base}/health", timeout=1, verify=False).status_code == 200  # loopback http: no TLS
    except httpx.HTTPError:
        return False


# -- test pictures --------------------------------------------------------------------------------------------
Color = str | tuple[int, ...]


def png_bytes(
    size: tuple[int, int] = (64, 48), color: Color = "teal", *, mode: str = "RGB", fmt: str = "PNG"
) -> bytes:
    """A plain picture of one colour (``fmt``: any format Pillow writes, PNG by default)."""
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt)
    return buf.getvalue()


def png_file(path: Path, size: tuple[int, int] = (64, 48), color: Color = "teal") -> Path:
    """``png_bytes`` written to ``path``; the path."""
    path.write_bytes(png_bytes(size, color))
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def zero_png(width: int, height: int, *, bit_depth: int = 8, color_type: int = 0, channels: int = 1) -> bytes:
    """A PNG of ``width`` x ``height`` zero pixels, made without holding the raw pixels.

    The deflate stream is one compressed block of rows repeated (a full flush makes each block stand
    alone), with the Adler-32 of all the raw rows computed alongside: a valid stream, built in well
    under a second even for a 60000x60000 bomb.
    """
    row = 1 + (width * bit_depth * channels + 7) // 8
    rows_per_block = max(1, (1 << 20) // row)
    block = b"\0" * (row * rows_per_block)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    unit = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    full, rest = divmod(height, rows_per_block)
    tail_rows = b"\0" * (row * rest)
    tail = deflate.compress(tail_rows) + deflate.flush(zlib.Z_FINISH)
    adler = 1
    for _ in range(full):
        adler = zlib.adler32(block, adler)
    adler = zlib.adler32(tail_rows, adler)
    idat = b"\x78\xda" + unit * full + tail + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
