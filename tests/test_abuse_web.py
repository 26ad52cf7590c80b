"""Login CSRF against the web gallery, replayed in a real Chromium (issue 14, item 4).

A page on another origin sends the victim's browser to ``/gallery?token=<attacker's token>``, or posts the
sign-in form itself: the browser must never end up signed in as the attacker (no cookie set, the victim's
own session unchanged). The attacker's pages are served from another loopback port, reached both as
``localhost`` (another site) and as ``127.0.0.1`` (the same site as the gallery: every port of a host is
one site, so ``SameSite`` cookies alone do not stop it). The sign-in the gallery offers, its own form in
its own page, still works, with no header set by hand.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import anyio
import httpx
import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from playwright.async_api import Browser, BrowserContext, Page

from runapi_mcp.app import open_app
from runapi_mcp.http.app import HttpOptions
from runapi_mcp.http.gallery import COOKIE_NAME
from runapi_mcp.http.serve import http_server
from runapi_mcp.simulator import Simulator
from tests.support import FAST_POLICY, make_settings, text_of
from tests.test_auth_tokens import AUDIENCE, JWKS_PATH, Issuer, Keys, claims, issuer, keys, mint

pytestmark = pytest.mark.anyio

__all__ = ["issuer", "keys"]  # fixtures used here, defined beside the verifier's own tests


class AttackerSite:
    """Another origin on this machine serving the attacker's pages (set by the test, path -> HTML)."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        self.seen: list[tuple[str, dict[str, str]]] = []  # (path, headers) of each request, in order
        pages, seen = self.pages, self.seen

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                body = pages.get(self.path, "not here").encode()
                self.send_response(200 if self.path in pages else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])

    def url(self, host: str, path: str) -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture
