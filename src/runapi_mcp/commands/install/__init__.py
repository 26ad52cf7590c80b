"""``runapi-mcp install <client>``: this server's entry in an MCP client's config, in one step.

Each client keeps its servers in its own file and shape (checked against each client's documentation):

============== ==================================================================== =============== =========
client         file                                                                 servers under   ``type``
============== ==================================================================== =============== =========
claude-desktop ``claude_desktop_config.json`` (macOS ``~/Library/Application          ``mcpServers``  no
               Support/Claude``, Windows ``%APPDATA%\\Claude``, Linux ``~/.config/Claude``)
claude-code    ``claude mcp add-json -s user`` when the CLI is there, else            ``mcpServers``  ``stdio``
               ``~/.claude.json`` (its user scope: the top-level ``mcpServers``)
cursor         ``~/.cursor/mcp.json``                                                 ``mcpServers``  no
vscode         the user profile's ``mcp.json`` (``~/.config/Code/User``, ...)          ``servers``     ``stdio``
hermes         ``~/.hermes/config.yaml`` (``$HERMES_HOME``)                            ``mcp_servers`` no
============== ==================================================================== =============== =========

The entry is merged into the file: other servers, unrelated keys and the entry's own extra keys (more
``env`` variables, a Hermes ``timeout``) stay. The old file is copied to a timestamped backup first, and a
file that cannot be parsed (JSON with comments, YAML with a key written twice or an inline server block)
is refused untouched: a rewrite would lose what the parser could not see. Running it twice changes nothing
the second time. A linked file is edited where the link leads; the file keeps its owner, group and mode;
read-only files, hard links and anything but a regular file are refused; concurrent installs take turns
(see "files" below).

The entry starts this install by absolute path; one that runs from uv's cache (``uvx runapi-mcp install``),
which uv may clean at any time, is started through ``uvx`` at its version instead; ``--command`` sets the
command line outright.

The key is not written into a file unless asked: ``--api-key-env`` makes the entry refer to the
``RUNAPI_API_KEY`` variable in the client's own syntax where it has one, and ``--api-key-from-env`` copies
the current value into the file (with a warning) for clients that have none.

The modules: ``clients`` (each client's file and shape, the shared names and errors), ``launch`` (the
command the entry runs), ``keys`` (the key in the entry), ``files`` (reading and replacing a config file
safely), ``request`` (an install's options and outcome), ``json_clients`` (the JSON clients),
``hermes_yaml`` (editing Hermes' YAML) and ``hermes`` (the Hermes install). This package holds the
command itself: ``install()`` and the CLI's ``NAME``, ``HELP``, ``add_arguments`` and ``run``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TextIO

from runapi_mcp.commands.install.clients import (
    CLIENT_INFO,
    CLIENTS,
    CONFIRM_VAR,
    DEFAULT_NAME,
    KEY_VAR,
    STALE_TRUST,
    TRUST_CHOICES,
    InstallError,
    UsageError,
    config_path,
    hermes_home,
)
from runapi_mcp.commands.install.hermes import install_hermes
from runapi_mcp.commands.install.json_clients import find_claude_cli, install_claude_cli, install_json
from runapi_mcp.commands.install.keys import plan_key
from runapi_mcp.commands.install.launch import Launch, client_launch, command_launch
from runapi_mcp.commands.install.request import Options, Outcome

# A name every client takes as a server key (VS Code's schema is the strictest) and YAML needs no quotes for.
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


def install(options: Options) -> Outcome:
    """Write (or with ``print_only`` show) this server's entry for ``options.client``; raises InstallError."""
    if options.client not in CLIENT_INFO:
        raise InstallError(f"unknown client {options.client!r}: choose one of {', '.join(CLIENTS)}")
    if not _NAME.fullmatch(options.name):
        raise UsageError(f"--name must be a letter then letters, digits, '_' or '-' (at most 64), got {options.name!r}")
    client = CLIENT_INFO[options.client]
    launch, launch_note = entry_launch(options)
    hermes_dir = hermes_home(environ=options.environ)
    key = plan_key(client, options.key_mode, options.environ, hermes_dir)
    path = options.config.expanduser() if options.config else config_path(options.client, environ=options.environ)
    outcome = Outcome(path=path)
    outcome.messages += [f"warning: {w}" for w in key.warnings]
    if launch_note:
        outcome.messages.append(f"note: {launch_note}")
    if client.name == "hermes":
        install_hermes(options, client, launch, key, path, hermes_dir, outcome)
    elif client.name == "claude-code" and options.config is None and not key.secret and find_claude_cli(options):
        install_claude_cli(options, client, launch, key, path, outcome)
    else:
        install_json(options, client, launch, key, path, outcome)
        if client.name == "claude-code" and options.config is None and not options.print_only:
            why = "the key stays out of the process list" if key.secret else "`claude` is not on PATH"
            outcome.messages.append(
                f"note: edited {path} directly ({why}); a Claude Code session running now may write its older "
                "copy back: restart it, and check with `claude mcp get " + options.name + "`"
            )
    outcome.messages += [f"note: {n}" for n in key.notes]
    if outcome.changed:
        outcome.messages.append(client.restart)
    return outcome


