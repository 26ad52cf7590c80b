"""The web gallery (``/gallery``, ``runapi-mcp gallery``) over real loopback HTTP, in headless Chromium
where one is installed, and with plain HTTP for auth, isolation, caching and the CLI.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, get_type_hints

import anyio
import httpx
import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from playwright.async_api import Browser, Page

from runapi_mcp.app import App, open_app
from runapi_mcp.commands import gallery as gallery_command
from runapi_mcp.http import gallery, gallery_page
from runapi_mcp.http.app import HttpOptions
from runapi_mcp.http.serve import http_server
from runapi_mcp.simulator import Simulator
from runapi_mcp.tasks import ImageRecord, ImageStore, Preview
from tests.browser import screenshot_path
from tests.support import FAST_POLICY, Harness, make_settings, server_env, text_of
from tests.test_auth_tokens import AUDIENCE, JWKS_PATH, Issuer, Keys, claims, issuer, keys, mint

pytestmark = pytest.mark.anyio

__all__ = ["issuer", "keys"]  # fixtures used here, defined beside the verifier's own tests

TOKEN = "gallery-shared-token-0123456789abcdef"
XSS_PROMPT = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> "quoted" & more'


async def generate(client: Client, prompt: str, model: str = "gpt-image-2") -> dict[str, Any]:
    result = await client.call_tool("generate_image", {"prompt": prompt, "model": model})
    assert not result.is_error, text_of(result)
    data = result.structured_content
    assert data is not None and data["status"] == "completed", data
    return dict(data)


async def generate_all(client: Client, jobs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Several tasks at once (each takes a fraction of a second on the simulator)."""
    out: list[dict[str, Any]] = [{} for _ in jobs]

    async def one(n: int, prompt: str, model: str) -> None:
        out[n] = await generate(client, prompt, model)

    async with anyio.create_task_group() as tg:
        for n, (prompt, model) in enumerate(jobs):
            tg.start_soon(one, n, prompt, model)
    return out


def image_id(task: dict[str, Any]) -> str:
    return str(task["images"][0]["uri"]).removeprefix("runapi://images/")


@asynccontextmanager
async def served(app: App) -> AsyncIterator[str]:
    async with http_server(app, HttpOptions(port=0), app.settings) as running:
        yield f"http://127.0.0.1:{running.port}"


@asynccontextmanager
async def served_with_token(sim: Simulator, home: Path, inputs: Path) -> AsyncIterator[tuple[App, Client, str]]:
    settings = make_settings(sim, home, inputs, auth_token=TOKEN)
    async with (
        open_app(settings, policy=FAST_POLICY) as app,
        Client(app.server, mode="legacy") as client,  # in process: the local owner, as the shared token is
        http_server(app, HttpOptions(port=0), settings) as running,
    ):
        yield app, client, f"http://127.0.0.1:{running.port}"


def cookie_of(answer: httpx.Response) -> str:
    header = answer.headers["set-cookie"]
    match = re.match(r"runapi_gallery=([^;]*);", header)
    assert match is not None, header
    return match.group(1)


# -- in the browser --------------------------------------------------------------------------------


