"""``runapi-mcp simulate``: the RunAPI simulator on loopback, in the foreground, for trying a client offline."""

from __future__ import annotations

import argparse

NAME = "simulate"
HELP = "Run the RunAPI simulator (offline stand-in for RunAPI) on loopback"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", dest="sim_key", default=None, help="Key the simulator accepts (default: any)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="Multiply task durations (e.g. 0.1)")


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C: 0."""
    from runapi_mcp.simulator import SimulatorConfig, serve  # only for this command: the server never needs it

    serve(args.host, args.port, SimulatorConfig(api_key=args.sim_key, time_scale=args.time_scale))
    return 0
