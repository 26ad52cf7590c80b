"""MCP Apps: the view resource, the tools' links to it, the gallery tool, and the view in a browser.

The server side is checked through real clients (in-process, raw JSON-RPC where the wire shape per
protocol version matters). The browser side runs the view, read through the server, under the restrictive
CSP the spec asks hosts to apply by default, in two hosts:

- a small host page written here that speaks the Apps bridge (ui/initialize, tool-input, tool-result) and
  hands each of the view's requests to the test, which answers it with real results or refusals (no npm
  package needed);
- the official host bridge, ``AppBridge`` from ``@modelcontextprotocol/ext-apps`` with the official MCP
  client, forwarding the view's calls to the server (``tests/apps_host.py``; skipped where the npm
  packages are not installed). There the view follows a running task through a host's time-outs.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
from collections.abc import AsyncIterator, Iterator, Mapping
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

from runapi_mcp.server import apps_ui
from runapi_mcp.server.apps_ui import THUMBNAILS_META_KEY, THUMBNAILS_OMITTED_META_KEY, UI_TOOLS, UI_URI
from tests.apps_host import OfficialHost, official_host, require_packages, served_host_folder
from tests.browser import screenshot_path
from tests.support import TIME_SCALE, Harness, text_of

pytestmark = pytest.mark.anyio

APPS_SETTINGS = {"mimeTypes": [APP_MIME_TYPE]}
WAIT_S = 15.0
STEP_S = 5  # the view's longest wait in one call (WAIT_STEP_S in images.html)
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
    assert text.startswith("Gallery: 3 tasks, newest first:")
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
        assert edit["params"] == {
            "name": "edit_image", "arguments": {"prompt": "make it night", "images": [task_id], "timeout_s": STEP_S}
        }
        await host.fail(edit, "denied by the user")
        await host.frame.wait_for_selector("#notice.error")
        assert "denied by the user" in await host.text("#notice")

        # Variations: the same call again, with the view's own short wait instead of the model's.
        await host.frame.click("#variations")
        variation = await host.next_request()
        assert variation["params"] == {
            "name": "generate_image", "arguments": {"prompt": prompt, "aspect_ratio": "16:9", "timeout_s": STEP_S}
        }
        await host.fail(variation, "not now")

        # Open: over stdio there is no download URL, so the view shows where the picture is.
        await host.frame.click("#open")
        location = await host.text("#location")
        assert data["images"][0]["uri"] in location and data["images"][0]["path"] in location

        # Upscale: answered with the real upscale result, which the view then shows; Back returns.
        await host.frame.click("#upscale")
        upscale = await host.next_request()
        assert upscale["params"] == {"name": "upscale_image", "arguments": {"image": task_id, "timeout_s": STEP_S}}
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
        assert follow["params"] == {
            "name": "get_task", "arguments": {"task_id": running_id, "wait": True, "timeout_s": STEP_S}
        }
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
        assert await host.text("#count") == "3 tasks"
        captions = await host.frame.eval_on_selector_all(".tile .caption", "nodes => nodes.map(n => n.textContent)")
        assert sorted(captions) == sorted(ids)
        await host.page.screenshot(path=screenshot_path("apps-gallery"), full_page=True)

        await host.frame.fill("#filter-text", "fox")
        assert await host.frame.eval_on_selector_all(".tile", "nodes => nodes.length") == 1
        assert await host.text("#count") == "1 of 3 tasks"
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
            "name": "generate_image",
            "arguments": {"prompt": "a red fox in the snow", "model": "gpt-image-2", "timeout_s": STEP_S},
        }
        await host.fail(variation, "not now")
        await host.frame.click("#back")
        await host.frame.wait_for_selector("#gallery-view:not([hidden])")
        assert await host.frame.eval_on_selector_all(".tile", "nodes => nodes.length") == 3

        await host.frame.click("#gallery-refresh")
        refresh = await host.next_request()
        assert refresh["params"] == {"name": "gallery", "arguments": {}}
        await host.answer(refresh, wire(listed))


# -- the view hosted by the official bridge (@modelcontextprotocol/ext-apps), against the real server ----
# The host page (tests/ext-apps-host/) wires AppBridge and the official MCP client as a chat client does;
# the view's tools/call go through the bridge and the client to this server, in-process. Skips where the
# npm packages are not installed (tests/apps_host.py says how).
HOST_LIMIT_S = 60 * TIME_SCALE  # the official client's 60 s request limit, on the suite's time scale (1.5 s)


@pytest.fixture(scope="session")
def ext_apps() -> Iterator[str]:
    """The host page's origin; skips (before the server and the browser start) where the npm packages are
    not installed."""
    require_packages()
    with served_host_folder() as origin:
        yield origin


def bridge_setup(tool: str, arguments: dict[str, Any], **options: Any) -> dict[str, Any]:
    return {"tool": tool, "arguments": arguments, "forwardTools": True, "csp": DEFAULT_CSP, **options}


async def progress_shown(host: OfficialHost) -> tuple[int, int]:
    """The running task's elapsed seconds and percent, as the view shows them."""
    elapsed = await host.frame.get_attribute("#progress-text", "data-elapsed")
    pct = await host.frame.get_attribute("#progress-bar", "data-pct")
    return int(elapsed or 0), int(pct or 0)


