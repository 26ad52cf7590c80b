"""Build the Claude Desktop extension (``.mcpb``) for one Python and platform, check it, and start it.

    python scripts/build_mcpb.py [--python PY] [--out dist] [--deps-cache DIR]
    python scripts/build_mcpb.py --check BUNDLE [--python PY]
    python scripts/build_mcpb.py --run BUNDLE [--python PY] [--force]

A bundle carries runapi-mcp and its dependencies under ``server/lib``, installed by pip for one
interpreter, and Claude Desktop starts it with the user's ``python3`` (``python`` on Windows). Several of
those dependencies are compiled (pydantic-core, Pillow, cryptography, cffi, ruamel.yaml.clib, ...) for one
CPython minor version, one operating system and one architecture: a bundle built with CPython 3.11 dies at
start on 3.12 (``No module named 'pydantic_core._pydantic_core'``). So each bundle declares what it was
built for, in the manifest's ``compatibility``: ``platforms`` is the build's platform alone and
``runtimes.python`` the build's minor version alone (``>=3.11,<3.12``), and a host refuses it elsewhere.
The manifest format has no field for the architecture: it is in the file name,
``runapi-mcp-<version>-cp311-linux-x86_64.mcpb``. Build one bundle per Python and platform you ship, on that
platform; ``--python`` picks another local interpreter (it needs pip). The repository's ``manifest.json`` is
the template: packed as it is, it would claim every platform and Python.

``--check`` reads a bundle's manifest the way a host does (platform, then the Python version against
``runtimes.python``) and says whether ``PY`` may run it. ``--run`` unpacks it and starts it as Claude Desktop
would (``mcp_config`` with ``${__dirname}`` and ``${user_config.*}`` filled in, ``python3`` being ``PY``), lists
its tools over stdio and compares them with the manifest's; on a Python the manifest refuses it stops there
unless ``--force`` (which shows what a host that ignored the declaration would get).

``--deps-cache DIR`` keeps the dependencies installed per interpreter and dependency list, so a rebuild only
installs runapi-mcp itself (tests/test_packaging.py uses it).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "manifest.json"
PIP = ("-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile")
START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Interpreter:
    """What a bundle's compiled parts depend on: the CPython minor version, the OS and the architecture."""

    path: str
    version: tuple[int, int, int]
    platform: str  # sys.platform: darwin, win32, linux (MCPB's names)
    machine: str  # platform.machine(): x86_64, arm64, AMD64, ...
    implementation: str  # sys.implementation.name

    @property
    def tag(self) -> str:
        return f"cp{self.version[0]}{self.version[1]}"

    @property
    def python_range(self) -> str:
        major, minor, _ = self.version
        return f">={major}.{minor},<{major}.{minor + 1}"

    @property
    def dotted(self) -> str:
        return ".".join(map(str, self.version))


def interpreter(python: str) -> Interpreter:
    code = (
        "import json, platform, sys; print(json.dumps([list(sys.version_info[:3]), sys.platform, "
        "platform.machine(), sys.implementation.name]))"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout
    version, plat, machine, impl = json.loads(out)
    return Interpreter(python, (version[0], version[1], version[2]), plat, machine.lower(), impl)


# -- the manifest a bundle carries, and a host's reading of it --------------------------------------------------


def bundle_manifest(template: dict[str, Any], built: Interpreter) -> dict[str, Any]:
    """The template with ``compatibility`` saying what this bundle was built for (its platform, its Python)."""
    manifest: dict[str, Any] = json.loads(json.dumps(template))
    compatibility = dict(manifest.get("compatibility") or {})
    compatibility["platforms"] = [built.platform]
    compatibility["runtimes"] = {**(compatibility.get("runtimes") or {}), "python": built.python_range}
    manifest["compatibility"] = compatibility
    return manifest


_CLAUSE = re.compile(r"\s*(>=|<=|==|!=|>|<|~=|\^)?\s*v?(\d+(?:\.\d+)*)\s*")


def _padded(parts: tuple[int, ...], n: int = 3) -> tuple[int, ...]:
    return (*parts, *(0,) * (n - len(parts)))[:n]


def satisfies(version: tuple[int, ...], spec: str) -> bool:
    """Whether ``version`` meets ``spec``: clauses such as ``>=3.11,<3.12`` (commas or spaces between them)."""
    clauses = [c for c in re.split(r"[,\s]+(?=[<>=!~^\d])", spec.strip()) if c.strip()]
    have = _padded(tuple(version))
    for clause in clauses:
        match = _CLAUSE.fullmatch(clause)
        if match is None:
            raise ValueError(f"cannot read the version range {spec!r}")
        op, raw = match.group(1) or "==", match.group(2)
        want = _padded(tuple(int(p) for p in raw.split(".")))
        if op in ("~=", "^"):
            ok = have >= want and have[:1] == want[:1]
        else:
            ok = {
                ">=": have >= want,
                "<=": have <= want,
                ">": have > want,
                "<": have < want,
                "!=": have != want,
                "==": have[: len(raw.split("."))] == want[: len(raw.split("."))],
            }[op]
        if not ok:
            return False
    return True


def compatibility_problems(manifest: dict[str, Any], platform: str, python: tuple[int, ...]) -> list[str]:
    """Why a host on ``platform`` with Python ``python`` would refuse the bundle (none: it may run it)."""
    compatibility = manifest.get("compatibility") or {}
    problems = []
    platforms = compatibility.get("platforms")
    if platforms and platform not in platforms:
        problems.append(f"it is for {', '.join(platforms)}, not {platform}")
    wanted = (compatibility.get("runtimes") or {}).get("python")
    if wanted and not satisfies(python, wanted):
        problems.append(f"it needs Python {wanted}, not {'.'.join(map(str, python))}")
    return problems


# -- building ---------------------------------------------------------------------------------------------------


def _dependencies() -> list[str]:
    return list(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])