def attacker() -> Iterator[AttackerSite]:
    site = AttackerSite()
    thread = threading.Thread(target=site.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield site
    finally:
        site.server.shutdown()
        site.server.server_close()
        thread.join(5)


async def generate_as(base: str, token: str, prompt: str, *, images: list[str] | None = None) -> str:
    """One picture made over HTTP by the token's user (an edit of ``images`` when given); its task id."""
    http_client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    async with Client(streamable_http_client(f"{base}/mcp", http_client=http_client), mode="legacy") as client:
        if images:
            result = await client.call_tool("edit_image", {"prompt": prompt, "images": images})
        else:
            result = await client.call_tool("generate_image", {"prompt": prompt, "model": "gpt-image-2"})
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    return str(result.structured_content["task_id"])


@asynccontextmanager
async def gallery_with_users(
    sim: Simulator, home: Path, inputs: Path, issuer: Issuer, keys: Keys, *, pictures: bool = True
) -> AsyncIterator[tuple[str, str, str]]:
    """A JWT-authenticated server where alice (the victim) and mallory (the attacker) each have a picture:
    (base URL, alice's token, mallory's token)."""
    settings = make_settings(
        sim, home, inputs, jwt_issuer=issuer.url, jwt_audience=AUDIENCE, jwt_jwks_url=issuer.url + JWKS_PATH
    )
    alice = mint(keys.rsa, claims(issuer.url, sub="alice"))
    mallory = mint(keys.rsa, claims(issuer.url, sub="mallory"))
    options = HttpOptions(port=0, jwt_issuer=settings.jwt_issuer)
    async with open_app(settings, policy=FAST_POLICY) as app, http_server(app, options, settings) as running:
        base = f"http://127.0.0.1:{running.port}"
        if pictures:
            async with anyio.create_task_group() as tg:
                tg.start_soon(generate_as, base, alice, "alice's own picture")
                tg.start_soon(generate_as, base, mallory, "mallory's bait picture")
        yield base, alice, mallory


async def gallery_cookie(context: BrowserContext) -> str | None:
    found = [c["value"] for c in await context.cookies() if c["name"] == COOKIE_NAME]
    assert len(found) <= 1, found
    return found[0] if found else None


async def sign_in_with_the_form(page: Page, base: str, token: str) -> None:
    """As a person does: open the gallery, paste the token, press Open (no header set by hand)."""
    answer = await page.goto(f"{base}/gallery")
    assert answer is not None and answer.status == 401
    await page.fill("input[name=token]", token)
    async with page.expect_navigation():
        await page.click("button[type=submit]")
    assert page.url == f"{base}/gallery", page.url


async def shown_gallery(page: Page, base: str) -> str:
    answer = await page.goto(f"{base}/gallery")
    assert answer is not None
    return f"{answer.status} {await page.inner_text('body')}"


async def test_a_token_link_from_another_site_never_signs_the_browser_in(
    sim: Simulator, home: Path, inputs: Path, issuer: Issuer, keys: Keys, browser: Browser, attacker: AttackerSite
) -> None:
    async with gallery_with_users(sim, home, inputs, issuer, keys) as (base, alice, mallory):
        trap = f"{base}/gallery?token={mallory}&model=gpt-image-2"
        attacker.pages["/navigate"] = f"<script>location.href = {trap!r};</script>"
        attacker.pages["/post"] = (
            f'<form id="f" method="post" action="{base}/gallery/login">'
            f'<input name="token" value="{mallory}"><input name="next" value="/gallery"></form>'
            "<script>document.getElementById('f').submit();</script>"
        )
        # Another site (localhost vs 127.0.0.1), and the same site on another port (same-site, cross-origin).
        origins = [attacker.url("localhost", ""), attacker.url("127.0.0.1", "")]

        # 1. A browser with no session: after each attack it still has no cookie, and sees the sign-in page.
        context = await browser.new_context()
        page = await context.new_page()
        for origin in origins:
            await page.goto(origin + "/navigate")
            await page.wait_for_url(f"{base}/gallery**")
            assert await gallery_cookie(context) is None
            # The link opened the sign-in form, filled in and naming whose token it is.
            assert "mallory" in await page.inner_text("body")
            await page.wait_for_function("() => !location.search.includes('token')")  # and the URL lost it
            await page.goto(origin + "/post")
            await page.wait_for_url(f"{base}/gallery/login")
            assert "cross-site sign-in refused" in await page.inner_text("body"), origin
            assert await gallery_cookie(context) is None
        shown = await shown_gallery(page, base)
        assert shown.startswith("401") and "bait" not in shown

        # 2. The victim signs in as herself, through the page's own form (no header set by hand) ...
        await sign_in_with_the_form(page, base, alice)
        own = await gallery_cookie(context)
        assert own is not None
        assert "alice's own picture" in await page.inner_text("main")
        # ... and every attack leaves her own session as it was.
        for origin in origins:
            for attack in ("/navigate", "/post"):
                await page.goto(origin + attack)
                await page.wait_for_url(f"{base}/gallery**")
                assert await gallery_cookie(context) == own, (origin, attack)
        shown = await shown_gallery(page, base)
        assert shown.startswith("200") and "alice's own picture" in shown and "bait" not in shown

        # 3. Sign out, the page's own button; then a token link she was given herself: the filled-in form,
        # and one click of hers signs in.
        async with page.expect_navigation():
            await page.click(".signout button")
        assert await gallery_cookie(context) is None
        await page.goto(f"{base}/gallery?token={alice}&model=gpt-image-2")
        assert "alice" in await page.inner_text("body") and await gallery_cookie(context) is None
        await page.wait_for_function("() => !location.search.includes('token')")
        assert page.url == f"{base}/gallery?model=gpt-image-2"
        async with page.expect_navigation():
            await page.click("button[type=submit]")
        assert page.url == f"{base}/gallery?model=gpt-image-2"
        assert "alice's own picture" in await page.inner_text("main")
        assert await gallery_cookie(context) == own  # alice again (the cookie holds her token)
        await context.close()


async def test_sign_in_goes_on_only_to_the_gallery(
    sim: Simulator, home: Path, inputs: Path, issuer: Issuer, keys: Keys
) -> None:
    async with (
        gallery_with_users(sim, home, inputs, issuer, keys, pictures=False) as (base, alice, _),
        httpx.AsyncClient(base_url=base) as http,
    ):
        same = {"Sec-Fetch-Site": "same-origin", "Origin": base}
        for sent, lands in (
            ("/gallery?status=failed&evil=1", "/gallery?status=failed"),
            ("https://evil.example/gallery", "/gallery"),
            ("//evil.example/gallery", "/gallery"),
            ("/files/x", "/gallery"),
            ("", "/gallery"),
        ):
            answer = await http.post("/gallery/login", data={"token": alice, "next": sent}, headers=same)
            assert answer.status_code == 303 and answer.headers["location"] == lands, sent
        for site in ("cross-site", "same-site", "none"):
            refused = await http.post("/gallery/login", data={"token": alice}, headers={"Sec-Fetch-Site": site})
            assert refused.status_code == 403 and "set-cookie" not in refused.headers, site


async def test_hostile_links_into_the_gallery_run_nothing_and_its_links_out_leak_nothing(
    sim: Simulator, home: Path, inputs: Path, issuer: Issuer, keys: Keys, browser: Browser, attacker: AttackerSite
) -> None:
    async with gallery_with_users(sim, home, inputs, issuer, keys, pictures=False) as (base, alice, _):
        # Alice edits a picture another site serves: her gallery links to it as its source.
        await generate_as(base, alice, "alice's edit", images=[attacker.url("localhost", "/source.png")])
        context = await browser.new_context()
        page = await context.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: dialogs.append(dialog.message))
        await sign_in_with_the_form(page, base, alice)

        # A page on another port (the same site: her SameSite cookie goes along) sends her to the gallery with
        # hostile filters and a hostile #image- fragment (what the lightbox opens): all of it is text, nothing
        # runs, no lightbox opens.
        hostile = '"><img src=x onerror="window.__pwned = 1"><script>window.__pwned = 2</script>'
        fragment = quote('x"><img src=x onerror=window.__pwned=3>', safe="")
        trap = f"{base}/gallery?{urlencode({'q': hostile, 'model': hostile, 'task': hostile})}#image-{fragment}"
        attacker.pages["/go"] = f"<script>location.href = {trap!r};</script>"
        await page.goto(attacker.url("127.0.0.1", "/go"))
        await page.wait_for_url(f"{base}/gallery?**")
        await page.wait_for_load_state()
        assert await page.input_value("input[name=q]") == hostile  # shown as the search it was
        assert "0 pictures" in await page.inner_text(".summary")
        assert await page.evaluate("() => window.__pwned") is None and not dialogs
        assert await page.locator("dialog[open]").count() == 0

        # The link out to the source: no Referer (the gallery's address and filters stay here), no opener.
        await page.goto(f"{base}/gallery")
        link = page.locator("a.source-link.external")
        assert await link.inner_text() == "an image at localhost"
        async with context.expect_page() as opened:
            await link.click()
        away = await opened.value
        await away.wait_for_load_state()
        [headers] = [h for p, h in attacker.seen if p == "/source.png"]
        assert "referer" not in headers, headers
        assert await away.evaluate("() => window.opener") is None
        await context.close()
