"""Shared fixtures: one RunAPI simulator per session over loopback HTTP, and a server wired to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mcp.client import Client

from runapi_mcp.app import App, open_app
from runapi_mcp.config import Settings, load_settings
from runapi_mcp.simulator import Simulator, SimulatorConfig
from runapi_mcp.tasks import PollPolicy

SIM_KEY = "sk-test-5f2a9c1e7b3d4a60b8e1c2d3f4a5b6c7"
# Tasks take 0.3-0.6 s here; the poll policy is scaled to match so the suite stays fast.
TIME_SCALE = 0.025
FAST_POLICY = PollPolicy().scaled(TIME_SCALE)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def simulator() -> Iterator[Simulator]:
    config = SimulatorConfig(api_key=SIM_KEY, time_scale=TIME_SCALE)
    with Simulator(config) as sim:
        yield sim


@pytest.fixture
def sim(simulator: Simulator) -> Iterator[Simulator]:
    """The session simulator with a clean request log and no faults."""
    simulator.clear_faults()
    simulator.clear_log()
    yield simulator
    simulator.clear_faults()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """A directory the server may read local images from."""
    path = tmp_path / "inputs"
    path.mkdir()
    return path


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


@pytest.fixture
async def harness(sim: Simulator, home: Path, inputs: Path) -> AsyncIterator[Harness]:
    async with (
        open_app(make_settings(sim, home, inputs), policy=FAST_POLICY) as app,
        Client(app.server, mode="legacy") as client,
    ):
        yield Harness(app=app, client=client, sim=sim)


def text_of(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


def upstream_creates(sim: Simulator) -> list[Any]:
    """Requests that could have created (and charged) an upstream task."""
    return [
        r for r in sim.requests if r.method == "POST" and r.path.startswith("/api/v1/") and r.path != "/api/v1/files"
    ]