def _install_dependencies(built: Interpreter, lib: Path, cache: Path | None) -> None:
    requirements = _dependencies()
    if cache is None:
        subprocess.run([built.path, *PIP, "--target", str(lib), *requirements], check=True)
        return
    key = hashlib.sha256(
        json.dumps([requirements, built.tag, built.platform, built.machine, built.implementation]).encode()
    ).hexdigest()[:16]
    cached = cache / f"{built.tag}-{built.platform}-{built.machine}-{key}"
    if not cached.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=cache))
        try:
            subprocess.run([built.path, *PIP, "--target", str(partial), *requirements], check=True)
            shutil.rmtree(partial / "bin", ignore_errors=True)
            with contextlib.suppress(OSError):  # another build filled it meanwhile
                partial.rename(cached)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(cached, lib, dirs_exist_ok=True)


def _copy_package(lib: Path) -> None:
    """runapi-mcp itself, as its wheel holds it: every module, and the package data pyproject.toml names.

    Copied rather than built (a wheel build sets up an isolated setuptools each time): the package is pure
    Python and reads no metadata of its own (``runapi_mcp.__version__`` is in the code)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package = ROOT / "src" / "runapi_mcp"
    patterns = ["**/*.py", *pyproject["tool"]["setuptools"]["package-data"]["runapi_mcp"]]
    for pattern in patterns:
        for source in package.glob(pattern):
            if source.is_file() and "__pycache__" not in source.parts:
                target = lib / "runapi_mcp" / source.relative_to(package)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)


def bundle_name(version: str, built: Interpreter) -> str:
    return f"runapi-mcp-{version}-{built.tag}-{built.platform}-{built.machine}.mcpb"


def build(python: str, out: Path, deps_cache: Path | None = None) -> Path:
    """Pack a bundle for ``python`` into ``out``; its path."""
    built = interpreter(python)
    if built.implementation != "cpython":
        raise SystemExit(f"{python} is {built.implementation}: bundles are built for CPython")
    template = json.loads(TEMPLATE.read_text())
    with tempfile.TemporaryDirectory(prefix="runapi-mcpb-") as staging:
        stage = Path(staging)
        lib = stage / "server" / "lib"
        lib.mkdir(parents=True)
        _install_dependencies(built, lib, deps_cache)
        _copy_package(lib)
        shutil.rmtree(lib / "bin", ignore_errors=True)  # console scripts pinned to the build interpreter
        for stale in lib.rglob("__pycache__"):
            shutil.rmtree(stale, ignore_errors=True)
        entry = stage / template["server"]["entry_point"]
        if not entry.is_file():
            raise SystemExit(f"the manifest's entry_point {template['server']['entry_point']} is not in the bundle")
        (stage / "manifest.json").write_text(json.dumps(bundle_manifest(template, built), indent=2) + "\n")
        shutil.copy(ROOT / "LICENSE", stage / "LICENSE")
        out.mkdir(parents=True, exist_ok=True)
        target = out / bundle_name(template["version"], built)
        partial = target.with_suffix(".partial")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            for path in sorted(stage.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(stage).as_posix())
        partial.replace(target)
    return target


# -- what a host does with it -----------------------------------------------------------------------------------


def read_manifest(bundle: Path) -> dict[str, Any]:
    with zipfile.ZipFile(bundle) as archive:
        data: dict[str, Any] = json.loads(archive.read("manifest.json"))
    return data


def _fill(value: str, dirname: Path, user_config: dict[str, str]) -> str:
    value = value.replace("${__dirname}", str(dirname)).replace("${HOME}", str(Path.home()))
    return re.sub(r"\$\{user_config\.([A-Za-z0-9_]+)\}", lambda m: user_config.get(m.group(1), ""), value)


def launch_command(
    manifest: dict[str, Any], dirname: Path, python: str, platform: str
) -> tuple[list[str], dict[str, str]]:
    """``mcp_config`` as a host applies it on ``platform``: variables filled in, ``python3``/``python`` being
    ``python`` (the interpreter the host found for it)."""
    config = dict(manifest["server"]["mcp_config"])
    config.update((config.pop("platform_overrides", None) or {}).get(platform, {}))
    user_config = {}
    for name, spec in (manifest.get("user_config") or {}).items():
        default = spec.get("default")
        user_config[name] = _fill(str(default), dirname, {}) if default is not None else ""
    user_config["api_key"] = os.environ.get("RUNAPI_API_KEY", "sk-bundle-check-0000000000000000")
    command = config["command"]
    if command in ("python", "python3"):
        command = python
    args = [_fill(a, dirname, user_config) for a in config.get("args", [])]
    env = {k: _fill(v, dirname, user_config) for k, v in (config.get("env") or {}).items()}
    return [command, *args], env


def _rpc(proc: subprocess.Popen[str], message: dict[str, Any]) -> None:
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(message) + "\n")
    proc.stdin.flush()


def _answer(proc: subprocess.Popen[str], request_id: int, deadline: float) -> dict[str, Any]:
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the server closed its output")
        message = json.loads(line)
        if message.get("id") == request_id:
            result: dict[str, Any] = message
            return result
    raise TimeoutError("no answer in time")


def run(
    bundle: Path, python: str, *, force: bool = False, home: Path | None = None, unpacked: Path | None = None
) -> tuple[int, str]:
    """Start ``bundle`` with ``python`` as a host would; (exit status, what happened). 0: it started and lists
    the manifest's tools; 2: the manifest refuses this Python (not started); 1: it was started and failed.
    ``unpacked``: where the bundle is (or is to be) unpacked, kept for the next run (else a temporary place)."""
    target = interpreter(python)
    manifest = read_manifest(bundle)
    problems = compatibility_problems(manifest, target.platform, target.version)
    said = [f"{bundle.name} on Python {target.dotted} ({target.platform}-{target.machine}, {python})"]
    if problems and not force:
        return 2, "\n".join([*said, f"refused by its manifest: {'; '.join(problems)}"])
    if problems:
        said.append(f"the manifest refuses it ({'; '.join(problems)}); started anyway (--force)")
    with tempfile.TemporaryDirectory(prefix="runapi-mcpb-run-") as scratch:
        where = unpacked or Path(scratch) / "bundle"
        if not (where / "manifest.json").is_file():
            with zipfile.ZipFile(bundle) as archive:
                archive.extractall(where)
        argv, env = launch_command(manifest, where, python, target.platform)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(home or Path(scratch) / "home"),
            "RUNAPI_MCP_HOME": str(Path(scratch) / "data"),
            **env,
        }
        origin = subprocess.run(
            [argv[0], "-c", "import runapi_mcp; print(runapi_mcp.__file__)"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        if origin.returncode == 0:
            said.append(f"imports runapi_mcp from {Path(origin.stdout.strip()).parent.relative_to(where)}")
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            hello = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "h", "version": "0"}}
            _rpc(proc, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello})
            init = _answer(proc, 1, deadline)
            _rpc(proc, {"jsonrpc": "2.0", "method": "notifications/initialized"})
            _rpc(proc, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
            tools = sorted(t["name"] for t in _answer(proc, 2, deadline)["result"]["tools"])
        except (RuntimeError, TimeoutError, ValueError, OSError) as exc:
            proc.kill()
            _, err = proc.communicate(timeout=30)
            tail = [line for line in err.splitlines() if line.strip()][-3:]
            return 1, "\n".join([*said, f"it did not start ({exc}): {' | '.join(tail)}"])
        finally:
            if proc.poll() is None:
                assert proc.stdin is not None
                proc.stdin.close()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        declared = sorted(t["name"] for t in manifest.get("tools", []))
        server = init["result"]["serverInfo"]
        said.append(f"started: {server['name']} {server['version']}, {len(tools)} tools: {', '.join(tools)}")
        if tools != declared:
            return 1, "\n".join([*said, f"but the manifest declares {', '.join(declared)}"])
        return 0, "\n".join([*said, "the tools are the manifest's"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="The interpreter to build for, check or run with")
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="Where the bundle goes (default dist/)")
    parser.add_argument("--deps-cache", type=Path, help="Keep the installed dependencies here between builds")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", type=Path, metavar="BUNDLE", help="Would a host run BUNDLE on --python?")
    action.add_argument("--run", type=Path, metavar="BUNDLE", help="Start BUNDLE with --python and list its tools")
    parser.add_argument("--force", action="store_true", help="With --run: start it even where its manifest refuses")
    args = parser.parse_args(argv)
    if args.check:
        target = interpreter(args.python)
        problems = compatibility_problems(read_manifest(args.check), target.platform, target.version)
        verdict = f"refused: {'; '.join(problems)}" if problems else "compatible"
        print(f"{args.check.name} on Python {target.dotted} ({target.platform}): {verdict}")
        return 2 if problems else 0
    if args.run:
        code, said = run(args.run, args.python, force=args.force)
        print(said)
        return code
    started = time.monotonic()
    bundle = build(args.python, args.out, args.deps_cache)
    compatibility = read_manifest(bundle)["compatibility"]
    print(
        f"built {bundle} ({bundle.stat().st_size / 2**20:.1f} MB, {time.monotonic() - started:.0f} s): "
        f"platforms {compatibility['platforms']}, python {compatibility['runtimes']['python']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
