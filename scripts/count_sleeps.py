"""Count the sleeps in the tests: how many, how many of a tenth of a second or more, how many not literal.

A test that sleeps either waits for something to happen (it should wait on the thing itself) or proves that
nothing happened (it should advance a clock). Issue 16 tracks their number; this is how it is counted:

    python scripts/count_sleeps.py [tests] [--list]

Counted: every call of ``time.sleep``, ``asyncio.sleep`` or ``anyio.sleep`` (also through ``from time import
sleep`` and module aliases such as ``import time as t``), found in the syntax tree, never in comments or
strings. A call's argument is *literal* when it folds to a number (``0.3``, ``1.5``, ``60``, ``-0.0``; a
plain sum or product of numbers too); anything else (a name, ``max(...)``, a header) is counted apart, since
its length is only known when the test runs.
"""

from __future__ import annotations

import argparse
import ast
import operator
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

SLEEP_MODULES = frozenset({"time", "asyncio", "anyio"})
LONG_S = 0.1
_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


@dataclass(frozen=True)
class Sleep:
    path: Path
    line: int
    module: str
    seconds: float | None  # None: not a literal

    def describe(self) -> str:
        length = "?" if self.seconds is None else f"{self.seconds:g}"
        return f"{self.path}:{self.line}: {self.module}.sleep({length})"


def literal_seconds(node: ast.expr) -> float | None:
    """The number ``node`` folds to, or None when it is not made of numbers alone."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = literal_seconds(node.operand)
        if inner is None:
            return None
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = literal_seconds(node.left), literal_seconds(node.right)
        if left is None or right is None or (isinstance(node.op, ast.Div) and right == 0):
            return None
        return _BINARY[type(node.op)](left, right)
    return None


def _sleep_names(tree: ast.Module) -> tuple[dict[str, str], dict[str, str]]:
    """Names bound to the sleeping modules (``time``, ``t``...) and to their ``sleep`` functions."""
    modules = {name: name for name in SLEEP_MODULES}
    functions: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in SLEEP_MODULES:
                    modules[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module in SLEEP_MODULES and node.level == 0:
            for alias in node.names:
                if alias.name == "sleep":
                    functions[alias.asname or alias.name] = node.module
    return modules, functions


def sleeps_in(path: Path) -> Iterator[Sleep]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    modules, functions = _sleep_names(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        module: str | None = None
        if isinstance(func, ast.Attribute) and func.attr == "sleep" and isinstance(func.value, ast.Name):
            module = modules.get(func.value.id)
        elif isinstance(func, ast.Name):
            module = functions.get(func.id)
        if module is None:
            continue
        argument = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "delay"), None)
        # ``anyio.sleep()`` with no argument sleeps 0 s: a checkpoint, not a wait.
        seconds = 0.0 if argument is None else literal_seconds(argument)
        yield Sleep(path=path, line=node.lineno, module=module, seconds=seconds)


def count(root: Path) -> list[Sleep]:
    files = [root] if root.is_file() else sorted(root.rglob("*.py"))
    found = [sleep for path in files if "node_modules" not in path.parts for sleep in sleeps_in(path)]
    return sorted(found, key=lambda s: (str(s.path), s.line))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("root", nargs="?", default="tests", type=Path, help="a file or directory (default: tests)")
    parser.add_argument("--list", action="store_true", help="list every sleep found, one a line")
    args = parser.parse_args(argv)
    root: Path = args.root
    if not root.exists():
        parser.error(f"{root} does not exist")
    found = count(root)
    if args.list:
        for sleep in found:
            print(sleep.describe())
    literal = [s for s in found if s.seconds is not None]
    long = [s for s in literal if s.seconds is not None and s.seconds >= LONG_S]
    print(f"sleeps in {root}: {len(found)}")
    print(f"  literal >= {LONG_S:g} s: {len(long)}")
    print(f"  literal < {LONG_S:g} s: {len(literal) - len(long)}")
    print(f"  not literal: {len(found) - len(literal)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