def entry_launch(options: Options) -> tuple[Launch, str | None]:
    """The command the entry runs, and what to say about it: ``--command`` as given; else this install's
    own, unless that lies in uv's cache (a ``uvx`` run), which the entry replaces with a uvx launch."""
    if options.command is not None:
        return command_launch(options.command), None
    return client_launch(options.launch, environ=options.environ)


# -- CLI ---------------------------------------------------------------------------------------------------
NAME = "install"
HELP = "Add this server to an MCP client's config (backs the file up first)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("client", choices=CLIENTS, help="The MCP client to set up")
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument(
        "--api-key-env",
        dest="key_mode",
        action="store_const",
        const="env",
        help=f"Refer to the {KEY_VAR} environment variable in the entry (Cursor/VS Code ${{env:...}}, Hermes "
        "${...} from ~/.hermes/.env; Claude Code passes its environment anyway)",
    )
    keys.add_argument(
        "--api-key-from-env",
        dest="key_mode",
        action="store_const",
        const="copy",
        help=f"Copy the current {KEY_VAR} value into the config (plain text; for Hermes into ~/.hermes/.env)",
    )
    parser.set_defaults(key_mode="none")
    parser.add_argument("--print", dest="print_only", action="store_true", help="Print the entry; write nothing")
    parser.add_argument("--config", type=Path, help="The config file to edit instead of the client's default")
    parser.add_argument(
        "--command",
        dest="entry_command",  # "command" is the subcommand's name (cli.py)
        metavar="COMMAND_LINE",
        help="The command line the entry runs instead of this install's own (split like a shell would), "
        "e.g. 'uvx runapi-mcp serve' or '/opt/runapi/bin/runapi-mcp serve'",
    )
    parser.add_argument(
        "--name", default=DEFAULT_NAME, help=f"The server's name in the config (default {DEFAULT_NAME})"
    )
    parser.add_argument(
        "--trust",
        choices=TRUST_CHOICES,
        default="ask",
        help=f"Hermes only: 'ask' (default) makes Hermes ask before each paid call ({CONFIRM_VAR}=0 in the "
        f"entry: the server asks through MCP elicitation); 'full' never asks. '{STALE_TRUST}' is the old name of 'ask'",
    )


def run(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``runapi-mcp install``: 0 when the entry is in place (or printed), 1 when refused, 2 on bad usage."""
    out, err = out or sys.stdout, err or sys.stderr
    options = Options(
        client=args.client,
        name=args.name,
        key_mode=args.key_mode,
        print_only=args.print_only,
        config=args.config,
        trust=args.trust,
        command=args.entry_command,
    )
    try:
        outcome = install(options)
    except InstallError as exc:
        print(f"runapi-mcp install: {exc}", file=err)
        if not options.print_only:
            print(f"(runapi-mcp install {args.client} --print shows the entry to add by hand)", file=err)
        return 2 if isinstance(exc, UsageError) else 1
    # With --print the snippet alone goes to stdout, so it can be piped; the explanations go to stderr.
    notes = err if options.print_only else out
    if outcome.snippet is not None:
        out.write(outcome.snippet)
    for message in outcome.messages:
        print(message, file=notes)
    return 0