async def test_the_gallery_in_a_browser(harness: Harness, browser: Browser) -> None:
    fox, whale, hostile = await generate_all(
        harness.client,
        [
            ("a red fox in fresh snow", "gpt-image-2"),
            ("a blue whale under the sea", "imagen-4"),
            (XSS_PROMPT, "gpt-image-2"),
        ],
    )
    async with served(harness.app) as base:
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: dialogs.append(dialog.message))
        problems: list[str] = []  # a CSP violation (a blocked inline style or script) is a console error
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        answer = await page.goto(f"{base}/gallery")
        assert answer is not None and answer.status == 200
        tiles = page.locator("li.tile")
        assert await tiles.count() == 3
        await page.wait_for_function(
            "() => [...document.querySelectorAll('li.tile img')].every(i => i.complete && i.naturalWidth > 0)",
            timeout=10_000,
        )
        assert await page.locator("li.tile img").count() == 3
        body = await page.inner_text("main")
        for text in (
            "a red fox in fresh snow",
            "a blue whale under the sea",
            "imagen-4",
            "gpt-image-2",
            fox["task_id"],
        ):
            assert text in body
        assert re.search(r"\d+×\d+", body)  # the size
        # The hostile prompt is text on the page, and nothing of it ran.
        assert XSS_PROMPT in body
        assert await page.evaluate("() => window.__pwned") is None and not dialogs
        await page.screenshot(path=str(screenshot_path("web-gallery")), full_page=True)
        assert not problems, problems

        # Filters: the model select submits by itself (JavaScript) ...
        async with page.expect_navigation():
            await page.select_option("select[name=model]", "imagen-4")
        assert "model=imagen-4" in page.url
        assert await tiles.count() == 1 and whale["task_id"] in await tiles.first.inner_text()
        # ... the query string works without it ...
        await page.goto(f"{base}/gallery?q=FOX")
        assert await tiles.count() == 1 and fox["task_id"] in await tiles.first.inner_text()
        await page.goto(f"{base}/gallery?status=failed")
        assert await tiles.count() == 0
        # ... and typing narrows the page at once.
        await page.goto(f"{base}/gallery")
        await page.fill("input[name=q]", "whale")
        assert await page.locator("li.tile:visible").count() == 1
        await page.screenshot(path=str(screenshot_path("web-gallery-filtered")), full_page=True)

        # The model filter lists the library's models, not the catalog's sixty.
        options = await page.locator("select[name=model] option").evaluate_all("os => os.map(o => o.value)")
        assert options == ["", "gpt-image-2", "imagen-4"]

        # The picture's link is its file (without JavaScript, or a middle click); the download is named.
        wanted = image_id(fox)
        assert await page.locator(f"#image-{wanted} a.thumb").get_attribute("href") == f"/gallery/images/{wanted}"
        full = await page.request.get(f"{base}/gallery/images/{wanted}")
        assert full.status == 200
        download = await page.request.get(f"{base}/gallery/download/{wanted}")
        assert download.status == 200 and download.headers["content-type"] == "image/png"
        name = re.fullmatch(
            r'attachment; filename="(a-red-fox-in-fresh-snow-[0-9a-f]{8}\.png)"',
            download.headers["content-disposition"],
        )
        assert name is not None  # and "Save image as" on the picture shown offers the same name
        assert full.headers["content-disposition"] == f'inline; filename="{name.group(1)}"'
        assert hostile["task_id"]  # made, shown as text above
        await page.close()


LONG_PROMPT = "a lighthouse on a cliff at dusk, " * 40 + "the end of a long prompt"  # past the tile's 1000 chars


async def _lightbox_shows(page: Page, wanted: str, width: int) -> None:
    """The lightbox is open on ``wanted``, at full size (the file, not the thumbnail)."""
    await page.wait_for_function(
        """([id, width]) => {
            const box = document.getElementById("lightbox"), image = document.getElementById("lb-image");
            return box.open && image.complete && image.naturalWidth === width
                && image.src.endsWith(`/gallery/images/${id}`) && location.hash === `#image-${id}`;
        }""",
        arg=[wanted, width],
        timeout=10_000,
    )


async def _clipboard(page: Page) -> str:
    return str(await page.evaluate("() => navigator.clipboard.readText()"))


