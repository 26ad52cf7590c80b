"""Signed image links: bound to the owner, the image and an expiry."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from runapi_mcp.http.links import FileLinks
from tests.support import FakeClock


def _params(url: str) -> tuple[str, str]:
    query = parse_qs(urlsplit(url).query)
    return query["exp"][0], query["sig"][0]


@pytest.mark.anyio
async def test_a_link_opens_its_image_for_its_owner_until_it_expires() -> None:
    clock = FakeClock(wall=1_000_000.0)
    links = FileLinks(ttl_s=60, clock=clock)
    url = links.url("https://h/files", "alice", "img-1")
    exp, sig = _params(url)
    assert url.startswith("https://h/files/img-1?exp=")
    assert links.check("alice", "img-1", exp, sig)
    assert not links.check("bob", "img-1", exp, sig)
    assert not links.check("alice", "img-2", exp, sig)
    assert not links.check("alice", "img-1", str(int(exp) + 1), sig)
    assert not links.check("alice", "img-1", exp, sig[:-1] + ("A" if sig[-1] != "A" else "B"))
    assert not links.check("alice", "img-1", None, sig) and not links.check("alice", "img-1", exp, None)
    assert not links.check("alice", "img-1", "-1", sig) and not links.check("alice", "img-1", "1e9", sig)
    await clock.advance(61)
    assert not links.check("alice", "img-1", exp, sig)


def test_another_process_key_does_not_open_it() -> None:
    first, second = FileLinks(), FileLinks()
    exp, sig = _params(first.url("http://h/files", "", "img"))
    assert first.check("", "img", exp, sig) and not second.check("", "img", exp, sig)
