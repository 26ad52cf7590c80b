"""One install: what it is asked (:class:`Options`), what it did (:class:`Outcome`), and the step every client
ends with, the file backed up and replaced (:func:`replace_config`)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runapi_mcp.commands.install.clients import DEFAULT_NAME
from runapi_mcp.commands.install.files import ConfigFile, backup, check_writable, write_config
from runapi_mcp.commands.install.keys import KeyMode
from runapi_mcp.commands.install.launch import Launch


@dataclass
class Outcome:
    """What an install did, for the caller to print (and tests to check)."""

    path: Path | None = None
    changed: bool = False
    backups: list[Path] = field(default_factory=list)
    snippet: str | None = None  # with --print: the entry in the client's own format
    messages: list[str] = field(default_factory=list)


@dataclass
class Options:
    client: str
    name: str = DEFAULT_NAME
    key_mode: KeyMode = "none"
    print_only: bool = False
    config: Path | None = None
    trust: str = "ask"  # Hermes only: "ask" before each paid call, or "full" ("untrusted" is the old name of "ask")
    launch: Launch | None = None  # this install's own command (server_launch() when None)
    command: str | None = None  # --command: the command line the entry runs instead
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    claude_cli: str | None = None  # the `claude` executable (found on PATH when None)
    run: Callable[[list[str]], subprocess.CompletedProcess[str]] | None = None


def replace_config(config: ConfigFile, text: str, outcome: Outcome, *, private: bool = False) -> None:
    """Back up the file ``config`` was read from (when there is one) and replace it with ``text``."""
    check_writable(config)  # before the backup: a refused file gets nothing written beside it either
    if config.data is not None:
        outcome.backups.append(backup(config))
    write_config(config, text, private=private)
    outcome.changed = True
    if config.linked:
        outcome.messages.append(f"note: {config.path} leads to {config.real}: that file was edited, the link kept")
