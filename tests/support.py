"""Test helpers shared by the test modules (fixtures stay in conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp.client import Client

from runapi_mcp.app import App
from runapi_mcp.config import Settings, load_settings
from runapi_mcp.simulator import Simulator
from runapi_mcp.tasks import PollPolicy

SIM_KEY = "sk-test-5f2a9c1e7b3d4a60b8e1c2d3f4a5b6c7"
# Tasks take 0.3-0.6 s here; the poll policy is scaled to match so the suite stays fast.
TIME_SCALE = 0.025
FAST_POLICY = PollPolicy().scaled(TIME_SCALE)


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


def upstream_creates(sim: Simulator) -> list[Any]:
    """Requests that could have created (and charged) an upstream task."""
    return [
        r for r in sim.requests if r.method == "POST" and r.path.startswith("/api/v1/") and r.path != "/api/v1/files"
    ]
