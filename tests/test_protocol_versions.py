"""Every client gets what its protocol version can read: a client pinned to each version, on the wire.

Handshake-era versions are spoken in raw JSON-RPC over a stdio subprocess (what the client would
see byte for byte); the 2026-07-28 era through the SDK's own client in-process.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from mcp.client import Client

from runapi_mcp.simulator import Simulator
from tests.support import Harness, RawStdioServer, server_env, text_of

pytestmark = pytest.mark.anyio

OLD = ("2024-11-05", "2025-03-26")
NEW = ("2025-06-18", "2025-11-25")


@pytest.mark.parametrize("version", OLD + NEW)
def test_a_client_pinned_to_each_handshake_version_reads_every_answer(
    sim: Simulator, home: Path, inputs: Path, version: str
) -> None:
    with RawStdioServer(server_env(sim, home, inputs)) as server:
        init = server.initialize(version)["result"]
        assert init["protocolVersion"] == version
        tools = server.request("tools/list")["result"]["tools"]
        templates = server.request("resources/templates/list")["result"]["resourceTemplates"]
        prompts = server.request("prompts/list")["result"]["prompts"]
        call = server.request(
            "tools/call",
            {"name": "generate_image", "arguments": {"prompt": f"for {version}"}, "_meta": {"progressToken": 7}},
        )["result"]
        bad = server.request("tools/call", {"name": "generate_image", "arguments": {"prompt": "x", "size": "big"}})
        stderr = server.close()
    progress = [n["params"] for n in server.notifications("notifications/progress")]
    types = [block["type"] for block in call["content"]]
    text = call["content"][0]["text"]
    assert not call.get("isError"), text
    image_uri = re.search(r"runapi://images/[\w.-]+", text)
    assert image_uri and str(home) in text  # the facts are there as text for every version
    assert "image" in types
    assert all(isinstance(p["progress"], int | float) for p in progress) and progress
    values = [p["progress"] for p in progress]
    assert all(b > a for a, b in itertools.pairwise(values)), values  # strictly increasing, always
    assert values[-1] == 100
    assert bad["result"]["isError"] and "'size' is not an argument of generate_image" in bad["result"]["content"][0][
        "text"]
    if version in OLD:
        assert types == ["text", "image", "text"]  # the resource link as text
        assert image_uri.group(0) in call["content"][2]["text"]
        assert "structuredContent" not in call
        assert all("outputSchema" not in t and "title" not in t for t in tools)
        assert all("title" not in t for t in templates)
        assert prompts and all("title" not in p and "icons" not in p for p in prompts)
        assert all("title" not in a for p in prompts for a in p.get("arguments", []))
        assert "title" not in init["serverInfo"]
        if version == "2024-11-05":
            assert all("message" not in p for p in progress)
            assert all("annotations" not in t for t in tools)
        else:
            assert all("annotations" in t for t in tools)
            assert progress[0]["message"].startswith("Task ")
    else:
        assert types == ["text", "image", "resource_link"]
        assert call["structuredContent"]["status"] == "completed"
        assert all("outputSchema" in t for t in tools if t["name"] in ("generate_image", "get_task"))
        assert progress[0]["message"].startswith(f"Task {call['structuredContent']['task_id']}")
    assert "Traceback" not in stderr


async def test_the_2026_era_client_gets_links_and_structured_results(harness: Harness) -> None:
    async with Client(harness.app.server, mode="2026-07-28") as client:
        assert client.protocol_version == "2026-07-28"
        result = await client.call_tool("generate_image", {"prompt": "modern era"})
        assert not result.is_error, text_of(result)
        assert [b.type for b in result.content] == ["text", "image", "resource_link"]
        assert result.structured_content and result.structured_content["status"] == "completed"
        tools = await client.list_tools()
        schema = next(t for t in tools.tools if t.name == "generate_image").input_schema
        assert schema.get("additionalProperties") is False
