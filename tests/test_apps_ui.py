"""MCP Apps: the view resource, the tools' links to it, the gallery tool, and the view in a browser.

The server side is checked through real clients (in-process, raw JSON-RPC where the wire shape per
protocol version matters). The browser side loads the view, read through the server, into a small host
page written here that speaks the Apps bridge (ui/initialize, tool-input, tool-result) and records the
view's requests, under the restrictive CSP the spec asks hosts to apply by default; the tool results it
hands over are real ones from the simulator.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
import pytest
from mcp.client import Client
from mcp.client.extension import advertise
from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID
from mcp.shared.dispatcher import DispatchContext
from mcp.shared.exceptions import MCPError
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher
from mcp.shared.transport_context import TransportContext
from mcp.types import METHOD_NOT_FOUND, CallToolResult, TextResourceContents
from playwright.async_api import Browser, Frame, Page

from runapi_mcp.server.apps_ui import THUMBNAILS_META_KEY, UI_TOOLS, UI_URI
from tests.browser import screenshot_path
from tests.support import Harness, text_of

pytestmark = pytest.mark.anyio

APPS_SETTINGS = {"mimeTypes": [APP_MIME_TYPE]}
WAIT_S = 15.0
# What the spec tells hosts to enforce when a view declares no CSP: inline code, data: images, nothing else.
DEFAULT_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; media-src 'self' data:; object-src 'none'; connect-src 'none'"
)


@asynccontextmanager
async def apps_client(harness: Harness) -> AsyncIterator[Client]:
    """A client that advertises MCP Apps, as Claude Desktop or VS Code do."""
    async with Client(harness.app.server, mode="legacy", extensions=[advertise(EXTENSION_ID, APPS_SETTINGS)]) as c:
        yield c


@dataclass
class RawClient:
    dispatcher: JSONRPCDispatcher[Any]
    init: dict[str, Any]

    async def request(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return await self.dispatcher.send_raw_request(method, params, {"timeout": WAIT_S})


@asynccontextmanager
async def raw_client(harness: Harness, version: str, capabilities: dict[str, Any]) -> AsyncIterator[RawClient]:
    """A connection in raw JSON-RPC pinned to ``version``: the dicts a client of that version reads."""

    async def on_request(_dctx: DispatchContext[TransportContext], method: str, _params: Any) -> dict[str, Any]:
        raise MCPError(code=METHOD_NOT_FOUND, message=f"this test client serves no {method}")

    async def on_notify(_dctx: DispatchContext[TransportContext], _method: str, _params: Any) -> None:
        return None

    from mcp.client._memory import InMemoryTransport

    async with InMemoryTransport(harness.app.server) as (read, write):
        dispatcher: JSONRPCDispatcher[Any] = JSONRPCDispatcher(read, write)
        async with anyio.create_task_group() as tg:
            await tg.start(dispatcher.run, on_request, on_notify)
            init = await dispatcher.send_raw_request(
                "initialize",
                {"protocolVersion": version, "capabilities": capabilities, "clientInfo": {"name": "raw", "version": "0"}},
                {"timeout": WAIT_S},
            )
            await dispatcher.notify("notifications/initialized", None)
            yield RawClient(dispatcher, init)
            tg.cancel_scope.cancel()


def wire(result: CallToolResult) -> dict[str, Any]:
    """A tool result as the host received it on the wire (what it hands the view)."""
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)


async def view_html(client: Client) -> str:
    read = await client.read_resource(UI_URI)
    (content,) = read.contents
    assert isinstance(content, TextResourceContents) and content.mime_type == APP_MIME_TYPE
    return content.text


# -- the server side -------------------------------------------------------------------------------
async def test_the_view_is_a_self_contained_resource_listed_to_apps_clients_only(harness: Harness) -> None:
    async with apps_client(harness) as client:
        listed = {str(r.uri): r for r in (await client.list_resources()).resources}
        assert listed[UI_URI].mime_type == APP_MIME_TYPE
        html = await view_html(client)
        read = await client.read_resource(UI_URI)
        assert (read.contents[0].meta or {}).get("ui") == {"prefersBorder": True}
    # A client without Apps is not offered a raw HTML page to attach, but may read it (a host that renders
    # without advertising must find it).
    plain = [str(r.uri) for r in (await harness.client.list_resources()).resources]
    assert not any(uri.startswith("ui://") for uri in plain) and "runapi://tasks" in plain
    assert await view_html(harness.client) == html

    assert html.lower().startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    # Self-contained and CSP-friendly: no external resource, no network API, no eval, no framework.
    assert not re.search(r"""(src|href|action)\s*=\s*["']?\s*(https?:)?//""", html, re.IGNORECASE)
    assert not re.search(r"https?://", html)
    for banned in ("<link", "@import", "fetch(", "XMLHttpRequest", "WebSocket", "eval(", "new Function", "innerHTML"):
        assert banned not in html, banned


