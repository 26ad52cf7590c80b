"""The command line the entry runs: this install's own ``runapi-mcp`` by absolute path; through ``uvx`` at its
version when this install runs from uv's cache, which uv may clean at any time; or ``--command`` as given."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shlex
import shutil
import sys
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from runapi_mcp.commands.install.clients import UsageError


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


def command_launch(text: str) -> Launch:
    """``--command``: the whole command line the entry runs, split as a shell would split it."""
    try:
        words = shlex.split(text, posix=os.name != "nt")
    except ValueError as exc:
        raise UsageError(f"--command: cannot split {text!r} ({exc})") from None
    if os.name == "nt":  # non-POSIX splitting keeps backslashes in paths, and the quotes: drop those
        words = [w[1:-1] if len(w) >= 2 and w[0] == w[-1] == '"' else w for w in words]
    if not words or not words[0]:
        raise UsageError("--command: give the command line the client runs, e.g. --command 'uvx runapi-mcp serve'")
    return Launch(words[0], tuple(words[1:]))


# -- uv's cache: what the entry must not point into ---------------------------------------------------------
#
# ``uvx runapi-mcp`` runs from an environment uv keeps in its cache, at ``<cache>/archive-v0/<id>/``
# (``<cache>/environments-v2/...`` links to it). ``uv cache clean`` or ``prune`` removes it, and the next
# uvx run may make another under a new id: an entry naming that path breaks later. Such an entry starts
# the server through uvx instead.

PACKAGE = "runapi-mcp"
_UV_ARCHIVE = "archive-v0"


def uv_cache_dirs(
    *, system: str = sys.platform, home: Path | None = None, environ: Mapping[str, str] = os.environ
) -> list[Path]:
    """Where uv keeps its cache: ``$UV_CACHE_DIR``, else the platform's default (``$XDG_CACHE_HOME/uv`` or
    ``~/.cache/uv``, on macOS too, where older uv used ``~/Library/Caches/uv``; ``%LOCALAPPDATA%\\uv\\cache``)."""
    home = home or Path.home()
    dirs: list[Path] = []
    if environ.get("UV_CACHE_DIR"):
        dirs.append(Path(environ["UV_CACHE_DIR"]).expanduser())
    if system == "win32":
        if environ.get("LOCALAPPDATA"):
            dirs.append(Path(environ["LOCALAPPDATA"]) / "uv" / "cache")
        return dirs
    xdg = environ.get("XDG_CACHE_HOME", "")
    dirs.append((Path(xdg) if os.path.isabs(xdg) else home / ".cache") / "uv")
    if system == "darwin":
        dirs.append(home / "Library" / "Caches" / "uv")
    return dirs


def in_uv_cache(
    path: str | Path, *, system: str = sys.platform, home: Path | None = None, environ: Mapping[str, str] = os.environ
) -> bool:
    """Whether ``path`` lies in uv's cache: under one of :func:`uv_cache_dirs`, or in an ``archive-v0``
    directory of a cache elsewhere (``uv --cache-dir``, ``--no-cache``'s temporary one), whose root uv tags
    with ``CACHEDIR.TAG``."""
    here = {Path(os.path.abspath(path)), Path(os.path.realpath(path))}
    roots: set[Path] = set()
    for cache in uv_cache_dirs(system=system, home=home, environ=environ):
        roots |= {Path(os.path.abspath(cache)), Path(os.path.realpath(cache))}
    for found in here:
        if any(root == found or root in found.parents for root in roots):
            return True
        for parent in found.parents:
            if parent.name == _UV_ARCHIVE and (
                (parent.parent / "CACHEDIR.TAG").is_file() or "uv" in parent.parent.parts
            ):
                return True
    return False


def uvx_source(direct_url: str | None) -> str | None:
    """What ``uvx --from`` takes to install this package again, from its PEP 610 ``direct_url.json``: the
    local directory or file, or the VCS URL at its commit. None without one: it came from a package index."""
    try:
        data = json.loads(direct_url) if direct_url else None
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("url"), str) or not data["url"]:
        return None
    url: str = data["url"]
    vcs = data.get("vcs_info")
    if isinstance(vcs, dict) and isinstance(vcs.get("vcs"), str):
        commit = vcs.get("commit_id")
        return f"{vcs['vcs']}+{url}" + (f"@{commit}" if isinstance(commit, str) and commit else "")
    parts = urlsplit(url)
    if parts.scheme == "file":
        return url2pathname(parts.path)
    return url


def installed_from() -> tuple[str, str | None]:
    """This install's version, and where it came from (see :func:`uvx_source`)."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        from runapi_mcp import __version__

        return __version__, None
    return dist.version, uvx_source(dist.read_text("direct_url.json"))


def find_uvx(environ: Mapping[str, str] = os.environ) -> str:
    """``uvx`` by absolute path where it can be found (GUI clients do not see the shell's PATH), else ``uvx``."""
    exe = "uvx.exe" if os.name == "nt" else "uvx"
    uv = environ.get("UV", "")  # uv sets UV, in what it runs, to its own executable; uvx sits beside it
    if os.path.isabs(uv):
        beside = Path(uv).with_name(exe)
        if beside.is_file() and os.access(beside, os.X_OK):
            return os.path.abspath(beside)
    found = shutil.which("uvx", path=environ.get("PATH"))
    return os.path.abspath(found) if found else "uvx"


def uvx_launch(uvx: str, version: str, source: str | None) -> Launch:
    """The entry that starts this server through ``uvx``: this version from the package index, pinned
    (``name@version``, the form every uvx takes) so that an upgrade is a choice; or from ``source``."""
    if source:
        return Launch(uvx, ("--from", source, PACKAGE, "serve"))
    return Launch(uvx, (f"{PACKAGE}@{version}", "serve"))


def uvx_note(launch: Launch, version: str, source: str | None) -> str:
    line = shlex.join([launch.command, *launch.args])
    note = (
        f"this runapi-mcp runs from uv's cache, which uv may clean at any time: the entry starts it through "
        f"uvx instead ({line})"
    )
    if source:
        note += f"; uvx builds it again from {source}, where this one was installed from"
    else:
        note += f", pinned to {version}: to upgrade, run `uvx {PACKAGE}@latest install <client>`"
    if not os.path.isabs(launch.command):
        note += "; uvx was not found on PATH, and a GUI app may not find it either: --command takes its absolute path"
    return note



def client_launch(
    launch: Launch | None = None, *, environ: Mapping[str, str] = os.environ
) -> tuple[Launch, str | None]:
    """``launch`` (this install's own when None), unless it lies in uv's cache: then a launch through uvx,
    and the note saying so."""
    launch = launch or server_launch()
    if not in_uv_cache(launch.command, environ=environ):
        return launch, None
    version, source = installed_from()
    uvx = uvx_launch(find_uvx(environ), version, source)
    return uvx, uvx_note(uvx, version, source)
