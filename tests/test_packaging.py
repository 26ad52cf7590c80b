"""Packaging: the Claude Desktop bundle (``.mcpb``) says what it was built for and runs there; the manifest's tools
are the server's; ``server.json`` (the MCP Registry's entry) says of each variable what the server does with it.

The packed bundle is built by ``scripts/build_mcpb.py`` (its dependencies kept in pytest's cache, so a rebuild
takes seconds), started with a plain CPython of the version it declares, and shown to a Python of another minor
version: its manifest refuses it, and started anyway it dies at the compiled parts it carries.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from runapi_mcp import __version__
from runapi_mcp.commands.install.clients import KEY_VAR
from runapi_mcp.config import load_settings, settings_from_environment
from tests.support import Harness

ROOT = Path(__file__).resolve().parents[1]


def _load_build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_mcpb", ROOT / "scripts" / "build_mcpb.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_mcpb"] = module
    spec.loader.exec_module(module)
    return module


build_mcpb = _load_build_script()


def template() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "manifest.json").read_text())
    return data


# -- the manifest and server.json agree with the server ------------------------------------------------------


@pytest.mark.anyio
async def test_manifest_tools_are_the_servers_tools(harness: Harness) -> None:
    listed = sorted(tool.name for tool in (await harness.client.list_tools()).tools)
    declared = [tool["name"] for tool in template()["tools"]]
    assert sorted(declared) == listed, "every tool the server has, and no other"
    assert len(set(declared)) == len(declared) and all(tool["description"] for tool in template()["tools"])


def test_desktop_extension_manifest() -> None:
    manifest = template()
    assert manifest["version"] == __version__ and manifest["server"]["type"] == "python"
    config = manifest["server"]["mcp_config"]
    assert config["args"] == ["-m", "runapi_mcp", "serve"]
    assert config["env"][KEY_VAR] == "${user_config.api_key}"
    assert config["env"]["PYTHONPATH"] == "${__dirname}/server/lib"
    api_key = manifest["user_config"]["api_key"]
    assert api_key["sensitive"] is True and api_key["required"] is True and api_key["type"] == "string"
    assert manifest["server"]["entry_point"] == "server/lib/runapi_mcp/__main__.py"


def test_registry_server_json_matches_the_package() -> None:
    server = json.loads((ROOT / "server.json").read_text())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert server["$schema"].startswith("https://static.modelcontextprotocol.io/schemas/")
    assert re.fullmatch(r"io\.github\.[A-Za-z0-9-]+/runapi-mcp", server["name"])
    assert 1 <= len(server["description"]) <= 100, "the registry's limit"
    assert server["version"] == __version__ == pyproject["project"]["version"]
    [package] = server["packages"]
    assert package["registryType"] == "pypi" and package["identifier"] == pyproject["project"]["name"]
    assert package["version"] == __version__ and package["transport"] == {"type": "stdio"}
    variables = {v["name"]: v for v in package["environmentVariables"]}
    known = {s.variable for s in settings_from_environment().values()}
    assert set(variables) <= known, "only variables the server reads"
    assert variables[KEY_VAR]["isSecret"] is True
    # The registry verifies PyPI ownership by this line in the package description (the README).
    assert f"mcp-name: {server['name']}" in (ROOT / "README.md").read_text()
    owner = server["name"].split("/")[0].removeprefix("io.github.")
    assert server["repository"]["url"] == f"https://github.com/{owner}/runapi-mcp"
    assert pyproject["project"]["urls"]["Repository"] == server["repository"]["url"]


def test_server_json_marks_required_only_what_the_server_cannot_do_without(tmp_path: Path) -> None:
    """Its text and its isRequired agree; the key is optional because the server also reads RunAPI's config file
    (a registry client would otherwise refuse to start it without the variable)."""
    [package] = json.loads((ROOT / "server.json").read_text())["packages"]
    for variable in package["environmentVariables"]:
        optional = "optional" in variable["description"].lower() or "default" in variable
        assert not (optional and variable.get("isRequired")), f"{variable['name']}: says optional, marked required"
    key = next(v for v in package["environmentVariables"] if v["name"] == KEY_VAR)
    assert key["isRequired"] is False and "optional" in key["description"]
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"apiKey": "sk-from-the-config-file-0123456789"}))
    settings = load_settings({}, environ={}, config_file=config)
    assert settings.key() == "sk-from-the-config-file-0123456789", "no RUNAPI_API_KEY, and still a key"


# -- what each bundle declares, and how a host reads it -------------------------------------------------------


def test_a_bundle_declares_the_python_and_platform_it_was_built_for() -> None:
    built = build_mcpb.Interpreter("/x/python3.12", (3, 12, 4), "darwin", "arm64", "cpython")
    manifest = build_mcpb.bundle_manifest(template(), built)
    assert manifest["compatibility"]["platforms"] == ["darwin"]
    assert manifest["compatibility"]["runtimes"] == {"python": ">=3.12,<3.13"}
    assert {k: v for k, v in manifest.items() if k != "compatibility"} == {
        k: v for k, v in template().items() if k != "compatibility"
    }, "all else as the template says"
    assert build_mcpb.bundle_name("0.1.0", built) == "runapi-mcp-0.1.0-cp312-darwin-arm64.mcpb"


@pytest.mark.parametrize(
    ("version", "spec", "ok"),
    [
        ((3, 11, 7), ">=3.11,<3.12", True),
        ((3, 11, 0), ">=3.11,<3.12", True),
        ((3, 12, 1), ">=3.11,<3.12", False),
        ((3, 10, 14), ">=3.11,<3.12", False),
        ((3, 13, 0), ">=3.11", True),
        ((3, 11, 7), ">=3.8 <4.0", True),
        ((3, 11, 7), "==3.11", True),
        ((3, 12, 0), "==3.11", False),
    ],
)
def test_python_ranges_read_as_a_host_reads_them(version: tuple[int, int, int], spec: str, ok: bool) -> None:
    assert build_mcpb.satisfies(version, spec) is ok


def test_a_host_refuses_a_bundle_elsewhere() -> None:
    built = build_mcpb.Interpreter("/x/python3.11", (3, 11, 7), "linux", "x86_64", "cpython")
    manifest = build_mcpb.bundle_manifest(template(), built)
    assert build_mcpb.compatibility_problems(manifest, "linux", (3, 11, 2)) == []
    assert build_mcpb.compatibility_problems(manifest, "linux", (3, 12, 1)) == [
        "it needs Python >=3.11,<3.12, not 3.12.1"
    ]
    assert build_mcpb.compatibility_problems(manifest, "darwin", (3, 11, 2)) == ["it is for linux, not darwin"]


# -- the packed bundle, started ------------------------------------------------------------------------------


def plain_python(minor: int | None = None) -> str | None:
    """A CPython 3.``minor`` that is not this venv (its site-packages would hide what the bundle lacks); with no
    ``minor``, this interpreter's base."""
    if minor is None:
        base = getattr(sys, "_base_executable", None) or sys.executable
        return base if base != sys.executable or sys.prefix == sys.base_prefix else None
    pyenv = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates = [shutil.which(f"python3.{minor}"), *sorted(glob.glob(f"{pyenv}/versions/3.{minor}.*/bin/python3.{minor}"))]
    for found in candidates:
        if not found or Path(found).resolve() == Path(sys.executable).resolve():
            continue
        probe = subprocess.run(  # a pyenv shim for a version not selected here fails
            [found, "-c", "import sys; print(sys.version_info[1])"], capture_output=True, text=True, timeout=60, check=False
        )
        if probe.returncode == 0 and probe.stdout.strip() == str(minor):
            return found
    return None


