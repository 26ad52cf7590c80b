"""save_as: a copy of the finished picture where the user asked, inside the allowed directories.

Through a real MCP client against the simulator: written where asked (relative and absolute, numbered for
several outputs, the extension of the picture's real type), refused before anything is sent (outside, an
existing file, a missing directory, a link leading out), a copy that cannot be written noted without failing
the task, a directory swapped for a link after the check never written through, and a task taken up after a
restart still writing its copy. The sandbox's create is raced as its reads are in test_sandbox.py.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client

from runapi_mcp.app import open_app
from runapi_mcp.simulator import Simulator
from runapi_mcp.tasks import sandbox
from runapi_mcp.tasks.sandbox import SandboxError, check_new_file_sync, create_new_file_sync, write_fd_all
from runapi_mcp.tasks.saving import copy_name, expected_outputs, possible_names
from tests.support import FAST_POLICY, Harness, make_settings, png_bytes, sent_anything, text_of, uploads
from tests.test_sandbox import _flip_forever, _swap_forever

pytestmark = pytest.mark.anyio

PROMPT = "a lighthouse at dusk"


def _umask() -> int:
    """The process's umask, read without changing it (Linux: /proc; elsewhere set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _library_bytes(image: dict[str, Any]) -> bytes:
    return Path(image["path"]).read_bytes()


def _tree(*roots: Path) -> set[str]:
    return {str(p) for root in roots for p in root.rglob("*")}


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    return path


# -- written where asked ---------------------------------------------------------------------------


async def test_a_relative_save_as_lands_under_the_first_allowed_directory(harness: Harness, inputs: Path) -> None:
    (inputs / "art").mkdir()
    result = await harness.call("generate_image", {"prompt": PROMPT, "save_as": "art/lighthouse.png"})
    assert not result.is_error, text_of(result)
    data = result.structured_content
    target = inputs / "art" / "lighthouse.png"
    [image] = data["images"]
    assert data["save_as"] == str(target) and image["saved_as"] == str(target) and image["save_error"] is None
    assert target.read_bytes() == _library_bytes(image)  # a copy of the library's picture, byte for byte
    assert f"copied to {target}" in text_of(result)
    # The user's file, made as their tools make files: 0666 through the umask (0644 under 022), not the
    # library's private 0600.
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_umask()
    assert stat.S_IMODE(Path(image["path"]).stat().st_mode) == 0o600


async def test_an_absolute_save_as_for_edit_and_upscale(harness: Harness, inputs: Path) -> None:
    source = inputs / "source.png"
    source.write_bytes(png_bytes())
    edited = await harness.call(
        "edit_image", {"prompt": "make it purple", "images": [str(source)], "save_as": str(inputs / "purple.png")}
    )
    assert not edited.is_error, text_of(edited)
    assert edited.structured_content["images"][0]["saved_as"] == str(inputs / "purple.png")
    upscaled = await harness.call(
        "upscale_image", {"image": str(inputs / "purple.png"), "factor": 2, "save_as": str(inputs / "big.png")}
    )
    assert not upscaled.is_error, text_of(upscaled)
    [image] = upscaled.structured_content["images"]
    assert (inputs / "big.png").read_bytes() == _library_bytes(image)
    assert image["width"] == 2 * edited.structured_content["images"][0]["width"]


async def test_several_outputs_are_numbered_in_order(harness: Harness, inputs: Path) -> None:
    result = await harness.call(
        "generate_image",
        {"prompt": PROMPT, "model": "gpt-4o-image", "aspect_ratio": "1:1", "params": {"output_count": 2},
         "save_as": "pair.png"},
    )  # fmt: skip
    assert not result.is_error, text_of(result)
    images = result.structured_content["images"]
    assert len(images) == 2
    for n, image in enumerate(images, start=1):
        assert image["saved_as"] == str(inputs / f"pair-{n}.png")
        assert (inputs / f"pair-{n}.png").read_bytes() == _library_bytes(image)
    assert not (inputs / "pair.png").exists()
    assert f"copied to {inputs / 'pair-2.png'}" in text_of(result)


