"""``runapi-mcp doctor``: check the setup and say, line by line, what works and what to fix.

Each line is ``OK``, ``WARN`` or ``FAIL``; the exit status is 1 when any line is ``FAIL``. Nothing here
prints the key: every line passes the same redaction the server uses, fed with every key the checks see
(the settings' and any written into a client's config), and the checks name where a key comes from,
never what it is.

The doctor runs in the user's shell, whose environment is not a client's: a GUI app started from the
Dock sees none of the shell's exports, and Hermes passes a server only the ``env:`` it is given. So the
client configs are read too, and a key they refer to is checked where that client would look for it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import anyio

from runapi_mcp import __version__
from runapi_mcp.commands.install.clients import (
    CLIENT_INFO,
    CLIENTS,
    CONFIRM_VAR,
    DEFAULT_NAME,
    KEY_VAR,
    STALE_TRUST,
    config_path,
    hermes_home,
)
from runapi_mcp.commands.install.hermes_yaml import (
    YamlDuplicateKeyError,
    YamlShapeError,
    YamlSyntaxError,
    hermes_servers,
)
from runapi_mcp.commands.install.keys import dotenv_has, runapi_config_has_key
from runapi_mcp.commands.install.launch import client_launch, in_uv_cache
from runapi_mcp.commands.options import add_settings_flags, settings_overrides
from runapi_mcp.config import RUNAPI_CONFIG_FILE, ConfigError, Settings, _read_runapi_config, load_settings
from runapi_mcp.private import private_dir
from runapi_mcp.redaction import Redactor, database_password, redact_url
from runapi_mcp.wording import count

NAME = "doctor"
HELP = "Check the setup (key, RunAPI, home, client configs) and say what to fix"
Status = Literal["OK", "WARN", "FAIL"]
DEFAULT_TIMEOUT_S = 8.0
# An entry's key that is really a placeholder a client did not fill in (or a README example).
_UNFILLED = re.compile(r"\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*|<[^>]*>|sk-\.\.\.|\.\.\.")
_REFERENCE = re.compile(r"\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class Check:
    status: Status
    name: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.name}: {self.detail}"
        return f"{text}. Fix: {self.fix}" if self.fix else text


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)  # every key seen, for the redaction of the output

    def add(self, status: Status, name: str, detail: str, fix: str = "") -> None:
        self.checks.append(Check(status, name, detail, fix))

    @property
    def failed(self) -> bool:
        return any(check.status == "FAIL" for check in self.checks)

    def lines(self) -> Iterator[str]:
        redact = Redactor(self.secrets)
        for check in self.checks:
            yield redact(check.line())


def _tilde(path: Path) -> str:
    try:
        relative = path.relative_to(Path.home()).as_posix()
    except ValueError:
        return str(path)
    return "~" if relative == "." else "~/" + relative


# -- the checks ----------------------------------------------------------------------------------------------


def _python(report: Report) -> None:
    version = ".".join(map(str, sys.version_info[:3]))
    status: Status = "OK" if sys.version_info >= (3, 11) else "FAIL"
    report.add(
        status,
        "python",
        f"{version} at {sys.executable}; runapi-mcp {__version__}",
        "" if status == "OK" else "use Python 3.11 or newer",
    )
    launch, via_uvx = client_launch()
    shown = " ".join([launch.command, *launch.args])
    report.add("OK", "command", f"clients start this install with: {shown}" + (" (through uvx: this install runs "
               "from uv's cache, which uv may clean)" if via_uvx else ""))


def _key_source(overrides: Mapping[str, Any], environ: Mapping[str, str], config_file: Path) -> tuple[str, str] | None:
    """(the key, where it comes from), in the order the server looks; None when there is none."""
    if overrides.get("api_key"):
        return str(overrides["api_key"]), "the --api-key flag"
    if environ.get(KEY_VAR, "").strip():
        return environ[KEY_VAR].strip(), f"{KEY_VAR} in this shell's environment"
    from_file = _read_runapi_config(config_file).get("api_key")
    if from_file:
        return str(from_file), _tilde(config_file.expanduser())
    return None


def _key(report: Report, source: tuple[str, str] | None) -> bool:
    if source is None:
        report.add(
            "FAIL",
            "key",
            "no RunAPI key is set (as this shell sees it)",
            f"set {KEY_VAR} for each client (runapi-mcp install <client> --api-key-env), or put "
            '{"apiKey": "sk-..."} in ~/.config/runapi/config.json, which the server always reads',
        )
        return False
    key, where = source
    report.secrets.append(key)
    if _UNFILLED.fullmatch(key):
        report.add("FAIL", "key", f"the key from {where} is a placeholder, not a key", f"put your real key in {where}")
        return False
    report.add("OK", "key", f"set, from {where}")
    return True


async def _runapi(report: Report, settings: Settings, has_key: bool, request_s: float) -> None:
    """One balance request (no retries, a short timeout): RunAPI is reachable and the key works, or why not."""
    import httpx

    from runapi_mcp.client import (
        AuthenticationError,
        RetryPolicy,
        RunAPIClient,
        RunAPIError,
        RunAPIStatusError,
        RunAPITransportError,
    )

    base = settings.base_url
    unreachable_fix = f"check the network connection (or proxy), or RUNAPI_BASE_URL ({base})"
    if not has_key:
        # Without a key, only whether anything answers at the base URL.
        try:
            async with httpx.AsyncClient(timeout=request_s, follow_redirects=False) as http:
                answer = await http.get(base + "/")
        except httpx.HTTPError as exc:
            report.add(
                "FAIL",
                "runapi",
                f"cannot reach {base}: {settings.redact(str(exc)) or type(exc).__name__}",
                unreachable_fix,
            )
        else:
            report.add("OK", "runapi", f"{base} answers (HTTP {answer.status_code})")
        report.add("WARN", "key works", "not checked: no key")
        return
    client = RunAPIClient(
        settings.key(), base, timeout=request_s, retry=RetryPolicy(max_retries=0), redactor=settings.redactor
    )
    try:
        with anyio.fail_after(request_s + 2):
            async with client:
                balance = await client.get_balance()
    except TimeoutError:
        report.add("FAIL", "runapi", f"{base} did not answer within {request_s:g} s", unreachable_fix)
        report.add("WARN", "key works", "not checked: RunAPI did not answer")
    except RunAPITransportError as exc:
        report.add("FAIL", "runapi", f"cannot reach {base}: {exc}", unreachable_fix)
        report.add("WARN", "key works", "not checked: RunAPI is not reachable (no network?)")
    except AuthenticationError as exc:
        report.add("OK", "runapi", f"{base} answers")
        report.add(
            "FAIL",
            "key works",
            f"RunAPI refused the key: {exc}",
            "check the key in your RunAPI account, or make a new one",
        )
    except RunAPIStatusError as exc:
        report.add("OK", "runapi", f"{base} answers")
        report.add(
            "WARN",
            "key works",
            f"not confirmed: the balance request got HTTP {exc.status_code}: {exc}",
            "try again later",
        )
    except RunAPIError as exc:
        report.add("WARN", "runapi", f"{base} answered strangely: {exc}", "check RUNAPI_BASE_URL points at RunAPI")
        report.add("WARN", "key works", "not confirmed")
    else:
        report.add("OK", "runapi", f"{base} answers")
        cents = balance.balance_cents
        money = f"; balance ${cents / 100:,.2f}" if cents is not None else ""
        report.add("OK", "key works", f"RunAPI accepted it{money}")
        await _contract(report, settings, request_s)


async def _contract(report: Report, settings: Settings, request_s: float) -> None:
    """Whether RunAPI answers as this version expects, by read-only calls: the price schedules (with each
    model's catalog_status) and a quote for GPT Image 2 at 1k in today's nested form. Then which models RunAPI
    marks unavailable, and which it lists that this version does not know. A user with a key can run this
    and tell us what drifted."""
    from runapi_mcp.catalog import get_catalog
    from runapi_mcp.client import SPEAKS, RetryPolicy, RunAPIClient, RunAPIError
    from runapi_mcp.tasks.availability import Availability

    catalog = get_catalog()
    client = RunAPIClient(
        settings.key(),
        settings.base_url,
        timeout=request_s,
        retry=RetryPolicy(max_retries=0),
        redactor=settings.redactor,
    )
    differences: list[str] = []
    async with client:
        availability = Availability(client, catalog, max_age_s=0)
        try:
            with anyio.fail_after(request_s + 2):
                schedules = await client.price_schedules()
        except (RunAPIError, TimeoutError) as exc:
            differences.append(f"the price schedules (GET /api/v1/price_schedules) failed: {exc or 'no answer'}")
            schedules = None
        if schedules is not None:
            if not schedules.rows:
                differences.append("the price schedules list no model")
            elif schedules.rows_without_status:
                differences.append(
                    f"{schedules.rows_without_status} of {len(schedules.rows)} price schedule rows carry no "
                    "catalog_status (active, maintenance, disabled)"
                )
            availability.use(schedules)
        try:
            with anyio.fail_after(request_s + 2):
                quote = await client.quote_price(
                    "gpt_image_2",
                    "text_to_image",
                    model="gpt-image-2",
                    params={"prompt": "runapi-mcp doctor", "aspect_ratio": "1:1", "output_resolution": "1k"},
                )
        except (RunAPIError, TimeoutError) as exc:
            differences.append(f"a quote in the nested form ({{service, action, model, params}}) was refused: {exc}")
        else:
            if quote.reservation_amount_cents is None:
                differences.append("the price quote named no reservation_amount_cents")
    if differences:
        report.add(
            "FAIL",
            "contract",
            f"RunAPI does not answer as this version expects ({SPEAKS}): " + "; ".join(differences),
            "update runapi-mcp (pip install -U runapi-mcp); if this is the newest, report these lines to its issues",
        )
    else:
        report.add("OK", "contract", f"RunAPI answers as this version expects ({SPEAKS}: nested quote, catalog_status)")
    if schedules is None:
        return
    unavailable = availability.unavailable()
    if unavailable:
        listed = ", ".join(f"{slug} ({why})" for slug, why in sorted(unavailable.items()))
        report.add("WARN", "models", f"RunAPI marks unavailable for now: {listed}", "use another model meanwhile")
    else:
        report.add("OK", "models", f"all {len(catalog.model_names)} models of this catalog are active at RunAPI")
    unknown = availability.upstream_only()
    if unknown:
        names = ", ".join(sorted({f"{u.model or u.service} ({u.action})" for u in unknown}))
        report.add("WARN", "new models", f"RunAPI lists models this version cannot call yet: {names}",
                   "update runapi-mcp for them (pip install -U runapi-mcp)")


def _home(report: Report, settings: Settings) -> bool:
    home = settings.home
    try:
        if not home.exists():
            private_dir(home)  # as the server makes it: 0700 (an existing one is the server's to tighten)
        with tempfile.NamedTemporaryFile(dir=home, prefix=".doctor-", suffix=".tmp") as probe:
            probe.write(b"ok")
            probe.flush()
    except OSError as exc:
        report.add(
            "FAIL",
            "home",
            f"{_tilde(home)} is not writable ({exc.strerror or type(exc).__name__})",
            "fix its permissions, or set RUNAPI_MCP_HOME to a writable directory",
        )
        return False
    report.add("OK", "home", f"{_tilde(home)} is writable (RUNAPI_MCP_HOME)")
    return True


def _store(report: Report, settings: Settings) -> None:
    from runapi_mcp.tasks.sqlite_store import SCHEMA_VERSION

    path = settings.store_file
    if not path.exists():
        report.add("OK", "task store", f"none yet ({_tilde(path)} is created at the first start)")
        return
    # Read-only: the doctor must not migrate (or lock) a store a running server may be using.
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=2)
        try:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            tasks = int(db.execute("SELECT count(*) FROM tasks").fetchone()[0]) if version else 0
        finally:
            db.close()
    except sqlite3.Error as exc:
        report.add(
            "FAIL",
            "task store",
            f"{_tilde(path)} cannot be read ({exc})",
            "move it aside (the server starts a new one), or point RUNAPI_MCP_HOME elsewhere",
        )
        return
    if version > SCHEMA_VERSION:
        report.add(
            "FAIL",
            "task store",
            f"{_tilde(path)} has layout {version}, newer than this version's {SCHEMA_VERSION}",
            "upgrade runapi-mcp, or point RUNAPI_MCP_HOME elsewhere",
        )
    elif version < SCHEMA_VERSION:
        report.add(
            "OK",
            "task store",
            f"{_tilde(path)}: layout {version}, {count(tasks, 'task')} (brought to layout {SCHEMA_VERSION} at the "
            "next start)",
        )
    else:
        report.add("OK", "task store", f"{_tilde(path)}: layout {version}, {count(tasks, 'task')}")


async def _database(report: Report, url: str, timeout_s: float) -> None:
    """The PostgreSQL store: reachable, at this version's layout (or one the server may migrate), writable."""
    shown = redact_url(url)
    fix = "start the database, or fix RUNAPI_MCP_DATABASE_URL"
    from runapi_mcp.tasks.backends import POSTGRES_EXTRA
    from runapi_mcp.tasks.migrations import SCHEMA_VERSION

    try:
        from runapi_mcp.tasks.pg_store import probe
    except ImportError:
        report.add("FAIL", "task store", f"RUNAPI_MCP_DATABASE_URL is set ({shown}) but psycopg is not installed",
                   POSTGRES_EXTRA)
        return
    found = await probe(url, timeout_s=timeout_s)
    where = f"PostgreSQL {shown}" + (f" (schema {found.schema})" if found.schema not in (None, "public") else "")
    if not found.reachable:
        report.add("FAIL", "task store", f"{where} is not reachable ({found.problem})", fix)
    elif found.version > SCHEMA_VERSION:
        report.add("FAIL", "task store", f"{where} has layout {found.version}, newer than this version's "
                   f"{SCHEMA_VERSION}", "upgrade runapi-mcp, or point RUNAPI_MCP_DATABASE_URL elsewhere")
    elif found.problem is not None:
        report.add("FAIL", "task store", f"{where} cannot be used: {found.problem}",
                   "grant the user INSERT and UPDATE on the store's tables, or use a writable primary")
    elif found.version < SCHEMA_VERSION and not found.can_migrate:
        report.add("FAIL", "task store", f"{where} is at layout {found.version}, and this user may not create tables "
                   f"in schema {found.schema} to bring it to {SCHEMA_VERSION}",
                   f"GRANT CREATE ON SCHEMA {found.schema} to the user, or migrate it once as its owner")
    elif found.version == 0:
        report.add("OK", "task store", f"{where}: no tables yet (made at the first start, layout {SCHEMA_VERSION})")
    elif found.version < SCHEMA_VERSION:
        report.add("OK", "task store", f"{where}: layout {found.version}, {count(found.tasks, 'task')} (brought to "
                   f"layout {SCHEMA_VERSION} at the next start)")
    else:
        report.add("OK", "task store", f"{where}: layout {found.version}, {count(found.tasks, 'task')}, writable")


def _allowed_dirs(report: Report, settings: Settings) -> None:
    missing = [d for d in settings.allowed_dirs if not d.is_dir()]
    shown = ", ".join(_tilde(d) for d in settings.allowed_dirs)
    if missing:
        report.add(
            "WARN",
            "allowed dirs",
            f"{', '.join(_tilde(d) for d in missing)} does not exist (edit_image reads local files only from: {shown})",
            "create it, or change RUNAPI_MCP_ALLOWED_DIRS",
        )
    else:
        report.add("OK", "allowed dirs", f"edit_image may read local files from {shown}")


# -- client configs -------------------------------------------------------------------------------------------


def jsonc_loads(text: str) -> Any:
    """JSON with // and /* */ comments and trailing commas (what VS Code's files allow), parsed."""
    out: list[str] = []
    i, n, in_string = 0, len(text), False
    while i < n:
        ch = text[i]
        if in_string:
            out.append(text[i : i + 2] if ch == "\\" else ch)
            i += 2 if ch == "\\" else 1
            in_string = ch != '"'
            continue
        if ch == '"':
            in_string = True
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        elif ch == ",":
            rest = text[i + 1 :].lstrip()
            while rest.startswith(("//", "/*")):  # a comment between the comma and the bracket
                cut = rest.find("\n") if rest.startswith("//") else rest.find("*/") + 2
                rest = "" if cut <= 1 else rest[cut:].lstrip()
            if rest[:1] in ("}", "]"):
                i += 1
                continue
        out.append(ch)
        i += 1
    return json.loads("".join(out))


@dataclass(frozen=True)
class _Source:
    client: str
    path: Path
    scope: str  # "user", "project", "local"


def _sources(environ: Mapping[str, str], cwd: Path) -> list[_Source]:
    out: list[_Source] = []
    for client in CLIENTS:
        out.append(_Source(client, config_path(client, environ=environ), "user"))
        project = {
            "claude-code": cwd / ".mcp.json",
            "cursor": cwd / ".cursor" / "mcp.json",
            "vscode": cwd / ".vscode" / "mcp.json",
        }
        if client in project:
            out.append(_Source(client, project[client], "project"))
    return out


def _ours(name: str, entry: Mapping[str, Any], wanted: str) -> bool:
    if name == wanted:
        return True
    words = [str(entry.get("command", ""))] + [str(a) for a in entry.get("args") or [] if isinstance(a, str)]
    return any(
        Path(w).name in ("runapi-mcp", "runapi-mcp.exe") or "runapi_mcp" in w or w.startswith("runapi-mcp")
        for w in words
    )


def _entries(source: _Source, data: Any, cwd: Path, wanted: str) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """(scope, name, entry) for each entry in ``data`` that starts this server."""
    key = CLIENT_INFO[source.client].servers_key
    scopes: list[tuple[str, Any]] = [(source.scope, data.get(key) if isinstance(data, dict) else None)]
    if source.client == "claude-code" and source.scope == "user" and isinstance(data, dict):
        projects = data.get("projects")
        if isinstance(projects, dict) and isinstance(projects.get(str(cwd)), dict):
            scopes.append(("local", projects[str(cwd)].get("mcpServers")))
    for scope, servers in scopes:
        if not isinstance(servers, dict):
            continue
        for name, entry in servers.items():
            if isinstance(entry, dict) and _ours(str(name), entry, wanted):
                yield scope, str(name), entry


def _check_command(entry: Mapping[str, Any]) -> tuple[Status, str, str]:
    command = entry.get("command")
    if not isinstance(command, str) or not command:
        if entry.get("url"):
            return "OK", f"connects to {entry['url']}", ""
        return "FAIL", "the entry has no command", "runapi-mcp install <client> rewrites it"
    args = " ".join(str(a) for a in entry.get("args") or [])
    shown = f"{command} {args}".strip()
    if Path(command).is_absolute():
        if not Path(command).is_file():
            return "FAIL", f"its command {command} does not exist", "rerun runapi-mcp install for this client"
        if in_uv_cache(command):
            return (
                "WARN",
                f"its command {command} is in uv's cache, which uv may clean at any time",
                "rerun runapi-mcp install for this client (from uvx, it writes an entry that starts it through uvx)",
            )
        return "OK", f"starts {shown}", ""
    if shutil.which(command) is None:
        return "FAIL", f"its command {command} is not on PATH", "use an absolute path (runapi-mcp install writes one)"
    return "OK", f"starts {shown} ({command} is on this shell's PATH; a GUI app may not see it)", ""


def _check_entry_key(
    report: Report, client: str, entry: Mapping[str, Any], environ: Mapping[str, str], has_file_key: bool
) -> tuple[Status, str, str]:
    env = entry.get("env") if isinstance(entry.get("env"), dict) else {}
    value = env.get(KEY_VAR) if isinstance(env, dict) else None
    fallback = "~/.config/runapi/config.json has one" if has_file_key else "no key reaches the server"
    if not isinstance(value, str) or not value.strip():
        if client == "hermes" and not has_file_key:
            return (
                "WARN",
                f"no {KEY_VAR} in env: (Hermes passes only those), and {fallback}",
                "runapi-mcp install hermes --api-key-env",
            )
        if client == "claude-desktop" and not has_file_key:
            return (
                "WARN",
                f"no key in the entry, and {fallback}",
                'put {"apiKey": "sk-..."} in ~/.config/runapi/config.json',
            )
        return "OK", "no key in the entry (the server uses the one it inherits or ~/.config/runapi/config.json)", ""
    if value.startswith("${input:"):
        return "OK", f"key: VS Code asks for it ({value})", ""
    reference = _REFERENCE.fullmatch(value.strip())
    if reference:
        var = reference.group(1)
        if client == "hermes":
            dotenv = hermes_home(environ=environ) / ".env"
            if dotenv_has(dotenv, var) or environ.get(var):
                return "OK", f"key: {value} (set in {_tilde(dotenv)})", ""
            return (
                "FAIL",
                f"key: {value}, but {var} is not in {_tilde(dotenv)}: Hermes would pass the text {value}",
                f"add {var}=sk-... to {_tilde(dotenv)}",
            )
        if client == "claude-desktop":
            return (
                "FAIL",
                f"key: {value}, but Claude Desktop does not fill in variables",
                "runapi-mcp install claude-desktop (see --api-key-from-env)",
            )
        if not environ.get(var):
            return (
                "WARN",
                f"key: {value}, and {var} is not set in this shell",
                f"set {var} where {CLIENT_INFO[client].title} starts",
            )
        return "OK", f"key: {value}", ""
    if _UNFILLED.fullmatch(value.strip()):
        return (
            "FAIL",
            f"key: the placeholder {value!r}, not a key",
            "put your real key there, or rerun runapi-mcp install",
        )
    report.secrets.append(value)
    return "OK", "key: written in the file", ""


def _hermes_asks(entry: Mapping[str, Any]) -> tuple[Status, str, str]:
    """Whether Hermes asks before a paid call under ``entry``: only the server's threshold makes it (Hermes reads
    no ``trust`` key and no readOnlyHint, but answers the server's elicitation)."""
    env = entry.get("env")
    threshold = env.get(CONFIRM_VAR) if isinstance(env, dict) else None
    if threshold is not None:
        which = "each paid call" if str(threshold).strip() == "0" else f"tasks quoted above {threshold} cents"
        return "OK", f"asks before {which} ({CONFIRM_VAR}={threshold}; Hermes' classic terminal declines unseen)", ""
    if entry.get("trust") == STALE_TRUST:
        return (
            "WARN",
            f"paid calls run without asking: Hermes does not read 'trust: {STALE_TRUST}'",
            "runapi-mcp install hermes (it asks through the server instead)",
        )
    return "OK", f"paid calls run without asking (no {CONFIRM_VAR}: --trust full)", ""


def _merge_fix(exc: YamlDuplicateKeyError) -> str:
    lines = " and ".join(str(n) for n in exc.lines)
    return f"merge the two {exc.where[-1]}: blocks (lines {lines}) into one, then rerun runapi-mcp install hermes"


def _clients(report: Report, environ: Mapping[str, str], cwd: Path, wanted: str, has_file_key: bool) -> list[str]:
    """Check each client entry that starts this server; the entries that pass the server a key of their own."""
    found_any = False
    carriers: list[str] = []
    for source in _sources(environ, cwd):
        if not source.path.is_file():
            continue
        label = f"{source.client} {_tilde(source.path)}"
        try:
            text = source.path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            report.add("FAIL", label, f"cannot be read ({exc})", "fix its permissions")
            continue
        data: Any
        if source.client == "hermes":
            try:
                data = {"mcp_servers": hermes_servers(text)}
            except YamlDuplicateKeyError as exc:
                # Hermes reads only the last of two same keys: an entry in the other block is never started.
                status: Status = "FAIL" if exc.where[0] == "mcp_servers" else "WARN"
                report.add(status, label, f"{exc.summary}; Hermes reads only the last one", _merge_fix(exc))
                continue
            except YamlSyntaxError as exc:
                report.add(
                    "FAIL",
                    label,
                    f"{exc}: Hermes cannot read it either",
                    "fix the file (the backup runapi-mcp install made, *.bak, is beside it)",
                )
                continue
            except YamlShapeError as exc:
                report.add(
                    "WARN", label, f"its mcp_servers could not be read here ({exc})", "check it with `hermes mcp list`"
                )
                continue
        else:
            try:
                data = json.loads(text) if text.strip() else {}
            except json.JSONDecodeError as exc:
                try:
                    data = jsonc_loads(text)
                except json.JSONDecodeError:
                    report.add(
                        "FAIL",
                        label,
                        f"is not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno}): "
                        "the client cannot read any server from it",
                        "fix the file (the backup runapi-mcp install made, *.bak, is beside it)",
                    )
                    continue
                if source.client != "vscode":
                    report.add(
                        "WARN",
                        label,
                        "has comments or trailing commas, which this client may not accept",
                        "remove them",
                    )
        if not isinstance(data, dict):
            report.add("FAIL", label, "is not a JSON object", "fix the file")
            continue
        entries = list(_entries(source, data, cwd, wanted))
        if not entries:
            report.add("OK", label, f"readable; no entry for this server (runapi-mcp install {source.client} adds one)")
            continue
        found_any = True
        for scope, name, entry in entries:
            where = f"{label} [{scope}] {name}"
            status, detail, fix = _check_command(entry)
            key_status, key_detail, key_fix = _check_entry_key(report, source.client, entry, environ, has_file_key)
            env = entry.get("env")
            if key_status == "OK" and isinstance(env, dict) and isinstance(env.get(KEY_VAR), str) and env[KEY_VAR]:
                carriers.append(f"{source.client} {name}")
            parts = [(status, detail, fix), (key_status, key_detail, key_fix)]
            if source.client == "hermes":
                parts.append(_hermes_asks(entry))
            worst: Status = max((p[0] for p in parts), key=("OK", "WARN", "FAIL").index)
            report.add(worst, where, "; ".join(p[1] for p in parts), "; ".join(p[2] for p in parts if p[2]))
    if not found_any:
        report.add(
            "WARN",
            "clients",
            "no MCP client config found that starts this server",
            f"runapi-mcp install <{'|'.join(CLIENTS)}>",
        )
    return carriers


# -- the command ------------------------------------------------------------------------------------------------


async def diagnose(
    overrides: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    config_file: Path = RUNAPI_CONFIG_FILE,
    offline: bool = False,
    name: str = DEFAULT_NAME,
    request_s: float = DEFAULT_TIMEOUT_S,
    cwd: Path | None = None,
) -> Report:
    environ = os.environ if environ is None else environ
    report = Report()
    _python(report)
    source = _key_source(overrides, environ, config_file)
    has_key = _key(report, source)
    settings: Settings | None = None
    try:
        settings = load_settings(overrides, environ=environ, config_file=config_file)
    except ConfigError as exc:
        report.add("FAIL", "settings", str(exc), "fix the named setting (flag or environment variable)")
    if settings is not None:
        report.secrets.extend(s for s in (settings.key(),) if s)
        if offline:
            report.add("WARN", "runapi", f"not checked (--offline); base URL {settings.base_url}")
        else:
            await _runapi(report, settings, has_key, request_s)
        home = _home(report, settings)  # the image library stays there, whichever store keeps the tasks
        if settings.database is not None:
            report.secrets.extend(s for s in (database_password(settings.database),) if s)
            await _database(report, settings.database, request_s)
        elif home:
            _store(report, settings)
        _allowed_dirs(report, settings)
    has_file_key = runapi_config_has_key(config_file)
    carriers = _clients(report, environ, cwd or Path.cwd(), name, has_file_key)
    if source is None and carriers:
        # The clients pass their own key: the server gets one, only this shell (and so the checks here) has none.
        check = next(c for c in report.checks if c.name == "key")
        check.status = "WARN"
        check.detail = (
            f"not set in this shell, but the client entries carry one ({', '.join(carriers)}): the server gets it "
            "from them; the checks here that need a key were skipped"
        )
        check.fix = f"to check the key here too, export {KEY_VAR} in this shell"
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--offline", action="store_true", help="Skip the checks that need the network")
    parser.add_argument(
        "--name", default=DEFAULT_NAME, help=f"The server's name in client configs (default {DEFAULT_NAME})"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"Seconds for the RunAPI request (default {DEFAULT_TIMEOUT_S:g})",
    )
    add_settings_flags(parser, sub=True)


def run(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """``runapi-mcp doctor``: print the checks; 0 when none failed, 1 otherwise. The settings are read here,
    not before: a bad one is one of the things it reports."""
    out = out or sys.stdout
    report = anyio.run(
        lambda: diagnose(
            settings_overrides(args),
            offline=getattr(args, "offline", False),
            name=getattr(args, "name", DEFAULT_NAME),
            request_s=getattr(args, "timeout", DEFAULT_TIMEOUT_S),
        )
    )
    for line in report.lines():
        print(line, file=out)
    fails = sum(check.status == "FAIL" for check in report.checks)
    warns = sum(check.status == "WARN" for check in report.checks)
    print(f"\n{fails} FAIL, {warns} WARN" if fails or warns else "\nall OK", file=out)
    return 1 if report.failed else 0
