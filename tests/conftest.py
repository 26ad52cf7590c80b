"""Shared fixtures: one RunAPI simulator per session over loopback HTTP, and a server wired to it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from mcp.client import Client

from runapi_mcp.app import open_app
from runapi_mcp.simulator import Simulator, SimulatorConfig
from tests.support import FAST_POLICY, SIM_KEY, TIME_SCALE, Harness, make_settings

pytest_plugins = ["tests.browser", "tests.postgres"]  # `browser` (headless Chromium); `pg_pools` (PostgreSQL)

# CI runs the same examples every time (a failure there is a regression, never a lucky seed); locally every run
# draws new ones, which is how the fuzz finds what CI then keeps. Loaded here, before any test module builds its
# settings from the default profile.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    settings.load_profile("ci")


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
    """The session simulator as new (``Simulator.reset``): what one test queued, injected, configured or
    created never reaches the next. Reset after the test too, for a module fixture set up next."""
    simulator.reset()
    yield simulator
    simulator.reset()


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


@pytest.fixture
async def harness(sim: Simulator, home: Path, inputs: Path) -> AsyncIterator[Harness]:
    async with (
        open_app(make_settings(sim, home, inputs), policy=FAST_POLICY) as app,
        Client(app.server, mode="legacy") as client,
    ):
        # The server reads RunAPI's model availability at start: let that read land, then start the log clean.
        await app.availability.refresh()
        sim.clear_log()
        yield Harness(app=app, client=client, sim=sim)