async def test_the_image_tools_and_the_gallery_link_the_view(harness: Harness) -> None:
    for client_tools in ((await harness.client.list_tools()).tools,):
        linked = {t.name for t in client_tools if (t.meta or {}).get("ui") == {"resourceUri": UI_URI}}
        assert linked == set(UI_TOOLS) == {"generate_image", "edit_image", "upscale_image", "get_task", "gallery"}
        plain = {t.name: t.meta for t in client_tools if t.name not in UI_TOOLS}
        assert set(plain) >= {"list_models", "check_balance", "list_tasks"}
        assert all(not (meta or {}).get("ui") for meta in plain.values())
    gallery = next(t for t in client_tools if t.name == "gallery")
    assert gallery.title == "Image gallery" and gallery.input_schema.get("additionalProperties") is False
    hints = gallery.annotations
    assert hints is not None and hints.read_only_hint is True and hints.open_world_hint is False
    assert (gallery.output_schema or {})["properties"]["tasks"]


@pytest.mark.parametrize("version", ["2024-11-05", "2025-03-26", "2025-06-18"])
async def test_each_protocol_version_gets_the_link_only_where_it_can_read_it(harness: Harness, version: str) -> None:
    async with raw_client(harness, version, {}) as plain:
        tools = {t["name"]: t for t in (await plain.request("tools/list"))["tools"]}
        resources = [r["uri"] for r in (await plain.request("resources/list"))["resources"]]
        assert "extensions" not in plain.init["capabilities"]
    old = version in ("2024-11-05", "2025-03-26")
    if old:  # those versions have no _meta on a tool: taken out, as before
        assert all("_meta" not in t for t in tools.values())
    else:  # reserved metadata a client without Apps ignores
        assert tools["generate_image"]["_meta"] == {"ui": {"resourceUri": UI_URI}}
    assert not any(uri.startswith("ui://") for uri in resources)

    async with raw_client(harness, version, {"extensions": {EXTENSION_ID: APPS_SETTINGS}}) as apps:
        tools = {t["name"]: t for t in (await apps.request("tools/list"))["tools"]}
        resources = [r["uri"] for r in (await apps.request("resources/list"))["resources"]]
        assert apps.init["capabilities"]["extensions"] == {EXTENSION_ID: {}}
        assert apps.init["protocolVersion"] == version
        (content,) = (await apps.request("resources/read", {"uri": UI_URI}))["contents"]
        assert content["mimeType"] == APP_MIME_TYPE and content["text"].startswith("<!doctype html>")
    # A client that advertised Apps reads _meta.ui whatever its version.
    assert {n for n, t in tools.items() if t.get("_meta", {}).get("ui", {}).get("resourceUri") == UI_URI} == UI_TOOLS
    assert UI_URI in resources


