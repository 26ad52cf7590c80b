"""``runapi-mcp``: serve MCP (stdio by default, or HTTP); also simulate, demo, tasks, gallery, install, doctor.

Each subcommand is a module of ``runapi_mcp.commands`` (its arguments and its ``run``); this builds the
parser from them and dispatches.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from runapi_mcp import __version__
from runapi_mcp.commands import Command, demo, doctor, gallery, install, serve, simulate, tasks
from runapi_mcp.commands.options import add_settings_flags

COMMANDS: tuple[Command, ...] = (serve, simulate, demo, tasks, gallery, install, doctor)  # in --help's order
DEFAULT_COMMAND: Command = serve  # plain `runapi-mcp`


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runapi-mcp", description="MCP server for RunAPI image models (GPT Image 2 and friends)."
    )
    parser.add_argument("--version", action="version", version=f"runapi-mcp {__version__}")
    add_settings_flags(parser)
    sub = parser.add_subparsers(dest="command")
    for command in COMMANDS:
        command.add_arguments(sub.add_parser(command.NAME, help=command.HELP))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = next((c for c in COMMANDS if args.command == c.NAME), DEFAULT_COMMAND)
    return command.run(args)


if __name__ == "__main__":
    sys.exit(main())
