"""The offline demo: simulator + ``runapi-mcp`` over stdio + a real MCP client, one picture, no key."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

import anyio
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from runapi_mcp.catalog import DEFAULT_MODEL
from runapi_mcp.tasks.durations import documented_seconds

if TYPE_CHECKING:  # imported when the demo runs: cli imports this module for every command, serve included
    from runapi_mcp.simulator import SimulatorConfig

NAME = "demo"
HELP = "Offline demo: simulator + server + MCP client, generates one image"

DEFAULT_PROMPT = "A lighthouse on a cliff at sunset, painted in watercolor, with the words 'runapi-mcp'"
BAR_WIDTH = 30
DEMO_MODEL = DEFAULT_MODEL  # the demo calls generate_image without a model
DURATION_JITTER = 0.1


def simulator_config(api_key: str) -> SimulatorConfig:
    """The demo's simulator: tasks take as long as RunAPI documents for the model, +-10 %, the durations the
    poller expects of a fresh install. Shorter ones would sit finished upstream until the poller's first look
    into the documented window, and the bar would jump from halfway to done."""
    from runapi_mcp.simulator import SimulatorConfig

    # Rendered as each task is created, as RunAPI's are ready when it says so (a 2K render on the first
    # download would add a second or two the real service does not take).
    return SimulatorConfig(
        api_key=api_key,
        durations=documented_seconds(DEMO_MODEL),
        duration_jitter=DURATION_JITTER,
        prerender=True,
    )


class ProgressBar:
    """A one-line terminal progress bar on ``out`` (the demo's own terminal, not an MCP channel)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.last_message = ""

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        fraction = min(1.0, progress / total) if total else 0.0
        filled = int(fraction * BAR_WIDTH)
        line = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction * 100:5.1f}%  {message or ''}"
        if self.tty:
            self.out.write("\r" + line.ljust(78))
        elif message != self.last_message:
            self.out.write(line + "\n")
        self.last_message = message or ""
        self.out.flush()

    def done(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


async def run_demo(
    prompt: str | None = None,
    home: str | None = None,
    aspect_ratio: str = "16:9",
    output_resolution: str = "1k",
) -> int:
    out = sys.stdout
    key = "sk-demo-" + secrets.token_hex(8)  # the simulator's own key; never a real one
    from runapi_mcp.simulator import Simulator

    with Simulator(simulator_config(key)) as sim:
        base_url = sim.base_url
        env = {
            "RUNAPI_API_KEY": key,
            "RUNAPI_BASE_URL": base_url,
            "RUNAPI_MCP_LOG_LEVEL": "WARNING",
        }
        if home:
            env["RUNAPI_MCP_HOME"] = home
        elif os.environ.get("RUNAPI_MCP_HOME"):
            env["RUNAPI_MCP_HOME"] = os.environ["RUNAPI_MCP_HOME"]
        params = StdioServerParameters(command=sys.executable, args=["-m", "runapi_mcp", "serve"], env=env)
        out.write(f"RunAPI simulator on {base_url} (offline; no key or network needed)\n")
        out.write("Starting runapi-mcp over stdio and connecting an MCP client...\n")
        async with Client(params, mode="legacy") as client:
            tools = await client.list_tools()
            out.write(f"Tools: {', '.join(t.name for t in tools.tools)}\n")
            text = prompt or DEFAULT_PROMPT
            out.write(f"generate_image: {text!r} ({aspect_ratio}, {output_resolution})\n")
            bar = ProgressBar(out)
            started = time.monotonic()
            args: dict[str, Any] = {
                "prompt": text,
                "aspect_ratio": aspect_ratio,
                "output_resolution": output_resolution,
            }
            result = await client.call_tool("generate_image", args, progress_callback=bar)
            bar.done()
            data = result.structured_content or {}
            if result.is_error or data.get("status") != "completed":
                message = " ".join(getattr(c, "text", "") for c in result.content)
                out.write(f"The demo did not get an image: {message}\n")
                return 1
            out.write(f"Done in {time.monotonic() - started:.1f}s: task {data['task_id']}\n")
            for image in data["images"]:
                out.write(f"  {image['width']}x{image['height']} {image['mime_type']}  {image['uri']}\n")
                out.write(f"Saved image: {image['path']}\n")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="?", default=None, help="What to draw")
    parser.add_argument("--home", dest="home", help="Where to save the image (RUNAPI_MCP_HOME)")
    parser.add_argument("--aspect-ratio", default="16:9")
    parser.add_argument("--output-resolution", default="1k")


def run(args: argparse.Namespace) -> int:
    """One picture made through the whole stack: 0, or 1 when none came back."""
    home = os.path.abspath(args.home) if args.home else None
    return anyio.run(run_demo, args.prompt, home, args.aspect_ratio, args.output_resolution)
