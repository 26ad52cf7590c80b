"""``runapi-mcp install``: each client's entry merged into its own config, and the packaging metadata.

Every test works on sample configs in a temporary HOME: other servers and unrelated keys survive, the old
file is backed up, a second run changes nothing, a file that cannot be parsed is refused byte for byte
unchanged, and ``--print`` writes nothing.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runapi_mcp import __version__
from runapi_mcp.cli import main
from runapi_mcp.commands.install import files as install_files
from runapi_mcp.commands.install import install
from runapi_mcp.commands.install.clients import CONFIRM_VAR, KEY_VAR, InstallError, config_path
from runapi_mcp.commands.install.files import MAX_CONFIG_BYTES
from runapi_mcp.commands.install.hermes_yaml import YamlDuplicateKeyError, hermes_servers, hermes_updated
from runapi_mcp.commands.install.keys import KeyPlan
from runapi_mcp.commands.install.launch import Launch, in_uv_cache, server_launch, uvx_source
from runapi_mcp.commands.install.request import Options, Outcome
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = Launch("/opt/runapi/bin/runapi-mcp", ("serve",))
SECRET = "sk-live-4f1c2a9e8b7d6c5a4f3e2d1c0b9a8f7e"

HERMES_SAMPLE = """\
# Hermes Agent configuration
model:
  default: "anthropic/claude-sonnet"   # the main model
toolsets:
- web
- terminal

mcp_servers:
  github:
    command: "npx"
    args: ["-y", "@modelcontextprotocol/server-github"]
    env:
      GITHUB_PERSONAL_ACCESS_TOKEN: "${GITHUB_TOKEN}"
# the filesystem server, for one project
  fs:
    command: npx
    args:
      - -y
      - "@modelcontextprotocol/server-filesystem"

