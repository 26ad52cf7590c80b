"""What a model reads of this server: tools/list's model-visible bytes per tool and in all, and list_models' index.

    .venv/bin/python bench/tool_surface.py

No key and no network: the server runs in-process with a throwaway home and an in-process MCP client asks
it, as a client would, for tools/list and list_models. "visible" is each tool's name, title, description and
input schema as compact JSON (``runapi_mcp.server.surface``); "wire" is its whole tools/list entry (output
schema, annotations, icons, _meta too), which clients keep to themselves. Checks: all tools' visible bytes
under ``TOOLS_BUDGET_BYTES`` and list_models' index (text and structured content, as JSON) under
``INDEX_BUDGET_BYTES``. Exit status 1 if a check fails.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import anyio
from mcp.client import Client

from _common import print_checks
from runapi_mcp.app import open_app
from runapi_mcp.config import load_settings
from runapi_mcp.server.catalog_view import INDEX_BUDGET_BYTES
from runapi_mcp.server.surface import TOOLS_BUDGET_BYTES, result_bytes, visible_bytes, wire_bytes


async def measure() -> bool:
    with tempfile.TemporaryDirectory() as home:
        settings = load_settings(
            {"home": home, "base_url": "http://127.0.0.1:9"}, environ={}, config_file=Path(home) / "none.json"
        )
        async with open_app(settings) as app, Client(app.server) as client:
            tools = (await client.list_tools()).tools
            index = await client.call_tool("list_models", {})
    print(f"{'tool':<16} {'visible':>8} {'wire':>8}")
    for tool in tools:
        print(f"{tool.name:<16} {visible_bytes([tool]):>8} {wire_bytes([tool]):>8}")
    total = visible_bytes(tools)
    print(f"{'all ' + str(len(tools)):<16} {total:>8} {wire_bytes(tools):>8}")
    size = result_bytes(index)
    structured = result_bytes(index.model_copy(update={"content": []}))
    print(f"\nlist_models index: text {size - structured} + structured {structured} = {size} bytes")
    return print_checks(
        [
            (f"tools/list model-visible {total} bytes < {TOOLS_BUDGET_BYTES}", total < TOOLS_BUDGET_BYTES),
            (f"list_models index {size} bytes < {INDEX_BUDGET_BYTES}", size < INDEX_BUDGET_BYTES),
        ]
    )


if __name__ == "__main__":
    sys.exit(0 if anyio.run(measure) else 1)
