"""Settings: flags over environment over RunAPI's config file over defaults; bad values are named."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runapi_mcp.client import DEFAULT_BASE_URL
from runapi_mcp.config import ConfigError, load_settings


def test_defaults_without_anything(tmp_path: Path) -> None:
    settings = load_settings(environ={}, config_file=tmp_path / "missing.json")
    assert settings.api_key is None and settings.key() is None
    assert settings.base_url == DEFAULT_BASE_URL
    assert settings.wait_s == 50
    assert settings.allowed_dirs == (Path.home().resolve(),)
    assert settings.home.is_absolute()


@pytest.mark.parametrize("names", [("apiKey", "baseUrl"), ("api_key", "base_url")])
def test_runapi_config_file_is_the_fallback(tmp_path: Path, names: tuple[str, str]) -> None:
    file = tmp_path / "config.json"
    file.write_text(json.dumps({names[0]: "sk-from-file", names[1]: "http://127.0.0.1:9/"}))
    settings = load_settings(environ={}, config_file=file)
    assert settings.key() == "sk-from-file" and settings.base_url == "http://127.0.0.1:9"
    env_wins = load_settings(environ={"RUNAPI_API_KEY": "sk-env"}, config_file=file)
    assert env_wins.key() == "sk-env" and env_wins.base_url == "http://127.0.0.1:9"
    flag_wins = load_settings({"api_key": "sk-flag"}, environ={"RUNAPI_API_KEY": "sk-env"}, config_file=file)
    assert flag_wins.key() == "sk-flag"


def test_broken_config_file_is_ignored(tmp_path: Path) -> None:
    file = tmp_path / "config.json"
    file.write_text("{not json")
    assert load_settings(environ={}, config_file=file).api_key is None


def test_environment_values(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    env = {
        "RUNAPI_MCP_HOME": str(tmp_path / "home"),
        "RUNAPI_MCP_ALLOWED_DIRS": f"{a}{os.pathsep}{b}",
        "RUNAPI_MCP_WAIT_S": "12.5",
        "RUNAPI_MCP_LOG_LEVEL": "debug",
    }
    settings = load_settings(environ=env, config_file=tmp_path / "none")
    assert settings.home == (tmp_path / "home").resolve()
    assert settings.images_dir == settings.home / "images"
    assert settings.allowed_dirs == (a.resolve(), b.resolve())
    assert settings.wait_s == 12.5 and settings.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"RUNAPI_MCP_WAIT_S": "soon"}, "RUNAPI_MCP_WAIT_S"),
        ({"RUNAPI_MCP_WAIT_S": "-3"}, "RUNAPI_MCP_WAIT_S"),
        ({"RUNAPI_BASE_URL": "runapi.ai"}, "RUNAPI_BASE_URL"),
        ({"RUNAPI_MCP_LOG_LEVEL": "LOUD"}, "RUNAPI_MCP_LOG_LEVEL"),
        ({"RUNAPI_MCP_RESOURCE_LINKS": "maybe"}, "RUNAPI_MCP_RESOURCE_LINKS: must be on or off, got 'maybe'"),
    ],
)
def test_bad_values_name_the_setting(tmp_path: Path, env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_settings(environ=env, config_file=tmp_path / "none")


def test_key_is_secret_and_redacted(tmp_path: Path) -> None:
    settings = load_settings(environ={"RUNAPI_API_KEY": "sk-very-secret-123"}, config_file=tmp_path / "none")
    assert "sk-very-secret-123" not in repr(settings) and "sk-very-secret-123" not in str(settings)
    assert settings.redact("Bearer sk-very-secret-123 failed") == "Bearer *** failed"


def test_the_database_url_is_a_secret_postgresql_url(tmp_path: Path) -> None:
    url = "postgresql://runapi:pa%40ss-w0rd@db.internal:5432/tasks?sslmode=require"
    settings = load_settings(environ={"RUNAPI_MCP_DATABASE_URL": f"  {url} "}, config_file=tmp_path / "none")
    assert settings.database == url and "w0rd" not in repr(settings)
    assert settings.store_location == "postgresql://runapi:***@db.internal:5432/tasks?sslmode=require"
    assert settings.redact("login as runapi with pa@ss-w0rd, or pa%40ss-w0rd") == "login as runapi with ***, or ***"
    assert load_settings(environ={"RUNAPI_MCP_DATABASE_URL": " "}, config_file=tmp_path / "none").database is None
    assert load_settings(environ={}, config_file=tmp_path / "none").store_location.endswith("tasks.sqlite3")
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"RUNAPI_MCP_DATABASE_URL": "mysql://u:hunter22@h/db"}, config_file=tmp_path / "none")
    assert "RUNAPI_MCP_DATABASE_URL" in str(caught.value) and "postgresql://" in str(caught.value)
    assert "hunter22" not in str(caught.value)


@pytest.mark.parametrize("argv", [["--wait-s", "5", "serve"], ["serve", "--wait-s", "5"], ["--wait-s", "5"]])
def test_cli_flags_work_before_or_after_serve(argv: list[str]) -> None:
    from runapi_mcp.cli import build_parser
    from runapi_mcp.commands.options import settings_overrides

    assert settings_overrides(build_parser().parse_args(argv)) == {"wait_s": 5.0}


@pytest.mark.parametrize(("value", "links"), [("on", True), ("off", False), (" OFF ", False), ("true", True), ("0", False)])
def test_resource_links_is_on_or_off(tmp_path: Path, value: str, links: bool) -> None:
    assert load_settings(environ={}, config_file=tmp_path / "none").resource_links is True
    assert load_settings(environ={"RUNAPI_MCP_RESOURCE_LINKS": value}, config_file=tmp_path / "none").resource_links is links
    from runapi_mcp.cli import build_parser
    from runapi_mcp.commands.options import settings_overrides

    flags = settings_overrides(build_parser().parse_args(["serve", "--resource-links", value]))
    assert load_settings(flags, environ={}, config_file=tmp_path / "none").resource_links is links


@pytest.mark.parametrize(
    ("base_url", "kept"),
    [
        ("https://runapi.ai", True),
        ("https://proxy.example:8443", True),
        ("http://127.0.0.1:54321", False),
        ("http://localhost:8080", False),
        ("http://[::1]:9000", False),
        ("http://127.0.0.2", False),
    ],
)
def test_learned_durations_are_kept_for_remote_upstreams_only(tmp_path: Path, base_url: str, kept: bool) -> None:
    settings = load_settings({"home": str(tmp_path), "base_url": base_url}, environ={}, config_file=tmp_path / "x")
    assert settings.remembers_durations is kept


def test_runapi_config_file_that_is_no_regular_file_is_skipped(tmp_path: Path) -> None:
    """A FIFO (or /dev/zero) in place of ~/.config/runapi/config.json never hangs or floods a command."""
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    assert load_settings(environ={}, config_file=fifo).api_key is None
    assert load_settings(environ={}, config_file=Path("/dev/zero")).api_key is None