async def test_the_2026_era_gets_the_sdk_advertisement_and_the_same_per_client_listing(harness: Harness) -> None:
    for extensions in ([], [advertise(EXTENSION_ID, APPS_SETTINGS)]):
        async with Client(harness.app.server, mode="2026-07-28", extensions=extensions) as client:
            discovered = await client.session.send_discover("2026-07-28")
            assert discovered["capabilities"]["extensions"][EXTENSION_ID] == {}
            listed = [str(r.uri) for r in (await client.list_resources()).resources]
            assert (UI_URI in listed) == bool(extensions)
            gallery = await client.call_tool("gallery", {})
            assert (THUMBNAILS_META_KEY in (gallery.meta or {})) == bool(extensions)


async def test_tool_results_are_the_same_with_or_without_apps(harness: Harness) -> None:
    plain = await harness.call("generate_image", {"prompt": "same for everyone"})
    async with apps_client(harness) as client:
        seen = await client.call_tool("generate_image", {"prompt": "same for everyone"})
        again = await client.call_tool("get_task", {"task_id": plain.structured_content["task_id"]})
    for result in (plain, seen, again):
        assert not result.is_error, text_of(result)
        assert result.meta is None  # nothing added for the view: it reads what every client gets
        assert [b.type for b in result.content] == ["text", "image", "resource_link"]
    assert set(seen.structured_content) == set(plain.structured_content)


async def make_tasks(harness: Harness) -> dict[str, str]:
    """Three finished tasks of two models, made side by side: prompt -> task id."""
    calls = {
        "a red fox in the snow": {},
        "a lighthouse at dusk": {"aspect_ratio": "16:9"},
        "a paper-cut city skyline": {"model": "flux-kontext-pro"},
    }
    ids: dict[str, str] = {}

    async def make(prompt: str, extra: dict[str, Any]) -> None:
        result = await harness.call("generate_image", {"prompt": prompt, **extra})
        assert not result.is_error, text_of(result)
        ids[prompt] = result.structured_content["task_id"]

    async with anyio.create_task_group() as tg:
        for prompt, extra in calls.items():
            tg.start_soon(make, prompt, extra)
    return ids


async def test_the_gallery_tool_answers_every_client_and_thumbnails_apps_clients(harness: Harness) -> None:
    empty = await harness.call("gallery")
    assert not empty.is_error and text_of(empty) == "No tasks yet."
    assert empty.structured_content == {"tasks": [], "more": False, "status": None, "model": None, "query": None}
    ids = await make_tasks(harness)

    listed = await harness.call("gallery")
    text = text_of(listed)
    assert text.startswith("Gallery: 3 task(s), newest first:")
    for task_id in ids.values():
        assert task_id in text
    assert text.count(".png") + text.count(".jpg") >= 3  # the saved paths, for clients without the view
    assert [t["task_id"] for t in listed.structured_content["tasks"]] == [
        t.task_id for t in (await harness.app.manager.store.page(limit=3)).records
    ]
    assert listed.meta is None  # no thumbnails for a client that cannot show them

    fox = await harness.call("gallery", {"query": "FOX"})
    assert [t["task_id"] for t in fox.structured_content["tasks"]] == [ids["a red fox in the snow"]]
    assert "query='FOX'" in text_of(fox)
    flux = await harness.call("gallery", {"model": "flux-kontext-pro", "limit": 1})
    assert [t["model"] for t in flux.structured_content["tasks"]] == ["flux-kontext-pro"]
    two = await harness.call("gallery", {"limit": 2})
    assert two.structured_content["more"] is True and "More tasks match" in text_of(two)
    none = await harness.call("gallery", {"query": "zebra", "status": "failed"})
    assert text_of(none) == "No tasks match (status='failed', query='zebra')."

    bad = await harness.call("gallery", {"limt": 3})
    assert bad.is_error and "'limt' is not an argument of gallery" in text_of(bad)
    too_many = await harness.call("gallery", {"limit": 49})
    assert too_many.is_error and "'limit'" in text_of(too_many)

    async with apps_client(harness) as client:
        shown = await client.call_tool("gallery", {})
    thumbs = (shown.meta or {})[THUMBNAILS_META_KEY]
    assert set(thumbs) == set(ids.values())
    for uri in thumbs.values():
        head, data = uri.split(",", 1)
        assert re.fullmatch(r"data:image/(jpeg|png);base64", head)
        assert 0 < len(base64.b64decode(data)) <= 16_000
    assert text_of(shown) == text