@pytest.mark.timeout(600)
def test_the_packed_bundle_runs_on_its_python_and_is_refused_on_another(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    cache = Path(request.config.cache.mkdir("mcpb-deps")) if request.config.cache else tmp_path / "deps"
    bundle = build_mcpb.build(sys.executable, tmp_path / "dist", cache)
    minor = sys.version_info[1]
    manifest = build_mcpb.read_manifest(bundle)
    assert bundle.name.startswith(f"runapi-mcp-{__version__}-cp3{minor}-{sys.platform}-")
    assert manifest["compatibility"] == {"platforms": [sys.platform], "runtimes": {"python": f">=3.{minor},<3.{minor + 1}"}}
    names = set(build_mcpb.zipfile.ZipFile(bundle).namelist())
    assert {"manifest.json", "LICENSE", manifest["server"]["entry_point"]} <= names
    # Package data, not modules: the web gallery's templates and the Apps view (pyproject's package-data).
    assert {"server/lib/runapi_mcp/http/templates/gallery.html", "server/lib/runapi_mcp/server/ui/images.html"} <= names
    assert any(re.search(rf"pydantic_core/_pydantic_core\.cpython-3{minor}", n) for n in names), "compiled for it"
    assert not any("__pycache__" in n or n.startswith("server/lib/bin/") for n in names)

    # On the Python it declares (a plain one: nothing but the bundle to import from), it starts, as Claude
    # Desktop starts it, and lists the manifest's tools.
    python = plain_python()
    if python is None:
        pytest.skip("no CPython outside this venv to start the bundle with")
    unpacked = tmp_path / "unpacked"  # as a host unpacks it, once
    code, said = build_mcpb.run(bundle, python, home=tmp_path / "home", unpacked=unpacked)
    print(said)
    assert code == 0, said
    assert "imports runapi_mcp from server/lib/runapi_mcp" in said and "the tools are the manifest's" in said

    # On another minor version: refused by its manifest; started anyway, it dies at the compiled parts.
    other_minor = next((m for m in (minor + 1, minor + 2, minor - 1) if plain_python(m)), None)
    if other_minor is None:
        problems = build_mcpb.compatibility_problems(manifest, sys.platform, (3, minor + 1, 0))
        assert problems == [f"it needs Python >=3.{minor},<3.{minor + 1}, not 3.{minor + 1}.0"]
        pytest.skip(f"no CPython 3.{minor + 1} here: the refusal was checked on the manifest alone")
    other = plain_python(other_minor)
    assert other is not None
    code, said = build_mcpb.run(bundle, other, home=tmp_path / "home")
    print(said)
    assert code == 2 and f"refused by its manifest: it needs Python >=3.{minor},<3.{minor + 1}, not 3.{other_minor}." in said
    code, said = build_mcpb.run(bundle, other, force=True, home=tmp_path / "home", unpacked=unpacked)
    print(said)
    assert code == 1 and "it did not start" in said and ("pydantic_core" in said or "Error" in said), said

    # The script's own command line says the same.
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_mcpb.py"), "--check", str(bundle), "--python", other],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert check.returncode == 2 and "refused" in check.stdout
