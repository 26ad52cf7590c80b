"""The MCP Apps view hosted by the official host bridge (``@modelcontextprotocol/ext-apps``) in Chromium.

``tests/ext-apps-host/`` holds a host page (``host.html``, ``host.js``) and, once ``npm ci --prefix
tests/ext-apps-host`` has run (``.ci/run`` does it), the npm packages it imports: ``AppBridge`` and
``PostMessageTransport`` from ``@modelcontextprotocol/ext-apps/app-bridge`` and ``Client`` from
``@modelcontextprotocol/client``. A loopback HTTP server serves that folder to Chromium, and the page's
import map resolves the packages' bare imports, as a bundler would.

The page's MCP client speaks to the server under test through a relay: each JSON-RPC message it sends
arrives here (a Playwright binding) and goes into the server in-process (``InMemoryTransport``), and
each message the server sends goes back into the page. So the view's buttons call the real server,
through the official bridge and the official client, as in a chat client.

Where the packages are not installed (no network when ``.ci/run`` ran) the tests that need them skip,
saying so.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from mcp.client._memory import InMemoryTransport
from mcp.server import Server
from mcp.server.mcpserver import MCPServer
from mcp.shared.message import SessionMessage
from mcp.types import jsonrpc_message_adapter
from playwright.async_api import Browser, BrowserContext, Frame, Page

HOST_DIR = Path(__file__).resolve().parent / "ext-apps-host"
# The files the page imports: if any is missing, the packages are not installed (or changed layout).
NEEDED = (
    "node_modules/@modelcontextprotocol/ext-apps/dist/src/app-bridge.js",
    "node_modules/@modelcontextprotocol/client/dist/index.mjs",
    "node_modules/@modelcontextprotocol/core/dist/index.mjs",
    "node_modules/zod/v4/index.js",
)
INSTALL = "npm ci --prefix tests/ext-apps-host"
WAIT_S = 15.0
_contexts: weakref.WeakKeyDictionary[Browser, BrowserContext] = weakref.WeakKeyDictionary()


def missing_packages() -> str | None:
    """Why the official bridge cannot be loaded here, or None."""
    absent = [name for name in NEEDED if not (HOST_DIR / name).is_file()]
    if absent:
        return f"@modelcontextprotocol/ext-apps is not installed ({absent[0]} missing): run `{INSTALL}`"
    return None


def require_packages() -> None:
    reason = missing_packages()
    if reason:
        pytest.skip(reason)


class _Handler(SimpleHTTPRequestHandler):
    """The host folder, read-only; JavaScript with a JavaScript type (module scripts need one)."""

    protocol_version = "HTTP/1.1"  # kept-alive connections for ~115 small files,
    disable_nagle_algorithm = True  # without a delayed ACK's 40 ms on each

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, directory=str(HOST_DIR), **kwargs)

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "max-age=3600")  # a second host page in a test loads from cache
        super().end_headers()

    def guess_type(self, path: str | os.PathLike[str]) -> str:
        return "text/javascript" if str(path).endswith((".js", ".mjs")) else super().guess_type(path)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextmanager
def served_host_folder() -> Iterator[str]:
    """The host folder over loopback HTTP (Chromium fetches the ~115 module files side by side): its origin."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, name="ext-apps-host", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class OfficialHost:
    """The host page, the view's frame in it, and what went past."""

    page: Page
    frame: Frame
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    started: dict[str, Any] = field(default_factory=dict)

    async def record(self) -> dict[str, Any]:
        """``window.__host``: the view's tools/call through the bridge, model context, links, logs."""
        return cast(dict[str, Any], await self.page.evaluate("() => JSON.parse(JSON.stringify(window.__host))"))

    async def calls(self, name: str | None = None) -> list[dict[str, Any]]:
        calls = (await self.record())["calls"]
        return [c for c in calls if name is None or c["name"] == name]

    async def deny(self, tool: str, message: str | None) -> None:
        """The host refuses (or, with None, allows again) the view's calls of ``tool``."""
        await self.page.evaluate("([tool, message]) => { window.__host.deny[tool] = message; }", [tool, message])

    async def text(self, selector: str) -> str:
        return await self.frame.inner_text(selector)

    async def images_loaded(self, count: int) -> None:
        await self.frame.wait_for_function(
            """(count) => {
                 const shown = [...document.images].filter((i) => i.offsetParent !== null);
                 return shown.length >= count && shown.every((i) => i.complete && i.naturalWidth > 0);
               }""",
            arg=count,
            timeout=WAIT_S * 1000,
        )


@asynccontextmanager
async def official_host(
    browser: Browser, origin: str, server: Server[Any] | MCPServer, setup: dict[str, Any]
) -> AsyncIterator[OfficialHost]:
    """The host page from ``origin`` (``served_host_folder``) connected to ``server``, showing the view of
    ``setup["tool"]``.

    ``setup``: ``tool`` and ``arguments`` (the host makes the call through its client, unless ``result``
    is given), ``forwardTools`` (the bridge forwards the view's tools/call to the server), ``csp``,
    ``hostCapabilities`` (replaces the default: open links, server tools, logging, model context) and
    ``requestTimeoutMs`` (the host's limit on each forwarded request; the official client's is 60 s).
    """
    context = _contexts.get(browser)
    if context is None:  # one per browser: its cache serves the packages to each host page after the first
        context = _contexts[browser] = await browser.new_context(viewport={"width": 900, "height": 900})
    page = await context.new_page()
    host = OfficialHost(page, page.main_frame)
    page.on("request", lambda request: host.requests.append(request.url))
    page.on("console", lambda message: host.errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: host.errors.append(str(error)))
    try:
        async with InMemoryTransport(server) as (read, write), anyio.create_task_group() as tg:
            await _relay(page, read, write, tg, host.errors)
            await page.goto(f"{origin}/host.html")
            await page.wait_for_function("() => typeof window.startHost === 'function'", timeout=WAIT_S * 1000)
            with anyio.fail_after(WAIT_S):
                host.started = await page.evaluate("(setup) => window.startHost(setup)", setup)
            element = await page.wait_for_selector("iframe#view")
            assert element is not None
            frame = await element.content_frame()
            assert frame is not None
            host.frame = frame
            yield host
            # Nothing but the host's own files was fetched: the view made no request of its own.
            assert all(url.startswith((origin, "about:", "data:")) for url in host.requests), host.requests
            assert host.errors == [], host.errors
            tg.cancel_scope.cancel()
    finally:
        await page.close()


async def _relay(page: Page, read: Any, write: Any, tg: anyio.abc.TaskGroup, errors: list[str]) -> None:
    """The page's MCP client <-> the server: a binding for its messages, a task for the server's."""

    async def to_server(message: dict[str, Any]) -> None:
        await write.send(SessionMessage(jsonrpc_message_adapter.validate_python(message, by_name=False)))

    async def from_server() -> None:
        async for item in read:
            if isinstance(item, Exception):
                errors.append(f"relay: {item!r}")
                continue
            payload = item.message.model_dump(mode="json", by_alias=True, exclude_unset=True)
            await page.evaluate("(message) => window.__mcpFromServer(message)", payload)

    await page.expose_function("__mcpToServer", to_server)
    tg.start_soon(from_server)