async def test_the_official_bridge_shows_a_running_task_alive_and_its_follow_up_outlives_host_timeouts(
    ext_apps: str, harness: Harness, browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = harness.app.manager
    # The simulator runs 40x fast, so the server's own estimate reaches 99% at once; a 20 s task's curve
    # shows the bar moving (only the estimate: polling is untouched).
    monkeypatch.setattr(
        manager, "estimated_progress",
        lambda record: 1.0 if record.terminal else min(0.99, 1 - math.exp(-(time.time() - record.created_at) / 20)),
    )
    harness.sim.set_task_outcome(None, "running")  # the next task runs until this test ends it
    setup = bridge_setup(
        "generate_image", {"prompt": "a slow boat at dawn", "wait": False}, requestTimeoutMs=HOST_LIMIT_S * 1000
    )
    async with official_host(browser, ext_apps, harness.app.server, setup) as host:
        started = cast(dict[str, Any], host.started["structuredContent"])
        assert started["status"] in ("submitting", "pending", "processing")
        record = await host.record()
        assert record["initialized"] and record["appInfo"]["name"] == "runapi-mcp images"
        assert not await host.frame.is_hidden("#progress")

        # The clock and the bar move on their own, between the server's answers.
        before = await progress_shown(host)
        await host.frame.wait_for_function(
            """([elapsed, pct]) => Number(document.querySelector('#progress-text').dataset.elapsed) >= elapsed + 2
                 && Number(document.querySelector('#progress-bar').dataset.pct) > pct""",
            arg=before, timeout=WAIT_S * 1000,
        )
        after = await progress_shown(host)
        assert after[0] >= before[0] + 2 and after[1] > before[1], (before, after)
        assert re.fullmatch(r"(pending|processing) — \d+%, \d+ s so far · checking every [\d.]+ s",
                            await host.text("#progress-text"))
        await host.page.screenshot(path=screenshot_path("apps-bridge-running"), full_page=True)

        # Its first follow-up asked for a wait far under a real host's 60 s, but more than this host's
        # (scaled) limit: the host gave up, and the view waited again in shorter steps, never stopping.
        follows = await host.calls("get_task")
        first = follows[0]
        assert first["arguments"] == {"task_id": started["task_id"], "wait": True, "timeout_s": STEP_S}
        assert STEP_S <= 60 / 2 and first["outcome"] == "error" and first["error"] == "Request timed out"
        later = follows[1:]
        assert later and all(c["arguments"]["timeout_s"] < HOST_LIMIT_S for c in later)
        answered = [c for c in later if c["outcome"] == "ok"]
        assert answered and {c["status"] for c in answered} <= {"pending", "processing"}
        # (on a loaded machine a shorter wait may still miss the limit: only ever a time-out, and waited again)
        assert all(c["error"] == "Request timed out" for c in later if c["outcome"] == "error"), later
        assert "error" not in (await host.frame.get_attribute("#notice", "class") or "")

        harness.sim.set_task_outcome(started["runapi_task_id"], "completed")
        await host.images_loaded(1)
        assert await host.text("#status") == "completed" and await host.frame.is_hidden("#progress")
        await host.page.screenshot(path=screenshot_path("apps-bridge-done"), full_page=True)
        # A picture the model asked for is no news to it: nothing added to its context.
        assert (await host.record())["modelContext"] == []


async def test_the_official_bridge_carries_the_views_actions_and_the_model_hears_of_their_pictures(
    ext_apps: str, harness: Harness, browser: Browser
) -> None:
    prompt = "A lighthouse on a cliff at sunset"
    setup = bridge_setup("generate_image", {"prompt": prompt, "aspect_ratio": "16:9"})
    async with official_host(browser, ext_apps, harness.app.server, setup) as host:
        await host.images_loaded(1)
        task_id = host.started["structuredContent"]["task_id"]
        assert await host.text("[data-fact=task]") == task_id and await host.text("#prompt") == prompt

        # The host (the user) refuses the edit: the view says so, and stays usable.
        await host.deny("edit_image", "denied by the user")
        await host.frame.fill("#edit-input", "make it night")
        await host.frame.click("#edit")
        await host.frame.wait_for_selector("#notice.error")
        assert "denied by the user" in await host.text("#notice")
        (edit,) = await host.calls("edit_image")
        assert edit["arguments"] == {"prompt": "make it night", "images": [task_id], "timeout_s": STEP_S}

        # Upscale goes through the bridge and the client to the server; the new picture replaces the view.
        await host.frame.click("#upscale")
        await host.frame.wait_for_function(
            "(id) => document.querySelector('[data-fact=task]').textContent !== id", arg=task_id, timeout=WAIT_S * 1000
        )
        await host.images_loaded(1)
        assert await host.text("#task-title") == "Upscaled image" and await host.text("#status") == "completed"
        upscaled_id = await host.text("[data-fact=task]")
        (upscale,) = await host.calls("upscale_image")
        assert upscale["arguments"] == {"image": task_id, "timeout_s": STEP_S} and upscale["outcome"] == "ok"
        await host.page.screenshot(path=screenshot_path("apps-bridge-task"), full_page=True)

        # The chat never saw that call: the model is told, through ui/update-model-context.
        upscaled = await harness.call("get_task", {"task_id": upscaled_id})
        (image,) = upscaled.structured_content["images"]
        context = (await host.record())["modelContext"][-1]
        (block,) = context["content"]
        assert block["type"] == "text" and upscaled_id in block["text"] and task_id in block["text"]
        assert "upscale_image" in block["text"] and "completed" in block["text"] and image["uri"] in block["text"]
        (made,) = context["structuredContent"]["made_in_view"]
        assert made["task_id"] == upscaled_id and made["tool"] == "upscale_image" and made["source"] == task_id
        assert made["status"] == "completed" and made["images"] == [image["uri"]]
        await host.frame.click("#back")
        assert await host.text("[data-fact=task]") == task_id


async def test_without_server_tools_the_buttons_are_off_and_say_why(
    ext_apps: str, harness: Harness, browser: Browser
) -> None:
    arguments = {"prompt": "a quiet harbour"}
    result = await harness.call("generate_image", arguments)
    assert not result.is_error, text_of(result)
    # A host that renders views but forwards no calls from them, and says so (no serverTools).
    setup = bridge_setup(
        "generate_image", arguments, result=wire(result), forwardTools=False, hostCapabilities={"openLinks": {}}
    )
    async with official_host(browser, ext_apps, harness.app.server, setup) as host:
        await host.images_loaded(1)
        for button in ("#edit", "#upscale", "#variations"):
            assert await host.frame.is_disabled(button), button
            assert "does not forward" in (await host.frame.get_attribute(button, "title") or "")
        assert await host.frame.is_enabled("#open")
        note = await host.text("#tools-off")
        assert "ext-apps-test-host does not let this view call runapi-mcp's tools" in note
        assert "offers no serverTools" in note and "Ask in the chat" in note
        await host.page.screenshot(path=screenshot_path("apps-bridge-no-tools"), full_page=True)
        assert await host.calls() == []

    # A host that claims server tools but answers the view's calls with "Method not found".
    setup = bridge_setup("generate_image", arguments, result=wire(result), forwardTools=False)
    async with official_host(browser, ext_apps, harness.app.server, setup) as host:
        await host.images_loaded(1)
        assert await host.frame.is_hidden("#tools-off") and await host.frame.is_enabled("#upscale")
        await host.frame.click("#variations")
        await host.frame.wait_for_selector("#tools-off:not([hidden])")
        assert "Method not found" in await host.text("#tools-off")
        for button in ("#edit", "#upscale", "#variations"):
            assert await host.frame.is_disabled(button), button


async def test_gallery_tiles_over_the_thumbnail_budget_say_why_and_load_on_request(
    ext_apps: str, harness: Harness, browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = await make_tasks(harness)
    async with apps_client(harness) as client:
        full = await client.call_tool("gallery", {})
    thumbs = (full.meta or {})[THUMBNAILS_META_KEY]
    sizes = {task_id: len(base64.b64decode(uri.split(",", 1)[1])) for task_id, uri in thumbs.items()}
    assert set(sizes) == set(ids.values()) and THUMBNAILS_OMITTED_META_KEY not in (full.meta or {})
    # A budget the largest thumbnail just fits (so each loads alone): the first goes, two do not fit together.
    budget = max(sizes.values())
    monkeypatch.setattr(apps_ui, "THUMB_BUDGET_BYTES", budget)
    async with apps_client(harness) as client:
        listed = await client.call_tool("gallery", {})
    meta = listed.meta or {}
    order = [t["task_id"] for t in listed.structured_content["tasks"]]  # newest first, as the budget is spent
    sent: list[str] = []
    left_out: list[str] = []
    spent = 0
    for task_id in order:
        fits = spent + sizes[task_id] <= budget
        (sent if fits else left_out).append(task_id)
        spent += sizes[task_id] if fits else 0
    assert list(meta[THUMBNAILS_META_KEY]) == sent and sent[0] == order[0] and left_out
    assert meta[THUMBNAILS_OMITTED_META_KEY] == {"task_ids": left_out, "budget_bytes": budget}

    async with official_host(browser, ext_apps, harness.app.server, bridge_setup("gallery", {})) as host:
        await host.frame.wait_for_function("() => document.querySelectorAll('.tile').length === 3")
        await host.images_loaded(len(sent))
        blank = await host.frame.eval_on_selector_all(
            ".tile .thumb[data-omitted]", "nodes => nodes.map(n => n.closest('.tile').dataset.taskId)"
        )
        assert sorted(blank) == sorted(left_out)
        assert "Thumbnail not sent: over the size limit of one answer." in await host.text(".tile .thumb[data-omitted]")
        plural = "thumbnail" if len(left_out) == 1 else "thumbnails"
        assert await host.text("#thumbs-note") == (
            f"{len(left_out)} {plural} not sent: one answer carries at most {round(budget / 1000)} KB of them, newest first."
        )
        assert await host.text("#load-thumbs") == f"Load {len(left_out)} more"
        await host.page.screenshot(path=screenshot_path("apps-bridge-gallery-budget"), full_page=True)

        await host.frame.click("#load-thumbs")
        await host.frame.wait_for_selector("#thumbs", state="hidden")
        await host.images_loaded(3)
        assert await host.frame.eval_on_selector_all(".tile img", "nodes => nodes.length") == 3
        loads = await host.calls("gallery")
        assert [c["arguments"]["query"] for c in loads] == left_out
        assert all(c["arguments"]["limit"] == 3 and c["outcome"] == "ok" for c in loads)
