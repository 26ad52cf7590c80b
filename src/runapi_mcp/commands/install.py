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
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import io
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any, Literal, TextIO
from urllib.parse import urlsplit
from urllib.request import url2pathname

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import CommentMark, MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.scalarstring import DoubleQuotedScalarString
from ruamel.yaml.tokens import CommentToken

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
# A name every client takes as a server key (VS Code's schema is the strictest) and YAML needs no quotes for.
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_TIMEOUT_S = 60.0


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


def _env_ref(client: Client, var: str) -> str:
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


# -- how to start this server ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    command: str
    args: tuple[str, ...]


def server_launch() -> Launch:
    """How a client should start this server: the ``runapi-mcp`` script of this very install, by absolute path.

    GUI clients do not see the shell's PATH, so a bare ``runapi-mcp`` often fails there. The script next
    to this interpreter (its scripts directory, then the user scheme's, then PATH) belongs to the install
    that is running now; with none, ``python -m runapi_mcp`` through this interpreter does the same.
    """
    exe = "runapi-mcp.exe" if os.name == "nt" else "runapi-mcp"
    dirs: list[str] = []
    for scheme in (None, f"{os.name}_user"):
        try:
            found = sysconfig.get_path("scripts", scheme) if scheme else sysconfig.get_path("scripts")
        except KeyError:
            continue
        if found:
            dirs.append(found)
    for directory in dirs:
        candidate = Path(directory) / exe
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return Launch(os.path.abspath(candidate), ("serve",))
    on_path = shutil.which("runapi-mcp")
    if on_path:
        return Launch(os.path.abspath(on_path), ("serve",))
    # Not resolved: a venv's python is a symlink to the base interpreter, which would lose the venv.
    return Launch(os.path.abspath(sys.executable), ("-m", "runapi_mcp", "serve"))


def command_launch(text: str) -> Launch:
    """``--command``: the whole command line the entry runs, split as a shell would split it."""
    try:
        words = shlex.split(text, posix=os.name != "nt")
    except ValueError as exc:
        raise UsageError(f"--command: cannot split {text!r} ({exc})") from None
    if os.name == "nt":  # non-POSIX splitting keeps backslashes in paths, and the quotes: drop those
        words = [w[1:-1] if len(w) >= 2 and w[0] == w[-1] == '"' else w for w in words]
    if not words or not words[0]:
        raise UsageError("--command: give the command line the client runs, e.g. --command 'uvx runapi-mcp serve'")
    return Launch(words[0], tuple(words[1:]))


# -- uv's cache: what the entry must not point into ---------------------------------------------------------
#
# ``uvx runapi-mcp`` runs from an environment uv keeps in its cache, at ``<cache>/archive-v0/<id>/``
# (``<cache>/environments-v2/...`` links to it). ``uv cache clean`` or ``prune`` removes it, and the next
# uvx run may make another under a new id: an entry naming that path breaks later. Such an entry starts
# the server through uvx instead.

PACKAGE = "runapi-mcp"
_UV_ARCHIVE = "archive-v0"


def uv_cache_dirs(
    *, system: str = sys.platform, home: Path | None = None, environ: Mapping[str, str] = os.environ
) -> list[Path]:
    """Where uv keeps its cache: ``$UV_CACHE_DIR``, else the platform's default (``$XDG_CACHE_HOME/uv`` or
    ``~/.cache/uv``, on macOS too, where older uv used ``~/Library/Caches/uv``; ``%LOCALAPPDATA%\\uv\\cache``)."""
    home = home or Path.home()
    dirs: list[Path] = []
    if environ.get("UV_CACHE_DIR"):
        dirs.append(Path(environ["UV_CACHE_DIR"]).expanduser())
    if system == "win32":
        if environ.get("LOCALAPPDATA"):
            dirs.append(Path(environ["LOCALAPPDATA"]) / "uv" / "cache")
        return dirs
    xdg = environ.get("XDG_CACHE_HOME", "")
    dirs.append((Path(xdg) if os.path.isabs(xdg) else home / ".cache") / "uv")
    if system == "darwin":
        dirs.append(home / "Library" / "Caches" / "uv")
    return dirs


def in_uv_cache(
    path: str | Path, *, system: str = sys.platform, home: Path | None = None, environ: Mapping[str, str] = os.environ
) -> bool:
    """Whether ``path`` lies in uv's cache: under one of :func:`uv_cache_dirs`, or in an ``archive-v0``
    directory of a cache elsewhere (``uv --cache-dir``, ``--no-cache``'s temporary one), whose root uv tags
    with ``CACHEDIR.TAG``."""
    here = {Path(os.path.abspath(path)), Path(os.path.realpath(path))}
    roots: set[Path] = set()
    for cache in uv_cache_dirs(system=system, home=home, environ=environ):
        roots |= {Path(os.path.abspath(cache)), Path(os.path.realpath(cache))}
    for found in here:
        if any(root == found or root in found.parents for root in roots):
            return True
        for parent in found.parents:
            if parent.name == _UV_ARCHIVE and (
                (parent.parent / "CACHEDIR.TAG").is_file() or "uv" in parent.parent.parts
            ):
                return True
    return False


def uvx_source(direct_url: str | None) -> str | None:
    """What ``uvx --from`` takes to install this package again, from its PEP 610 ``direct_url.json``: the
    local directory or file, or the VCS URL at its commit. None without one: it came from a package index."""
    try:
        data = json.loads(direct_url) if direct_url else None
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("url"), str) or not data["url"]:
        return None
    url: str = data["url"]
    vcs = data.get("vcs_info")
    if isinstance(vcs, dict) and isinstance(vcs.get("vcs"), str):
        commit = vcs.get("commit_id")
        return f"{vcs['vcs']}+{url}" + (f"@{commit}" if isinstance(commit, str) and commit else "")
    parts = urlsplit(url)
    if parts.scheme == "file":
        return url2pathname(parts.path)
    return url