async def test_the_extension_follows_the_pictures_real_type(harness: Harness, inputs: Path) -> None:
    jpeg = {"model": "qwen-3-text-to-image", "params": {"output_format": "jpeg"}}
    # A .png asked for a JPEG: written as .jpg, and the result says why.
    result = await harness.call("generate_image", {"prompt": PROMPT, **jpeg, "save_as": "night.png"})
    assert not result.is_error, text_of(result)
    [image] = result.structured_content["images"]
    assert image["mime_type"] == "image/jpeg" and image["saved_as"] == str(inputs / "night.jpg")
    assert (inputs / "night.jpg").read_bytes()[:3] == b"\xff\xd8\xff" and not (inputs / "night.png").exists()
    assert "(the picture is JPEG, not .png)" in text_of(result)
    # Another spelling of the real type is kept; a name without an image extension gets the real one.
    kept = await harness.call("generate_image", {"prompt": PROMPT, **jpeg, "save_as": "dawn.JPEG"})
    assert kept.structured_content["images"][0]["saved_as"] == str(inputs / "dawn.JPEG")
    assert "the picture is" not in text_of(kept)
    bare = await harness.call("generate_image", {"prompt": PROMPT, "save_as": "plain"})
    assert bare.structured_content["images"][0]["saved_as"] == str(inputs / "plain.png")


async def test_the_tools_say_how_save_as_names_files(harness: Harness) -> None:
    tools = {t.name: t for t in (await harness.client.list_tools()).tools}
    for name in ("generate_image", "edit_image", "upscale_image"):
        prop = tools[name].input_schema["properties"]["save_as"]
        assert prop["type"] == "string" and "extension follows the image type" in prop["description"], name
        assert "save_as" not in tools[name].input_schema.get("required", [])


# -- refused before anything is sent ----------------------------------------------------------------


def _refusals(inputs: Path, outside: Path) -> dict[str, tuple[dict[str, Any], str]]:
    """Each case: the arguments laid over a plain generate_image call, and what the refusal must say."""
    (inputs / "taken.png").write_bytes(b"the user's own file")
    (inputs / "folder").mkdir()
    (inputs / "out").symlink_to(outside)  # a directory inside that leads outside
    (inputs / "dangling.png").symlink_to(outside / "nothing-here.png")
    (inputs / "solo.png").write_bytes(b"taken")  # the name a picture of a "solo" request would take
    (inputs / "many-3.png").write_bytes(b"taken")  # the third of several outputs' name
    return {
        "outside": ({"save_as": str(outside / "x.png")}, "is outside the allowed directories"),
        "relative-escape": ({"save_as": "../outside/x.png"}, "is outside the allowed directories"),
        "existing-file": ({"save_as": "taken.png"}, "exists; nothing is ever overwritten"),
        "existing-directory": ({"save_as": "folder"}, "is a directory; give a file name in it"),
        "missing-directory": ({"save_as": "no/such/dir/x.png"}, "does not exist; create it first"),
        "parent-file": ({"save_as": "taken.png/x.png"}, "is not a directory"),
        "symlinked-parent-out": ({"save_as": "out/x.png"}, "leads outside the allowed directories through a symbolic link"),
        "dangling-link": ({"save_as": "dangling.png"}, "exists (a symbolic link)"),
        "extension-to-come": ({"save_as": "solo"}, "may be written as"),
        "numbered-name": (
            {"model": "gpt-4o-image", "aspect_ratio": "1:1", "params": {"output_count": 4}, "save_as": "many.png"},
            "many-3.png, which exists",
        ),
        "trailing-slash": ({"save_as": "art/"}, "names a directory, not a file"),
        "control-character": ({"save_as": "bad\x01name.png"}, "save_as"),
    }


async def test_refused_before_anything_is_sent(harness: Harness, inputs: Path, outside: Path) -> None:
    """Every case on one server (each would cost a server start of its own): a refusal naming save_as and
    saying why, with nothing sent upstream (no quote, no upload, no create) and nothing created anywhere."""
    cases = _refusals(inputs, outside)
    for case, (arguments, needle) in cases.items():
        harness.sim.clear_log()
        before = _tree(inputs, outside)
        result = await harness.call("generate_image", {"prompt": PROMPT, **arguments})
        text = text_of(result)
        assert result.is_error, (case, text)
        assert text.startswith("'save_as'") or "'save_as'" in text, (case, text)
        assert needle in text, (case, text)
        assert sent_anything(harness.sim) == [], case
        assert _tree(inputs, outside) == before, case
    assert (inputs / "taken.png").read_bytes() == b"the user's own file"
    assert len(cases) == 12


async def test_an_edit_with_a_bad_save_as_uploads_nothing(harness: Harness, inputs: Path, outside: Path) -> None:
    source = inputs / "source.png"
    source.write_bytes(png_bytes((32, 24)))
    result = await harness.call(
        "edit_image", {"prompt": "purple", "images": [str(source)], "save_as": str(outside / "edited.png")}
    )
    assert result.is_error and "'save_as'" in text_of(result), text_of(result)
    assert uploads(harness.sim) == [] and sent_anything(harness.sim) == []
    refused = await harness.call("upscale_image", {"image": str(source), "save_as": str(source)})
    assert refused.is_error and "exists" in text_of(refused) and sent_anything(harness.sim) == []


