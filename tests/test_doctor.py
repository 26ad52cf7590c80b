"""``runapi-mcp doctor``: a broken setup gets FAIL lines and exit 1, a good one (against the simulator) passes,
and the key is never printed."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from runapi_mcp.cli import main
from runapi_mcp.commands.doctor import Report, diagnose, jsonc_loads
from runapi_mcp.commands.install import install
from runapi_mcp.commands.install.clients import KEY_VAR, config_path
from runapi_mcp.commands.install.launch import server_launch
from runapi_mcp.commands.install.request import Options
from runapi_mcp.simulator import Simulator
from runapi_mcp.tasks import TaskRecord
from runapi_mcp.tasks.sqlite_store import SCHEMA_VERSION, SQLiteTaskStore
from tests.support import SIM_KEY, free_port

LITERAL = "sk-in-a-config-file-7d2e9a1b4c6f8e0d"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh HOME (client configs, ~/.config/runapi) with no key anywhere; the cwd has no project configs."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("HOME", str(path))
    for var in ("XDG_CONFIG_HOME", "APPDATA", "LOCALAPPDATA", "CLAUDE_CONFIG_DIR", "HERMES_HOME", KEY_VAR):
        monkeypatch.delenv(var, raising=False)
    for var in ("RUNAPI_BASE_URL", "RUNAPI_MCP_HOME", "RUNAPI_MCP_ALLOWED_DIRS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(path)
    yield path


def lines_of(report: Report) -> dict[str, str]:
    """Each check's name to its status (the last one when a name repeats)."""
    return {check.name: check.status for check in report.checks}


def doctor(overrides: dict[str, Any], environ: dict[str, str], **kw: Any) -> Report:
    report: Report = anyio.run(lambda: diagnose(overrides, environ=environ, request_s=3, **kw))
    return report