async def test_the_lightbox_copying_downloads_counts_and_sources_in_a_browser(
    harness: Harness, browser: Browser
) -> None:
    fox, whale, long = await generate_all(
        harness.client,
        [
            ("a red fox in fresh snow", "gpt-image-2"),
            ("a blue whale under the sea", "imagen-4"),
            (LONG_PROMPT, "gpt-image-2"),
        ],
    )
    # An upscale of the fox (by its task id) and an edit of the whale (by its library URI): each links to its source.
    upscaled = await harness.call("upscale_image", {"image": fox["task_id"]})
    edited = await harness.call(
        "edit_image", {"prompt": "the whale at night", "images": [f"runapi://images/{image_id(whale)}"]}
    )
    upscaled, edited = upscaled.structured_content, edited.structured_content
    assert upscaled["status"] == edited["status"] == "completed"
    # Newest first: the edit, the upscale, the long prompt, the whale, the fox.
    order = [image_id(t) for t in (edited, upscaled, long, whale, fox)]
    async with served(harness.app) as base:
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
        page = await context.new_page()
        problems: list[str] = []
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        await page.goto(f"{base}/gallery")
        assert await page.locator("li.tile").evaluate_all("ts => ts.map(t => t.dataset.image)") == order
        assert await page.inner_text("#count") == "5 pictures"
        await page.wait_for_function(
            "() => [...document.querySelectorAll('li.tile img')].every(i => i.complete && i.naturalWidth > 0)",
            timeout=10_000,
        )
        await page.screenshot(path=str(screenshot_path("web-gallery-sources")), full_page=True)
        assert "5 pictures in the library" in await page.inner_text(".summary")
        options = await page.locator("select[name=model] option").evaluate_all("os => os.map(o => o.value)")
        assert options == ["", *sorted({"gpt-image-2", "imagen-4", upscaled["model"]})]

        # A click opens the picture full size on the page; the arrow keys move; Escape closes.
        await page.click(f"#image-{order[3]} a.thumb")  # the whale
        await _lightbox_shows(page, order[3], whale["images"][0]["width"])
        assert page.url == f"{base}/gallery#image-{order[3]}"  # still the gallery: not the raw PNG
        assert await page.inner_text("#lb-count") == "4 / 5"
        assert await page.inner_text("#lb-prompt") == "a blue whale under the sea"
        assert "imagen-4" in await page.inner_text("#lb-meta")
        await page.screenshot(path=str(screenshot_path("web-gallery-lightbox")))
        await page.keyboard.press("ArrowRight")
        await _lightbox_shows(page, order[4], fox["images"][0]["width"])
        assert await page.inner_text("#lb-count") == "5 / 5" and await page.is_disabled("#lb-next")
        await page.keyboard.press("ArrowRight")  # the last: stays
        await _lightbox_shows(page, order[4], fox["images"][0]["width"])
        for _ in range(2):
            await page.keyboard.press("ArrowLeft")
        await _lightbox_shows(page, order[2], long["images"][0]["width"])
        assert await page.inner_text("#lb-prompt") == LONG_PROMPT  # whole, though the tile shows 1000 chars
        # Copy the prompt from the lightbox: the whole of it.
        await page.click("#lb-copy")
        assert await _clipboard(page) == LONG_PROMPT
        assert await page.text_content("#said") == "Prompt copied"  # said to a screen reader (the button says it too)
        await page.keyboard.press("Escape")
        await page.wait_for_function("() => !document.getElementById('lightbox').open && !location.hash")
        assert page.url == f"{base}/gallery"
        assert await page.evaluate("() => document.activeElement.closest('li.tile').dataset.image") == order[2]

        # One click copies a tile's prompt.
        await page.click(f"#image-{order[4]} button.copy")
        assert await _clipboard(page) == "a red fox in fresh snow"

        # A download is named from its prompt (Content-Disposition, and the link's own download name).
        async with page.expect_download() as started:
            await page.click(f"#image-{order[4]} a.download")
        download = await started.value
        assert re.fullmatch(r"a-red-fox-in-fresh-snow-[0-9a-f]{8}\.png", download.suggested_filename)
        async with page.expect_download() as started:
            await page.click(f"#image-{order[0]} a.download")
        assert re.fullmatch(r"the-whale-at-night-[0-9a-f]{8}\.png", (await started.value).suggested_filename)
        # An upscale has no prompt of its own: it is named from its source's.
        named = await page.request.get(f"{base}/gallery/download/{order[1]}")
        assert re.fullmatch(
            r'attachment; filename="upscaled-a-red-fox-in-fresh-snow-[0-9a-f]{8}\.png"',
            named.headers["content-disposition"],
        )
        assert await page.get_attribute(f"#image-{order[1]} a.download", "download") == re.search(
            r'filename="([^"]+)"', named.headers["content-disposition"]
        ).group(1)  # type: ignore[union-attr]

        # The upscale and the edit link to their sources; on this page, the link opens the source in the lightbox.
        upscale_source = page.locator(f"#image-{order[1]} .source")
        assert (await upscale_source.inner_text()).startswith("Upscaled from")
        assert "Edited from" in await page.inner_text(f"#image-{order[0]} .source")
        href = await page.locator(f"#image-{order[0]} a.source-link").get_attribute("href")
        assert href == f"/gallery?task={whale['task_id']}#image-{order[3]}"
        await upscale_source.locator("a.source-link").click()
        await _lightbox_shows(page, order[4], fox["images"][0]["width"])  # the fox, from the upscale's link
        await page.keyboard.press("Escape")
        # Opened from elsewhere (another page, a bookmark), the link shows the source's task, its picture open.
        await page.goto(f"{base}{href}")
        await _lightbox_shows(page, order[3], whale["images"][0]["width"])
        assert await page.inner_text("#lb-count") == "1 / 1"
        assert "1 picture of task" in await page.inner_text(".summary")

        # The count follows the filters, on every page.
        await page.goto(f"{base}/gallery?model=imagen-4")
        assert await page.inner_text("#count") == "1 picture"
        assert "1 picture match" in await page.inner_text(".summary")
        await page.goto(f"{base}/gallery?q=WHALE")
        assert await page.inner_text("#count") == "2 pictures"
        assert not problems, problems
        await context.close()


