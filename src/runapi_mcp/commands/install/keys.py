"""``RUNAPI_API_KEY`` in the entry: left out, referred to in the client's own syntax (``--api-key-env``), or
the key itself (``--api-key-from-env``; for Hermes into its ``.env``), and what to tell the user about it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from runapi_mcp.commands.install.clients import KEY_VAR, VSCODE_INPUT_ID, Client, UsageError, env_ref
from runapi_mcp.commands.install.files import read_text_file

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
            plan.op, plan.value, plan.hermes_dotenv = "set", env_ref(client, KEY_VAR), value
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
            plan.op, plan.value = "set", env_ref(client, KEY_VAR)
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
