"""Private by default: under umask 022 the data directory is 0700 and everything the server writes in it
0600 (the task store and its WAL files, the library's images, sidecars and previews); a home left open by
an older version, or by hand, is tightened at start and the log says so.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mcp.client import Client

from runapi_mcp import private
from runapi_mcp.app import open_app
from runapi_mcp.http.gallery import THUMB_BYTES, THUMB_EDGE
from runapi_mcp.simulator import Simulator
from runapi_mcp.tasks import Preview
from runapi_mcp.tasks.previews import make_preview
from tests.support import FAST_POLICY, make_settings, text_of

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(os.name != "posix", reason="POSIX permissions"),
]


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Every directory and file under ``root`` (itself included), by path relative to it: its mode."""
    found = {".": stat.S_IMODE(os.lstat(root).st_mode)}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            found[str(path.relative_to(root))] = stat.S_IMODE(os.lstat(path).st_mode)
    return found


def not_private(found: dict[str, int], root: Path) -> dict[str, str]:
    wrong = {}
    for name, mode in found.items():
        wanted = 0o700 if (root / name).is_dir() else 0o600
        if mode != wanted:
            wrong[name] = f"{mode:o}"
    return wrong


async def make_a_task_with_an_image(client: Client) -> str:
    result = await client.call_tool("generate_image", {"prompt": "a private lighthouse", "model": "gpt-image-2"})
    assert not result.is_error, text_of(result)
    data = result.structured_content
    assert data is not None and data["status"] == "completed", data
    return str(data["images"][0]["uri"]).removeprefix("runapi://images/")


async def test_under_umask_022_the_home_is_0700_and_every_file_0600(
    sim: Simulator, tmp_path: Path, inputs: Path
) -> None:
    data = tmp_path / "data"  # neither it nor the home exists yet: the server makes both
    home = data / "runapi-mcp"
    settings = make_settings(sim, home, inputs)
    with umask(0o022):
        async with open_app(settings, policy=FAST_POLICY) as app, Client(app.server, mode="legacy") as client:
            image_id = await make_a_task_with_an_image(client)
            image = await app.manager.images.lookup(image_id)
            assert image is not None
            # A gallery thumbnail too (its own size, cached beside the MCP preview).
            assert isinstance(await make_preview(app.manager.images, image, THUMB_EDGE, THUMB_BYTES), Preview)
            running = modes(data)
        after = modes(data)
    # What was written: the store with its WAL files (while open), the image, its sidecar, two previews.
    assert {"runapi-mcp/tasks.sqlite3", "runapi-mcp/tasks.sqlite3-wal", "runapi-mcp/tasks.sqlite3-shm"} <= set(running)
    library = [name for name in running if name.startswith("runapi-mcp/images/")]
    assert f"runapi-mcp/images/{image_id}.png" in library and f"runapi-mcp/images/{image_id}.json" in library
    assert len([name for name in library if "/.previews/" in name]) == 2, library
    assert not not_private(running, data), not_private(running, data)
    assert not not_private(after, data), not_private(after, data)
    # And a file of another program beside them keeps the umask's mode: only what the server makes is changed.
    with umask(0o022):
        (home / "notes.txt").write_text("mine")
    assert stat.S_IMODE(os.stat(home / "notes.txt").st_mode) == 0o644


async def test_a_home_left_open_is_tightened_at_start_with_a_log_line(
    sim: Simulator, tmp_path: Path, inputs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "home"
    images = home / "images"
    with umask(0o022):  # as a version before this one left it
        (images / ".previews").mkdir(parents=True)
        db = sqlite3.connect(home / "tasks.sqlite3")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (x)")
        db.close()
        (images / "old-0.json").write_text("{}")
        (images / ".previews" / "old-0-512-150000.jpg").write_bytes(b"\xff\xd8\xff")
    before = modes(home)
    assert before["."] == 0o755 and before["tasks.sqlite3"] == 0o644 and before["images/old-0.json"] == 0o644
    caplog.set_level(logging.INFO)
    with umask(0o022):
        async with open_app(make_settings(sim, home, inputs), policy=FAST_POLICY) as app:
            app.manager.images.ensure()  # as the first download does
            found = modes(home)
    assert not not_private(found, home), not_private(found, home)
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(f"the data directory {home} was open to other users (mode 755)" in line for line in said), said
    assert any("made the task store private (600): tasks.sqlite3 (was 644)" in line for line in said), said
    assert any("the image library was open to other users" in line for line in said), said
    # Once tightened, a start says nothing more.
    caplog.clear()
    async with open_app(make_settings(sim, home, inputs), policy=FAST_POLICY) as app:
        app.manager.images.ensure()
    assert not [r for r in caplog.records if "private" in r.getMessage()]


def test_the_helpers_never_follow_a_link_and_leave_others_alone(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.txt"
    target.write_text("not ours")
    target.chmod(0o644)
    link = tmp_path / "link"
    link.symlink_to(target)
    assert private.tighten(link) is None
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o644)
    assert private.tighten(fifo) is None  # opened without blocking, and not changed
    with umask(0o277):  # a umask that takes the owner's own bits: still exactly 0700 / 0600
        made = tmp_path / "a" / "b"
        assert private.private_dir(made) is None
        assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700 and stat.S_IMODE(made.stat().st_mode) == 0o700
        assert private.private_file(made / "f") is None
        assert stat.S_IMODE((made / "f").stat().st_mode) == 0o600
    with pytest.raises(NotADirectoryError):
        private.private_dir(target)