async def test_the_gallery_on_a_phone(harness: Harness, browser: Browser) -> None:
    made = await generate_all(
        harness.client,
        [
            ("a red fox in fresh snow", "gpt-image-2"),
            ("a blue whale under the sea", "imagen-4"),
            ("a kite", "gpt-image-2"),
        ],
    )
    async with served(harness.app) as base:
        context = await browser.new_context(
            viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
        )
        page = await context.new_page()
        await page.goto(f"{base}/gallery")
        await page.wait_for_function(
            "() => [...document.querySelectorAll('li.tile img')].every(i => i.complete && i.naturalWidth > 0)",
            timeout=10_000,
        )
        boxes = [await page.locator("li.tile").nth(n).bounding_box() for n in range(3)]
        assert all(box is not None for box in boxes)
        first, second, third = (box for box in boxes if box is not None)
        # Two pictures side by side, each about half the screen, within it; the third starts the next row.
        assert abs(first["y"] - second["y"]) < 1 and first["x"] + first["width"] <= second["x"]
        for box in (first, second):
            assert 160 <= box["width"] <= 195 and box["x"] >= 0 and box["x"] + box["width"] <= 390, box
        assert third["y"] >= first["y"] + first["height"] and abs(third["x"] - first["x"]) < 1
        assert await page.evaluate("() => document.documentElement.scrollWidth") <= 390  # no sideways scrolling
        await page.screenshot(path=str(screenshot_path("web-gallery-phone")), full_page=True)
        # A tap opens the lightbox, the picture within the screen.
        newest = image_id(made[2])
        await page.tap(f"#image-{newest} a.thumb")
        await _lightbox_shows(page, newest, made[2]["images"][0]["width"])
        picture = await page.locator("#lb-image").bounding_box()
        assert picture is not None and picture["x"] >= 0 and picture["x"] + picture["width"] <= 390
        await page.screenshot(path=str(screenshot_path("web-gallery-phone-lightbox")))
        await context.close()


async def test_signing_in_and_out_through_the_form_in_a_browser(
    sim: Simulator, home: Path, inputs: Path, browser: Browser
) -> None:
    async with served_with_token(sim, home, inputs) as (_, client, base):
        await generate(client, "a lighthouse at dusk")
        context = await browser.new_context()  # nothing set by hand: no header, no cookie
        page = await context.new_page()
        answer = await page.goto(f"{base}/gallery")
        assert answer is not None and answer.status == 401 and "lighthouse" not in await page.inner_text("body")
        # A wrong token: the form again, saying so.
        await page.fill("input[name=token]", "not-the-token")
        async with page.expect_navigation():
            await page.click("button[type=submit]")
        assert "not accepted" in await page.inner_text("body")
        # The right one: the gallery, kept in an HttpOnly cookie for /gallery.
        await page.fill("input[name=token]", TOKEN)
        async with page.expect_navigation():
            await page.click("button[type=submit]")
        assert page.url == f"{base}/gallery"
        assert "a lighthouse at dusk" in await page.inner_text("main")
        [cookie] = await context.cookies()
        assert cookie["name"] == gallery.COOKIE_NAME and cookie["httpOnly"] and cookie["path"] == "/gallery"
        assert cookie["sameSite"] == "Strict" and TOKEN not in cookie["value"]
        assert await page.evaluate("() => document.cookie") == ""  # not readable by the page's script
        await page.screenshot(path=str(screenshot_path("web-gallery-signed-in")))
        again = await page.goto(f"{base}/gallery")  # the session holds
        assert again is not None and again.status == 200
        # Sign out with the page's button: the cookie goes, the gallery asks for the token again.
        async with page.expect_navigation():
            await page.click(".signout button")
        assert await context.cookies() == []
        assert await page.locator("input[name=token]").count() == 1
        gone = await page.goto(f"{base}/gallery")
        assert gone is not None and gone.status == 401 and "lighthouse" not in await page.inner_text("body")
        await context.close()


# -- over plain HTTP -------------------------------------------------------------------------------


async def test_the_page_escapes_every_text_and_sends_the_security_headers(harness: Harness) -> None:
    (made,) = await generate_all(harness.client, [(XSS_PROMPT, "gpt-image-2")])
    async with served(harness.app) as base, httpx.AsyncClient(base_url=base) as http:
        answer = await http.get("/gallery")  # loopback, no auth configured: no token needed
    assert answer.status_code == 200
    page = answer.text
    assert "<script>window.__pwned" not in page and 'onerror="window' not in page
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;&lt;img src=x onerror=&#34;window.__pwned" in page
    assert made["task_id"] in page
    csp = answer.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp
    nonce = re.search(r"'nonce-([^']+)'", csp)
    assert nonce is not None
    assert page.count(f'nonce="{nonce.group(1)}"') == 2  # the one <style> and the one <script>
    assert page.count("<script") == 1
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "same-origin"  # no-referrer makes Chromium's form POST Origin: null
    assert answer.headers["cache-control"] == "no-store"


