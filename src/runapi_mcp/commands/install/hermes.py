"""Hermes Agent: the entry written into ``config.yaml`` (and a copied key into Hermes' ``.env``), and what
Hermes shows before a paid call under it."""

from __future__ import annotations

import re
from pathlib import Path

from runapi_mcp.commands.install.clients import (
    ASK_EVERY_PAID_CALL,
    CONFIRM_VAR,
    DEFAULT_NAME,
    KEY_VAR,
    STALE_TRUST,
    Client,
    InstallError,
)
from runapi_mcp.commands.install.files import check_writable, locked, read_config
from runapi_mcp.commands.install.hermes_yaml import (
    YamlShapeError,
    check_hermes_edit,
    hermes_servers,
    hermes_snippet,
    hermes_updated,
    plain_data,
    yaml_str,
)
from runapi_mcp.commands.install.keys import KeyPlan
from runapi_mcp.commands.install.launch import Launch
from runapi_mcp.commands.install.request import Options, Outcome, replace_config


def _dotenv_updated(text: str, value: str) -> str:
    plain = re.fullmatch(r"[A-Za-z0-9_./+=:@-]+", value) is not None
    line = f"{KEY_VAR}={value if plain else yaml_str(value)}\n"
    pattern = re.compile(rf"^[ \t]*(?:export[ \t]+)?{KEY_VAR}[ \t]*=.*$\n?", re.MULTILINE)
    if pattern.search(text):
        return pattern.sub(lambda _: line, text, count=1)
    return text + ("" if not text or text.endswith("\n") else "\n") + line


def install_hermes(
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
        check_hermes_edit(old, new, options.name, launch, key, ask=ask)
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
            replace_config(env_file, env_new, outcome, private=True)
            outcome.messages.append(f"Hermes: stored {KEY_VAR} in {dotenv}")
        if new != old:
            replace_config(config, new, outcome)
    if new == old:
        outcome.messages.append(f"{client.title}: {path} already has this entry ({options.name}); nothing changed")
    else:
        verb = "updated" if existing is not None else "added"
        outcome.messages.append(f"{client.title}: {verb} '{options.name}' in {path} (command {launch.command})")
        if existing is not None and plain_data(existing.get("trust")) == STALE_TRUST and "trust" not in written:
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
