"""The ``runapi-mcp`` subcommands, one module each (a :class:`Command`): its ``NAME``, its ``HELP`` (the line
in ``--help``), its arguments (``add_arguments(parser)``) and ``run(args) -> exit code``. ``cli.py`` only
builds the parser from them and dispatches.

A command module keeps its module-level imports light (``cli`` imports every one to build the parser, for
every invocation, ``serve`` over stdio included): what only running it needs (the HTTP stack, the simulator,
the server's wiring) is imported when it runs.
"""

from __future__ import annotations

import argparse
from typing import Protocol


class Command(Protocol):
    """What ``cli`` needs of a command module."""

    NAME: str
    HELP: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...
