"""The clients ``install`` knows: where each keeps its servers (its file, the key they are under, whether an
entry carries ``"type": "stdio"``, how it refers to an environment variable), and the names and errors the
rest of the command shares."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

KEY_VAR = "RUNAPI_API_KEY"
# Hermes Agent (0.19) reads no `trust` key and no readOnlyHint, but it answers MCP elicitation: with this
# threshold at 0 in the entry's env, the server asks (elicitation) before every task that costs money, and
# never before a read-only call (server/confirm.py). The same name as confirm.CONFIRM_VARIABLE (tested).
CONFIRM_VAR = "RUNAPI_MCP_CONFIRM_ABOVE_CENTS"
ASK_EVERY_PAID_CALL = "0"
STALE_TRUST = "untrusted"  # what installs before this one wrote as `trust:`, a key no Hermes reads
TRUST_CHOICES = ("ask", "full", STALE_TRUST)
DEFAULT_NAME = "runapi"
CLIENTS = ("claude-desktop", "claude-code", "cursor", "vscode", "hermes")
VSCODE_INPUT_ID = "runapi-api-key"


class InstallError(Exception):
    """The entry cannot be written safely; the message says why and what to do. Nothing was changed."""


class UsageError(InstallError):
    """The command line asks for something impossible (exit status 2)."""


# -- where each client keeps its servers -------------------------------------------------------------------


@dataclass(frozen=True)
class Client:
    name: str
    title: str
    servers_key: str
    stdio_type: bool  # the entry carries "type": "stdio" (VS Code requires it; Claude Code writes it)
    env_ref: str | None  # how an env value refers to a variable, NAME standing for it; None: it cannot
    restart: str


CLIENT_INFO: dict[str, Client] = {
    "claude-desktop": Client(
        "claude-desktop", "Claude Desktop", "mcpServers", False, None, "Quit and reopen Claude Desktop."
    ),
    "claude-code": Client(
        "claude-code", "Claude Code", "mcpServers", True, None, "Start a new Claude Code session (/mcp shows it)."
    ),
    "cursor": Client(
        "cursor", "Cursor", "mcpServers", False, "${env:NAME}", "Restart Cursor (or reload its MCP list)."
    ),
    "vscode": Client(
        "vscode", "VS Code", "servers", True, "${env:NAME}", "Run 'MCP: List Servers' in VS Code to start it."
    ),
    "hermes": Client(
        "hermes", "Hermes Agent", "mcp_servers", False, "${NAME}", "Run /reload-mcp in Hermes (or restart it)."
    ),
}


def env_ref(client: Client, var: str) -> str:
    assert client.env_ref is not None
    return client.env_ref.replace("NAME", var)


def hermes_home(
    *, system: str = sys.platform, home: Path | None = None, environ: Mapping[str, str] = os.environ
) -> Path:
    """Hermes' directory: ``$HERMES_HOME``, else ``~/.hermes`` (``%LOCALAPPDATA%\\hermes`` on native Windows)."""
    if environ.get("HERMES_HOME"):
        return Path(environ["HERMES_HOME"]).expanduser()
    home = home or Path.home()
    if system == "win32" and environ.get("LOCALAPPDATA"):
        return Path(environ["LOCALAPPDATA"]) / "hermes"
    return home / ".hermes"


def _app_config_dir(system: str, home: Path, environ: Mapping[str, str]) -> Path:
    """Where Electron apps (Claude Desktop, VS Code) keep per-user settings on each OS."""
    if system == "darwin":
        return home / "Library" / "Application Support"
    if system == "win32":
        return Path(environ["APPDATA"]) if environ.get("APPDATA") else home / "AppData" / "Roaming"
    return Path(environ["XDG_CONFIG_HOME"]) if environ.get("XDG_CONFIG_HOME") else home / ".config"


def config_path(
    client: str, *, system: str = sys.platform, home: Path | None = None, environ: Mapping[str, str] = os.environ
) -> Path:
    """The file ``client`` reads its user-wide MCP servers from on ``system`` (``sys.platform`` values)."""
    home = home or Path.home()
    if client == "claude-desktop":
        return _app_config_dir(system, home, environ) / "Claude" / "claude_desktop_config.json"
    if client == "claude-code":
        # Claude Code keeps its global state, user-scope servers included, in $CLAUDE_CONFIG_DIR when set.
        base = Path(environ["CLAUDE_CONFIG_DIR"]).expanduser() if environ.get("CLAUDE_CONFIG_DIR") else home
        return base / ".claude.json"
    if client == "cursor":
        return home / ".cursor" / "mcp.json"
    if client == "vscode":
        # The default profile; another profile keeps its own mcp.json under User/profiles/<id>/ (use --config).
        return _app_config_dir(system, home, environ) / "Code" / "User" / "mcp.json"
    if client == "hermes":
        return hermes_home(system=system, home=home, environ=environ) / "config.yaml"
    raise ValueError(f"unknown client {client!r}")