async def test_a_blank_save_as_asks_for_no_copy(harness: Harness, inputs: Path) -> None:
    result = await harness.call("generate_image", {"prompt": PROMPT, "save_as": "  "})
    assert not result.is_error, text_of(result)
    data = result.structured_content
    assert data["save_as"] is None and data["images"][0]["saved_as"] is None
    assert list(inputs.iterdir()) == []


# -- after the check: the copy is written with the same care, and never fails the task ------------------


async def _started(harness: Harness, arguments: dict[str, Any]) -> dict[str, Any]:
    """A task created and left running upstream (released with ``_finish``)."""
    harness.sim.set_task_outcome(None, "running")
    result = await harness.call("generate_image", {"prompt": PROMPT, "wait": False, **arguments})
    assert not result.is_error, text_of(result)
    data: dict[str, Any] = result.structured_content
    assert data["status"] in ("pending", "processing") and data["save_as"], data
    assert f"When done, a copy goes to {data['save_as']}." in text_of(result)
    return data


async def _finish(harness: Harness, data: dict[str, Any]) -> Any:
    harness.sim.set_task_outcome(data["runapi_task_id"], "completed")
    with anyio.fail_after(15):
        return await harness.call("get_task", {"task_id": data["task_id"], "wait": True, "timeout_s": 10})


async def test_a_file_that_appears_meanwhile_is_kept_and_the_task_completes(harness: Harness, inputs: Path) -> None:
    data = await _started(harness, {"save_as": "later.png"})
    (inputs / "later.png").write_bytes(b"made by someone else meanwhile")
    done = await _finish(harness, data)
    assert not done.is_error, text_of(done)
    result = done.structured_content
    [image] = result["images"]
    assert result["status"] == "completed" and Path(image["path"]).is_file()
    assert image["saved_as"] is None and "exists" in image["save_error"]
    assert (inputs / "later.png").read_bytes() == b"made by someone else meanwhile"
    assert "not copied to save_as" in text_of(done)


async def test_a_directory_swapped_for_a_link_after_the_check_is_not_written_through(
    harness: Harness, inputs: Path, outside: Path
) -> None:
    (inputs / "sub").mkdir()
    data = await _started(harness, {"save_as": "sub/copy.png"})
    (inputs / "sub").rename(inputs / "parked")
    (inputs / "sub").symlink_to(outside)
    done = await _finish(harness, data)
    [image] = done.structured_content["images"]
    assert done.structured_content["status"] == "completed" and image["saved_as"] is None
    assert "outside the allowed directories" in image["save_error"], image
    assert list(outside.iterdir()) == [] and list((inputs / "parked").iterdir()) == []


async def test_a_task_taken_up_after_a_restart_writes_its_copy(sim: Simulator, home: Path, inputs: Path) -> None:
    settings = make_settings(sim, home, inputs)
    sim.set_task_outcome(None, "running")
    async with open_app(settings, policy=FAST_POLICY) as app, Client(app.server, mode="legacy") as client:
        started = await client.call_tool("generate_image", {"prompt": PROMPT, "wait": False, "save_as": "resumed.png"})
        data = started.structured_content or {}
        assert data["status"] in ("pending", "processing"), data
    assert not (inputs / "resumed.png").exists()
    sim.set_task_outcome(data["runapi_task_id"], "completed")
    async with open_app(settings, policy=FAST_POLICY) as app, Client(app.server, mode="legacy") as client:
        with anyio.fail_after(15):
            done = await client.call_tool("get_task", {"task_id": data["task_id"], "wait": True, "timeout_s": 10})
    [image] = (done.structured_content or {})["images"]
    assert image["saved_as"] == str(inputs / "resumed.png"), done.structured_content
    assert (inputs / "resumed.png").read_bytes() == _library_bytes(image)


# -- the naming rules ----------------------------------------------------------------------------------


