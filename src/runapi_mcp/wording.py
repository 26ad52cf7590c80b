"""Counts as people write them: ``1 task``, ``2 tasks`` (never ``1 tasks`` nor ``1 task(s)``).

Kept free of imports so that every module, the light CLI ones included, can use it.
"""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, in the plural (``plural``, else ``noun`` + s) unless ``n`` is 1."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