def installed_from() -> tuple[str, str | None]:
    """This install's version, and where it came from (see :func:`uvx_source`)."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        from runapi_mcp import __version__

        return __version__, None
    return dist.version, uvx_source(dist.read_text("direct_url.json"))


def find_uvx(environ: Mapping[str, str] = os.environ) -> str:
    """``uvx`` by absolute path where it can be found (GUI clients do not see the shell's PATH), else ``uvx``."""
    exe = "uvx.exe" if os.name == "nt" else "uvx"
    uv = environ.get("UV", "")  # uv sets UV, in what it runs, to its own executable; uvx sits beside it
    if os.path.isabs(uv):
        beside = Path(uv).with_name(exe)
        if beside.is_file() and os.access(beside, os.X_OK):
            return os.path.abspath(beside)
    found = shutil.which("uvx", path=environ.get("PATH"))
    return os.path.abspath(found) if found else "uvx"


def uvx_launch(uvx: str, version: str, source: str | None) -> Launch:
    """The entry that starts this server through ``uvx``: this version from the package index, pinned
    (``name@version``, the form every uvx takes) so that an upgrade is a choice; or from ``source``."""
    if source:
        return Launch(uvx, ("--from", source, PACKAGE, "serve"))
    return Launch(uvx, (f"{PACKAGE}@{version}", "serve"))


def uvx_note(launch: Launch, version: str, source: str | None) -> str:
    line = shlex.join([launch.command, *launch.args])
    note = (
        f"this runapi-mcp runs from uv's cache, which uv may clean at any time: the entry starts it through "
        f"uvx instead ({line})"
    )
    if source:
        note += f"; uvx builds it again from {source}, where this one was installed from"
    else:
        note += f", pinned to {version}: to upgrade, run `uvx {PACKAGE}@latest install <client>`"
    if not os.path.isabs(launch.command):
        note += "; uvx was not found on PATH, and a GUI app may not find it either: --command takes its absolute path"
    return note


# -- the key -----------------------------------------------------------------------------------------------

KeyMode = Literal["none", "env", "copy"]


@dataclass
class KeyPlan:
    """What happens to ``RUNAPI_API_KEY`` in the entry, and what to tell the user about it."""

    op: Literal["keep", "set", "remove"] = "keep"
    value: str = ""  # for "set": a reference, or the key itself when ``secret``
    secret: bool = False  # ``value`` is the key itself (never printed)
    vscode_input: bool = False  # also declare the password prompt ``value`` refers to
    hermes_dotenv: str | None = None  # for Hermes: the key to store in ~/.hermes/.env (its secrets file)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def dotenv_has(path: Path, var: str = KEY_VAR) -> bool:
    """Whether the ``.env`` file at ``path`` sets ``var`` to something (``VAR=...`` or ``export VAR=...``)."""
    text = read_text_file(path)  # never hangs on a FIFO nor reads a device
    if text is None:
        return False
    return re.search(rf"^\s*(?:export\s+)?{re.escape(var)}\s*=\s*\S", text, re.MULTILINE) is not None


def runapi_config_has_key(config_file: Path | None = None) -> bool:
    """Whether RunAPI's own config file (``~/.config/runapi/config.json`` by default) holds a key."""
    from runapi_mcp.config import RUNAPI_CONFIG_FILE, _read_runapi_config

    return "api_key" in _read_runapi_config(RUNAPI_CONFIG_FILE if config_file is None else config_file)


def plan_key(client: Client, mode: KeyMode, environ: Mapping[str, str], hermes_dir: Path) -> KeyPlan:
    plan = KeyPlan()
    fallback = (
        "the server reads the key from ~/.config/runapi/config.json"
        if runapi_config_has_key()
        else 'put {"apiKey": "sk-..."} in ~/.config/runapi/config.json, which the server reads'
    )
    if mode == "copy":
        value = environ.get(KEY_VAR, "").strip()
        if not value:
            raise UsageError(f"--api-key-from-env: {KEY_VAR} is not set in this shell; export it first.")
        if client.name == "hermes":
            # Hermes' own place for secrets: config.yaml keeps only the reference.
            plan.op, plan.value, plan.hermes_dotenv = "set", _env_ref(client, KEY_VAR), value
            plan.notes.append(
                f"the key goes into {hermes_dir / '.env'} (Hermes' secrets file); config.yaml refers to it"
            )
        else:
            plan.op, plan.value, plan.secret = "set", value, True
            plan.warnings.append(
                f"the key is copied into the config file in plain text: anyone who can read the file can spend "
                f"on your RunAPI account. {KEY_VAR} references (--api-key-env) or ~/.config/runapi/config.json "
                "keep it out."
            )
        return plan
    if mode == "env":
        if client.name == "claude-code":
            # Claude Code starts stdio servers with its own environment: nothing to write, and a stale
            # literal key in the entry would shadow the variable.
            plan.op = "remove"
            plan.notes.append(
                f"Claude Code passes its environment to the server: export {KEY_VAR} where you start claude"
            )
        elif client.env_ref is None:
            plan.warnings.append(
                f"{client.title} cannot refer to environment variables in its config, and an app started from "
                f"the Dock or Start menu does not see your shell's {KEY_VAR}. The entry is written without a key: "
                f"{fallback}, or rerun with --api-key-from-env to copy the key into the file."
            )
        else:
            plan.op, plan.value = "set", _env_ref(client, KEY_VAR)
            if client.name == "hermes":
                if not dotenv_has(hermes_dir / ".env"):
                    plan.warnings.append(
                        f"add {KEY_VAR}=sk-... to {hermes_dir / '.env'}: Hermes fills ${{{KEY_VAR}}} from there, and "
                        "an unset variable reaches the server as the literal text"
                    )
            else:
                plan.notes.append(
                    f"{client.title} fills {plan.value} from its own environment: set {KEY_VAR} before starting it"
                )
        return plan
    if client.name == "vscode":
        # VS Code asks once and keeps the answer in its secret storage: the key never touches mcp.json.
        plan.op, plan.value, plan.vscode_input = "set", f"${{input:{VSCODE_INPUT_ID}}}", True
        plan.notes.append(
            "VS Code asks for the key when it first starts the server "
            "(leave it empty to use ~/.config/runapi/config.json)"
        )
        return plan
    if client.name == "claude-code":
        plan.notes.append(
            f"no key written: Claude Code passes its environment to the server ({KEY_VAR}), or {fallback}"
        )
    else:
        hint = "--api-key-env refers to the variable" if client.env_ref else "see --api-key-from-env"
        plan.notes.append(f"no key written into the file: {fallback} ({hint})")
    return plan


# -- entries -----------------------------------------------------------------------------------------------


def core_fields(client: Client, launch: Launch) -> dict[str, Any]:
    fields: dict[str, Any] = {"type": "stdio"} if client.stdio_type else {}
    fields["command"] = launch.command
    fields["args"] = list(launch.args)
    return fields


def merged_entry(old: Mapping[str, Any] | None, client: Client, launch: Launch, key: KeyPlan) -> dict[str, Any]:
    """The entry to write: the old one's keys kept, the launch set, ``RUNAPI_API_KEY`` as ``key`` says."""
    entry: dict[str, Any] = dict(old or {})
    for name, value in core_fields(client, launch).items():
        entry[name] = value
    old_env = entry.get("env")
    env: dict[str, Any] = dict(old_env) if isinstance(old_env, Mapping) else {}
    if key.op == "set":
        env[KEY_VAR] = key.value
    elif key.op == "remove":
        env.pop(KEY_VAR, None)
    if env or isinstance(old_env, Mapping):
        entry["env"] = env
    return entry


def _same_entry(a: Mapping[str, Any] | None, b: Mapping[str, Any]) -> bool:
    return a is not None and json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _shown(entry: Mapping[str, Any], key: KeyPlan) -> dict[str, Any]:
    """``entry`` fit to print: the key itself replaced by a placeholder."""
    out = dict(entry)
    env = out.get("env")
    if key.secret and isinstance(env, Mapping) and env.get(KEY_VAR) == key.value:
        out["env"] = {**env, KEY_VAR: "<your RunAPI key>"}
    return out


# -- files -------------------------------------------------------------------------------------------------
#
# A config file is someone's: it may be a link into a dotfiles repository, belong to another user (install
# run with sudo), be read-only on purpose, or be something that is not a file at all. So the file written is
# the one a link leads to (the link stays); it keeps its owner, group and mode; a read-only file, or one this
# user could only replace by taking it over, is refused; anything but a regular file is refused before it is
# opened (a FIFO would hang the read, /dev/zero would fill memory), and so is a file too large to be a config.
# Each edit runs under a lock, re-reads the file and merges into what it finds, so concurrent installs keep
# each other's entries, and the new text replaces the old in one step (a temporary file in the same
# directory, then a rename).

MIB = 1024 * 1024
MAX_CONFIG_BYTES = 10 * MIB
# ~/.claude.json also holds Claude Code's per-project state: files of 15 to 100 MB have been reported.
MAX_CLAUDE_JSON_BYTES = 256 * MIB
LOCK_TIMEOUT_S = 30.0
_LOCK_NAME = ".runapi-mcp-install.lock"  # only where a directory itself cannot be locked (some NFS, Windows)
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


@dataclass
class ConfigFile:
    """A config file as read: the name it was given, the file that name leads to, and what it held."""

    path: Path  # as named (it may be a symbolic link, or lie in a linked directory)
    real: Path  # the file itself, every link resolved: what is read and replaced
    data: bytes | None = None  # None: there is no such file yet
    st: os.stat_result | None = None

    @property
    def linked(self) -> bool:
        """The name is a symbolic link (to another name, maybe in a dotfiles repository)."""
        return os.path.islink(self.path)

    def text(self) -> str:
        if self.data is None:
            return ""
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InstallError(
                f"{self.path} is not UTF-8 text ({exc.reason} at byte {exc.start}); it was left unchanged."
            ) from None


def _real_path(path: Path) -> Path:
    real = Path(os.path.realpath(path))
    if real.is_symlink():  # realpath gives up on a loop and returns a link
        raise InstallError(f"{path} is a symbolic link that leads back to itself; it was left unchanged.")
    return real


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _check_regular(config: ConfigFile, st: os.stat_result, limit: int) -> None:
    where = f"{config.path} (a link to {config.real})" if config.linked else str(config.path)
    if not stat.S_ISREG(st.st_mode):
        raise InstallError(
            f"{where} is {_kind(st.st_mode)}, not a regular file: it was not opened and nothing was written. "
            "Point --config at the client's config file."
        )
    if st.st_size > limit:
        raise InstallError(
            f"{where} is {st.st_size / MIB:.1f} MiB, more than the {limit // MIB} MiB a client's config file is "
            "read up to; it was left unchanged."
        )


def read_config(path: Path, *, limit: int = MAX_CONFIG_BYTES) -> ConfigFile:
    """The config at ``path`` (through any links), refused unless it is a regular file of at most ``limit`` bytes.

    Checked with ``stat`` before it is opened, opened without blocking (a FIFO swapped in meanwhile cannot
    hang it) and checked again on the open file, and never read past ``limit``.
    """
    config = ConfigFile(path, _real_path(path))
    try:
        st = os.stat(config.real)
    except FileNotFoundError:
        return config
    except OSError as exc:
        raise InstallError(f"cannot read {path}: {exc.strerror}; it was left unchanged.") from None
    _check_regular(config, st, limit)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(config.real, flags)
    except OSError as exc:
        raise InstallError(f"cannot read {path}: {exc.strerror}; it was left unchanged.") from None
    try:
        st = os.fstat(fd)
        _check_regular(config, st, limit)
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, min(MIB, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise InstallError(f"{path} grew past {limit // MIB} MiB while being read; it was left unchanged.")
    except OSError as exc:
        raise InstallError(f"cannot read {path}: {exc.strerror}; it was left unchanged.") from None
    finally:
        os.close(fd)
    config.data, config.st = b"".join(chunks), st
    return config


def read_text_file(path: Path, *, limit: int = MAX_CONFIG_BYTES) -> str | None:
    """The text of a small regular file at ``path``; None when it is missing, unreadable or not such a file."""
    try:
        return read_config(path, limit=limit).text() if os.path.lexists(path) else None
    except InstallError:
        return None


def check_writable(config: ConfigFile) -> None:
    """Refuse, before anything is written, a file this user should not or could not replace as it is."""
    st = config.st
    if st is None:
        return
    where = f"{config.path} (a link to {config.real})" if config.linked else str(config.path)
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o222:
        raise InstallError(
            f"{where} is read-only (mode {mode:04o}), so it was left unchanged. If the entry should go in, make it "
            f"writable first (chmod u+w {config.real}), or add the entry by hand."
        )
    if not os.access(config.real, os.W_OK):
        raise InstallError(
            f"{where} cannot be written by this user (mode {mode:04o}), or its file system is read-only; it was left "
            "unchanged."
        )
    if st.st_nlink > 1:
        raise InstallError(
            f"{where} has {st.st_nlink} hard links: replacing it would leave the others with the old text, so it "
            "was left unchanged. Add the entry by hand, or make the other names symbolic links."
        )
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        if st.st_uid != os.geteuid():
            raise InstallError(
                f"{where} belongs to another user (uid {st.st_uid}); the new file would belong to you instead, so "
                "it was left unchanged. Run the command as that user."
            )
        if st.st_gid != os.getegid() and st.st_gid not in os.getgroups():
            raise InstallError(
                f"{where} belongs to group {st.st_gid}, which you are not in; the new file could not keep it, so it "
                "was left unchanged."
            )


def _owner_of(directory: Path) -> tuple[int, int] | None:
    """Who a file created in ``directory`` should belong to: its owner, when running as root for someone else."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    st = directory.stat()
    return None if (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid()) else (st.st_uid, st.st_gid)


def _make_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents, owned like the nearest one that exists."""
    missing: list[Path] = []
    probe = directory
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    if not missing:
        return
    owner = _owner_of(probe)
    for created in reversed(missing):
        try:
            created.mkdir(exist_ok=True)
            if owner is not None:
                os.chown(created, *owner)
        except OSError as exc:
            raise InstallError(f"cannot create {created}: {exc.strerror}") from None


def _write_new(target: Path, data: bytes, mode: int, owner: tuple[int, int] | None, *, replace: bool) -> None:
    """``data`` at ``target`` with ``mode`` and ``owner``: through a temporary file renamed over it when
    ``replace``, else created only if ``target`` does not exist (FileExistsError)."""
    directory = target.parent
    if replace:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
        name = tmp
    else:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        name = str(target)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        # The owner first: a change of owner clears set-id bits. Compared with the new file's own (a directory
        # may give it its group), not with this process's.
        if owner is not None and hasattr(os, "fchown"):
            made = os.fstat(fd)
            if (made.st_uid, made.st_gid) != owner:
                os.fchown(fd, *owner)
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        else:  # Windows: only the read-only flag exists
            os.chmod(name, mode)
        os.close(fd)
        fd = -1
        if replace:
            os.replace(tmp, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        Path(name).unlink(missing_ok=True)
        raise
    if replace and hasattr(os, "O_DIRECTORY"):
        try:  # the rename itself survives a crash only once the directory is on disk
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)


def _kept_owner(st: os.stat_result) -> tuple[int, int] | None:
    return (st.st_uid, st.st_gid) if hasattr(os, "fchown") else None


def write_config(config: ConfigFile, text: str, *, private: bool = False) -> None:
    """Replace the file ``config`` was read from with ``text`` in one step (its owner, group and mode kept).

    Through a link, the file the link leads to is replaced and the link stays. A crash leaves the old file
    or the new one, never half. ``private`` (the file now holds the key) takes every permission away from
    other users; a new file is 0600.
    """
    check_writable(config)
    real = config.real
    _make_dirs(real.parent)
    if config.st is not None:
        mode, owner = stat.S_IMODE(config.st.st_mode), _kept_owner(config.st)
    else:
        mode, owner = 0o600, _owner_of(real.parent)
    if private:
        mode &= 0o700
    try:
        _write_new(real, text.encode("utf-8"), mode, owner, replace=True)
    except OSError as exc:
        raise InstallError(f"could not write {config.path}: {exc.strerror or exc}; it was left unchanged.") from None


def backup(config: ConfigFile, *, now: datetime | None = None) -> Path:
    """The bytes ``config`` was read with, in ``<name>.<timestamp>.bak`` beside its name (never over an earlier
    backup), with the same owner and mode: a backup of a private file is private too."""
    assert config.data is not None and config.st is not None
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    mode, owner = stat.S_IMODE(config.st.st_mode) | 0o600, _kept_owner(config.st)
    n = 0
    while True:
        target = config.path.with_name(f"{config.path.name}.{stamp}{f'-{n}' if n else ''}.bak")
        try:
            _write_new(target, config.data, mode, owner, replace=False)
            return target
        except FileExistsError:
            n += 1
        except OSError as exc:
            raise InstallError(
                f"could not back up {config.path} to {target}: {exc.strerror}; it was left unchanged."
            ) from None


_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def _lock_fd(directory: Path, *, sidecar: bool) -> int:
    if sidecar:
        fd = os.open(directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        owner = _owner_of(directory)
        if owner is not None and hasattr(os, "fchown"):
            os.fchown(fd, *owner)
        return fd
    return os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _try_lock(fd: int) -> bool:
    """Take the lock on ``fd`` if it is free: True, or False when another holds it."""
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def _directory_lock(directory: Path, deadline: float) -> Iterator[None]:
    """Hold the lock of ``directory`` (its own flock; a lock file in it where that is refused)."""
    busy = InstallError(
        f"another runapi-mcp install has been editing a file in {directory} for {LOCK_TIMEOUT_S:.0f} s; nothing "
        "was changed: try again"
    )
    with _THREAD_LOCKS_GUARD:
        in_process = _THREAD_LOCKS.setdefault(str(directory), threading.Lock())
    if not in_process.acquire(timeout=max(0.0, deadline - time.monotonic())):
        raise busy
    fd = -1
    try:
        sidecar = sys.platform == "win32"
        try:
            fd = _lock_fd(directory, sidecar=sidecar)
            while not _try_lock(fd):
                if time.monotonic() > deadline:
                    raise busy
                time.sleep(0.01)
        except OSError as exc:
            if sidecar:
                raise InstallError(f"cannot lock {directory}: {exc.strerror or exc}; nothing was changed") from None
            # flock on a directory is refused here (NFS emulates flock with fcntl locks, which need a file
            # open for writing): a lock file in it instead.
            if fd >= 0:
                os.close(fd)
                fd = -1
            try:
                fd = _lock_fd(directory, sidecar=True)
                while not _try_lock(fd):
                    if time.monotonic() > deadline:
                        raise busy from None
                    time.sleep(0.01)
            except OSError as again:
                raise InstallError(f"cannot lock {directory}: {again.strerror or again}; nothing was changed") from None
        yield
    finally:
        if fd >= 0:
            os.close(fd)  # releases the lock
        in_process.release()


@contextmanager
def locked(*paths: Path) -> Iterator[None]:
    """One edit at a time of the files at ``paths``: the directories they lie in (through links) are locked.

    Another install waits (up to LOCK_TIMEOUT_S), then reads the file as the first one left it. The lock
    is the directory itself, so no lock file is left beside a config (a client may use ``<file>.lock``
    for its own lock); the directories are taken in one order, so two installs cannot wait on each other.
    """
    directories = sorted({_real_path(path).parent for path in paths}, key=str)
    for directory in directories:
        _make_dirs(directory)
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    with ExitStack() as stack:
        for directory in directories:
            stack.enter_context(_directory_lock(directory, deadline))
        yield


def _json_object(config: ConfigFile) -> dict[str, Any]:
    """The JSON object ``config`` holds ({} for a missing or empty file); :class:`InstallError` when it is not one."""
    text = config.text()
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InstallError(
            f"{config.path} is not plain JSON ({exc.msg}, line {exc.lineno} column {exc.colno}). If it has comments "
            "or trailing commas (which VS Code allows), rewriting it would drop them, so it was left unchanged."
        ) from None
    if not isinstance(data, dict):
        raise InstallError(f"{config.path} holds a JSON {type(data).__name__}, not an object; it was left unchanged.")
    return data


def read_json_config(path: Path, *, limit: int = MAX_CONFIG_BYTES) -> dict[str, Any]:
    """The JSON object in ``path`` ({} for a missing or empty file); :class:`InstallError` when it is not one."""
    return _json_object(read_config(path, limit=limit))


def _dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


# -- YAML, for Hermes: ruamel.yaml's round trip ----------------------------------------------------------------
#
# Hermes' config.yaml is long and commented. ruamel.yaml reads it into a document that remembers comments,
# key order and quoting, the entry is set in that document, and the document is written back. Two things
# are added to a plain round trip:
#
# - Comments after a block (blank lines, the next section's heading) belong to the last value before them in
#   ruamel's model, so a key added after that value would land below them. They are moved to follow the new
#   key, which leaves them where they were in the file: before the next section.
# - ruamel writes the whole file in one indentation (and drops lines holding only spaces). So the lines the
#   edit changed in ruamel's rendering are carried into the original text instead, when the lines around
#   them are the same there, and the result is read back to be sure it says the same; only when it does
#   not is ruamel's rendering of the whole file used.
#
# Keys that appear twice are refused: Hermes (PyYAML) silently reads only the last of them, so an entry put
# in the other block would be reported as installed and never be read. Inline (flow style) server blocks,
# tabs, several documents and files that are not YAML are refused too, and the file is left unchanged.


class YamlShapeError(InstallError):
    """The YAML cannot be read, or not edited safely; the file is left alone."""


class YamlSyntaxError(YamlShapeError):
    """The file is not valid YAML: Hermes cannot read it either."""


class YamlDuplicateKeyError(YamlShapeError):
    """A key appears twice in one mapping; Hermes reads only the last."""

    def __init__(self, where: Sequence[str], lines: tuple[int, int]) -> None:
        self.where, self.lines = tuple(where), lines
        self.summary = f"the key {'.'.join(self.where)} appears twice (lines {lines[0]} and {lines[1]})"
        super().__init__(
            f"{self.summary}; Hermes reads only the last one, so whatever is under the first is ignored. Merge the "
            f"two into one {self.where[-1]}: block"
        )


_HERMES_KEY = "mcp_servers"


def _yaml(mapping: int = 2, sequence: int = 2, offset: int = 0) -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 1 << 30  # never fold a long line the file has on one line
    yaml.indent(mapping=mapping, sequence=max(sequence, offset + 2), offset=offset)
    return yaml


def _problem(exc: Exception) -> str:
    if isinstance(exc, MarkedYAMLError):
        line = f", line {exc.problem_mark.line + 1}" if exc.problem_mark is not None else ""
        return f"{exc.problem or exc.context or 'not YAML'}{line}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _compose(text: str) -> Node | None:
    try:
        node: Node | None = _yaml().compose(text)
    except YAMLError as exc:
        raise YamlSyntaxError(f"it is not valid YAML ({_problem(exc)})") from None
    return node


def _refuse_duplicates(node: Node, where: tuple[str, ...], seen: set[int]) -> None:
    if id(node) in seen:  # an alias: checked where its anchor is
        return
    seen.add(id(node))
    if isinstance(node, MappingNode):
        first: dict[tuple[str | None, str], int] = {}
        for key, value in node.value:
            name = str(key.value) if isinstance(key, ScalarNode) else "?"
            if isinstance(key, ScalarNode) and name != "<<":
                line = key.start_mark.line + 1
                if (key.tag, name) in first:
                    raise YamlDuplicateKeyError((*where, name), (first[key.tag, name], line))
                first[key.tag, name] = line
            _refuse_duplicates(value, (*where, name), seen)
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_duplicates(item, (*where, f"[{index}]"), seen)


def _load(text: str) -> Any:
    """``text`` loaded for a round trip; a key that appears twice is refused (ruamel.yaml's own check)."""
    try:
        return _yaml().load(text)
    except DuplicateKeyError as exc:
        node = _compose(text)  # to say where the duplicate is, by its path
        if node is not None:
            _refuse_duplicates(node, (), set())
        raise YamlSyntaxError(f"it has a duplicate key ({_problem(exc)})") from None
    except YAMLError as exc:
        raise YamlSyntaxError(f"it is not valid YAML ({_problem(exc)})") from None


_PLAIN_DOCS: OrderedDict[str, Any] = OrderedDict()  # text -> its plain data: one edit reads a text several times


_PLAIN_DOCS_LOCK = threading.Lock()


def _plain_doc(text: str) -> Any:
    """``text`` (LF line ends) as plain data, remembered for the next few calls: do not change what it returns."""
    with _PLAIN_DOCS_LOCK:
        if text in _PLAIN_DOCS:
            return _PLAIN_DOCS[text]
    plain = _plain(_load(text))
    _remember(text, plain)
    return plain


def _remember(text: str, plain: Any) -> None:
    with _PLAIN_DOCS_LOCK:
        _PLAIN_DOCS[text] = plain
        while len(_PLAIN_DOCS) > 8:
            _PLAIN_DOCS.popitem(last=False)


def _plain(value: Any) -> Any:
    """A loaded document as plain dicts, lists, strings and numbers (to compare two of them)."""
    if isinstance(value, Mapping):
        return {(tuple(k) if isinstance(k, list) else _plain(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    for kind in (bool, str, int, float):
        if isinstance(value, kind):
            return kind(value)
    return value


def hermes_servers(text: str) -> dict[str, dict[str, Any]]:
    """The ``mcp_servers`` entries of a Hermes config (command, args, env, timeout, ...), as Hermes reads them.

    Raises :class:`YamlDuplicateKeyError` for a key that appears twice, :class:`YamlSyntaxError` for text that
    is not YAML, and :class:`YamlShapeError` for YAML that is not a mapping of settings.
    """
    doc = copy.deepcopy(_plain_doc(text.replace("\r\n", "\n")))
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise YamlShapeError(f"the file holds a {_yaml_kind(doc)}, not a mapping of settings")
    servers = doc.get(_HERMES_KEY)
    if not servers:
        return {}
    if not isinstance(servers, dict):
        raise YamlShapeError(f"{_HERMES_KEY} is a {_yaml_kind(servers)}, not a mapping of servers")
    return {str(name): entry if isinstance(entry, dict) else {} for name, entry in servers.items()}


def _yaml_kind(value: Any) -> str:
    return "list" if isinstance(value, list) else "mapping" if isinstance(value, dict) else "single value"


def _yaml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid YAML double-quoted scalar


def _flow_list(items: Sequence[str]) -> CommentedSeq:
    seq = CommentedSeq([DoubleQuotedScalarString(item) for item in items])
    seq.fa.set_flow_style()
    return seq


def _new_entry(launch: Launch, key: KeyPlan, ask: bool) -> CommentedMap:
    entry = CommentedMap()
    entry["command"] = DoubleQuotedScalarString(launch.command)
    entry["args"] = _flow_list(launch.args)
    env = CommentedMap()
    if key.op == "set":
        env[KEY_VAR] = DoubleQuotedScalarString(key.value)
    if ask:
        env[CONFIRM_VAR] = DoubleQuotedScalarString(ASK_EVERY_PAID_CALL)
    if env:
        entry["env"] = env
    return entry


def hermes_snippet(name: str, launch: Launch, key: KeyPlan, *, ask: bool) -> str:
    """The ``mcp_servers`` block with this server's entry alone, as it is written into a Hermes config."""
    out = io.StringIO()
    _yaml().dump(CommentedMap([(_HERMES_KEY, CommentedMap([(name, _new_entry(launch, key, ask))]))]), out)
    return out.getvalue()


def _own_keys(mapping: CommentedMap) -> list[Any]:
    """The keys written in ``mapping`` itself, in order (not those a ``<<`` merge key brings in)."""
    return [key for key, _ in mapping.non_merged_items()]


# Where ruamel keeps the comment after a value: slot 2 of a mapping's key, slot 0 of a list's item.
def _last_leaf(container: CommentedMap | CommentedSeq, key: Any) -> tuple[CommentedMap | CommentedSeq, Any]:
    """The innermost last key (or item) of the block value at ``container[key]``, where comments after it live."""
    value = container[key]
    if isinstance(value, (CommentedMap, CommentedSeq)) and len(value) and not value.fa.flow_style():
        return _last_leaf(value, _own_keys(value)[-1] if isinstance(value, CommentedMap) else len(value) - 1)
    return container, key


def _slot(container: CommentedMap | CommentedSeq) -> int:
    return 2 if isinstance(container, CommentedMap) else 0


def _take_trailing(container: CommentedMap | CommentedSeq, key: Any) -> str:
    """Detach the lines of comments (and blank lines) after the value at ``container[key]``; its own end-of-line
    comment stays."""
    leaf, leaf_key = _last_leaf(container, key)
    slots = leaf.ca.items.get(leaf_key)
    token = slots[_slot(leaf)] if slots and len(slots) > _slot(leaf) else None
    if not isinstance(token, CommentToken) or "\n" not in token.value:
        return ""
    own, rest = token.value.split("\n", 1)
    if not rest:
        return ""
    if own.strip():
        token.value = own + "\n"
    else:
        slots[_slot(leaf)] = None
    return rest


def _give_trailing(container: CommentedMap | CommentedSeq, key: Any, rest: str, *, inside: bool = True) -> None:
    """Attach comment lines ``rest`` (from :func:`_take_trailing`) after the value at ``container[key]`` (after
    its key's own line when not ``inside``)."""
    if not rest:
        return
    leaf, leaf_key = _last_leaf(container, key) if inside else (container, key)
    slot = _slot(leaf)
    slots = leaf.ca.items.setdefault(leaf_key, [None, None, None, None])
    while len(slots) <= slot:
        slots.append(None)
    token = slots[slot]
    if isinstance(token, CommentToken):
        token.value = (token.value if token.value.endswith("\n") else token.value + "\n") + rest
    else:
        slots[slot] = CommentToken("\n" + rest, CommentMark(0), None)


def _put(mapping: CommentedMap, key: str, value: Any, *, after: str | None = None, first: bool = False) -> None:
    """``mapping[key] = value``, comments kept where they were in the file.

    A value replaced in place hands the comment lines that followed it to the new value. A new key goes
    first, after ``after`` or last, and takes over the comment lines that followed the key before it.
    """
    if key in mapping:
        rest = _take_trailing(mapping, key)
        mapping[key] = value
        _give_trailing(mapping, key, rest)
        return
    keys = _own_keys(mapping)
    index = 0 if first else keys.index(after) + 1 if after in keys else len(keys)
    rest = _take_trailing(mapping, keys[index - 1]) if index else ""
    mapping.insert(index, key, value)
    _give_trailing(mapping, key, rest)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, (CommentedMap, dict)) and not value)


def _block_map(value: Any, where: str) -> CommentedMap:
    if not isinstance(value, CommentedMap):
        raise YamlShapeError(f"{where} is a {_yaml_kind(_plain(value))}, not a mapping")
    if value.fa.flow_style():
        raise YamlShapeError(f"{where} is written inline (flow style)")
    return value


def _set_env(entry: CommentedMap, where: str, var: str, value: str) -> None:
    """``entry.env[var] = value`` (as a quoted string), the env block made when there is none."""
    env = entry.get("env")
    if _empty(env):
        _put(entry, "env", CommentedMap([(var, DoubleQuotedScalarString(value))]))
    elif _plain(_block_map(env, f"{where}.env").get(var)) != value:
        _put(env, var, DoubleQuotedScalarString(value))


def _drop_env(entry: CommentedMap, var: str) -> None:
    """Take ``var`` out of the entry's env block, the comments after it kept in place (``env: {}`` when it was
    the only one)."""
    env = entry.get("env")
    if not isinstance(env, CommentedMap) or var not in env:
        return
    index = _own_keys(env).index(var)
    rest = _take_trailing(env, var)
    del env[var]
    if not env:
        entry["env"] = CommentedMap()
        entry["env"].fa.set_flow_style()
        _give_trailing(entry, "env", rest)
    elif index:
        _give_trailing(env, _own_keys(env)[index - 1], rest)
    else:
        _give_trailing(entry, "env", rest, inside=False)


def _drop_key(mapping: CommentedMap, key: str) -> None:
    """Take ``key`` out of ``mapping``, the comment lines after its value handed to the key before it."""
    index = _own_keys(mapping).index(key)
    rest = _take_trailing(mapping, key)
    del mapping[key]
    keys = _own_keys(mapping)
    if keys:
        _give_trailing(mapping, keys[max(index - 1, 0)], rest)


def _edit_hermes(doc: CommentedMap, name: str, launch: Launch, key: KeyPlan, ask: bool) -> None:
    """Set the entry ``name`` in a loaded Hermes config: added, or brought up to date with its other keys kept."""
    servers = doc[_HERMES_KEY]
    if _empty(servers):
        _put(doc, _HERMES_KEY, CommentedMap([(name, _new_entry(launch, key, ask))]))
        return
    servers = _block_map(servers, _HERMES_KEY)
    if _empty(servers.get(name)):
        _put(servers, name, _new_entry(launch, key, ask))
        return
    where = f"{_HERMES_KEY}.{name}"
    entry = _block_map(servers[name], where)
    if _plain(entry.get("command")) != launch.command:
        _put(entry, "command", DoubleQuotedScalarString(launch.command), first=True)
    if _plain(entry.get("args")) != list(launch.args):
        _put(entry, "args", _flow_list(launch.args), after="command")
    if key.op == "set":
        _set_env(entry, where, KEY_VAR, key.value)
    elif key.op == "remove":
        _drop_env(entry, KEY_VAR)
    env = entry.get("env")
    if ask and not (isinstance(env, Mapping) and CONFIRM_VAR in env):
        _set_env(entry, where, CONFIRM_VAR, ASK_EVERY_PAID_CALL)  # a threshold of the user's own is kept
    elif not ask:
        _drop_env(entry, CONFIRM_VAR)
    if _plain(entry.get("trust")) == STALE_TRUST:
        _drop_key(entry, "trust")  # an earlier install's promise: Hermes reads no `trust` key


def _layout(doc: CommentedMap) -> tuple[int, int, int]:
    """The file's indentation for ruamel (mapping, sequence, offset): the servers block's first, then the file's.

    Read from where ruamel found each key and item (an item's dash is taken to be two columns before it)."""
    found: dict[str, tuple[int, ...]] = {}

    def visit(mapping: CommentedMap, keys: Sequence[Any], depth: int) -> None:
        for key in keys:
            if depth > 50 or len(found) == 2:
                return
            value = mapping[key]
            try:
                column = mapping.lc.key(key)[1]
                if isinstance(value, CommentedMap) and value and not value.fa.flow_style():
                    inner = _own_keys(value)
                    found.setdefault("mapping", (value.lc.key(inner[0])[1] - column,))
                    visit(value, inner, depth + 1)
                elif isinstance(value, CommentedSeq) and value and not value.fa.flow_style():
                    item = value.lc.item(0)[1] - column
                    found.setdefault("sequence", (item, item - 2))
                    for entry in value:
                        if isinstance(entry, CommentedMap):
                            visit(entry, _own_keys(entry), depth + 1)
            except (KeyError, IndexError, TypeError):  # no position recorded: nothing to learn here
                continue

    if _HERMES_KEY in _own_keys(doc):
        visit(doc, [_HERMES_KEY], 0)
    visit(doc, _own_keys(doc), 0)
    mapping = found.get("mapping", (2,))[0]
    sequence, offset = found.get("sequence", (2, 0))
    return max(mapping, 1), sequence, max(offset, 0)


def _carry_over(original: str, before: str, after: str) -> str | None:
    """``original`` with the change from ``before`` to ``after`` (two renderings of it by ruamel) made in it.

    Each changed run of lines is replaced in ``original`` where its neighbours are the same lines as in
    ``before``; None when some run's neighbourhood reads differently there (then there is no safe place).
    """
    old, base, new = (t.splitlines(keepends=True) for t in (original, before, after))
    strip = [line.rstrip() for line in base]
    to_old: dict[int, int] = {}
    for block in SequenceMatcher(None, strip, [line.rstrip() for line in old], autojunk=False).get_matching_blocks():
        to_old.update((block.a + k, block.b + k) for k in range(block.size))
    edits: list[tuple[int, int, list[str]]] = []
    for tag, i1, i2, j1, j2 in SequenceMatcher(
        None, strip, [line.rstrip() for line in new], autojunk=False
    ).get_opcodes():
        if tag == "equal":
            continue
        if any(i not in to_old for i in range(i1, i2)):
            return None
        if i1 > 0 and i1 - 1 not in to_old:
            return None
        if i1 < len(base) and i2 < len(base) and i2 not in to_old:
            return None
        start = to_old[i1] if i1 < i2 else (to_old[i1 - 1] + 1 if i1 else 0)
        end = start + (i2 - i1)
        if (i1 > 0 and to_old[i1 - 1] != start - 1) or (i2 < len(base) and to_old[i2] != end):
            return None
        if i2 == len(base) and end != len(old):
            return None
        if any(to_old[i] != start + (i - i1) for i in range(i1, i2)):
            return None
        edits.append((start, end, new[j1:j2]))
    for start, end, lines in reversed(edits):
        old[start:end] = lines
    return "".join(old)


def hermes_updated(text: str, name: str, launch: Launch, key: KeyPlan, *, ask: bool) -> str:
    """``text`` (a Hermes config.yaml) with the entry ``name`` added or brought up to date, all else intact.

    Comments, key order, quoting and the file's layout stay; ``text`` itself comes back when the entry is
    already as wanted. ``ask``: the entry's env carries ``RUNAPI_MCP_CONFIRM_ABOVE_CENTS`` (``"0"`` unless it
    has a value of its own), else it carries none. A ``trust: untrusted`` an earlier install wrote goes (Hermes
    does not read it). Raises :class:`YamlShapeError` (nothing to write) when the file cannot be edited safely.
    """
    crlf = "\r\n" in text
    body = text.replace("\r\n", "\n")
    if body and not body.endswith("\n"):
        body += "\n"
    doc = _load(body)
    _remember(body, _plain(doc))  # for the checks that read it again
    if doc is not None and not isinstance(doc, CommentedMap):
        raise YamlShapeError(f"the file holds a {_yaml_kind(_plain(doc))}, not a mapping of settings")
    if doc is not None and doc.fa.flow_style():
        raise YamlShapeError("the file is one inline (flow style) mapping")
    if doc is None or _HERMES_KEY not in doc:
        # A new block at the end of the file, after everything in it (comments included).
        gap = "\n" if body.strip() and body.splitlines()[-1].strip() else ""
        new = body + gap + hermes_snippet(name, launch, key, ask=ask)
        if doc is None or _reads_as(new, _plain(doc) | {_HERMES_KEY: {name: _plain(_new_entry(launch, key, ask))}}):
            return new.replace("\n", "\r\n") if crlf else new
        # The end of the file is not the end of the settings (an explicit document end, '...'): add it in there.
    yaml = _yaml(*_layout(doc))
    rendered = io.StringIO()
    yaml.dump(doc, rendered)  # the file as ruamel writes it, to compare the edited rendering with
    before = rendered.getvalue()
    if _HERMES_KEY in doc:
        _edit_hermes(doc, name, launch, key, ask)
    else:
        doc[_HERMES_KEY] = CommentedMap([(name, _new_entry(launch, key, ask))])
    rendered = io.StringIO()
    yaml.dump(doc, rendered)
    after = rendered.getvalue()
    if after == before:
        return text
    new = _carry_over(body, before, after) or after
    if new != after and not _reads_as(new, _plain(doc)):
        new = after
    return new.replace("\n", "\r\n") if crlf else new


def _reads_as(text: str, expected: Any) -> bool:
    try:
        return bool(_plain_doc(text) == expected)
    except YamlShapeError:
        return False


def _check_hermes_edit(old: str, new: str, name: str, launch: Launch, key: KeyPlan, *, ask: bool) -> None:
    """Read the edited text back (and with PyYAML, which Hermes uses, when it is installed): refuse an edit that
    went wrong."""
    problems: list[str] = []
    try:
        entry: dict[str, Any] | None = hermes_servers(new).get(name)
    except YamlShapeError as exc:
        entry, problems = None, [f"the result cannot be read back ({exc})"]
    if not problems and (not entry or entry.get("command") != launch.command or entry.get("args") != list(launch.args)):
        problems.append("the entry does not read back as written")
    env = (entry or {}).get("env") or {}
    if key.op == "set" and (not isinstance(env, dict) or env.get(KEY_VAR) != key.value):
        problems.append(f"{KEY_VAR} does not read back as written")
    if key.op == "remove" and isinstance(env, dict) and KEY_VAR in env:
        problems.append(f"{KEY_VAR} is still there")
    if isinstance(env, dict) and ask != (CONFIRM_VAR in env):
        problems.append(f"{CONFIRM_VAR} is {'missing' if ask else 'still there'}")
    loaders: list[Callable[[str], Any]] = [lambda text: copy.deepcopy(_plain_doc(text.replace("\r\n", "\n")))]
    try:
        import yaml as pyyaml  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        pass
    else:
        loaders.append(pyyaml.safe_load)
    for load in loaders if not problems else []:
        try:
            before, after = load(old) or {}, load(new) or {}
        except Exception as exc:
            problems.append(f"the result is not valid YAML ({exc})")
            break
        servers = after.get(_HERMES_KEY) if isinstance(after, dict) else None
        got = (servers.get(name) if isinstance(servers, dict) else None) or {}
        if got.get("command") != launch.command or got.get("args") != list(launch.args):
            problems.append("YAML readers see a different entry")
        for doc in (before, after):
            if not isinstance(doc, dict):
                continue
            if isinstance(doc.get(_HERMES_KEY), dict):
                doc[_HERMES_KEY].pop(name, None)
                if not doc[_HERMES_KEY]:
                    doc.pop(_HERMES_KEY)
            elif doc.get(_HERMES_KEY) is None:
                doc.pop(_HERMES_KEY, None)
        if before != after:
            problems.append("something besides the entry changed")
    if problems:
        raise InstallError(f"editing the YAML went wrong ({'; '.join(problems)}); the file was left unchanged.")


def _dotenv_updated(text: str, value: str) -> str:
    plain = re.fullmatch(r"[A-Za-z0-9_./+=:@-]+", value) is not None
    line = f"{KEY_VAR}={value if plain else _yaml_str(value)}\n"
    pattern = re.compile(rf"^[ \t]*(?:export[ \t]+)?{KEY_VAR}[ \t]*=.*$\n?", re.MULTILINE)
    if pattern.search(text):
        return pattern.sub(lambda _: line, text, count=1)
    return text + ("" if not text or text.endswith("\n") else "\n") + line


# -- the command -------------------------------------------------------------------------------------------


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


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)


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
        _install_hermes(options, client, launch, key, path, hermes_dir, outcome)
    elif client.name == "claude-code" and options.config is None and not key.secret and _claude_cli(options):
        _install_claude_cli(options, client, launch, key, path, outcome)
    else:
        _install_json(options, client, launch, key, path, outcome)
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


def client_launch(
    launch: Launch | None = None, *, environ: Mapping[str, str] = os.environ
) -> tuple[Launch, str | None]:
    """``launch`` (this install's own when None), unless it lies in uv's cache: then a launch through uvx,
    and the note saying so."""
    launch = launch or server_launch()
    if not in_uv_cache(launch.command, environ=environ):
        return launch, None
    version, source = installed_from()
    uvx = uvx_launch(find_uvx(environ), version, source)
    return uvx, uvx_note(uvx, version, source)


def _claude_cli(options: Options) -> str | None:
    found = options.claude_cli or shutil.which("claude", path=options.environ.get("PATH"))
    # A .cmd shim goes through cmd.exe, whose quoting would mangle the JSON argument: edit the file instead.
    if found and Path(found).suffix.lower() in (".cmd", ".bat"):
        return None
    return found


def _install_json(options: Options, client: Client, launch: Launch, key: KeyPlan, path: Path, outcome: Outcome) -> None:
    if options.print_only:
        entry = merged_entry(None, client, launch, key)
        doc: dict[str, Any] = {client.servers_key: {options.name: _shown(entry, key)}}
        if key.vscode_input:
            doc = {"inputs": [_vscode_input()], **doc}
        outcome.snippet = _dump_json(doc)
        outcome.messages.append(f"add this to {path} (nothing was written)")
        return
    limit = MAX_CLAUDE_JSON_BYTES if client.name == "claude-code" else MAX_CONFIG_BYTES
    with locked(path):  # read, merge and write as one step: a concurrent install's entry is kept
        config = read_config(path, limit=limit)
        data = _json_object(config)
        servers = data.get(client.servers_key)
        if servers is None:
            servers = {}
        if not isinstance(servers, dict):
            raise InstallError(f'"{client.servers_key}" in {path} is not an object; the file was left unchanged.')
        old = servers.get(options.name)
        if old is not None and not isinstance(old, dict):
            raise InstallError(
                f'"{client.servers_key}.{options.name}" in {path} is not an object; the file was left unchanged.'
            )
        entry = merged_entry(old, client, launch, key)
        inputs = data.get("inputs")
        if key.vscode_input:
            if inputs is None:
                inputs = []
            if not isinstance(inputs, list):
                raise InstallError(f'"inputs" in {path} is not a list; the file was left unchanged.')
        new_inputs = inputs
        if (
            key.vscode_input
            and isinstance(inputs, list)
            and not any(isinstance(i, dict) and i.get("id") == VSCODE_INPUT_ID for i in inputs)
        ):
            new_inputs = [*inputs, _vscode_input()]
        if _same_entry(old, entry) and new_inputs is inputs:
            outcome.messages.append(f"{client.title}: {path} already has this entry ({options.name}); nothing changed")
            return
        new = dict(data)
        new[client.servers_key] = {**servers, options.name: entry}
        if new_inputs is not inputs:
            new["inputs"] = new_inputs
        _replace(config, _dump_json(new), outcome, private=key.secret)
    verb = "updated" if old is not None else "added"
    outcome.messages.append(f"{client.title}: {verb} '{options.name}' in {path} (command {launch.command})")
    outcome.messages += [f"backup: {b}" for b in outcome.backups]


def _replace(config: ConfigFile, text: str, outcome: Outcome, *, private: bool = False) -> None:
    """Back up the file ``config`` was read from (when there is one) and replace it with ``text``."""
    check_writable(config)  # before the backup: a refused file gets nothing written beside it either
    if config.data is not None:
        outcome.backups.append(backup(config))
    write_config(config, text, private=private)
    outcome.changed = True
    if config.linked:
        outcome.messages.append(f"note: {config.path} leads to {config.real}: that file was edited, the link kept")


def _vscode_input() -> dict[str, Any]:
    return {"type": "promptString", "id": VSCODE_INPUT_ID, "description": "RunAPI API key", "password": True}


def _install_claude_cli(
    options: Options, client: Client, launch: Launch, key: KeyPlan, path: Path, outcome: Outcome
) -> None:
    """``claude mcp add-json -s user``: Claude Code writes its own file (it rewrites ~/.claude.json often)."""
    cli = _claude_cli(options)
    assert cli is not None
    old: dict[str, Any] | None = None
    try:
        servers = read_json_config(path, limit=MAX_CLAUDE_JSON_BYTES).get("mcpServers")
        if isinstance(servers, dict) and isinstance(servers.get(options.name), dict):
            old = servers[options.name]
    except InstallError:
        old = None  # the CLI reads its own file; a file this reader cannot parse is its business
    entry = merged_entry(old, client, launch, key)
    add = [cli, "mcp", "add-json", "-s", "user", options.name, json.dumps(entry)]
    remove = [cli, "mcp", "remove", "-s", "user", options.name]
    if options.print_only:
        shown = [*add[:-1], json.dumps(_shown(entry, key))]
        outcome.snippet = ("" if old is None else shlex.join(remove) + "\n") + shlex.join(shown) + "\n"
        outcome.messages.append("run this to add the server to Claude Code's user scope (nothing was run)")
        return
    if _same_entry(old, entry):
        outcome.messages.append(f"{client.title}: user scope already has this entry ({options.name}); nothing changed")
        return
    try:
        config = read_config(path, limit=MAX_CLAUDE_JSON_BYTES)
        if config.data is not None:
            outcome.backups.append(backup(config))
    except InstallError as exc:
        raise InstallError(f"{exc} (it is backed up before `claude mcp add-json` changes it)") from None
    run = options.run or _run
    for argv in ([remove] if old is not None else []) + [add]:
        try:
            done = run(argv)
        except (OSError, subprocess.SubprocessError) as exc:
            raise InstallError(f"could not run {shlex.join(argv[:4])}: {exc}") from None
        if done.returncode != 0:
            detail = (done.stderr or done.stdout or "").strip()[:500]
            raise InstallError(f"{shlex.join(argv[:5])} failed (exit {done.returncode}): {detail}")
    outcome.changed = True
    verb = "updated" if old is not None else "added"
    outcome.messages.append(f"{client.title}: {verb} '{options.name}' in the user scope with `claude mcp add-json`")
    outcome.messages += [f"backup: {b}" for b in outcome.backups]


def _install_hermes(
    options: Options, client: Client, launch: Launch, key: KeyPlan, path: Path, hermes_dir: Path, outcome: Outcome
) -> None:
    ask = options.trust != "full"
    if options.print_only:
        outcome.snippet = hermes_snippet(options.name, launch, key, ask=ask)
        outcome.messages.append(f"add this to {path} (nothing was written)")
        if key.hermes_dotenv:
            outcome.messages.append(f"and {KEY_VAR}=<your RunAPI key> to {hermes_dir / '.env'}")
        outcome.messages += hermes_approval_notes(ASK_EVERY_PAID_CALL if ask else None, options.name)
        return
    dotenv = hermes_dir / ".env"
    with locked(path, *([dotenv] if key.hermes_dotenv else [])):
        config = read_config(path)
        old = config.text()
        try:
            new = hermes_updated(old, options.name, launch, key, ask=ask)
            existing = hermes_servers(old).get(options.name) or None  # read once already, by hermes_updated
            written = hermes_servers(new).get(options.name) or {}
        except YamlShapeError as exc:
            raise InstallError(
                f"{path}: {exc}. It was left unchanged; add the entry by hand "
                "(runapi-mcp install hermes --print shows it)."
            ) from None
        _check_hermes_edit(old, new, options.name, launch, key, ask=ask)
        env_file, env_old, env_new = None, "", ""
        if key.hermes_dotenv:
            env_file = read_config(dotenv)
            env_old = env_file.text()
            env_new = _dotenv_updated(env_old, key.hermes_dotenv)
        # Both files are checked before either is written.
        if new != old:
            check_writable(config)
        if env_file is not None and env_new != env_old:
            check_writable(env_file)
            _replace(env_file, env_new, outcome, private=True)
            outcome.messages.append(f"Hermes: stored {KEY_VAR} in {dotenv}")
        if new != old:
            _replace(config, new, outcome)
    if new == old:
        outcome.messages.append(f"{client.title}: {path} already has this entry ({options.name}); nothing changed")
    else:
        verb = "updated" if existing is not None else "added"
        outcome.messages.append(f"{client.title}: {verb} '{options.name}' in {path} (command {launch.command})")
        if existing is not None and _plain(existing.get("trust")) == STALE_TRUST and "trust" not in written:
            outcome.messages.append(
                f"note: removed 'trust: {STALE_TRUST}' from the entry: Hermes reads no trust key (it never asked "
                f"because of it); {CONFIRM_VAR} does the asking now"
            )
    env = written.get("env")
    threshold = env.get(CONFIRM_VAR) if isinstance(env, dict) else None
    outcome.messages += hermes_approval_notes(None if threshold is None else str(threshold), options.name)
    outcome.messages += [f"backup: {b}" for b in outcome.backups]


PAID_TOOLS = "generate_image, edit_image and upscale_image"
READ_ONLY_TOOLS = "list_models, get_task, list_tasks, check_balance and gallery"


def hermes_approval_notes(threshold: str | None, name: str = DEFAULT_NAME) -> list[str]:
    """What a Hermes user sees before a paid call under the entry ``name`` whose threshold is ``threshold``
    (None: it has none).

    Checked against hermes-agent 0.19 itself by bench/hermes_check.py: its elicitation handler shows the
    server's question as an approval, [o]nce | [s]ession | [d]eny read from the terminal (hermes chat -q) or
    the gateway's approval (hermes --tui, chats); its classic prompt_toolkit REPL declines it without showing it.
    """
    if threshold is None:
        return [
            f"note: --trust full: Hermes runs {PAID_TOOLS} without asking (the entry has no {CONFIRM_VAR}); "
            f"RUNAPI_MCP_MAX_SPEND_CENTS in its env caps what the server spends per day"
        ]
    which = (
        "before each paid call"
        if threshold == ASK_EVERY_PAID_CALL
        else f"before each task quoted above {threshold} cents (the entry's own {CONFIRM_VAR}={threshold}, kept)"
    )
    return [
        f"note: Hermes asks {which}: before {PAID_TOOLS} creates a task, Hermes shows \"Approval requested by MCP "
        f"server '{name}'. Create this image task for $0.03 (3 cents)? gpt-image-2 text_to_image, 1k, ...\" with "
        "[o]nce | [s]ession | [d]eny (hermes chat -q) or approval buttons (hermes --tui, gateway chats such as "
        "Telegram or Slack). Once or session creates that one task; deny, or no answer before Hermes' approval "
        f"timeout, creates nothing and charges nothing. {READ_ONLY_TOOLS} never ask. --trust full leaves the "
        "question out.",
        "warning: Hermes 0.19's interactive classic terminal (hermes, hermes --cli: its default interface) cannot "
        "show the question and declines it unseen, so paid calls there end 'Not created: ... the user declined "
        "it' and nothing is charged. Use hermes --tui, a gateway chat or hermes chat -q, or reinstall with "
        "--trust full (no questions).",
    ]


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