def test_copy_names() -> None:
    assert copy_name("a.png", 0, 1, ".png") == "a.png"
    assert copy_name("a.png", 0, 1, ".jpg") == "a.jpg"
    assert copy_name("a.jpeg", 1, 3, ".jpg") == "a-2.jpeg"
    assert copy_name("a.TIF", 0, 1, ".tiff") == "a.TIF"
    assert copy_name("a", 2, 3, ".webp") == "a-3.webp"
    assert copy_name("v1.2", 0, 1, ".png") == "v1.2.png"  # ".2" names no image type
    assert copy_name(".png", 0, 1, ".png") == ".png.png"  # a hidden name, not an extension alone
    assert possible_names("a.png", 1) == ["a.png"]
    assert possible_names("a.png", 2) == ["a.png", "a-1.png", "a-2.png"]
    assert set(possible_names("a", 1)) == {"a", "a.png", "a.jpg", "a.webp", "a.gif", "a.bmp", "a.tiff"}
    assert expected_outputs({"output_count": 2}, 4) == 2
    assert expected_outputs({}, 4, count_default=1) == 1
    assert expected_outputs({}, 5) == 5 and expected_outputs({"output_count": 9}, 4) == 4


# -- the sandbox's create, raced ---------------------------------------------------------------------


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    path = tmp_path / "allowed"
    path.mkdir()
    return path


@pytest.fixture(params=["swap", "flip"])
def racing(request: pytest.FixtureRequest, allowed: Path, outside: Path) -> Iterator[tuple[Path, Path]]:
    """``allowed/sub``, which keeps turning into a way to ``outside`` and back; and where its files really go."""
    sub = allowed / "sub"
    real = allowed / "real" if request.param == "flip" else sub
    real.mkdir()
    stop = threading.Event()
    if request.param == "flip":
        sub.symlink_to(real)
        swapper = threading.Thread(target=_flip_forever, args=(sub, real, outside, stop), daemon=True)
    else:
        swapper = threading.Thread(target=_swap_forever, args=(sub, allowed / "parked", outside, stop), daemon=True)
    swapper.start()
    try:
        yield sub, real
    finally:
        stop.set()
        swapper.join(5)


def test_racing_a_link_swap_never_writes_outside(racing: tuple[Path, Path], allowed: Path, outside: Path) -> None:
    sub, _ = racing
    outcomes = {"written": 0, "refused": 0}
    for n in range(600):
        try:
            with create_new_file_sync(sub / f"copy-{n}.png", allowed_dirs=[allowed], where="'save_as'") as new:
                write_fd_all(new.fd, b"inside")
        except SandboxError as exc:
            assert str(exc).startswith("'save_as': ")
            outcomes["refused"] += 1
            continue
        assert new.real_path.is_relative_to(allowed), new.real_path
        outcomes["written"] += 1
    assert list(outside.iterdir()) == [], "wrote a file outside the allowed directory"
    assert outcomes["written"] > 0 and outcomes["refused"] > 0, outcomes  # the race was run, not dodged


@pytest.mark.skipif(not sandbox._WALKS, reason="needs openat()")
def test_a_link_swapped_in_during_the_walk_is_not_followed(
    allowed: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory resolves inside; it turns into a link just before the walk opens it: refused, not followed."""
    sub = allowed / "sub"
    sub.mkdir()
    real_open = os.open

    def swapping_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if path == "sub" and kwargs.get("dir_fd") is not None and sub.is_dir() and not sub.is_symlink():
            sub.rename(allowed / "parked")
            sub.symlink_to(outside)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", swapping_open)
    with (
        pytest.raises(SandboxError, match="changed while it was being written"),
        create_new_file_sync(sub / "x.png", allowed_dirs=[allowed], where="'save_as'"),
    ):
        pass
    assert list(outside.iterdir()) == []


def test_the_new_file_is_never_an_existing_one(allowed: Path, outside: Path) -> None:
    (allowed / "taken.png").write_bytes(b"keep")
    (allowed / "link.png").symlink_to(outside / "target.png")  # dangling: O_CREAT alone would create the target
    for name in ("taken.png", "link.png"):
        with pytest.raises(SandboxError, match="exists"), create_new_file_sync(allowed / name, allowed_dirs=[allowed]):
            pass
    assert (allowed / "taken.png").read_bytes() == b"keep" and list(outside.iterdir()) == []
    # A block that fails removes the file it made: no half-written copy is left behind.
    with pytest.raises(RuntimeError), create_new_file_sync(allowed / "half.png", allowed_dirs=[allowed]) as new:
        write_fd_all(new.fd, b"half")
        raise RuntimeError("disk trouble")
    assert not (allowed / "half.png").exists()
    assert check_new_file_sync(allowed / "fresh.png", allowed_dirs=[allowed], also=["fresh-1.png"]) == allowed


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
def test_the_mode_follows_the_umask(allowed: Path) -> None:
    old = os.umask(0o027)
    try:
        with create_new_file_sync(allowed / "team.png", allowed_dirs=[allowed]) as new:
            write_fd_all(new.fd, b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((allowed / "team.png").stat().st_mode) == 0o640