# -- the view in a browser -------------------------------------------------------------------------
HOST_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>MCP Apps test host</title>
<style>body { margin: 0; background: #e9e9ee; } iframe { border: 0; width: 100%; height: 400px; display: block; }</style>
</head><body>
<iframe id="view" sandbox="allow-scripts" title="RunAPI images"></iframe>
<script type="application/json" id="setup">__SETUP__</script>
<script>
  // A host as the MCP Apps spec describes one: answers ui/initialize, then sends the tool's input and
  // result once the view says it is initialized; records every request the view makes for the test.
  const setup = JSON.parse(document.getElementById("setup").textContent);
  const frame = document.getElementById("view");
  window.__requests = [];
  window.__notes = [];
  const send = (message) => frame.contentWindow.postMessage(message, "*");
  window.__answer = (id, result) => send({ jsonrpc: "2.0", id, result });
  window.__fail = (id, message) => send({ jsonrpc: "2.0", id, error: { code: -32000, message } });
  window.addEventListener("message", (event) => {
    if (event.source !== frame.contentWindow) return;
    const msg = event.data;
    if (msg.method === "ui/initialize") {
      window.__initialize = msg.params;
      send({ jsonrpc: "2.0", id: msg.id, result: setup.init });
    } else if (msg.method === "ui/notifications/initialized") {
      send({ jsonrpc: "2.0", method: "ui/notifications/tool-input", params: { arguments: setup.input } });
      send({ jsonrpc: "2.0", method: "ui/notifications/tool-result", params: setup.result });
    } else if (msg.method === "ui/notifications/size-changed") {
      window.__notes.push(msg);
      frame.style.height = Math.min(1600, Math.max(200, msg.params.height)) + "px";
    } else if (msg.id !== undefined && msg.method) {
      window.__requests.push(msg);
    } else {
      window.__notes.push(msg);
    }
  });
  frame.srcdoc = setup.html;
</script>
</body></html>
"""


def host_page(html: str, tool: str, arguments: dict[str, Any], result: dict[str, Any]) -> str:
    """The test host, with the view under the spec's default CSP and the call to show."""
    sandboxed = html.replace("<head>", f'<head>\n<meta http-equiv="Content-Security-Policy" content="{DEFAULT_CSP}">', 1)
    init = {
        "protocolVersion": "2026-01-26",
        "hostInfo": {"name": "runapi-test-host", "version": "1"},
        "hostCapabilities": {"serverTools": {}, "openLinks": {}, "logging": {}},
        "hostContext": {
            "toolInfo": {"id": 1, "tool": {"name": tool, "inputSchema": {"type": "object"}}},
            "theme": "light",
            "displayMode": "inline",
            "availableDisplayModes": ["inline"],
            "containerDimensions": {"maxHeight": 1600},
            "styles": {"variables": {"--color-background-primary": "#fbfbfd"}},
        },
    }
    setup = {"html": sandboxed, "init": init, "input": arguments, "result": result}
    return HOST_PAGE.replace("__SETUP__", json.dumps(setup).replace("</", "<\\/"))


@dataclass
class Host:
    page: Page
    frame: Frame
    network: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def next_request(self, method: str = "tools/call") -> dict[str, Any]:
        """The view's next request of ``method``, taken off the host's record."""
        handle = await self.page.wait_for_function(
            """(method) => {
                 const at = window.__requests.findIndex((r) => r.method === method);
                 return at < 0 ? null : window.__requests.splice(at, 1)[0];
               }""",
            arg=method,
            timeout=WAIT_S * 1000,
        )
        return cast(dict[str, Any], await handle.json_value())

    async def answer(self, request: dict[str, Any], result: dict[str, Any]) -> None:
        await self.page.evaluate("([id, result]) => window.__answer(id, result)", [request["id"], result])

    async def fail(self, request: dict[str, Any], message: str) -> None:
        await self.page.evaluate("([id, message]) => window.__fail(id, message)", [request["id"], message])

    async def images_loaded(self, count: int) -> None:
        await self.frame.wait_for_function(
            """(count) => {
                 const shown = [...document.images].filter((i) => i.offsetParent !== null);
                 return shown.length >= count && shown.every((i) => i.complete && i.naturalWidth > 0);
               }""",
            arg=count,
            timeout=WAIT_S * 1000,
        )

    async def text(self, selector: str) -> str:
        return await self.frame.inner_text(selector)


@asynccontextmanager
async def open_host(browser: Browser, page_html: str) -> AsyncIterator[Host]:
    page = await browser.new_page(viewport={"width": 900, "height": 800})
    host = Host(page, page.main_frame)
    page.on("request", lambda request: host.network.append(request.url))
    page.on("console", lambda message: host.errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: host.errors.append(str(error)))
    try:
        await page.set_content(page_html)
        element = await page.wait_for_selector("iframe#view")
        assert element is not None
        frame = await element.content_frame()
        assert frame is not None
        host.frame = frame
        yield host
        # Nothing left the page (no fetch, no external image), and the CSP was never violated.
        assert all(url.startswith(("about:", "data:")) for url in host.network), host.network
        assert host.errors == []
    finally:
        await page.close()


async def test_the_task_view_shows_the_picture_and_its_actions_call_the_tools(
    harness: Harness, browser: Browser
) -> None:
    prompt = "A lighthouse on a cliff at sunset"
    arguments = {"prompt": prompt, "aspect_ratio": "16:9", "wait": True}
    result = await harness.call("generate_image", arguments)
    assert not result.is_error, text_of(result)
    data = result.structured_content
    task_id = data["task_id"]
    html = await view_html(harness.client)

    async with open_host(browser, host_page(html, "generate_image", arguments, wire(result))) as host:
        await host.images_loaded(1)
        assert await host.text("#prompt") == prompt
        assert await host.text("#status") == "completed"
        assert await host.text("[data-fact=task]") == task_id
        assert await host.text("[data-fact=model]") == "gpt-image-2"
        width, height = data["images"][0]["width"], data["images"][0]["height"]
        assert await host.text("[data-fact=size]") == f"{width} × {height}"
        assert await host.text("[data-fact=price]") == f"${data['price_cents'] / 100:.2f} ({data['price_cents']}¢)"
        initialize = await host.page.evaluate("window.__initialize")
        assert initialize["protocolVersion"] == "2026-01-26" and initialize["appInfo"]["name"]
        await host.frame.fill("#edit-input", "make it night")
        await host.page.screenshot(path=screenshot_path("apps-task"), full_page=True)

        # Edit: the typed instruction on this task's picture. The host refuses: the view says so.
        await host.frame.click("#edit")
        edit = await host.next_request()
        assert edit["params"] == {"name": "edit_image", "arguments": {"prompt": "make it night", "images": [task_id]}}
        await host.fail(edit, "denied by the user")
        await host.frame.wait_for_selector("#notice.error")
        assert "denied by the user" in await host.text("#notice")

        # Variations: the same call again, without the waiting options.
        await host.frame.click("#variations")
        variation = await host.next_request()
        assert variation["params"] == {
            "name": "generate_image", "arguments": {"prompt": prompt, "aspect_ratio": "16:9"}
        }
        await host.fail(variation, "not now")

        # Open: over stdio there is no download URL, so the view shows where the picture is.
        await host.frame.click("#open")
        location = await host.text("#location")
        assert data["images"][0]["uri"] in location and data["images"][0]["path"] in location

        # Upscale: answered with the real upscale result, which the view then shows; Back returns.
        await host.frame.click("#upscale")
        upscale = await host.next_request()
        assert upscale["params"] == {"name": "upscale_image", "arguments": {"image": task_id}}
        upscaled = await harness.call("upscale_image", {"image": task_id})
        assert not upscaled.is_error, text_of(upscaled)
        await host.answer(upscale, wire(upscaled))
        await host.frame.wait_for_function(
            "(id) => document.querySelector('[data-fact=task]').textContent === id",
            arg=upscaled.structured_content["task_id"],
        )
        await host.images_loaded(1)
        assert await host.text("#task-title") == "Upscaled image"
        await host.frame.click("#back")
        assert await host.text("[data-fact=task]") == task_id

    # A task still running: its status and progress, then the view follows it with get_task(wait=true).
    running = await harness.call("generate_image", {"prompt": "slow boat", "wait": False})
    assert running.structured_content["status"] != "completed"
    page_html = host_page(html, "generate_image", {"prompt": "slow boat", "wait": False}, wire(running))
    async with open_host(browser, page_html) as host:
        follow = await host.next_request()
        running_id = running.structured_content["task_id"]
        assert follow["params"] == {"name": "get_task", "arguments": {"task_id": running_id, "wait": True}}
        assert not await host.frame.is_hidden("#progress")
        assert await host.text("#status") == running.structured_content["status"]
        done = await harness.call("get_task", {"task_id": running_id, "wait": True})
        await host.answer(follow, wire(done))
        await host.images_loaded(1)
        assert await host.text("#status") == "completed" and await host.frame.is_hidden("#progress")


async def test_the_gallery_view_filters_and_opens_a_task(harness: Harness, browser: Browser) -> None:
    ids = await make_tasks(harness)
    async with apps_client(harness) as client:
        listed = await client.call_tool("gallery", {})
        html = await view_html(client)
    assert not listed.is_error, text_of(listed)

    async with open_host(browser, host_page(html, "gallery", {}, wire(listed))) as host:
        await host.frame.wait_for_function("() => document.querySelectorAll('.tile').length === 3")
        await host.images_loaded(3)
        assert await host.text("#count") == "3 task(s)"
        captions = await host.frame.eval_on_selector_all(".tile .caption", "nodes => nodes.map(n => n.textContent)")
        assert sorted(captions) == sorted(ids)
        await host.page.screenshot(path=screenshot_path("apps-gallery"), full_page=True)

        await host.frame.fill("#filter-text", "fox")
        assert await host.frame.eval_on_selector_all(".tile", "nodes => nodes.length") == 1
        assert await host.text("#count") == "1 of 3 task(s)"
        await host.frame.fill("#filter-text", "")
        await host.frame.select_option("#filter-model", "flux-kontext-pro")
        tiles = await host.frame.eval_on_selector_all(".tile", "nodes => nodes.map(n => n.dataset.taskId)")
        assert tiles == [ids["a paper-cut city skyline"]]
        await host.frame.select_option("#filter-model", "")
        await host.frame.select_option("#filter-status", "completed")
        assert await host.frame.eval_on_selector_all(".tile", "nodes => nodes.length") == 3

        # Opening a tile asks for the task; the real answer shows it large, with Back to the grid.
        fox = ids["a red fox in the snow"]
        await host.frame.click(f".tile[data-task-id='{fox}']")
        opened = await host.next_request()
        assert opened["params"] == {"name": "get_task", "arguments": {"task_id": fox}}
        await host.answer(opened, wire(await harness.call("get_task", {"task_id": fox})))
        await host.frame.wait_for_selector("#task-view:not([hidden])")
        await host.images_loaded(1)
        assert await host.text("#prompt") == "a red fox in the snow"
        await host.frame.click("#variations")
        variation = await host.next_request()
        assert variation["params"] == {
            "name": "generate_image", "arguments": {"prompt": "a red fox in the snow", "model": "gpt-image-2"}
        }
        await host.fail(variation, "not now")
        await host.frame.click("#back")
        await host.frame.wait_for_selector("#gallery-view:not([hidden])")
        assert await host.frame.eval_on_selector_all(".tile", "nodes => nodes.length") == 3

        await host.frame.click("#gallery-refresh")
        refresh = await host.next_request()
        assert refresh["params"] == {"name": "gallery", "arguments": {}}
        await host.answer(refresh, wire(listed))