# ---- display ----
display:
  compact: true
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh HOME with no client installed, no key and no `claude` on PATH."""
    path = tmp_path / "home"
    path.mkdir()
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("HOME", str(path))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    for var in (
        "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "APPDATA", "LOCALAPPDATA", "CLAUDE_CONFIG_DIR", "HERMES_HOME",
        "UV_CACHE_DIR", "UV", KEY_VAR,
    ):
        monkeypatch.delenv(var, raising=False)
    yield path


def run_install(client: str, **kw: Any) -> Outcome:
    return install(Options(client=client, launch=LAUNCH, environ=dict(os.environ), **kw))


def backups(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".*.bak"))


# -- where the files are --------------------------------------------------------------------------------------


def test_config_paths_follow_each_os(tmp_path: Path) -> None:
    home = tmp_path
    env = {"APPDATA": r"C:\Users\me\AppData\Roaming", "LOCALAPPDATA": r"C:\Users\me\AppData\Local"}
    mac = {c: config_path(c, system="darwin", home=home, environ={}) for c in ("claude-desktop", "vscode")}
    assert mac["claude-desktop"] == home / "Library/Application Support/Claude/claude_desktop_config.json"
    assert mac["vscode"] == home / "Library/Application Support/Code/User/mcp.json"
    assert config_path("claude-desktop", system="win32", home=home, environ=env) == Path(env["APPDATA"]) / "Claude" / (
        "claude_desktop_config.json"
    )
    assert config_path("vscode", system="win32", home=home, environ=env) == Path(env["APPDATA"]) / "Code/User/mcp.json"
    assert (
        config_path("hermes", system="win32", home=home, environ=env)
        == Path(env["LOCALAPPDATA"]) / "hermes/config.yaml"
    )
    assert config_path("claude-desktop", system="linux", home=home, environ={}) == (
        home / ".config/Claude/claude_desktop_config.json"
    )
    assert config_path("claude-desktop", system="linux", home=home, environ={"XDG_CONFIG_HOME": "/x"}) == Path(
        "/x/Claude/claude_desktop_config.json"
    )
    for system in ("darwin", "win32", "linux"):
        assert config_path("cursor", system=system, home=home, environ=env) == home / ".cursor/mcp.json"
        assert config_path("claude-code", system=system, home=home, environ={}) == home / ".claude.json"
    assert config_path("claude-code", home=home, environ={"CLAUDE_CONFIG_DIR": "/cc"}) == Path("/cc/.claude.json")
    assert config_path("hermes", system="linux", home=home, environ={}) == home / ".hermes/config.yaml"
    assert config_path("hermes", home=home, environ={"HERMES_HOME": "/h"}) == Path("/h/config.yaml")


def test_the_command_is_this_install_by_absolute_path() -> None:
    launch = server_launch()
    assert Path(launch.command).is_absolute() and Path(launch.command).exists()
    assert launch.args[-1] == "serve"
    probe = subprocess.run([launch.command, *launch.args[:-1], "--version"], capture_output=True, text=True, timeout=30)
    assert probe.returncode == 0 and __version__ in probe.stdout


# -- run from uvx: uv's cache is no place for the entry's command ---------------------------------------------


def test_uv_cache_is_found_where_uv_keeps_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env_bin = Path("archive-v0/3cQ9fX2kLm1/bin/runapi-mcp")  # uvx's environment: <cache>/archive-v0/<id>/

    def cached(path: Path, system: str = "linux", **environ: str) -> bool:
        return in_uv_cache(path, system=system, home=home, environ=environ)

    assert cached(home / ".cache/uv" / env_bin)
    assert cached(home / "Library/Caches/uv" / env_bin, "darwin")  # where uv before 0.5 kept it on macOS
    assert cached(home / ".cache/uv" / env_bin, "darwin")
    assert cached(tmp_path / "xdg/uv" / env_bin, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert cached(tmp_path / "local/uv/cache" / env_bin, "win32", LOCALAPPDATA=str(tmp_path / "local"))
    assert cached(tmp_path / "mine/builds-v0/.tmpX/bin/runapi-mcp", UV_CACHE_DIR=str(tmp_path / "mine"))
    # A cache uv was pointed at with --cache-dir (or --no-cache's temporary one): tagged by uv at its root.
    elsewhere = tmp_path / "elsewhere"
    assert not cached(elsewhere / env_bin)
    elsewhere.mkdir()
    (elsewhere / "CACHEDIR.TAG").write_text("Signature: 8a477f597d28d172789f06886806bc55\n")
    assert cached(elsewhere / env_bin)
    # Reached through a link, it is still the cache.
    target = home / ".cache/uv" / env_bin
    target.parent.mkdir(parents=True)
    target.touch()
    (tmp_path / "linked").symlink_to(target)
    assert cached(tmp_path / "linked")
    # Places that stay: `uv tool install`'s environments, pipx's, a venv.
    assert not cached(home / ".local/share/uv/tools/runapi-mcp/bin/runapi-mcp")
    assert not cached(home / ".local/pipx/venvs/runapi-mcp/bin/runapi-mcp")
    assert not cached(Path("/opt/runapi/bin/runapi-mcp"))


def test_uvx_installs_again_from_where_this_install_came_from() -> None:
    # PEP 610's direct_url.json, as installers write it; none for an install from a package index.
    assert uvx_source(None) is None and uvx_source("not json") is None and uvx_source("[]") is None
    local = '{"url": "file:///home/me/src/runapi%20mcp", "dir_info": {"editable": true}}'
    assert uvx_source(local) == "/home/me/src/runapi mcp"
    git = '{"url": "https://github.com/me/runapi-mcp.git", "vcs_info": {"vcs": "git", "commit_id": "4f1c2a9"}}'
    assert uvx_source(git) == "git+https://github.com/me/runapi-mcp.git@4f1c2a9"
    wheel = '{"url": "https://example.org/runapi_mcp-0.1.0-py3-none-any.whl", "archive_info": {}}'
    assert uvx_source(wheel) == "https://example.org/runapi_mcp-0.1.0-py3-none-any.whl"


UVX_INSTALL = "import sys\nfrom runapi_mcp.cli import main\nsys.exit(main())\n"


@pytest.mark.timeout(60)
def test_an_install_run_from_uvx_writes_a_uvx_entry(home: Path, tmp_path: Path) -> None:
    """`uvx runapi-mcp install claude-desktop`: the install runs from uv's cache, laid out as uv lays it out
    (a venv at ~/.cache/uv/archive-v0/<id>/, the package's dist-info in it); the entry starts uvx."""
    env_dir = home / ".cache/uv/archive-v0/3cQ9fX2kLm1"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=60)
    site = Path(
        subprocess.run(
            [str(env_dir / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout.strip()
    )
    # The code and its dependencies from this checkout; the package's metadata as uv installs it from PyPI.
    (site / "this_checkout.pth").write_text(f"{ROOT / 'src'}\n{sysconfig.get_path('purelib')}\n")
    dist_info = site / f"runapi_mcp-{__version__}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: runapi-mcp\nVersion: {__version__}\n")
    (dist_info / "INSTALLER").write_text("uv\n")
    script = env_dir / "bin/runapi-mcp"
    script.write_text(f"#!{env_dir / 'bin/python'}\n{UVX_INSTALL}")
    script.chmod(0o755)
    uvx = tmp_path / "bin/uvx"
    uvx.write_text("#!/bin/sh\n")
    uvx.chmod(0o755)
    config = home / "claude_desktop_config.json"
    env = {"HOME": str(home), "PATH": f"{env_dir / 'bin'}{os.pathsep}{tmp_path / 'bin'}"}  # uvx puts its env first

    def run() -> subprocess.CompletedProcess[str]:
        argv = [str(script), "install", "claude-desktop", "--config", str(config)]
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)

    done = run()
    assert done.returncode == 0, done.stderr
    entry = json.loads(config.read_text())["mcpServers"]["runapi"]
    assert entry == {"command": str(uvx), "args": [f"runapi-mcp@{__version__}", "serve"]}
    assert "uv's cache" in done.stdout and f"pinned to {__version__}" in done.stdout, done.stdout
    assert f"(command {uvx})" in done.stdout
    # Installed from a checkout (uvx --from PATH): uvx builds it from there again.
    (dist_info / "direct_url.json").write_text(json.dumps({"url": (tmp_path / "src").as_uri(), "dir_info": {}}))
    done = run()
    assert done.returncode == 0, done.stderr
    entry = json.loads(config.read_text())["mcpServers"]["runapi"]
    assert entry == {"command": str(uvx), "args": ["--from", str(tmp_path / "src"), "runapi-mcp", "serve"]}
    assert "archive-v0" not in config.read_text() and f"builds it again from {tmp_path / 'src'}" in done.stdout


def test_an_entry_for_a_cached_command_goes_through_uvx(home: Path, tmp_path: Path) -> None:
    cached = Launch(str(tmp_path / "uv-cache/archive-v0/3cQ9fX2kLm1/bin/runapi-mcp"), ("serve",))
    environ = {**os.environ, "UV_CACHE_DIR": str(tmp_path / "uv-cache")}
    outcome = install(Options(client="cursor", launch=cached, environ=environ, print_only=True))
    assert outcome.snippet is not None
    entry = json.loads(outcome.snippet)["mcpServers"]["runapi"]
    assert entry["command"] == "uvx" and entry["args"][-1] == "serve" and "archive-v0" not in outcome.snippet
    assert any("not found on PATH" in m and "--command" in m for m in outcome.messages), outcome.messages
    # The same launch outside the cache is written as it is.
    outcome = install(Options(client="cursor", launch=cached, environ=dict(os.environ), print_only=True))
    assert outcome.snippet is not None and json.loads(outcome.snippet)["mcpServers"]["runapi"]["command"] == cached.command


def test_command_sets_the_entrys_command_line(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config_path("cursor")
    assert main(["install", "cursor", "--command", "uvx --from '/src/runapi mcp' runapi-mcp serve"]) == 0
    entry = servers_in("cursor", path)["runapi"]
    assert entry == {"command": "uvx", "args": ["--from", "/src/runapi mcp", "runapi-mcp", "serve"]}
    assert main(["install", "cursor", "--command", "/opt/runapi/bin/runapi-mcp"]) == 0
    assert servers_in("cursor", path)["runapi"] == {"command": "/opt/runapi/bin/runapi-mcp", "args": []}
    before = path.read_text()
    capsys.readouterr()
    for bad in ("", "uvx 'runapi-mcp"):
        assert main(["install", "cursor", "--command", bad]) == 2
        assert "--command" in capsys.readouterr().err
    assert path.read_text() == before


# -- JSON clients ---------------------------------------------------------------------------------------------

JSON_CLIENTS = {
    # client: (servers key, whether the entry carries "type": "stdio")
    "claude-desktop": ("mcpServers", False),
    "claude-code": ("mcpServers", True),
    "cursor": ("mcpServers", False),
    "vscode": ("servers", True),
}


@pytest.mark.parametrize("client", list(JSON_CLIENTS))
def test_json_clients_merge_back_up_and_are_idempotent(home: Path, client: str) -> None:
    key, typed = JSON_CLIENTS[client]
    path = config_path(client)
    path.parent.mkdir(parents=True, exist_ok=True)
    other = {"command": "npx", "args": ["-y", "other-server"], "env": {"TOKEN": "t"}}
    original: dict[str, Any] = {
        key: {"other": other},
        "unrelated": {"keep": [1, 2, 3]},
        "numStartups": 42,
    }
    path.write_text(json.dumps(original, indent=4))
    before = path.read_bytes()

    outcome = run_install(client)
    assert outcome.changed and outcome.path == path
    data = json.loads(path.read_text())
    assert data[key]["other"] == other, "other servers are kept as they were"
    assert data["unrelated"] == original["unrelated"] and data["numStartups"] == 42
    entry = data[key]["runapi"]
    assert entry["command"] == LAUNCH.command and entry["args"] == ["serve"]
    assert ("type" in entry) == typed and entry.get("type", "stdio") == "stdio"
    [saved] = backups(path)
    assert saved.read_bytes() == before, "the backup is the old file"
    assert SECRET not in path.read_text()

    after_first = path.read_bytes()
    again = run_install(client)
    assert not again.changed and "nothing changed" in " ".join(again.messages)
    assert path.read_bytes() == after_first and len(backups(path)) == 1, "a second run changes nothing"


@pytest.mark.parametrize("client", ["claude-desktop", "cursor", "vscode"])
def test_a_missing_file_is_created(home: Path, client: str) -> None:
    outcome = run_install(client)
    path = config_path(client)
    assert outcome.changed and path.exists() and not backups(path)
    assert json.loads(path.read_text())[JSON_CLIENTS[client][0]]["runapi"]["command"] == LAUNCH.command


def test_an_existing_entry_keeps_its_own_extra_keys(home: Path) -> None:
    path = config_path("claude-desktop")
    path.parent.mkdir(parents=True)
    old = {"command": "runapi-mcp", "env": {KEY_VAR: SECRET, "RUNAPI_MCP_HOME": "/data"}, "disabled": False}
    path.write_text(json.dumps({"mcpServers": {"runapi": old}}))
    outcome = run_install("claude-desktop")
    entry = json.loads(path.read_text())["mcpServers"]["runapi"]
    assert outcome.changed and "updated" in " ".join(outcome.messages)
    assert entry == {
        "command": LAUNCH.command,
        "args": ["serve"],
        "env": {KEY_VAR: SECRET, "RUNAPI_MCP_HOME": "/data"},  # the user's key is not thrown away
        "disabled": False,
    }


@pytest.mark.parametrize(
    ("client", "text", "why"),
    [
        ("vscode", '{\n  // my servers\n  "servers": {},\n}\n', "comments"),
        ("cursor", '{"mcpServers": {"a": {"command": "x",}}}', "not plain JSON"),
        ("claude-desktop", '[{"mcpServers": {}}]', "not an object"),
        ("cursor", '{"mcpServers": ["x"]}', "not an object"),
    ],
)
def test_a_file_that_cannot_be_parsed_is_refused_unchanged(
    home: Path, client: str, text: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config_path(client)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    before = path.read_bytes(), path.stat().st_mtime_ns
    assert main(["install", client]) == 1
    err = capsys.readouterr().err
    assert why in err and "--print" in err, err
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before and not backups(path)


@pytest.mark.parametrize("client", ["claude-desktop", "claude-code", "cursor", "vscode", "hermes"])
def test_print_writes_nothing(home: Path, client: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["install", client, "--print"]) == 0
    out = capsys.readouterr().out
    assert not any(home.rglob("*")), "nothing written under HOME"
    if client == "hermes":
        entry = hermes_servers(out)["runapi"]
    else:
        doc = json.loads(out)
        entry = doc[JSON_CLIENTS[client][0]]["runapi"]
    assert entry["args"][-1] == "serve" and Path(entry["command"]).is_absolute()


# -- the key --------------------------------------------------------------------------------------------------


def test_key_references_in_each_clients_syntax(home: Path) -> None:
    run_install("cursor", key_mode="env")
    assert json.loads(config_path("cursor").read_text())["mcpServers"]["runapi"]["env"] == {
        KEY_VAR: "${env:RUNAPI_API_KEY}"
    }
    run_install("vscode", key_mode="env")
    assert json.loads(config_path("vscode").read_text())["servers"]["runapi"]["env"][KEY_VAR] == "${env:RUNAPI_API_KEY}"

    desktop = run_install("claude-desktop", key_mode="env")
    assert "cannot refer to environment variables" in " ".join(desktop.messages)
    assert "env" not in json.loads(config_path("claude-desktop").read_text())["mcpServers"]["runapi"]


def test_vscode_asks_for_the_key_by_default(home: Path) -> None:
    path = config_path("vscode")
    path.parent.mkdir(parents=True)
    mine = {"type": "promptString", "id": "github-token", "password": True}
    path.write_text(json.dumps({"inputs": [mine], "servers": {}}))
    run_install("vscode")
    data = json.loads(path.read_text())
    assert data["servers"]["runapi"]["env"] == {KEY_VAR: "${input:runapi-api-key}"}
    assert data["inputs"][0] == mine and data["inputs"][1]["id"] == "runapi-api-key" and data["inputs"][1]["password"]
    assert not run_install("vscode").changed, "the input is not added twice"


def test_claude_code_env_mode_drops_a_stale_literal_key(home: Path) -> None:
    path = config_path("claude-code")
    path.write_text(json.dumps({"mcpServers": {"runapi": {"type": "stdio", "command": "x", "env": {KEY_VAR: SECRET}}}}))
    outcome = run_install("claude-code", key_mode="env")
    assert json.loads(path.read_text())["mcpServers"]["runapi"]["env"] == {}
    assert "passes its environment" in " ".join(outcome.messages)


def test_copying_the_key_needs_it_and_warns(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["install", "claude-desktop", "--api-key-from-env"]) == 2
    assert f"{KEY_VAR} is not set" in capsys.readouterr().err
    assert not config_path("claude-desktop").exists()

    monkeypatch.setenv(KEY_VAR, SECRET)
    assert main(["install", "claude-desktop", "--api-key-from-env", "--print"]) == 0
    printed = capsys.readouterr()
    assert SECRET not in printed.out + printed.err and "<your RunAPI key>" in printed.out

    assert main(["install", "claude-desktop", "--api-key-from-env"]) == 0
    out = capsys.readouterr().out
    assert "plain text" in out and SECRET not in out
    path = config_path("claude-desktop")
    assert json.loads(path.read_text())["mcpServers"]["runapi"]["env"] == {KEY_VAR: SECRET}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, "a new file holding the key is private"


def test_hermes_copies_the_key_into_its_dotenv(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dotenv = home / ".hermes" / ".env"
    dotenv.parent.mkdir()
    dotenv.write_text("OPENROUTER_API_KEY=or-123\nRUNAPI_API_KEY=old\n")
    monkeypatch.setenv(KEY_VAR, SECRET)
    outcome = run_install("hermes", key_mode="copy")
    config = config_path("hermes").read_text()
    assert SECRET not in config
    assert hermes_servers(config)["runapi"]["env"] == {KEY_VAR: "${RUNAPI_API_KEY}", CONFIRM_VAR: "0"}
    assert dotenv.read_text() == f"OPENROUTER_API_KEY=or-123\nRUNAPI_API_KEY={SECRET}\n"
    assert stat.S_IMODE(dotenv.stat().st_mode) == 0o600 and len(backups(dotenv)) == 1
    assert not any(SECRET in m for m in outcome.messages)


def test_hermes_reference_warns_when_dotenv_lacks_the_key(home: Path) -> None:
    outcome = run_install("hermes", key_mode="env")
    assert "add RUNAPI_API_KEY=sk-... to" in " ".join(outcome.messages)
    (home / ".hermes" / ".env").write_text("RUNAPI_API_KEY=sk-x\n")
    assert "add RUNAPI_API_KEY" not in " ".join(run_install("hermes", key_mode="env").messages)


# -- Hermes (YAML edited as text) -------------------------------------------------------------------------------


def test_hermes_entry_is_added_with_everything_else_byte_for_byte(home: Path) -> None:
    path = config_path("hermes")
    path.parent.mkdir()
    path.write_text(HERMES_SAMPLE)
    outcome = run_install("hermes", key_mode="env")
    new = path.read_text()
    assert outcome.changed and backups(path)[0].read_text() == HERMES_SAMPLE
    start = new.index("  runapi:\n")
    block = new[start : new.index("\n", new.index(CONFIRM_VAR)) + 1]
    assert new[:start] + new[start + len(block) :] == HERMES_SAMPLE, "one block added; every other byte kept"
    servers = hermes_servers(new)
    assert set(servers) == {"github", "fs", "runapi"}
    assert servers["runapi"] == {
        "command": LAUNCH.command,
        "args": ["serve"],
        "env": {KEY_VAR: "${RUNAPI_API_KEY}", CONFIRM_VAR: "0"},
    }
    assert servers["fs"]["args"] == ["-y", "@modelcontextprotocol/server-filesystem"]
    assert new.index("  runapi:") < new.index("# ---- display ----"), "inside mcp_servers, before the next section"
    assert not run_install("hermes", key_mode="env").changed and len(backups(path)) == 1


def test_hermes_updates_an_entry_in_place(home: Path) -> None:
    path = config_path("hermes")
    path.parent.mkdir()
    path.write_text(
        "mcp_servers:\n"
        "  runapi:\n"
        "    command: runapi-mcp   # from the README\n"
        "    timeout: 300\n"
        "    env:\n"
        "      RUNAPI_MCP_HOME: /data\n"
        "      RUNAPI_API_KEY: sk-literal\n"
        "    trust: full\n"
        "other: 1\n"
    )
    run_install("hermes", key_mode="env", trust="full")
    assert path.read_text() == (
        "mcp_servers:\n"
        "  runapi:\n"
        f'    command: "{LAUNCH.command}" # from the README\n'  # the user's comment stays with its key
        '    args: ["serve"]\n'
        "    timeout: 300\n"
        "    env:\n"
        "      RUNAPI_MCP_HOME: /data\n"
        '      RUNAPI_API_KEY: "${RUNAPI_API_KEY}"\n'
        "    trust: full\n"
        "other: 1\n"
    ), "the user's trust, timeout, other variables and comments stay"


def test_hermes_without_mcp_servers_gets_the_section(home: Path) -> None:
    path = config_path("hermes")
    path.parent.mkdir()
    path.write_text("model:\n  default: x\n")
    run_install("hermes", trust="full")
    assert (
        path.read_text()
        == f'model:\n  default: x\n\nmcp_servers:\n  runapi:\n    command: "{LAUNCH.command}"\n    args: ["serve"]\n'
    )


@pytest.mark.parametrize(
    "text",
    [
        "mcp_servers: {github: {command: npx}}\n",
        "mcp_servers:\n\tgithub:\n\t\tcommand: npx\n",
        "mcp_servers:\n  runapi: {command: x}\n",
        "- a list\n- not a mapping\n",
        "a: 1\n---\nb: 2\n",
    ],
)
def test_hermes_layouts_it_cannot_edit_safely_are_refused(home: Path, text: str) -> None:
    path = config_path("hermes")
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(InstallError, match="left unchanged"):
        run_install("hermes")
    assert path.read_text() == text and not backups(path)


def test_hermes_crlf_files_keep_their_line_endings() -> None:
    text = "model: x\r\nmcp_servers:\r\n  a:\r\n    command: b\r\n"
    new = hermes_updated(text, "runapi", LAUNCH, KeyPlan(), ask=False)
    assert new.startswith(text) and "\n" not in new.replace("\r\n", "")


# -- Hermes asks before paid calls (issue 15, item 2) -----------------------------------------------------------
# Hermes Agent 0.19 reads no `trust` key and no readOnlyHint, but answers MCP elicitation: the entry carries the
# server's confirmation threshold at 0, so the server asks (through Hermes) before each task that costs money.
# bench/hermes_check.py and test_hermes_agent_itself_asks_before_paid_calls_only check it against hermes-agent.


def test_the_threshold_is_the_servers_own_setting(tmp_path: Path) -> None:
    from runapi_mcp.config import load_settings
    from runapi_mcp.server.confirm import CONFIRM_VARIABLE, SpendConfirmation

    assert CONFIRM_VAR == CONFIRM_VARIABLE
    settings = load_settings({}, environ={CONFIRM_VAR: "0"}, config_file=tmp_path / "none.json")
    assert settings.confirm_above_cents == 0
    asks = SpendConfirmation(settings.confirm_above_cents)
    assert asks.wanted(1) and asks.wanted(None) and not asks.wanted(0), "every task that costs money, no free one"


def test_hermes_entry_asks_before_each_paid_call_by_default(home: Path) -> None:
    outcome = run_install("hermes")
    entry = hermes_servers(config_path("hermes").read_text())["runapi"]
    assert entry == {"command": LAUNCH.command, "args": ["serve"], "env": {CONFIRM_VAR: "0"}}
    said = "\n".join(outcome.messages)
    assert "Hermes asks before each paid call" in said
    assert "[o]nce | [s]ession | [d]eny" in said and "creates nothing and charges nothing" in said
    assert "list_models, get_task, list_tasks, check_balance and gallery never ask" in said
    assert "classic terminal" in said and "--trust full" in said, "says where Hermes 0.19 cannot ask"
    assert "trust: untrusted" not in config_path("hermes").read_text()


def test_hermes_trust_full_leaves_the_question_out(home: Path) -> None:
    run_install("hermes", key_mode="env")
    outcome = run_install("hermes", key_mode="env", trust="full")
    assert outcome.changed
    assert hermes_servers(config_path("hermes").read_text())["runapi"]["env"] == {KEY_VAR: "${RUNAPI_API_KEY}"}
    said = "\n".join(outcome.messages)
    assert "runs generate_image, edit_image and upscale_image without asking" in said
    assert "classic terminal" not in said
    assert not run_install("hermes", key_mode="env", trust="full").changed
    assert run_install("hermes", key_mode="env").changed, "back to asking"
    assert hermes_servers(config_path("hermes").read_text())["runapi"]["env"][CONFIRM_VAR] == "0"


def test_hermes_entry_of_an_earlier_install_loses_its_trust_promise(home: Path) -> None:
    path = config_path("hermes")
    path.parent.mkdir()
    path.write_text(
        "mcp_servers:\n"
        "  runapi:\n"
        f'    command: "{LAUNCH.command}"\n'
        '    args: ["serve"]\n'
        "    env:\n"
        "      RUNAPI_MCP_HOME: /data   # the pictures\n"
        "    trust: untrusted\n"
        "    timeout: 300\n"
        "\n"
        "# ---- display ----\n"
        "display: {}\n"
    )
    outcome = run_install("hermes")
    assert path.read_text() == (
        "mcp_servers:\n"
        "  runapi:\n"
        f'    command: "{LAUNCH.command}"\n'
        '    args: ["serve"]\n'
        "    env:\n"
        "      RUNAPI_MCP_HOME: /data   # the pictures\n"
        f'      {CONFIRM_VAR}: "0"\n'
        "    timeout: 300\n"
        "\n"
        "# ---- display ----\n"
        "display: {}\n"
    )
    assert any("removed 'trust: untrusted'" in m for m in outcome.messages)


def test_hermes_keeps_a_threshold_of_the_users_own(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config_path("hermes")
    path.parent.mkdir()
    text = f'mcp_servers:\n  runapi:\n    command: "{LAUNCH.command}"\n    args: ["serve"]\n    env:\n      {CONFIRM_VAR}: "50"\n'
    path.write_text(text)
    outcome = run_install("hermes")
    assert not outcome.changed and path.read_text() == text
    assert any("before each task quoted above 50 cents" in m for m in outcome.messages)
    # The old name of the default still means it, and --print says what Hermes will do.
    assert main(["install", "hermes", "--trust", "untrusted", "--print"]) == 0
    printed = capsys.readouterr()
    assert hermes_servers(printed.out)["runapi"]["env"] == {CONFIRM_VAR: "0"}
    assert "Hermes asks before each paid call" in printed.err


HERMES_VENV = Path(tempfile.gettempdir()) / "runapi-mcp-hermes" / "venv"  # where bench/hermes_check.py installs it


def hermes_python() -> str | None:
    """An interpreter with hermes-agent[mcp]: $RUNAPI_HERMES_PYTHON, else the one bench/hermes_check.py made."""
    named = os.environ.get("RUNAPI_HERMES_PYTHON")
    python = Path(named) if named else HERMES_VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if not python.exists():
        return None
    probe = subprocess.run(
        [str(python), "-c", "import tools.mcp_tool, mcp"], capture_output=True, timeout=120, check=False
    )
    return str(python) if probe.returncode == 0 else None


@pytest.mark.timeout(300)
def test_hermes_agent_itself_asks_before_paid_calls_only() -> None:
    """hermes-agent from PyPI, its own MCP client and elicitation handler, against entries written by install
    hermes (bench/hermes_check.py): a paid call asks first, a read-only call does not, a denial creates nothing."""
    python = hermes_python()
    if python is None:
        pytest.skip(
            "hermes-agent is not installed: it pins mcp==1.26.0 while runapi-mcp needs mcp>=2.3, so it cannot share "
            "the test venv. `python bench/hermes_check.py` installs hermes-agent[mcp] into a venv of its own "
            f"({HERMES_VENV}, about 200 MB, 1-2 minutes), which this test then uses (or set RUNAPI_HERMES_PYTHON)"
        )
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "hermes_check.py"), "--hermes-python", python, "--no-install"],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out[-6000:] + done.stderr[-3000:]
    verdicts = [line for line in out.splitlines() if line.startswith(("PASS", "FAIL", "info", "SKIP"))]
    assert len(verdicts) == 9 and all(line.startswith("PASS") for line in verdicts[:8]), "\n".join(verdicts)
    assert "Create this image task for $0.03 (3 cents)?" in out and "[o]nce  |  [s]ession  |  [d]eny" in out


# -- files that are not a plain file of one's own (issue 14, item 7) ------------------------------------------

FILE_CLIENTS = ["cursor", "hermes"]


def seed(client: str, path: Path) -> str:
    """A config with another server in it, in ``client``'s format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = HERMES_SAMPLE if client == "hermes" else json.dumps({"mcpServers": {"other": {"command": "x"}}}, indent=2)
    path.write_text(text)
    return text


def servers_in(client: str, path: Path) -> dict[str, Any]:
    text = path.read_text()
    return hermes_servers(text) if client == "hermes" else dict(json.loads(text)["mcpServers"])


@pytest.mark.parametrize("client", FILE_CLIENTS)
def test_a_symlinked_config_is_edited_where_it_leads(home: Path, client: str) -> None:
    """A dotfiles setup: the client's file is a link into a repository; the entry lands there and the link stays."""
    target = home / "dotfiles" / client / config_path(client).name
    before = seed(client, target)
    link = config_path(client)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)

    outcome = run_install(client, trust="full")
    assert outcome.changed
    assert link.is_symlink() and os.readlink(link) == str(target), "the link is kept, pointing where it did"
    assert "runapi" in servers_in(client, target) and len(servers_in(client, target)) >= 2
    assert any("leads to" in m and str(target) in m for m in outcome.messages)
    [saved] = backups(link)
    assert saved.read_text() == before and not saved.is_symlink(), "the backup is a copy of the old text"
    assert not list(target.parent.glob("*.bak")), "nothing is left in the dotfiles repository but the edit"
    assert not run_install(client, trust="full").changed, "a second run through the link changes nothing"


def test_a_dangling_link_gets_its_file_created(home: Path) -> None:
    target = home / "dotfiles" / "cursor" / "mcp.json"
    link = config_path("cursor")
    link.parent.mkdir()
    link.symlink_to(target)
    assert run_install("cursor").changed
    assert link.is_symlink() and json.loads(target.read_text())["mcpServers"]["runapi"]["command"] == LAUNCH.command


def test_a_config_in_a_linked_directory_is_edited_in_place(home: Path) -> None:
    real = home / "dotfiles" / "hermes"
    seed("hermes", real / "config.yaml")
    (home / ".hermes").symlink_to(real, target_is_directory=True)
    run_install("hermes")
    assert (home / ".hermes").is_symlink() and "runapi" in hermes_servers((real / "config.yaml").read_text())


needs_root = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown needs root")
NOBODY = 65534


@needs_root
@pytest.mark.parametrize("client", FILE_CLIENTS)
def test_another_users_file_keeps_its_owner_group_and_mode(home: Path, client: str) -> None:
    """`sudo runapi-mcp install` on a user's file: the file stays the user's, with its mode."""
    path = config_path(client)
    seed(client, path)
    os.chown(path, NOBODY, NOBODY)
    path.chmod(0o640)
    assert run_install(client).changed
    st = path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, 0o640)
    assert "runapi" in servers_in(client, path)
    [saved] = backups(path)
    assert (saved.stat().st_uid, saved.stat().st_gid, stat.S_IMODE(saved.stat().st_mode)) == (NOBODY, NOBODY, 0o640)


@needs_root
def test_the_group_is_kept_in_a_setgid_directory(home: Path) -> None:
    """A setgid directory hands its group to new files, the temporary one included: the file's own group stays."""
    path = config_path("cursor")
    seed("cursor", path)
    os.chown(path.parent, 0, NOBODY)
    path.parent.chmod(0o2755)
    os.chown(path, 0, 0)
    assert run_install("cursor").changed
    assert (path.stat().st_uid, path.stat().st_gid) == (0, 0)


@needs_root
def test_a_new_file_in_another_users_directory_is_theirs(home: Path) -> None:
    os.chown(home, NOBODY, NOBODY)
    run_install("cursor")
    for made in (home / ".cursor", config_path("cursor")):
        assert (made.stat().st_uid, made.stat().st_gid) == (NOBODY, NOBODY), made


def test_a_file_that_would_change_owner_is_refused(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not root: replacing another user's (group-writable) file would make it ours, so it is refused."""
    path = config_path("cursor")
    seed("cursor", path)
    owner = path.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1000)
    before = path.read_bytes()
    assert main(["install", "cursor"]) == 1
    err = capsys.readouterr().err
    assert "belongs to another user" in err and str(path) in err
    assert path.read_bytes() == before and not backups(path)


@pytest.mark.parametrize("client", FILE_CLIENTS)
def test_a_read_only_file_is_refused_saying_so(home: Path, client: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = config_path(client)
    seed(client, path)
    path.chmod(0o444)
    before = path.read_bytes(), path.stat().st_mtime_ns
    assert main(["install", client]) == 1
    err = capsys.readouterr().err
    assert "read-only" in err and "0444" in err and str(path) in err, err
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before and not backups(path), "nothing written"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name], "no temporary or lock file either"


def test_hermes_refuses_both_files_before_writing_either(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--api-key-from-env writes .env and config.yaml: a read-only .env leaves config.yaml unchanged too."""
    path = config_path("hermes")
    seed("hermes", path)
    dotenv = path.parent / ".env"
    dotenv.write_text("OTHER=1\n")
    dotenv.chmod(0o400)
    monkeypatch.setenv(KEY_VAR, SECRET)
    with pytest.raises(InstallError, match="read-only"):
        run_install("hermes", key_mode="copy")
    assert path.read_text() == HERMES_SAMPLE and dotenv.read_text() == "OTHER=1\n" and not backups(path)


def test_a_hard_linked_file_is_refused(home: Path) -> None:
    path = config_path("cursor")
    seed("cursor", path)
    os.link(path, home / "mcp-copy.json")
    with pytest.raises(InstallError, match="2 hard links"):
        run_install("cursor")
    assert "runapi" not in (home / "mcp-copy.json").read_text()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("client", ["cursor", "claude-code", "hermes"])
@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_anything_but_a_regular_file_is_refused_without_opening_it(
    home: Path, client: str, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A FIFO hung the command (reading waits for a writer) and /dev/zero filled memory: both are refused."""
    path = config_path(client)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    started = time.monotonic()
    assert main(["install", client]) == 1
    err = capsys.readouterr().err
    expected = {"fifo": "a named pipe (FIFO)", "dev-zero": "a character device", "directory": "a directory"}[kind]
    assert f"is {expected}, not a regular file" in err and str(path) in err, err
    assert time.monotonic() - started < 5
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name], "nothing written beside it"


def test_dev_zero_as_the_config_is_refused(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["install", "cursor", "--config", "/dev/zero"]) == 1
    assert "/dev/zero is a character device, not a regular file" in capsys.readouterr().err


@pytest.mark.timeout(20)
def test_a_fifo_dotenv_does_not_hang_the_key_check(home: Path) -> None:
    (home / ".hermes").mkdir()
    os.mkfifo(home / ".hermes" / ".env")
    outcome = run_install("hermes", key_mode="env")
    assert outcome.changed and "add RUNAPI_API_KEY=sk-... to" in " ".join(outcome.messages)


def test_a_file_too_large_for_a_config_is_refused(home: Path) -> None:
    path = config_path("cursor")
    path.parent.mkdir()
    with path.open("wb") as handle:
        handle.truncate(MAX_CONFIG_BYTES + 1)  # sparse: nothing is really written
    with pytest.raises(InstallError, match=r"10\.0 MiB, more than the 10 MiB"):
        run_install("cursor")
    assert path.stat().st_size == MAX_CONFIG_BYTES + 1 and not backups(path)


CONCURRENT_INSTALL = """
import sys, time
from pathlib import Path
import runapi_mcp.config, runapi_mcp.commands.install  # imported before the start: the installs themselves race
from runapi_mcp.cli import main
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not go.exists():
    time.sleep(0.001)
sys.exit(main(["install", *sys.argv[3:]]))
"""


@pytest.mark.timeout(60)
def test_eight_concurrent_installs_keep_every_entry(home: Path, tmp_path: Path) -> None:
    """8 processes, released together, each add another name to one file: all 8 entries are there after
    (without the lock, each read the file before the others wrote it, and most entries were lost)."""
    path = config_path("cursor")
    seed("cursor", path)
    go = tmp_path / "go"
    names = [f"server{i}" for i in range(8)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_INSTALL, str(tmp_path / f"ready{i}"), str(go), "cursor", "--name", name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for i, name in enumerate(names)
    ]
    wait_until(lambda: len(list(tmp_path.glob("ready*"))) == len(names), "every install at the start line", 40)
    go.touch()
    results = [(p.wait(timeout=40), *p.communicate()) for p in procs]
    assert all(code == 0 for code, _, _ in results), results
    assert all("Cursor: added" in out for _, out, _ in results), results
    servers = servers_in("cursor", path)
    assert set(servers) == {"other", *names}, f"lost: {set(names) - set(servers)}"
    assert len(backups(path)) == 8, "each install backed up the file as it found it"
    assert not list(path.parent.glob("*.lock")) and not list(path.parent.glob(".*.tmp")), "no lock or temp left"


@pytest.mark.parametrize("lock_file", [False, True], ids=["directory-lock", "lock-file-fallback"])
def test_eight_installs_in_threads_keep_every_entry(
    home: Path, monkeypatch: pytest.MonkeyPatch, lock_file: bool
) -> None:
    """The same in one process, on Hermes' YAML; and where a directory cannot be locked (NFS emulates flock with
    fcntl locks, which a directory opened for reading cannot take), with a lock file in it instead."""
    real_try_lock = install_files._try_lock

    def no_directory_locks(fd: int) -> bool:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EBADF, "Bad file descriptor")
        return real_try_lock(fd)

    if lock_file:
        monkeypatch.setattr(install_files, "_try_lock", no_directory_locks)
    path = config_path("hermes")
    seed("hermes", path)
    names = [f"t{i}" for i in range(8)]
    barrier = threading.Barrier(len(names))
    errors: list[BaseException] = []

    def one(name: str) -> None:
        barrier.wait()
        try:
            run_install("hermes", name=name)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert set(hermes_servers(path.read_text())) == {"github", "fs", *names}
    assert (path.parent / ".runapi-mcp-install.lock").exists() == lock_file


