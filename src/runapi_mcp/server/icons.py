"""Icons for tools, prompts and resources: one small SVG per kind, as a self-contained data: URI.

Icons are for the client's interface (a tool picker, a prompt menu), not for the model: clients send a
model the names, titles, descriptions and input schemas, never ``icons``. They still travel in every
tools/list answer, so each is a single stroked path of a few hundred bytes, and data: URIs, because an
icon fetched from a host would tell that host when the list was opened and break offline. One grey
stroke reads on light and dark themes alike, so no per-theme pair is needed.

``icon_for(kind)`` is what registrations use; ``tool_icons(name)`` is the default ``strict_tool`` gives
a tool, so a new tool gets an icon without its registration naming one.
"""

from __future__ import annotations

import base64
from functools import cache
from typing import Literal

from mcp.types import Icon

IconKind = Literal["generate", "edit", "upscale", "task", "tasks", "models", "balance", "gallery", "prompt", "image"]

# 24x24 line glyphs (the common "outline icon" grid).
_PATHS: dict[IconKind, str] = {
    "generate": "M12 3l2 6 6 2-6 2-2 6-2-6-6-2 6-2z",  # a sparkle
    "edit": "M4 20h4L19 9l-4-4L4 16zM13 7l4 4",  # a pencil
    "upscale": "M14 4h6v6M10 20H4v-6M20 4l-7 7M4 20l7-7",  # arrows out to two corners
    "task": "M12 3a9 9 0 100 18 9 9 0 000-18zM12 7v5l3 2",  # a clock
    "tasks": "M9 6h11M9 12h11M9 18h11M4 6h1M4 12h1M4 18h1",  # a list
    "models": "M4 4h7v7H4zM13 4h7v7h-7zM4 13h7v7H4zM13 13h7v7h-7z",  # a grid of four
    "balance": "M12 3a9 9 0 100 18 9 9 0 000-18zM15 9h-4a1.5 1.5 0 000 3h2a1.5 1.5 0 010 3H9M12 7v10",  # a coin
    "gallery": "M3 5h18v14H3zM3 16l5-5 5 5 3-3 5 5M15 9h.01",  # a framed picture
    "image": "M3 5h18v14H3zM3 16l5-5 5 5 3-3 5 5",
    "prompt": "M4 5h16v11H9l-5 4z",  # a speech bubble
}

# Which kind of icon each tool of this server carries (tools not listed get ``image``).
TOOL_KINDS: dict[str, IconKind] = {
    "generate_image": "generate",
    "edit_image": "edit",
    "upscale_image": "upscale",
    "get_task": "task",
    "list_tasks": "tasks",
    "list_models": "models",
    "check_balance": "balance",
    "gallery": "gallery",
}


@cache
def _src(kind: IconKind) -> str:
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="#71717a" '
        f'stroke-width="2" stroke-linecap="round" stroke-linejoin="round"><path d="{_PATHS[kind]}"/></svg>'
    )
    # base64 rather than percent-encoding: every client's URI parser takes it as it is.
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


def icon_for(kind: IconKind) -> list[Icon]:
    """The icons for a tool, prompt or resource of ``kind``: a fresh list each time (the SDK keeps what it is
    given on the registration, and a shared list would let one registration's change show in all)."""
    return [Icon(src=_src(kind), mime_type="image/svg+xml", sizes=["any"])]


def tool_icons(tool_name: str) -> list[Icon]:
    """The icons for the tool named ``tool_name``: its kind's, or the generic image icon."""
    return icon_for(TOOL_KINDS.get(tool_name, "image"))
