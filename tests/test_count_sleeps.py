"""scripts/count_sleeps.py counts what issue 16 tracks: sleeps in the tests, long ones and non-literal ones apart."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]

SAMPLE = '''
import asyncio
import time as t
from anyio import sleep as nap
import anyio

DOC = "time.sleep(5) in a string is no sleep"

async def waits(delay: float) -> None:
    t.sleep(0.3)               # literal, long
    await asyncio.sleep(0.05)  # literal, short
    await nap(1)               # literal, long (an alias of anyio.sleep)
    await anyio.sleep(delay)   # not literal
    await anyio.sleep(2 * 0.05)  # folds to 0.1: long
    await anyio.sleep()        # no argument: a checkpoint of 0 s
    # time.sleep(9) in a comment is no sleep either
    other.sleep(3)             # not one of the three modules
'''


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("count_sleeps", ROOT / "scripts" / "count_sleeps.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def test_sleeps_are_found_in_the_syntax_tree_with_their_length(tmp_path: Path) -> None:
    (tmp_path / "test_x.py").write_text(SAMPLE)
    found = load().count(tmp_path)
    assert [(s.line, s.module, s.seconds) for s in found] == [
        (10, "time", 0.3),
        (11, "asyncio", 0.05),
        (12, "anyio", 1.0),
        (13, "anyio", None),
        (14, "anyio", pytest.approx(0.1)),
        (15, "anyio", 0.0),
    ]


def test_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "test_x.py").write_text(SAMPLE)
    assert load().main([str(tmp_path), "--list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("test_x.py:10: time.sleep(0.3)") and out[3].endswith("test_x.py:13: anyio.sleep(?)")
    assert out[-4:] == [
        f"sleeps in {tmp_path}: 6",
        "  literal >= 0.1 s: 3",
        "  literal < 0.1 s: 2",
        "  not literal: 1",
    ]