def test_an_install_that_cannot_get_the_lock_gives_up_saying_so(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install_files, "LOCK_TIMEOUT_S", 0.2)
    path = config_path("cursor")
    seed("cursor", path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process's install, as far as this one can tell
        with pytest.raises(InstallError, match="another runapi-mcp install"):
            run_install("cursor")
    finally:
        os.close(fd)
    assert "runapi" not in path.read_text()
    assert run_install("cursor").changed, "once the lock is free, it goes through"


# -- Hermes: duplicate keys and ruamel.yaml's round trip -----------------------------------------------------

HERMES_TWO_BLOCKS = """\
mcp_servers:
  github:
    command: npx
model:
  default: x
mcp_servers:
  fs:
    command: npx
"""


def test_hermes_duplicate_mcp_servers_keys_are_refused(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Hermes (PyYAML) reads only the last of two same keys: an entry in the first block would never start."""
    path = config_path("hermes")
    path.parent.mkdir()
    path.write_text(HERMES_TWO_BLOCKS)
    assert main(["install", "hermes"]) == 1
    err = capsys.readouterr().err
    assert "mcp_servers appears twice (lines 1 and 6)" in err and "reads only the last" in err, err
    assert path.read_text() == HERMES_TWO_BLOCKS and not backups(path)
    with pytest.raises(YamlDuplicateKeyError):
        hermes_servers(HERMES_TWO_BLOCKS)
    with pytest.raises(YamlDuplicateKeyError, match=r"mcp_servers\.fs appears twice"):
        hermes_servers("mcp_servers:\n  fs:\n    command: a\n  fs:\n    command: b\n")


HERMES_VARIED = """\
---
# a file edited by hand over time
model:
  default: 'anthropic/claude-sonnet'   # single quotes
  provider: "auto"
  \n  base_url: https://openrouter.ai/api/v1
defaults: &defaults
  timeout: 120
toolsets:
  - web
  - terminal
note: "a long line that a YAML writer folding at eighty columns would break in two, which must not happen here"
mcp_servers:
    github:
        <<: *defaults
        command: npx
        args:
        - -y
        - "@modelcontextprotocol/server-github"
    # fs:
    #     command: npx

# ---- display ----
display:
  compact: true
"""


def test_hermes_round_trip_keeps_comments_order_quoting_and_layout(home: Path) -> None:
    """Quoting styles, comments, a line of spaces, two indentations, an anchor, a long line, the `---`: all stay,
    and the entry takes the servers block's own indentation, before the comments that close it."""
    path = config_path("hermes")
    path.parent.mkdir()
    path.write_text(HERMES_VARIED)
    run_install("hermes", trust="full")
    new = path.read_text()
    block = f'    runapi:\n        command: "{LAUNCH.command}"\n        args: ["serve"]\n'
    assert block in new
    assert new.replace(block, "", 1) == HERMES_VARIED, "one block added; every other byte kept"
    assert new.index(block) < new.index("    # fs:"), "before the comments that end the block"
    assert hermes_servers(new)["github"]["timeout"] == 120, "the merge key still applies"


def test_hermes_existing_entry_keeps_the_comments_around_what_changed(home: Path) -> None:
    path = config_path("hermes")
    path.parent.mkdir()
    path.write_text(
        "mcp_servers:\n"
        "  runapi:\n"
        "    command: runapi-mcp\n"
        "    args:\n"
        "      - serve\n"
        "      - --old-flag\n"
        "\n"
        "    # slow pictures\n"
        "    timeout: 300\n"
        "# ---- display ----\n"
        "display: {}\n"
    )
    run_install("hermes", key_mode="env", trust="full")
    assert path.read_text() == (
        "mcp_servers:\n"
        "  runapi:\n"
        f'    command: "{LAUNCH.command}"\n'
        '    args: ["serve"]\n'
        "\n"
        "    # slow pictures\n"
        "    timeout: 300\n"
        "    env:\n"
        '      RUNAPI_API_KEY: "${RUNAPI_API_KEY}"\n'
        "# ---- display ----\n"
        "display: {}\n"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mcp_servers:   # none yet\n\n# next\nx: 1\n", "mcp_servers:   # none yet\n{block}\n# next\nx: 1\n"),
        ("mcp_servers: ~\nx: 1\n", "mcp_servers:\n{block}x: 1\n"),
        ("mcp_servers: {}\n# next\nx: 1\n", "mcp_servers:\n{block}# next\nx: 1\n"),
        ("# only a comment\n", "# only a comment\n\nmcp_servers:\n{block}"),
        ("", "mcp_servers:\n{block}"),
    ],
)
def test_hermes_empty_servers_blocks_are_filled_in(text: str, expected: str) -> None:
    block = f'  runapi:\n    command: "{LAUNCH.command}"\n    args: ["serve"]\n'
    assert hermes_updated(text, "runapi", LAUNCH, KeyPlan(), ask=False) == expected.format(block=block)


# -- Claude Code through its CLI ------------------------------------------------------------------------------


def test_claude_code_uses_the_cli_and_is_idempotent(home: Path) -> None:
    calls: list[list[str]] = []
    path = config_path("claude-code")
    path.write_text(json.dumps({"mcpServers": {"other": {"command": "x"}}, "projects": {}}))

    def fake_claude(argv: list[str]) -> subprocess.CompletedProcess[str]:
        # What `claude mcp add-json -s user` does to ~/.claude.json.
        calls.append(argv)
        data = json.loads(path.read_text())
        if argv[2] == "add-json":
            data["mcpServers"][argv[5]] = json.loads(argv[6])
        else:
            del data["mcpServers"][argv[5]]
        path.write_text(json.dumps(data))
        return subprocess.CompletedProcess(argv, 0, "", "")

    opts: dict[str, Any] = {"claude_cli": "/usr/local/bin/claude", "run": fake_claude}
    first = run_install("claude-code", **opts)
    assert first.changed and calls == [
        [
            "/usr/local/bin/claude",
            "mcp",
            "add-json",
            "-s",
            "user",
            "runapi",
            json.dumps({"type": "stdio", "command": LAUNCH.command, "args": ["serve"]}),
        ]
    ]
    assert len(backups(path)) == 1
    assert not run_install("claude-code", **opts).changed and len(calls) == 1
    moved = install(Options(client="claude-code", launch=Launch("/new/runapi-mcp", ("serve",)), **opts))
    assert moved.changed and [c[2] for c in calls[1:]] == ["remove", "add-json"]
    assert json.loads(path.read_text())["mcpServers"]["other"] == {"command": "x"}


def test_claude_code_cli_failure_is_reported(home: Path) -> None:
    def failing(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 1, "", "MCP server runapi already exists in user config")

    with pytest.raises(InstallError, match="already exists"):
        run_install("claude-code", claude_cli="/usr/local/bin/claude", run=failing)


def test_claude_code_cli_found_on_path(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "calls.jsonl"
    script = tmp_path / "bin" / "claude"
    script.write_text(
        f"#!{sys.executable}\nimport json, sys\nopen({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    script.chmod(0o755)
    assert main(["install", "claude-code", "--api-key-env"]) == 0
    [argv] = [json.loads(line) for line in log.read_text().splitlines()]
    assert argv[:5] == ["mcp", "add-json", "-s", "user", "runapi"]
    assert json.loads(argv[5])["args"] == ["serve"] and "env" not in json.loads(argv[5])
    assert "claude mcp add-json" in capsys.readouterr().out


def test_bad_names_are_usage_errors(home: Path) -> None:
    assert main(["install", "cursor", "--name", "run api"]) == 2
    assert not config_path("cursor").exists()


# -- packaging metadata ---------------------------------------------------------------------------------------


def test_license_metadata() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "MIT" and pyproject["project"]["license-files"] == ["LICENSE"]
    assert any(r.replace(" ", "").startswith("setuptools>=77") for r in pyproject["build-system"]["requires"])
    assert not any(c.startswith("License ::") for c in pyproject["project"]["classifiers"]), "PEP 639 forbids both"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 runapi-mcp contributors" in text


