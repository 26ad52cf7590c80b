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
file that cannot be parsed (JSON with comments, an unusual YAML layout) is refused untouched: a rewrite
would lose what the parser could not see. Running it twice changes nothing the second time.

The key is not written into a file unless asked: ``--api-key-env`` makes the entry refer to the
``RUNAPI_API_KEY`` variable in the client's own syntax where it has one, and ``--api-key-from-env`` copies
the current value into the file (with a warning) for clients that have none.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TextIO

KEY_VAR = "RUNAPI_API_KEY"
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
    try:
        text = path.read_text("utf-8")
    except OSError:
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


def backup(path: Path, *, now: datetime | None = None) -> Path:
    """Copy ``path`` to ``<name>.<timestamp>.bak`` beside it (never over an earlier backup)."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.{stamp}.bak")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.{stamp}-{n}.bak")
        n += 1
    shutil.copy2(path, target)
    return target


def write_atomic(path: Path, text: str, *, private: bool = False) -> None:
    """Replace ``path`` with ``text`` in one step: a crash leaves the old file or the new one, never half.

    The old file's permissions are kept, except that ``private`` (the file now holds the key) takes away
    every permission of other users; a new private file is 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode: int | None = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = None
    if private:
        mode = (0o600 if mode is None else mode) & 0o700
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json_config(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` ({} for a missing or empty file); :class:`InstallError` when it is not one."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise InstallError(f"cannot read {path}: {exc}") from None
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InstallError(
            f"{path} is not plain JSON ({exc.msg}, line {exc.lineno} column {exc.colno}). If it has comments or "
            "trailing commas (which VS Code allows), rewriting it would drop them, so it was left unchanged."
        ) from None
    if not isinstance(data, dict):
        raise InstallError(f"{path} holds a JSON {type(data).__name__}, not an object; it was left unchanged.")
    return data


def _dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


# -- YAML, for Hermes, without a YAML library ----------------------------------------------------------------
#
# Hermes' config.yaml is long and commented, and PyYAML (not a dependency) would drop every comment on a
# round trip anyway. So the file is edited as text: the mcp_servers block is located by indentation, the
# entry's own lines are replaced or added, and everything else stays byte for byte. Anything outside the
# plain block style this relies on (tabs, flow mappings, documents markers) is refused, not guessed at.


class YamlShapeError(InstallError):
    """The YAML is laid out in a way the text editor does not handle; the file is left alone."""


_KEY_LINE = re.compile(
    r"""^(?P<indent>[ ]*)"""
    r"""(?P<key>"(?:[^"\\]|\\.)*"|'(?:[^']|'')*'|[A-Za-z0-9_][A-Za-z0-9_.\-/ ]*?)"""  # "quoted", 'quoted' or plain
    r"""[ ]*:(?:[ ]+(?P<rest>.*))?$"""
)
_EMPTY = frozenset({"", "{}", "~", "null", "Null", "NULL"})


@dataclass
class _Node:
    key: str
    rest: str  # the value on the key's own line, comment removed ("" when it is a block)
    indent: int
    start: int  # the key's line
    end: int  # one past its last content line (trailing blank and comment lines are not its own)


def _is_content(line: str) -> bool:
    text = line.strip()
    return bool(text) and not text.startswith("#")


def _indent_of(line: str, number: int) -> int:
    lead = line[: len(line) - len(line.lstrip(" \t"))]
    if "\t" in lead:
        raise YamlShapeError(f"line {number} is indented with a tab")
    return len(lead)


def _strip_comment(text: str) -> str:
    quote = ""
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'" and (i == 0 or text[i - 1] in " [{,:"):
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip()
    return text.rstrip()


def _scalar(text: str) -> str | None:
    text = text.strip()
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            value = json.loads(text)
        except ValueError:
            return text[1:-1]
        return value if isinstance(value, str) else text[1:-1]
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("''", "'")
    return text


def _mapping(lines: Sequence[str], start: int, end: int, parent_indent: int) -> tuple[int | None, list[_Node]]:
    """The block mapping in ``lines[start:end]`` under a key at ``parent_indent``: its indent and keys."""
    child: int | None = None
    nodes: list[_Node] = []
    last = start - 1
    for i in range(start, end):
        line = lines[i]
        if not _is_content(line):
            continue
        indent = _indent_of(line, i + 1)
        if child is None:
            if parent_indent < 0 and line.strip() == "---" and not nodes:
                continue  # an explicit start of the (single) document
            if indent <= parent_indent:
                raise YamlShapeError(f"line {i + 1} is not indented under its key")
            child = indent
        if indent < child:
            raise YamlShapeError(f"line {i + 1} is indented less than the lines before it")
        if indent == child and nodes and not nodes[-1].rest and re.match(r"-( |$)", line.strip()):
            pass  # a list under the key above, not indented (PyYAML writes lists this way): part of that key
        elif indent == child:
            match = _KEY_LINE.match(line.rstrip("\r\n"))
            if not match:
                raise YamlShapeError(f"line {i + 1} is not a 'key: value' line ({line.strip()[:40]!r})")
            if nodes:
                nodes[-1].end = last + 1
            key = match.group("key")
            nodes.append(_Node(_scalar(key) or key, _strip_comment(match.group("rest") or ""), indent, i, i + 1))
        last = i
    if nodes:
        nodes[-1].end = last + 1
    return child, nodes


def _find(nodes: Sequence[_Node], key: str) -> _Node | None:
    return next((node for node in nodes if node.key == key), None)


def _flow_list(text: str) -> list[str] | None:
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        inner = text[1:-1].strip()
        return [_scalar(part) or "" for part in inner.split(",")] if inner else []
    return [str(item) for item in value] if isinstance(value, list) else None


def _node_value(lines: Sequence[str], node: _Node) -> Any:
    """A node's value, for the shapes an MCP entry uses: scalars, lists of scalars, maps of scalars."""
    if node.rest and node.rest[0] in "[{" and node.end > node.start + 1:  # a flow value over several lines
        text = " ".join([node.rest] + [_strip_comment(line.strip()) for line in lines[node.start + 1 : node.end]])
    else:
        text = node.rest
    if text.startswith("["):
        return _flow_list(text)
    if text.startswith("{"):
        inner = text.strip()[1:-1].strip()
        out: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in inner.split(","))):
            k, _, v = part.partition(":")
            out[_scalar(k) or k] = _scalar(v)
        return out
    if text:
        return _scalar(text)
    body = [line for line in lines[node.start + 1 : node.end] if _is_content(line)]
    if body and body[0].lstrip().startswith("-"):
        return [_scalar(_strip_comment(line.lstrip()[1:])) for line in body if line.lstrip().startswith("-")]
    if not body:
        return None
    _, children = _mapping(lines, node.start + 1, node.end, node.indent)
    return {child.key: _node_value(lines, child) for child in children}


def _lines(text: str) -> list[str]:
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith(("\n", "\r")):
        lines[-1] += "\n"
    for number, line in enumerate(lines, 1):
        if line.startswith(("%", "...")) or (line.startswith("---") and number > 1):
            raise YamlShapeError(f"line {number} is a YAML directive or document marker")
    return lines


def hermes_servers(text: str) -> dict[str, dict[str, Any]]:
    """The ``mcp_servers`` entries of a Hermes config (command, args, env, trust, ...), read as text."""
    lines = _lines(text)
    _, top = _mapping(lines, 0, len(lines), -1)
    servers = _find(top, "mcp_servers")
    if servers is None or (servers.rest in _EMPTY and servers.rest):
        return {}
    if servers.rest:
        raise YamlShapeError("mcp_servers is written inline (flow style)")
    _, entries = _mapping(lines, servers.start + 1, servers.end, servers.indent)
    out: dict[str, dict[str, Any]] = {}
    for entry in entries:
        value = _node_value(lines, entry)
        out[entry.key] = value if isinstance(value, dict) else {}
    return out


def _yaml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid YAML double-quoted scalar


def _yaml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", key) else _yaml_str(key)


def hermes_entry_lines(
    name: str, launch: Launch, key: KeyPlan, indent: int, step: int, *, trust: str | None
) -> list[str]:
    pad, inner = " " * indent, " " * (indent + step)
    out = [f"{pad}{_yaml_key(name)}:\n", f"{inner}command: {_yaml_str(launch.command)}\n"]
    out.append(f"{inner}args: [{', '.join(_yaml_str(a) for a in launch.args)}]\n")
    if key.op == "set":
        out += [f"{inner}env:\n", f"{inner}{' ' * step}{KEY_VAR}: {_yaml_str(key.value)}\n"]
    if trust:
        out.append(f"{inner}trust: {trust}\n")
    return out


def _step_of(lines: Sequence[str], entries: Sequence[_Node], child_indent: int) -> int:
    for entry in entries:
        for i in range(entry.start + 1, entry.end):
            if _is_content(lines[i]):
                return max(1, _indent_of(lines[i], i + 1) - child_indent)
    return 2


def hermes_updated(text: str, name: str, launch: Launch, key: KeyPlan, *, trust: str | None) -> str:
    """``text`` (a Hermes config.yaml) with the entry ``name`` added or brought up to date, all else intact."""
    new = _hermes_updated(text, name, launch, key, trust=trust)
    if "\r\n" in text:  # keep a Windows file's line endings on the lines written here too
        new = re.sub(r"(?<!\r)\n", "\r\n", new)
    return new


def _hermes_updated(text: str, name: str, launch: Launch, key: KeyPlan, *, trust: str | None) -> str:
    lines = _lines(text)
    _, top = _mapping(lines, 0, len(lines), -1)
    servers = _find(top, "mcp_servers")
    if servers is None:
        gap = ["\n"] if lines and lines[-1].strip() else []
        return "".join(lines + gap + ["mcp_servers:\n", *hermes_entry_lines(name, launch, key, 2, 2, trust=trust)])
    if servers.rest in _EMPTY and servers.rest:
        lines[servers.start] = " " * servers.indent + "mcp_servers:\n"
        block = hermes_entry_lines(name, launch, key, servers.indent + 2, 2, trust=trust)
        return "".join(lines[: servers.start + 1] + block + lines[servers.start + 1 :])
    if servers.rest:
        raise YamlShapeError("mcp_servers is written inline (flow style)")
    child, entries = _mapping(lines, servers.start + 1, servers.end, servers.indent)
    if child is None:
        block = hermes_entry_lines(name, launch, key, servers.indent + 2, 2, trust=trust)
        return "".join(lines[: servers.start + 1] + block + lines[servers.start + 1 :])
    step = _step_of(lines, entries, child)
    entry = _find(entries, name)
    if entry is None:
        block = hermes_entry_lines(name, launch, key, child, step, trust=trust)
        return "".join(lines[: servers.end] + block + lines[servers.end :])
    return "".join(_edit_entry(lines, entry, launch, key, step))


def _edit_entry(lines: list[str], entry: _Node, launch: Launch, key: KeyPlan, step: int) -> list[str]:
    """The entry's managed lines (command, args, env's key) replaced or added; its other lines kept."""
    if entry.rest and entry.rest not in _EMPTY:
        raise YamlShapeError(f"mcp_servers.{entry.key} is written inline (flow style)")
    edits: list[tuple[int, int, list[str]]] = []  # (start, end, replacement), applied bottom-up
    if entry.rest:
        edits.append((entry.start, entry.start + 1, [f"{' ' * entry.indent}{_yaml_key(entry.key)}:\n"]))
    field_indent, fields = _mapping(lines, entry.start + 1, entry.end, entry.indent)
    pad = " " * (field_indent if field_indent is not None else entry.indent + step)
    wanted = {
        "command": f"{pad}command: {_yaml_str(launch.command)}\n",
        "args": f"{pad}args: [{', '.join(_yaml_str(a) for a in launch.args)}]\n",
    }
    after = entry.start + 1  # a missing field goes after the one before it (command, then args)
    for name, line in wanted.items():
        node = _find(fields, name)
        if node is None:
            edits.append((after, after, [line]))
        else:
            edits.append((node.start, node.end, [line]))
            after = node.end
    env = _find(fields, "env")
    if key.op == "set":
        kv_line = f"{KEY_VAR}: {_yaml_str(key.value)}\n"
        if env is None:
            edits.append((entry.end, entry.end, [f"{pad}env:\n", f"{pad}{' ' * step}{kv_line}"]))
        elif env.rest in _EMPTY and env.rest:
            edits.append((env.start, env.end, [f"{pad}env:\n", f"{pad}{' ' * step}{kv_line}"]))
        elif env.rest:
            raise YamlShapeError(f"mcp_servers.{entry.key}.env is written inline (flow style)")
        else:
            var_indent, variables = _mapping(lines, env.start + 1, env.end, env.indent)
            var_pad = " " * (var_indent if var_indent is not None else len(pad) + step)
            node = _find(variables, KEY_VAR)
            if node is None:
                edits.append((env.end, env.end, [var_pad + kv_line]))
            else:
                edits.append((node.start, node.end, [var_pad + kv_line]))
    elif key.op == "remove" and env is not None and not env.rest:
        _, variables = _mapping(lines, env.start + 1, env.end, env.indent)
        node = _find(variables, KEY_VAR)
        if node is not None and len(variables) == 1:
            edits.append((env.start, env.end, [f"{pad}env: {{}}\n"]))
        elif node is not None:
            edits.append((node.start, node.end, []))
    out = list(lines)
    # Bottom-up, so earlier line numbers stay valid; of two insertions at one line the later-listed goes in
    # first, which leaves them in the order listed (command before env in an empty entry).
    order = sorted(range(len(edits)), key=lambda n: (edits[n][0], edits[n][1], n), reverse=True)
    for n in order:
        start, end, replacement = edits[n]
        out[start:end] = replacement
    return out


def _check_hermes_edit(old: str, new: str, name: str, launch: Launch, key: KeyPlan) -> None:
    """Read the edited text back (and with PyYAML too when it is installed): refuse an edit that went wrong."""
    entry = hermes_servers(new).get(name)
    problems: list[str] = []
    if not entry or entry.get("command") != launch.command or entry.get("args") != list(launch.args):
        problems.append("the entry does not read back as written")
    env = (entry or {}).get("env") or {}
    if key.op == "set" and (not isinstance(env, dict) or env.get(KEY_VAR) != key.value):
        problems.append(f"{KEY_VAR} does not read back as written")
    if key.op == "remove" and isinstance(env, dict) and KEY_VAR in env:
        problems.append(f"{KEY_VAR} is still there")
    try:
        import yaml  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        yaml = None
    if yaml is not None and not problems:
        try:
            before, after = yaml.safe_load(old) or {}, yaml.safe_load(new) or {}
        except yaml.YAMLError as exc:
            problems.append(f"the result is not valid YAML ({exc})")
        else:
            servers = after.get("mcp_servers") if isinstance(after, dict) else None
            got = (servers.get(name) if isinstance(servers, dict) else None) or {}
            if got.get("command") != launch.command or got.get("args") != list(launch.args):
                problems.append("PyYAML reads a different entry")
            for doc in (before, after):
                if not isinstance(doc, dict):
                    continue
                if isinstance(doc.get("mcp_servers"), dict):
                    doc["mcp_servers"].pop(name, None)
                    if not doc["mcp_servers"]:
                        doc.pop("mcp_servers")
                elif doc.get("mcp_servers") is None:
                    doc.pop("mcp_servers", None)
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
    trust: str = "untrusted"
    launch: Launch | None = None
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
    launch = options.launch or server_launch()
    hermes_dir = hermes_home(environ=options.environ)
    key = plan_key(client, options.key_mode, options.environ, hermes_dir)
    path = options.config.expanduser() if options.config else config_path(options.client, environ=options.environ)
    outcome = Outcome(path=path)
    outcome.messages += [f"warning: {w}" for w in key.warnings]
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
    data = read_json_config(path)
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
    if path.exists():
        outcome.backups.append(backup(path))
    write_atomic(path, _dump_json(new), private=key.secret)
    outcome.changed = True
    verb = "updated" if old is not None else "added"
    outcome.messages.append(f"{client.title}: {verb} '{options.name}' in {path} (command {launch.command})")
    outcome.messages += [f"backup: {b}" for b in outcome.backups]


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
        servers = read_json_config(path).get("mcpServers")
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
    if path.exists():
        outcome.backups.append(backup(path))
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
    trust = options.trust if options.trust != "full" else None  # "full" is Hermes' default: nothing to write
    if options.print_only:
        outcome.snippet = "".join(["mcp_servers:\n", *hermes_entry_lines(options.name, launch, key, 2, 2, trust=trust)])
        outcome.messages.append(f"add this to {path} (nothing was written)")
        if key.hermes_dotenv:
            outcome.messages.append(f"and {KEY_VAR}=<your RunAPI key> to {hermes_dir / '.env'}")
        return
    try:
        old = path.read_text("utf-8")
    except FileNotFoundError:
        old = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise InstallError(f"cannot read {path}: {exc}") from None
    try:
        existing = hermes_servers(old).get(options.name)
        new = hermes_updated(old, options.name, launch, key, trust=trust if existing is None else None)
    except YamlShapeError as exc:
        raise InstallError(
            f"{path}: {exc}. It was left unchanged; add the entry by hand (runapi-mcp install hermes --print shows it)."
        ) from None
    _check_hermes_edit(old, new, options.name, launch, key)
    dotenv = hermes_dir / ".env"
    if key.hermes_dotenv:
        try:
            env_old = dotenv.read_text("utf-8")
        except FileNotFoundError:
            env_old = ""
        env_new = _dotenv_updated(env_old, key.hermes_dotenv)
        if env_new != env_old:
            if dotenv.exists():
                outcome.backups.append(backup(dotenv))
            write_atomic(dotenv, env_new, private=True)
            outcome.changed = True
            outcome.messages.append(f"Hermes: stored {KEY_VAR} in {dotenv}")
    if new == old:
        outcome.messages.append(f"{client.title}: {path} already has this entry ({options.name}); nothing changed")
    else:
        if path.exists():
            outcome.backups.append(backup(path))
        write_atomic(path, new)
        outcome.changed = True
        verb = "updated" if existing is not None else "added"
        outcome.messages.append(f"{client.title}: {verb} '{options.name}' in {path} (command {launch.command})")
        if trust and existing is None:
            outcome.messages.append(
                "note: trust: untrusted makes Hermes ask before each generate/edit/upscale call (they spend money); "
                "read-only tools run without asking. Use --trust full for no approvals."
            )
    outcome.messages += [f"backup: {b}" for b in outcome.backups]


# -- CLI ---------------------------------------------------------------------------------------------------


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
        "--name", default=DEFAULT_NAME, help=f"The server's name in the config (default {DEFAULT_NAME})"
    )
    parser.add_argument(
        "--trust",
        choices=("untrusted", "full"),
        default="untrusted",
        help="Hermes only: 'untrusted' (default) asks before each paid call; 'full' never asks",
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
