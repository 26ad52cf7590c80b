"""Answer each client in the protocol version it negotiated.

The SDK serializes every handshake-era result with the newest (2025-11-25) types, so a client that
negotiated 2025-03-26 or 2024-11-05 would get fields and content types its version lacks; a
``resource_link`` block makes the TypeScript SDK 1.12 reject a whole tool result (after the image
was made and paid for). Tools and resources are written once, for the newest version; this
middleware takes out, on the way to an older client, what its version does not have, and turns a
``resource_link`` into a text block with the same facts. Facts are from the spec's changelogs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp_types.version import KNOWN_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION, is_version_at_least

# Fields, by the object they sit on, and the first version that has them.
_TOOL_FIELDS = {
    "annotations": "2025-03-26",
    "title": "2025-06-18",
    "outputSchema": "2025-06-18",
    "_meta": "2025-06-18",
    "icons": "2025-11-25",
    "execution": "2025-11-25",
}
_RESOURCE_FIELDS = {"title": "2025-06-18", "size": "2025-06-18", "_meta": "2025-06-18", "icons": "2025-11-25"}
_PROMPT_FIELDS = {"title": "2025-06-18", "_meta": "2025-06-18", "icons": "2025-11-25"}
_PROMPT_ARGUMENT_FIELDS = {"title": "2025-06-18"}
_IMPLEMENTATION_FIELDS = {"title": "2025-06-18", "icons": "2025-11-25", "websiteUrl": "2025-11-25",
                          "description": "2025-11-25"}
_CALL_RESULT_FIELDS = {"structuredContent": "2025-06-18"}
_CONTENT_FIELDS = {"_meta": "2025-06-18"}
_CONTENT_TYPES = {"audio": "2025-03-26", "resource_link": "2025-06-18"}
PROGRESS_MESSAGE_SINCE = "2025-03-26"  # notifications/progress gained ``message`` then


def has_feature(version: str | None, since: str) -> bool:
    """Whether a client on ``version`` knows what ``since`` introduced (unknown or newer versions do)."""
    if version is None or version not in KNOWN_PROTOCOL_VERSIONS:
        return True
    return is_version_at_least(version, since)


def _strip(item: Mapping[str, Any], fields: Mapping[str, str], version: str) -> dict[str, Any]:
    return {key: value for key, value in item.items() if key not in fields or has_feature(version, fields[key])}


def _content_block(block: Mapping[str, Any], version: str) -> dict[str, Any]:
    kind = block.get("type")
    if kind == "resource_link" and not has_feature(version, _CONTENT_TYPES["resource_link"]):
        label = block.get("title") or block.get("name") or "Resource"
        text = f"{label}: {block.get('uri')}"
        if block.get("description"):
            text += f" ({block['description']})"
        return {"type": "text", "text": text}
    if kind == "audio" and not has_feature(version, _CONTENT_TYPES["audio"]):
        return {"type": "text", "text": "[audio content: not supported by this client's protocol version]"}
    return _strip(block, _CONTENT_FIELDS, version)


def _tool_call(result: dict[str, Any], version: str) -> dict[str, Any]:
    out = _strip(result, _CALL_RESULT_FIELDS, version)
    if isinstance(out.get("content"), list):
        out["content"] = [_content_block(b, version) if isinstance(b, Mapping) else b for b in out["content"]]
    return out


def _each(key: str, fields: Mapping[str, str]) -> Callable[[dict[str, Any], str], dict[str, Any]]:
    def downgrade(result: dict[str, Any], version: str) -> dict[str, Any]:
        items = result.get(key)
        if isinstance(items, list):
            result = {**result, key: [_strip(i, fields, version) if isinstance(i, Mapping) else i for i in items]}
        return result

    return downgrade


def _prompts(result: dict[str, Any], version: str) -> dict[str, Any]:
    result = _each("prompts", _PROMPT_FIELDS)(result, version)
    prompts = result.get("prompts")
    if isinstance(prompts, list):
        result["prompts"] = [
            {**p, "arguments": _each("arguments", _PROMPT_ARGUMENT_FIELDS)(dict(p), version)["arguments"]}
            if isinstance(p, Mapping) and isinstance(p.get("arguments"), list)
            else p
            for p in prompts
        ]
    return result


def _initialize(result: dict[str, Any], version: str) -> dict[str, Any]:
    info = result.get("serverInfo")
    if isinstance(info, Mapping):
        result = {**result, "serverInfo": _strip(info, _IMPLEMENTATION_FIELDS, version)}
    return result


def mark_tools(result: dict[str, Any], names: Collection[str], key: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    """A ``tools/list`` result with ``extra`` merged into ``key`` (e.g. ``execution``, ``_meta``) of the
    tools named in ``names``; every other tool, and a result without a tool list, as it was."""
    tools = result.get("tools")
    if not isinstance(tools, list):
        return result
    marked = [
        {**tool, key: {**(tool.get(key) or {}), **extra}}
        if isinstance(tool, Mapping) and tool.get("name") in names
        else tool
        for tool in tools
    ]
    return {**result, "tools": marked}


def with_capability(result: dict[str, Any], key: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    """An ``initialize`` result with ``extra`` merged into ``capabilities[key]``."""
    capabilities = dict(result.get("capabilities") or {})
    capabilities[key] = {**(capabilities.get(key) or {}), **extra}
    return {**result, "capabilities": capabilities}


_DOWNGRADES: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
    "initialize": _initialize,
    "tools/call": _tool_call,
    "tools/list": _each("tools", _TOOL_FIELDS),
    "resources/list": _each("resources", _RESOURCE_FIELDS),
    "resources/templates/list": _each("resourceTemplates", _RESOURCE_FIELDS),
    "prompts/list": _prompts,
}


class ProtocolCompat:
    """Server middleware: every result shaped for the client's negotiated protocol version."""

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        result = await call_next(ctx)
        downgrade = _DOWNGRADES.get(ctx.method)
        if downgrade is None or not isinstance(result, dict):
            return result
        # ``initialize`` carries the version it is negotiating; every other request the connection's.
        version = ctx.protocol_version
        if ctx.method == "initialize" and isinstance(result.get("protocolVersion"), str):
            version = result["protocolVersion"]
        if has_feature(version, LATEST_HANDSHAKE_VERSION):
            return result  # the newest handshake version (2025-11-25) and later: the SDK's own shape is right
        return downgrade(result, version)