def test_a_broken_setup_fails_with_what_to_fix(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = home / "not-a-dir"
    blocker.write_text("a file where the home's parent should be")
    cursor = config_path("cursor")
    cursor.parent.mkdir()
    cursor.write_text('{"mcpServers": {"runapi": {"command": "/gone/runapi-mcp"}')  # cut off
    desktop = config_path("claude-desktop")
    desktop.parent.mkdir(parents=True)
    desktop.write_text(json.dumps({"mcpServers": {"runapi": {"command": "/gone/runapi-mcp", "args": ["serve"]}}}))

    code = main(["doctor", "--home", str(blocker / "home"), "--base-url", f"http://127.0.0.1:{free_port()}"])
    out = capsys.readouterr().out
    assert code == 1
    fails = {line.split(":")[0].split(None, 1)[1] for line in out.splitlines() if line.startswith("FAIL")}
    assert {"key", "runapi", "home"} <= fails, out
    assert any(name.startswith("cursor ~/.cursor/mcp.json") for name in fails), out
    assert any(name.startswith("claude-desktop") and "runapi" in name for name in fails), "its command is gone"
    for line in out.splitlines():
        if line.startswith(("FAIL", "WARN")) and not line.startswith("WARN  key works"):
            assert "Fix: " in line, f"says what to fix: {line}"
    assert "is not valid JSON" in out and "does not exist" in out and "cannot reach" in out


def test_a_good_setup_against_the_simulator(home: Path, sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_VAR, SIM_KEY)
    install(Options(client="cursor", key_mode="env"))  # the real command of this install
    data = home / "data"
    report = doctor({"base_url": sim.base_url, "home": str(data)}, {KEY_VAR: SIM_KEY})
    status = lines_of(report)
    assert not report.failed, list(report.lines())
    assert status["key"] == status["key works"] == status["runapi"] == "OK"
    assert status["home"] == status["task store"] == status["allowed dirs"] == "OK"
    [entry] = [c for c in report.checks if c.name.startswith("cursor ~/.cursor/mcp.json [user] runapi")]
    assert entry.status == "OK" and "${env:RUNAPI_API_KEY}" in entry.detail
    assert "clients" not in status, "a client is set up"
    assert any(r.path == "/api/v1/me/balance" for r in sim.requests), "the key was really tried"
    # The contract, checked live with read-only calls: the schedules, a nested quote; nothing created.
    assert status["contract"] == status["models"] == "OK" and "new models" not in status
    contract = next(c for c in report.checks if c.name == "contract")
    assert "runapi-core 0.10.1" in contract.detail
    assert {(r.method, r.path) for r in sim.requests} <= {
        ("GET", "/api/v1/me/balance"), ("GET", "/api/v1/price_schedules"), ("POST", "/api/v1/price_quotes")
    }
    [quote] = [r for r in sim.requests if r.path == "/api/v1/price_quotes"]
    assert quote.json == {
        "service": "gpt_image_2",
        "action": "text_to_image",
        "model": "gpt-image-2",
        "params": {"prompt": "runapi-mcp doctor", "aspect_ratio": "1:1", "output_resolution": "1k"},
    }


def test_the_doctor_says_what_drifted(home: Path, sim: Simulator) -> None:
    """Against a RunAPI that answers the earlier way (flat quotes, no catalog_status), and with models taken out
    or unknown here, the doctor says plainly what differs."""
    sim.configure(legacy=True)
    try:
        report = doctor({"base_url": sim.base_url, "home": str(home / "d")}, {KEY_VAR: SIM_KEY})
    finally:
        sim.configure(legacy=False)
    status = lines_of(report)
    assert report.failed and status["contract"] == "FAIL" and status["key works"] == "OK"
    contract = next(c for c in report.checks if c.name == "contract")
    assert "runapi-core 0.10.1" in contract.detail and "carry no catalog_status" in contract.detail
    assert "a quote in the nested form" in contract.detail and "Fix: " in contract.line()

    sim.set_catalog_status("gpt-image-2.5-sunburst", "disabled")
    sim.set_catalog_status("flux-kontext-pro", "maintenance", action="text_to_image")
    sim.configure(extra_schedule_rows=[{"service": "gpt_image_3", "action": "text_to_image", "model": "gpt-image-3"}])
    try:
        marked = doctor({"base_url": sim.base_url, "home": str(home / "d")}, {KEY_VAR: SIM_KEY})
    finally:
        sim.set_catalog_status("gpt-image-2.5-sunburst", "active")
        sim.set_catalog_status("flux-kontext-pro", "active")
        sim.configure(extra_schedule_rows=[])
    new = next(c for c in marked.checks if c.name == "new models")
    assert new.status == "WARN" and "gpt-image-3 (text_to_image)" in new.detail
    models = next(c for c in marked.checks if c.name == "models")
    assert models.status == "WARN" and lines_of(marked)["contract"] == "OK"
    assert "gpt-image-2.5-sunburst (disabled on edit_image, disabled on text_to_image)" in models.detail
    assert "flux-kontext-pro (maintenance on text_to_image)" in models.detail


def test_a_refused_key_and_an_offline_run(home: Path, sim: Simulator) -> None:
    refused = doctor({"base_url": sim.base_url, "home": str(home / "d")}, {KEY_VAR: "sk-wrong-key-0123456789"})
    assert lines_of(refused)["key works"] == "FAIL" and lines_of(refused)["runapi"] == "OK"
    assert "refused the key" in next(c.detail for c in refused.checks if c.name == "key works")
    sim.clear_log()
    offline = doctor({"base_url": sim.base_url, "home": str(home / "d")}, {KEY_VAR: SIM_KEY}, offline=True)
    assert lines_of(offline)["runapi"] == "WARN" and not sim.requests


def test_the_key_is_never_printed(
    home: Path, sim: Simulator, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    desktop = config_path("claude-desktop")
    desktop.parent.mkdir(parents=True)
    entry = {"command": "/gone/runapi-mcp", "env": {KEY_VAR: LITERAL}}
    desktop.write_text(json.dumps({"mcpServers": {"runapi": entry}}))
    monkeypatch.setenv(KEY_VAR, SIM_KEY)
    main(["doctor", "--home", str(home / "d"), "--base-url", sim.base_url])
    main(["doctor", "--home", str(home / "d"), "--base-url", sim.base_url, "--api-key", "sk-wrong-key-0123456789"])
    out = capsys.readouterr().out
    assert "written in the file" in out
    for secret in (SIM_KEY, LITERAL, "sk-wrong-key-0123456789"):
        assert secret not in out


def test_placeholder_keys_are_caught(home: Path) -> None:
    report = doctor({"home": str(home / "d")}, {KEY_VAR: "${RUNAPI_API_KEY}"}, offline=True)
    assert lines_of(report)["key"] == "FAIL"
    hermes = config_path("hermes")
    hermes.parent.mkdir()
    install(Options(client="hermes", key_mode="env"))
    check = next(c for c in doctor({"home": str(home / "d")}, {}, offline=True).checks if c.name.startswith("hermes"))
    assert check.status == "FAIL" and "would pass the text ${RUNAPI_API_KEY}" in check.detail
    (hermes.parent / ".env").write_text(f"{KEY_VAR}=sk-x\n")
    check = next(c for c in doctor({"home": str(home / "d")}, {}, offline=True).checks if c.name.startswith("hermes"))
    assert check.status == "OK" and "asks before each paid call (RUNAPI_MCP_CONFIRM_ABOVE_CENTS=0" in check.detail


def test_no_key_in_this_shell_warns_when_the_clients_carry_one(home: Path) -> None:
    """The key lives in the clients' entries (Hermes' .env, a literal in Cursor's file): the server gets one, so
    a shell without it is a WARN saying where it is, not a FAIL; with no entry carrying one it stays a FAIL."""
    assert lines_of(doctor({"home": str(home / "d")}, {}, offline=True))["key"] == "FAIL"
    (home / ".hermes").mkdir()
    (home / ".hermes" / ".env").write_text(f"{KEY_VAR}=sk-x-0123456789abcdef\n")
    install(Options(client="hermes", key_mode="env"))
    cursor = config_path("cursor")
    cursor.parent.mkdir()
    cursor.write_text(json.dumps({"mcpServers": {"runapi": {"command": server_launch().command, "args": ["serve"],
                                                            "env": {KEY_VAR: LITERAL}}}}))
    report = doctor({"home": str(home / "d")}, {}, offline=True)
    [key] = [c for c in report.checks if c.name == "key"]
    assert key.status == "WARN" and not report.failed, list(report.lines())
    assert "not set in this shell" in key.detail and "hermes runapi" in key.detail and "cursor runapi" in key.detail
    assert f"export {KEY_VAR}" in key.fix
    assert LITERAL not in "\n".join(report.lines())


def test_hermes_entries_say_whether_hermes_asks_before_paid_calls(home: Path) -> None:
    """Hermes reads no `trust` key: an entry an earlier install wrote with one (and no threshold) is a WARN."""
    hermes = config_path("hermes")
    hermes.parent.mkdir()
    command = server_launch().command
    hermes.write_text(f'mcp_servers:\n  runapi:\n    command: "{command}"\n    args: ["serve"]\n    trust: untrusted\n')

    def hermes_check() -> Any:
        return next(c for c in doctor({"home": str(home / "d")}, {}, offline=True).checks if c.name.startswith("hermes"))

    stale = hermes_check()
    assert stale.status == "WARN" and "does not read 'trust: untrusted'" in stale.detail
    assert "runapi-mcp install hermes" in stale.fix
    install(Options(client="hermes"))
    assert "asks before each paid call" in hermes_check().detail
    install(Options(client="hermes", trust="full"))
    assert "paid calls run without asking" in hermes_check().detail


def test_hermes_with_two_mcp_servers_blocks_fails(home: Path) -> None:
    """The entry sits in the first of two mcp_servers: blocks, which Hermes (PyYAML: the last key wins) never
    reads: the doctor says so instead of reporting it installed."""
    hermes = config_path("hermes")
    hermes.parent.mkdir()
    runapi = server_launch()
    hermes.write_text(
        "mcp_servers:\n"
        "  runapi:\n"
        f'    command: "{runapi.command}"\n'
        f"    args: {json.dumps(list(runapi.args))}\n"
        "model:\n"
        "  default: x\n"
        "mcp_servers:\n"
        "  github:\n"
        "    command: npx\n"
    )
    [check] = [c for c in doctor({"home": str(home / "d")}, {}, offline=True).checks if c.name.startswith("hermes")]
    assert check.status == "FAIL", check  # the one line for the file: no entry is reported as installed
    assert "mcp_servers appears twice (lines 1 and 7)" in check.detail and "reads only the last" in check.detail
    assert "merge the two mcp_servers: blocks" in check.fix

    hermes.write_text("mcp_servers:\n  runapi: [unclosed\n")
    [check] = [c for c in doctor({"home": str(home / "d")}, {}, offline=True).checks if c.name.startswith("hermes")]
    assert check.status == "FAIL" and "not valid YAML" in check.detail and "Hermes cannot read it" in check.detail


def test_the_task_store_layout(home: Path) -> None:
    data = home / "d"
    data.mkdir()

    async def make_store(records: int = 0) -> None:
        store = await SQLiteTaskStore.open(data / "tasks.sqlite3")
        for n in range(records):
            await store.save(
                TaskRecord(idempotency_key=f"k{n}", model="gpt-image-2", service="s", action="a", route="/r")
            )
        await store.close()

    anyio.run(make_store)
    check = next(c for c in doctor({"home": str(data)}, {}, offline=True).checks if c.name == "task store")
    assert check.status == "OK" and f"layout {SCHEMA_VERSION}, 0 tasks" in check.detail
    anyio.run(make_store, 1)
    check = next(c for c in doctor({"home": str(data)}, {}, offline=True).checks if c.name == "task store")
    assert check.status == "OK" and check.detail.endswith(f"layout {SCHEMA_VERSION}, 1 task"), check.detail
    db = sqlite3.connect(data / "tasks.sqlite3")
    db.execute("PRAGMA user_version = 99")
    db.close()
    check = next(c for c in doctor({"home": str(data)}, {}, offline=True).checks if c.name == "task store")
    assert check.status == "FAIL" and "newer" in check.detail
    (data / "tasks.sqlite3").unlink()
    (data / "tasks.sqlite3").write_bytes(b"not a database at all, just text" * 10)
    check = next(c for c in doctor({"home": str(data)}, {}, offline=True).checks if c.name == "task store")
    assert check.status == "FAIL" and "cannot be read" in check.detail


def test_settings_errors_and_missing_allowed_dirs(home: Path) -> None:
    report = doctor({"wait_s": "forever"}, {}, offline=True)
    assert lines_of(report)["settings"] == "FAIL"
    report = doctor({"home": str(home / "d"), "allowed_dirs": str(home / "nowhere")}, {}, offline=True)
    assert lines_of(report)["allowed dirs"] == "WARN"


def test_vscode_jsonc_is_read() -> None:
    text = (
        '{\n  // mine\n  "servers": {"a": {"command": "x", "args": ["//not a comment", "/*nor*/",],},},\n  /* end */\n}'
    )
    assert jsonc_loads(text) == {"servers": {"a": {"command": "x", "args": ["//not a comment", "/*nor*/"]}}}


def test_an_entry_into_uvs_cache_warns(home: Path) -> None:
    """What `uvx runapi-mcp install` wrote before it wrote uvx entries: a path uv may clean away."""
    cached = home / ".cache/uv/archive-v0/3cQ9fX2kLm1/bin/runapi-mcp"
    cached.parent.mkdir(parents=True)
    cached.write_text("#!/bin/sh\n")
    cursor = config_path("cursor")
    cursor.parent.mkdir()
    cursor.write_text(json.dumps({"mcpServers": {"runapi": {"command": str(cached), "args": ["serve"]}}}))
    checks = doctor({"home": str(home / "d")}, {}, offline=True).checks
    check = next(c for c in checks if c.name.startswith("cursor") and "[user]" in c.name)
    assert check.status == "WARN" and "uv's cache" in check.detail, check
    assert "rerun runapi-mcp install" in check.fix
