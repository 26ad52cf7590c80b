"""Headless Chromium for the browser tests (the MCP Apps gallery, the web gallery).

Playwright drives the system's Chromium (Debian's ``chromium``; browsers are never downloaded). Where no
Chromium is installed the browser tests skip with the reason; ``.ci/run`` installs it when it can.
Screenshots go to ``test-artifacts/`` at the top of the checkout (or ``RUNAPI_MCP_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

ARTIFACTS = Path(os.environ.get("RUNAPI_MCP_TEST_ARTIFACTS") or Path(__file__).resolve().parent.parent / "test-artifacts")

# Chromium's own background traffic is refused by a closed network, many connections at a time: off.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    """The system Chromium, or None."""
    configured = os.environ.get("CHROMIUM_PATH")
    if configured and Path(configured).is_file():
        return configured
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot_path(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / f"{name}.png"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A headless Chromium; skips where none is installed."""
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium); .ci/run installs it when it can")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()
