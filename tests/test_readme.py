"""The README and docs/ against the tree they describe.

The README's package layout table names every subpackage and top-level module of ``src/runapi_mcp`` and
nothing else; every relative link in the README and docs/*.md reaches a file (and a heading, where it names
one); the README stays short. Its command and tool tables, and docs/settings.md, list what the code has.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from runapi_mcp.cli import build_parser
from runapi_mcp.config import settings_from_environment

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PACKAGE = ROOT / "src" / "runapi_mcp"
MAX_README_LINES = 350

_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_CODE_SPAN = re.compile(r"`[^`]*`")


def _numbered_prose(path: Path) -> list[tuple[int, str]]:
    """The file's lines outside fenced code blocks (a ``# comment`` in a shell block is no heading), numbered."""
    out: list[tuple[int, str]] = []
    fenced = False
    for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def _prose_lines(path: Path) -> list[str]:
    return [line for _, line in _numbered_prose(path)]


def _section_table(path: Path, heading: str) -> list[list[str]]:
    """The cells of the first table under ``heading`` (header and separator rows left out)."""
    lines = _prose_lines(path)
    try:
        start = lines.index(heading)
    except ValueError:
        raise AssertionError(f"{path.name} has no {heading!r} section") from None
    rows: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    assert len(rows) > 2, f"no table under {heading!r} in {path.name}"
    return rows[2:]


def _code(cell: str) -> str:
    match = re.fullmatch(r"`([^`]+)`", cell)
    assert match, f"expected one `code` name in the table cell {cell!r}"
    return match.group(1)


def _layout_rows() -> dict[str, str]:
    rows: dict[str, str] = {}
    for cells in _section_table(README, "## Package layout"):
        assert len(cells) == 2, f"a layout row has {len(cells)} cells, not 2: {cells}"
        path = _code(cells[0])
        assert path not in rows, f"README layout table: {path} has two rows"
        assert cells[1], f"README layout table: {path} has no purpose"
        rows[path] = cells[1]
    return rows


def _package_parts() -> set[str]:
    """Each subpackage (``name/``) and top-level module (``name.py``) of runapi_mcp; ``__init__.py`` is the
    package itself."""
    parts = {f"{p.name}/" for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    parts |= {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    return parts


def test_the_layout_table_names_only_what_exists() -> None:
    for path in _layout_rows():
        target = PACKAGE / path.rstrip("/")
        exists = (target / "__init__.py").is_file() if path.endswith("/") else target.is_file()
        assert exists, f"README layout table: src/runapi_mcp/{path} does not exist (moved or removed?)"


def test_every_subpackage_and_top_level_module_has_a_layout_row() -> None:
    missing = sorted(_package_parts() - set(_layout_rows()))
    assert not missing, f"README layout table lacks a row for src/runapi_mcp/{', src/runapi_mcp/'.join(missing)}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (``-`` and ``_`` kept), spaces to ``-``."""
    text = heading.lstrip("#").strip().replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    for line in _prose_lines(path):
        if re.match(r"#{1,6} ", line):
            slug = _slug(line)
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def _documents() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def test_every_relative_link_reaches_a_file_and_heading() -> None:
    broken: list[str] = []
    checked = 0
    for doc in _documents():
        for number, line in _numbered_prose(doc):
            for target in _LINK.findall(_CODE_SPAN.sub("", line)):
                if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not ours to check
                    continue
                checked += 1
                file_part, _, anchor = target.partition("#")
                dest = (doc.parent / file_part).resolve() if file_part else doc
                where = f"{doc.relative_to(ROOT)}:{number}: {target}"
                if not dest.exists():
                    broken.append(f"{where}: no such file")
                elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                    broken.append(f"{where}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert checked > 20, f"only {checked} relative links found: the link pattern no longer matches"
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_readme_stays_short_and_links_each_doc() -> None:
    lines = README.read_text("utf-8").splitlines()
    assert len(lines) < MAX_README_LINES, f"README.md has {len(lines)} lines; keep it under {MAX_README_LINES}"
    linked = {Path(t.partition("#")[0]).name for line in _prose_lines(README) for t in _LINK.findall(line)}
    unlinked = sorted(p.name for p in (ROOT / "docs").glob("*.md") if p.name not in linked)
    assert not unlinked, f"README.md links to none of: docs/{', docs/'.join(unlinked)}"


def test_the_commands_table_lists_the_cli_commands() -> None:
    documented = set()
    for cells in _section_table(README, "## Commands"):
        words = _code(cells[0]).split()
        assert words[0] == "runapi-mcp", cells[0]
        documented.add(words[1])
    subparsers = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    commands = {name for action in subparsers for name in action.choices}
    assert documented == commands, (
        f"README commands table: missing {commands - documented}, extra {documented - commands}"
    )


def test_the_tools_table_lists_the_servers_tools() -> None:
    # manifest.json's tool list is tested equal to the server's (tests/test_packaging.py).
    manifest = json.loads((ROOT / "manifest.json").read_text("utf-8"))
    tools = {tool["name"] for tool in manifest["tools"]}
    documented = {_code(cells[0]) for cells in _section_table(README, "## What the server offers")}
    assert documented == tools, f"README tools table: missing {tools - documented}, extra {documented - tools}"


def test_the_settings_page_lists_every_setting_with_its_flag() -> None:
    documented = {
        _code(cells[0]): _code(cells[1]) for cells in _section_table(ROOT / "docs" / "settings.md", "# Settings")
    }
    settings = {s.variable: s.flag for s in settings_from_environment().values()}
    assert documented == settings, (
        f"docs/settings.md: missing {sorted(settings.keys() - documented.keys())}, "
        f"extra {sorted(documented.keys() - settings.keys())}, "
        f"wrong flags {sorted(v for v in settings.keys() & documented.keys() if settings[v] != documented[v])}"
    )
    readme = {_code(cells[0]) for cells in _section_table(README, "## Settings")}
    assert readme <= settings.keys(), f"README settings table names no setting: {sorted(readme - settings.keys())}"
    said = re.search(r"all (\d+) are in \[docs/settings\.md\]", README.read_text("utf-8"))
    assert said and int(said.group(1)) == len(settings), f"README: 'all N are in docs/settings.md' should say {len(settings)}"


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    # .ci/run is what CI runs: the README's test command, exactly (a change to one is a change to both).
    readme = README.read_text("utf-8")
    match = re.search(r"\*\*Tests:\*\*\s*```sh\n([^\n]+)\n```", readme)
    assert match, "README.md: no **Tests:** command block"
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text("utf-8").splitlines() if line.strip()]
    assert ci_lines[-1] == match.group(1), (
        f".ci/run ends {ci_lines[-1]!r}; the README's test command is {match.group(1)!r}"
    )
