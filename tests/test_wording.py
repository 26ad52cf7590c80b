"""Counts are worded as people write them: ``1 image``, ``2 images``, never ``image(s)``."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import runapi_mcp
from runapi_mcp.wording import count

SOURCE = Path(runapi_mcp.__file__).parent
# A noun with "(s)" glued on: "image(s)", "task(s)", "URL(s)". "http(s)" is a scheme, not a count.
HEDGED_PLURAL = re.compile(r"\b(?!https?\(s\))[A-Za-z]+\(s\)")


def test_count_says_one_in_the_singular_and_every_other_number_in_the_plural() -> None:
    assert count(1, "image") == "1 image"
    assert [count(n, "task") for n in (0, 2, 10)] == ["0 tasks", "2 tasks", "10 tasks"]
    assert count(3, "entry", "entries") == "3 entries"


def _texts(path: Path) -> list[tuple[int, str]]:
    """(line, text) of what a person may read in a file: a module's strings and comments (not its code, where
    ``write(s)`` is a call), every line of a page (its HTML and the JS that writes text)."""
    source = path.read_text("utf-8")
    if path.suffix != ".py":
        return list(enumerate(source.splitlines(), 1))
    kinds = {tokenize.STRING, tokenize.COMMENT, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return [(token.start[0], token.string) for token in tokens if token.type in kinds]


def test_no_text_in_the_package_hedges_a_plural() -> None:
    # Results, views, errors and logs alike (Python, the Apps view's HTML and JS): wording.py's own docstring
    # names the form it rules out.
    found = [
        f"{path.relative_to(SOURCE)}:{n}: {text.strip()}"
        for path in sorted(SOURCE.rglob("*"))
        if path.suffix in (".py", ".html", ".js", ".j2", ".jinja") and path.name != "wording.py"
        for n, text in _texts(path)
        if HEDGED_PLURAL.search(text)
    ]
    assert found == []