async def test_http_mode_needs_the_token_and_a_browser_keeps_it_in_a_cookie(
    sim: Simulator, home: Path, inputs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with served_with_token(sim, home, inputs) as (_, client, base), httpx.AsyncClient(base_url=base) as http:
        made = await generate(client, "a lighthouse at dusk")
        wanted = image_id(made)
        pictures = [f"/gallery/thumbs/{wanted}", f"/gallery/images/{wanted}", f"/gallery/download/{wanted}"]

        refused = await http.get("/gallery")
        assert refused.status_code == 401 and 'name="token"' in refused.text
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert "lighthouse" not in refused.text
        for path in pictures:
            assert (await http.get(path)).status_code == 401, path
        wrong = await http.get("/gallery", params={"token": "not-the-token"})
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers

        # ?token= never signs in by itself: it opens the form filled in, which goes on to the link's filters.
        link = await http.get("/gallery", params={"token": TOKEN, "model": "gpt-image-2"})
        assert link.status_code == 200 and "set-cookie" not in link.headers
        assert f'value="{TOKEN}"' in link.text and "shared token" in link.text and "lighthouse" not in link.text
        assert 'name="next" value="/gallery?model=gpt-image-2"' in link.text
        signed = await http.post(
            "/gallery/login", data={"token": TOKEN, "next": "/gallery?model=gpt-image-2"}, headers={"Origin": base}
        )
        assert signed.status_code == 303
        assert signed.headers["location"] == "/gallery?model=gpt-image-2"
        set_cookie = signed.headers["set-cookie"]
        for attribute in ("HttpOnly", "Path=/gallery", "SameSite=strict", "Max-Age="):
            assert attribute.lower() in set_cookie.lower(), set_cookie
        assert TOKEN not in set_cookie
        cookie = {"Cookie": f"runapi_gallery={cookie_of(signed)}"}
        http.cookies.clear()  # each request below says what it carries

        page = await http.get("/gallery?model=gpt-image-2", headers=cookie)
        assert page.status_code == 200 and "a lighthouse at dusk" in page.text and "Sign out" in page.text
        thumb = await http.get(pictures[0], headers=cookie)
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        full = await http.get(pictures[1], headers=cookie)
        assert full.status_code == 200 and full.headers["content-disposition"].startswith("inline;")
        download = await http.get(pictures[2], headers=cookie)
        assert download.status_code == 200 and download.headers["content-disposition"].startswith("attachment;")
        assert download.content == full.content
        # The bearer header works too; the cookie works nowhere but the gallery.
        assert (await http.get("/gallery", headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 200
        assert (await http.get(f"/files/{wanted}", headers=cookie)).status_code == 401
        assert (await http.post("/mcp", headers=cookie, json={})).status_code == 401

        # The sign-in form: only from this server's own page; a bad token sets nothing.
        form = {"token": TOKEN}
        cross = await http.post("/gallery/login", data=form, headers={"Origin": base.replace("127.0.0.1", "localhost")})
        assert cross.status_code == 403 and "set-cookie" not in cross.headers
        bad = await http.post("/gallery/login", data={"token": "nope"}, headers={"Origin": base})
        assert bad.status_code == 401 and "set-cookie" not in bad.headers
        login = await http.post("/gallery/login", data=form, headers={"Origin": base})
        assert login.status_code == 303 and login.headers["location"] == "/gallery"
        again = {"Cookie": f"runapi_gallery={cookie_of(login)}"}
        http.cookies.clear()
        assert (await http.get("/gallery", headers=again)).status_code == 200
        logout = await http.post("/gallery/logout", headers={**again, "Origin": base})
        assert logout.status_code == 303 and 'runapi_gallery=""' in logout.headers["set-cookie"]
        # A cookie that no longer verifies (a rotated token) is refused and cleared.
        stale = {"Cookie": "runapi_gallery=" + base64.urlsafe_b64encode(b"rotated-away").decode()}
        gone = await http.get("/gallery", headers=stale)
        assert gone.status_code == 401 and "runapi_gallery=" in gone.headers.get("set-cookie", "")
    # The server's logs (not the test client's, which logs its own request URLs) never carry the token.
    server_logs = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore")))
    assert server_logs and TOKEN not in server_logs and cookie_of(signed) not in server_logs


async def test_each_user_sees_only_their_own(
    sim: Simulator, home: Path, inputs: Path, issuer: Issuer, keys: Keys
) -> None:
    settings = make_settings(
        sim, home, inputs, jwt_issuer=issuer.url, jwt_audience=AUDIENCE, jwt_jwks_url=issuer.url + JWKS_PATH
    )
    alice_token = mint(keys.rsa, claims(issuer.url, sub="alice"))
    bob_token = mint(keys.rsa, claims(issuer.url, sub="bob"))
    options = HttpOptions(port=0, jwt_issuer=settings.jwt_issuer)
    async with open_app(settings, policy=FAST_POLICY) as app, http_server(app, options, settings) as running:
        base = f"http://127.0.0.1:{running.port}"
        http_client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {alice_token}"}, timeout=30)
        async with Client(streamable_http_client(f"{base}/mcp", http_client=http_client), mode="legacy") as alice:
            made = await generate(alice, "alice's private picture", "imagen-4")
        wanted = image_id(made)
        pictures = [f"/gallery/thumbs/{wanted}", f"/gallery/images/{wanted}", f"/gallery/download/{wanted}"]
        async with httpx.AsyncClient(base_url=base) as http:
            as_alice = {"Authorization": f"Bearer {alice_token}"}
            page = await http.get("/gallery", headers=as_alice)
            assert page.status_code == 200 and "alice&#39;s private picture" in page.text
            for path in pictures:
                assert (await http.get(path, headers=as_alice)).status_code == 200, path
            # Bob, by header or by cookie: nothing of alice's, and her pictures are not found.
            link = await http.get("/gallery", params={"token": bob_token})
            assert link.status_code == 200 and "as <strong>bob</strong>" in link.text  # says whom it signs in as
            signed = await http.post("/gallery/login", data={"token": bob_token}, headers={"Origin": base})
            assert signed.status_code == 303
            max_age = int(re.search(r"Max-Age=(\d+)", signed.headers["set-cookie"]).group(1))  # type: ignore[union-attr]
            assert 0 < max_age <= 330  # no longer than the JWT is accepted (its exp, plus the 30 s leeway)
            for as_bob in ({"Authorization": f"Bearer {bob_token}"}, {"Cookie": f"runapi_gallery={cookie_of(signed)}"}):
                page = await http.get("/gallery", headers=as_bob)
                assert (
                    page.status_code == 200 and "private picture" not in page.text and made["task_id"] not in page.text
                )
                assert "No images yet" in page.text and "0 pictures" in page.text
                assert 'value="imagen-4"' not in page.text  # the model filter lists only bob's models
                for path in pictures:
                    assert (await http.get(path, headers=as_bob)).status_code == 404, path
                assert (await http.get("/gallery?q=private", headers=as_bob)).text.count("li class") == 0
                task_page = await http.get("/gallery", params={"task": made["task_id"]}, headers=as_bob)
                assert task_page.text.count("li class") == 0 and "private picture" not in task_page.text

            # Bob edits alice's picture by its URL (he may fetch any URL): his edit names no picture of hers.
            http_client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {bob_token}"}, timeout=30)
            async with Client(streamable_http_client(f"{base}/mcp", http_client=http_client), mode="legacy") as bob:
                result = await bob.call_tool(
                    "edit_image", {"prompt": "bob's edit", "images": [made["images"][0]["url"]]}
                )
            assert not result.is_error, text_of(result)
            text = (await http.get("/gallery", headers={"Authorization": f"Bearer {bob_token}"})).text
            assert "bob&#39;s edit" in text and "Edited from" in text and "an image at 127.0.0.1" in text
            assert made["task_id"] not in text and wanted not in text and 'value="imagen-4"' not in text
            # And alice's page shows nothing of bob's.
            text = (await http.get("/gallery", headers=as_alice)).text
            assert "bob" not in text and 'class="source-link"' not in text


def test_download_names_come_from_the_prompt() -> None:
    name, plain = gallery_page.download_names("A red fox, in fresh snow!", "img-1", "image/png")
    assert name == plain and re.fullmatch(r"a-red-fox-in-fresh-snow-[0-9a-f]{8}\.png", name)
    other, _ = gallery_page.download_names("A red fox, in fresh snow!", "img-2", "image/png")
    assert other != name and other.startswith("a-red-fox-in-fresh-snow-")  # one prompt, two pictures
    name, plain = gallery_page.download_names("Café crème sous la neige, 狐狸", "img-1", "image/webp")
    assert name.startswith("café-crème-sous-la-neige-狐狸-") and name.endswith(".webp")
    assert plain.startswith("cafe-creme-sous-la-neige-") and plain.isascii()
    assert gallery_page.download_names("狐狸", "img-1", "image/png")[1].startswith("image-")
    assert gallery_page.download_names(None, "img-1", None)[0].startswith("image-")
    long, _ = gallery_page.download_names("word " * 100, "img-1", "image/jpeg")
    assert len(long) <= gallery_page.SLUG_CHARS + len("-12345678.jpg") and not long.startswith("-")
    # Nothing from the prompt can break out of the header or name a path.
    name, plain = gallery_page.download_names('../../etc/passwd"; x=1\r\nSet-Cookie: a', "img-1", "image/png")
    assert "/" not in name and '"' not in name and "\r" not in name and name.startswith("etc-passwd-x-1-set-cookie-a")
    header = gallery_page.content_disposition("Café 狐狸", "img-1", "image/png")
    assert re.fullmatch(
        r"attachment; filename=\"cafe-[0-9a-f]{8}\.png\"; filename\*=UTF-8''caf%C3%A9-%E7%8B%90%E7%8B%B8-[0-9a-f]{8}\.png",
        header,
    )
    header.encode("latin-1")  # a header's bytes


def test_sources_and_hostile_values_are_escaped() -> None:
    hostile = '"><script>window.__pwned = 1</script>'
    tile = gallery_page.Tile(
        task_id=hostile,
        model=hostile,
        status="completed",
        prompt=hostile * 40,  # past the tile's cut: the whole prompt goes in data-prompt
        created_at=0,
        price_cents=None,
        image_id="img-1",
        action="edit_image",
        sources=(
            gallery_page.Source(image_id="img-0", task_id=hostile, has_file=True),
            gallery_page.Source(url=f"https://example.com/{hostile}"),
            *[gallery_page.Source(url="https://example.com/x.png")] * 5,
        ),
    )
    view = gallery_page.GalleryView(
        base="/gallery",
        tiles=[tile],
        filters=gallery_page.Filters(task=hostile),
        models=[hostile],
        statuses=["completed"],
        next_cursor=None,
        first_page=True,
        count=1,
    )
    page = gallery_page.render_gallery(view, "nonce", thumb_edge=512)
    assert "<script>window" not in page and page.count("<script") == 1
    assert 'data-prompt="&#34;&gt;&lt;script&gt;' in page
    assert 'href="/gallery?task=%22%3E%3Cscript%3E' in page  # the source's task, URL-encoded
    assert 'href="https://example.com/&#34;&gt;&lt;script&gt;' in page and 'rel="noopener noreferrer"' in page
    assert "Edited from" in page and "and 3 more" in page and "1 picture</strong> of task <code>&#34;&gt;" in page


HOSTILE = "\"'><script>alert(1)</script><img src=x onerror=alert(2)>"
PAGES = ("gallery of one task", "gallery filtered", "sign-in", "sign-in link", "problem")


def _filled(cls: type[Any], value: str, **fixed: Any) -> Any:
    """An instance of a page's view dataclass with ``value`` in every text field (``fixed`` aside), in every
    text of a list and in every view nested in it: a field added later is covered without touching this test.
    A field of another type takes its default (numbers, flags) or must be given."""
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        if field.name in fixed:
            values[field.name] = fixed[field.name]
        elif kind in (str, str | None):
            values[field.name] = value
        elif kind == Sequence[str]:
            values[field.name] = [value]
        elif dataclasses.is_dataclass(kind):
            values[field.name] = _filled(kind, value)  # type: ignore[arg-type]
        else:
            assert field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING, (
                f"{cls.__name__}.{field.name} ({kind}): give it in this test"
            )
    return cls(**values)


def _pages(value: str) -> dict[str, str]:
    """Every page the gallery renders, with ``value`` in every text it takes."""
    source = _filled(gallery_page.Source, value)  # in the library: its image and task ids in a link
    elsewhere = gallery_page.Source(url="https://example.com/" + value)  # an http(s) URL: the routes keep no other
    tiles = [
        _filled(gallery_page.Tile, value, created_at=0, price_cents=None, sources=(source, elsewhere)),
        _filled(gallery_page.Tile, value, created_at=0, price_cents=None, image_id=None),  # no picture
    ]
    page: dict[str, Any] = {"tiles": tiles, "next_cursor": value, "first_page": False, "count": 2}
    one_task = _filled(gallery_page.GalleryView, value, **page)
    filtered = _filled(gallery_page.GalleryView, value, **page, filters=gallery_page.Filters(q=value, model=value))
    return {
        "gallery of one task": gallery_page.render_gallery(one_task, value, thumb_edge=512),
        "gallery filtered": gallery_page.render_gallery(filtered, value, thumb_edge=512),
        "sign-in": gallery_page.render_signin(value, value, error=value),
        "sign-in link": gallery_page.render_signin(value, value, link=_filled(gallery_page.SignInLink, value)),
        "problem": gallery_page.render_problem(value, value, value),
    }


class _Parsed(HTMLParser):
    """A page as a browser's parser reads it: its elements with their attributes' names, and its texts
    (attribute values included, their character references decoded)."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, tuple[str, ...]]] = []
        self.texts: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, tuple(name for name, _ in attrs)))
        self.texts += [value for _, value in attrs if value]

    def handle_data(self, data: str) -> None:
        self.texts.append(data)


@pytest.mark.parametrize("name", PAGES)
def test_a_script_tag_and_quotes_in_every_user_controlled_field_come_out_escaped(name: str) -> None:
    """With ``<script>``, an ``onerror`` and both quotes in every text a page takes, the page has the same
    elements and attributes, in the same order, as with a plain word: the text changed no markup. And the
    text is on the page whole, as text, for the reader."""
    page = _pages(HOSTILE)[name]
    parsed, plain = _Parsed(page), _Parsed(_pages("plain")[name])
    assert parsed.elements == plain.elements
    assert any(HOSTILE in text for text in parsed.texts)
    assert "<script>alert" not in page and "onerror=alert(2)>" not in page


async def test_a_thumbnail_is_made_once_and_cached_on_disk(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    (made,) = await generate_all(harness.client, [("a cached thumbnail", "gpt-image-2")])
    renders: list[tuple[str, int]] = []
    real = ImageStore.render_preview

    def counting(store: ImageStore, image: ImageRecord, max_edge: int = 1024, *args: Any, **kw: Any) -> Preview:
        renders.append((image.id, max_edge))
        return real(store, image, max_edge, *args, **kw)

    monkeypatch.setattr(ImageStore, "render_preview", counting)
    wanted = image_id(made)
    async with served(harness.app) as base, httpx.AsyncClient(base_url=base) as http:
        first = await http.get(f"/gallery/thumbs/{wanted}")
        second = await http.get(f"/gallery/thumbs/{wanted}")
    assert first.status_code == second.status_code == 200
    assert first.content == second.content and first.content[:3] == b"\xff\xd8\xff"  # a JPEG
    assert renders == [(wanted, gallery.THUMB_EDGE)]  # decoded once; the second came from the cache
    assert "immutable" in first.headers["cache-control"]
    previews = harness.app.manager.images.root / ".previews"
    assert (previews / f"{wanted}-{gallery.THUMB_EDGE}-{gallery.THUMB_BYTES}.jpg").is_file()


async def test_pages_newest_first_with_a_cursor(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    for prompt in ("first kite", "second kite", "third kite"):  # one after another: distinct creation times
        await generate(harness.client, prompt)
    monkeypatch.setattr(gallery, "PAGE_TASKS", 2)
    async with served(harness.app) as base, httpx.AsyncClient(base_url=base) as http:
        page = (await http.get("/gallery")).text
        assert page.index("third kite") < page.index("second kite") and "first kite" not in page
        older = re.search(r'<a rel="next" href="([^"]+)"', page)
        assert older is not None
        page = (await http.get(older.group(1).replace("&amp;", "&"))).text
        assert "first kite" in page and "second kite" not in page and 'rel="next"' not in page
        assert (await http.get("/gallery?cursor=not-a-cursor")).status_code == 400
        # A text search that reaches its scan limit links on from where it stopped.
        monkeypatch.setattr(gallery, "SCAN_BATCH", 1)
        monkeypatch.setattr(gallery, "SCAN_LIMIT", 2)
        page = (await http.get("/gallery?q=first")).text
        assert "first kite" not in page and "Searched 2 tasks" in page
        older = re.search(r'<a rel="next" href="([^"]+)"', page)
        assert older is not None and "q=first" in older.group(1)
        assert "first kite" in (await http.get(older.group(1).replace("&amp;", "&"))).text


def _first_line(stream: Any, timeout: float) -> str:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    return lines.get(timeout=timeout)


async def test_the_gallery_command_serves_on_loopback_and_prints_its_url(
    harness: Harness, sim: Simulator, home: Path, inputs: Path
) -> None:
    (made,) = await generate_all(harness.client, [("a picture for the command", "gpt-image-2")])
    env = {**os.environ, **server_env(sim, home, inputs), "RUNAPI_API_KEY": ""}  # no key needed to browse
    proc = subprocess.Popen(
        [sys.executable, "-m", "runapi_mcp", "gallery", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        url = _first_line(proc.stdout, timeout=15).strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/gallery", url), url
        async with httpx.AsyncClient() as http:
            page = await http.get(url)
            assert page.status_code == 200 and "a picture for the command" in page.text
            thumb = await http.get(url + f"/thumbs/{image_id(made)}")
            assert thumb.status_code == 200
            rebound = await http.get(url, headers={"Host": "attacker.example"})  # DNS rebinding
            assert rebound.status_code == 421
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        stdout_rest, stderr = proc.communicate(timeout=5)
        assert url in stderr and not stdout_rest.strip()  # the URL is the only line on stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_gallery_command_refuses_an_address_off_loopback(
    sim: Simulator, home: Path, inputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No auth on this server: anyone who could reach the port would see the library.
    assert gallery_command.run_gallery(make_settings(sim, home, inputs), "0.0.0.0", None) == 2
    assert "loopback only" in capsys.readouterr().err
