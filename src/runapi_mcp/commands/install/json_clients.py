"""The clients whose config is JSON (Claude Desktop, Claude Code, Cursor, VS Code): the entry merged into the
file's servers under a lock, or for Claude Code added with ``claude mcp add-json`` when its CLI is there."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runapi_mcp.commands.install.clients import KEY_VAR, VSCODE_INPUT_ID, Client, InstallError
from runapi_mcp.commands.install.files import (
    MAX_CLAUDE_JSON_BYTES,
    MAX_CONFIG_BYTES,
    ConfigFile,
    backup,
    locked,
    read_config,
)
from runapi_mcp.commands.install.keys import KeyPlan
from runapi_mcp.commands.install.launch import Launch
from runapi_mcp.commands.install.request import Options, Outcome, replace_config

_TIMEOUT_S = 60.0


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


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)


def find_claude_cli(options: Options) -> str | None:
    found = options.claude_cli or shutil.which("claude", path=options.environ.get("PATH"))
    # A .cmd shim goes through cmd.exe, whose quoting would mangle the JSON argument: edit the file instead.
    if found and Path(found).suffix.lower() in (".cmd", ".bat"):
        return None
    return found


def install_json(options: Options, client: Client, launch: Launch, key: KeyPlan, path: Path, outcome: Outcome) -> None:
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
        replace_config(config, _dump_json(new), outcome, private=key.secret)
    verb = "updated" if old is not None else "added"
    outcome.messages.append(f"{client.title}: {verb} '{options.name}' in {path} (command {launch.command})")
    outcome.messages += [f"backup: {b}" for b in outcome.backups]


def _vscode_input() -> dict[str, Any]:
    return {"type": "promptString", "id": VSCODE_INPUT_ID, "description": "RunAPI API key", "password": True}


def install_claude_cli(
    options: Options, client: Client, launch: Launch, key: KeyPlan, path: Path, outcome: Outcome
) -> None:
    """``claude mcp add-json -s user``: Claude Code writes its own file (it rewrites ~/.claude.json often)."""
    cli = find_claude_cli(options)
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
