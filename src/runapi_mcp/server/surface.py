"""What a model reads of this server before it says a word: the budget, and how it is measured.

A client puts each tool's name, title, description and input schema in the model's context, for every
tool, in every conversation, whether a tool is used or not. Output schemas, annotations, ``_meta`` and
icons travel in tools/list as well, but clients keep them to themselves (to check results, to draw the
interface), so they are counted as wire bytes, not against the budget. tests/test_tool_surface.py holds
the tools to ``TOOLS_BUDGET_BYTES`` and ``bench/tool_surface.py`` prints the figures.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from mcp.types import CallToolResult, Tool

TOOLS_BUDGET_BYTES = 5_000  # every tool together; today's seven leave room for a few more
MODEL_VISIBLE = ("name", "title", "description", "inputSchema")


def _json_bytes(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def visible(tool: Tool) -> dict[str, Any]:
    """The part of ``tool``'s tools/list entry a model reads."""
    wire = tool.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {key: wire[key] for key in MODEL_VISIBLE if key in wire}


def visible_bytes(tools: Iterable[Tool]) -> int:
    """The model-visible part of ``tools`` as one compact JSON list, in UTF-8 bytes."""
    return _json_bytes([visible(tool) for tool in tools])


def wire_bytes(tools: Iterable[Tool]) -> int:
    """``tools`` as tools/list sends them (icons, output schemas and all), compact JSON, UTF-8 bytes."""
    return _json_bytes([tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in tools])


def result_bytes(result: CallToolResult) -> int:
    """What a tool result puts before a model: its text blocks and structured content, each as compact JSON."""
    texts = sum(_json_bytes(getattr(block, "text", "")) for block in result.content)
    return texts + (_json_bytes(result.structured_content) if result.structured_content is not None else 0)
