"""Local file reads: one open, every check on the descriptor, no race, no hang, no endless read."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from runapi_mcp.client import RunAPIClient
from runapi_mcp.simulator import Simulator
from runapi_mcp.tasks import sandbox
from runapi_mcp.tasks.images import ImageStore
from runapi_mcp.tasks.records import TaskRecord
from runapi_mcp.tasks.references import ImageReferenceError, ImageResolver
from runapi_mcp.tasks.sandbox import SandboxError, open_checked_sync, read_checked_sync, read_local_file
from tests.support import SIM_KEY, png_bytes, uploads

pytestmark = pytest.mark.anyio

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /dev and /proc of Linux")


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    path = tmp_path / "allowed"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    return path


def read(path: str | Path, allowed: Path, limit: int = 1 << 20) -> bytes:
    return read_checked_sync(path, allowed_dirs=[allowed], limit=limit, where="'images[0]'").data


def test_reads_a_regular_file_inside(allowed: Path) -> None:
    (allowed / "a.png").write_bytes(b"inside")
    local = read_checked_sync(allowed / "a.png", allowed_dirs=[allowed], limit=100)
    assert local.data == b"inside"
    assert local.real_path == (allowed / "a.png").resolve()


def test_outside_and_missing_files_are_refused(allowed: Path, outside: Path) -> None:
    (outside / "secret.png").write_bytes(b"secret")
    with pytest.raises(SandboxError, match=r"^'images\[0\]': .*secret.png is outside the allowed directories"):
        read(outside / "secret.png", allowed)
    with pytest.raises(SandboxError, match="no such file"):
        read(allowed / "missing.png", allowed)
    with pytest.raises(SandboxError, match="absolute"):
        read("relative/a.png", allowed)


def test_a_symlink_as_the_final_component_is_refused(allowed: Path, outside: Path) -> None:
    (allowed / "real.png").write_bytes(b"inside")
    (outside / "secret.png").write_bytes(b"secret")
    (allowed / "inner-link.png").symlink_to(allowed / "real.png")
    (allowed / "outer-link.png").symlink_to(outside / "secret.png")
    with pytest.raises(SandboxError, match="symbolic link; links are not followed"):
        read(allowed / "inner-link.png", allowed)
    with pytest.raises(SandboxError, match="symbolic link to somewhere outside the allowed directories"):
        read(allowed / "outer-link.png", allowed)


def test_a_symlink_swapped_in_after_the_looks_is_not_followed(
    allowed: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The open itself refuses a final symlink: the lstat before it decides nothing."""
    target = allowed / "a.png"
    target.write_bytes(b"inside")
    (outside / "secret.png").write_bytes(b"secret")
    real_open = os.open

    def swapping_open(path: str, flags: int, *args: int) -> int:
        if path == str(target):
            target.unlink()
            target.symlink_to(outside / "secret.png")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", swapping_open)
    with pytest.raises(SandboxError, match="symbolic link"):
        read(target, allowed)


def _swap_forever(component: Path, parked: Path, outside: Path, stop: threading.Event) -> None:
    """Keep replacing a real directory inside the sandbox by a symlink to one outside, and back.

    The short sleeps let the reader run in both states (without them it mostly sees neither).
    """
    while not stop.is_set():
        os.rename(component, parked)
        os.symlink(outside, component)
        time.sleep(0.0001)
        os.unlink(component)
        os.rename(parked, component)
        time.sleep(0.0001)


def _flip_forever(component: Path, inside: Path, outside: Path, stop: threading.Event) -> None:
    """Keep re-pointing a symlink component, atomically, between a directory inside and one outside."""
    tmp = component.with_name("flip-tmp")
    while not stop.is_set():
        for target in (inside, outside):
            os.symlink(target, tmp)
            os.replace(tmp, component)
            time.sleep(0.0001)  # the reader runs against this state a while (a race needs real time)


@pytest.fixture(params=["swap", "flip"])
def racing_dir(request: pytest.FixtureRequest, allowed: Path, outside: Path) -> Iterator[Path]:
    """``allowed/sub/image.png``, where ``sub`` keeps turning into a way to ``outside`` and back."""
    sub = allowed / "sub"
    real = allowed / "real" if request.param == "flip" else sub
    real.mkdir()
    (real / "image.png").write_bytes(png_bytes((32, 24), "blue"))
    (outside / "image.png").write_bytes(png_bytes((32, 24), "red"))
    stop = threading.Event()
    if request.param == "flip":
        sub.symlink_to(real)
        args: tuple[object, ...] = (sub, real, outside, stop)
        swapper = threading.Thread(target=_flip_forever, args=args, daemon=True)
    else:
        args = (sub, allowed / "parked", outside, stop)
        swapper = threading.Thread(target=_swap_forever, args=args, daemon=True)
    swapper.start()
    try:
        yield sub / "image.png"
    finally:
        stop.set()
        swapper.join(5)


def test_swapping_a_component_for_a_symlink_never_reads_outside(racing_dir: Path, allowed: Path, outside: Path) -> None:
    inside_bytes = png_bytes((32, 24), "blue")
    outcomes = {"read": 0, "refused": 0}
    for _ in range(800):
        try:
            data = read(racing_dir, allowed)
        except SandboxError as exc:
            assert "'images[0]'" in str(exc)
            outcomes["refused"] += 1
            continue
        assert data == inside_bytes, "read a file from outside the allowed directory"
        outcomes["read"] += 1
    # Both states were seen: the race was run, not dodged.
    assert outcomes["read"] > 0 and outcomes["refused"] > 0, outcomes


@linux_only
def test_the_fallback_location_check_compares_inodes(
    allowed: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without /proc or F_GETPATH the open file must be the file the resolved path names."""
    monkeypatch.setattr(sandbox, "_PLATFORM", "plan9")
    path = allowed / "a.png"
    path.write_bytes(b"inside")
    assert read(path, allowed) == b"inside"
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        (allowed / "other.png").write_bytes(b"other")
        os.replace(allowed / "other.png", path)  # the name now belongs to another file
        assert sandbox._real_location(fd, str(path), st) is None
    finally:
        os.close(fd)


async def test_a_fifo_is_refused_at_once(allowed: Path) -> None:
    fifo = allowed / "pipe.png"
    os.mkfifo(fifo)
    with anyio.fail_after(3), pytest.raises(SandboxError, match=r"'images\[0\]': .*pipe.png is a FIFO, not a regular"):
        await read_local_file(fifo, allowed_dirs=[allowed], limit=1000, where="'images[0]'")


async def test_a_fifo_swapped_in_after_the_looks_does_not_hang(allowed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = allowed / "a.png"
    path.write_bytes(b"inside")
    real_open = os.open

    def swapping_open(name: str, flags: int, *args: int) -> int:
        if name == str(path):
            path.unlink()
            os.mkfifo(path)
        return real_open(name, flags, *args)

    monkeypatch.setattr(os, "open", swapping_open)
    with anyio.fail_after(3), pytest.raises(SandboxError, match="is a FIFO"):
        await read_local_file(path, allowed_dirs=[allowed], limit=1000)


@linux_only
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null", "/dev/urandom"])
def test_devices_are_refused(device: str, allowed: Path) -> None:
    with pytest.raises(SandboxError, match="character device, not a regular file"):
        read_checked_sync(device, allowed_dirs=["/dev"], limit=1000)
    with pytest.raises(SandboxError, match="outside the allowed directories"):
        read(device, allowed)


def test_directories_and_sockets_are_refused(allowed: Path) -> None:
    (allowed / "folder.png").mkdir()
    with pytest.raises(SandboxError, match="is a directory, not a regular file"):
        read(allowed / "folder.png", allowed)
    sock_path = allowed / "s.png"
    if len(str(sock_path)) > 100:
        pytest.skip("the temp path is too long for a UNIX socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(sock_path))
        with pytest.raises(SandboxError, match="is a socket, not a regular file"):
            read(sock_path, allowed)


def test_a_file_over_the_limit_is_refused_without_reading_it(allowed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = allowed / "big.png"
    with open(big, "wb") as f:
        f.truncate(50 * 1024 * 1024)  # sparse: costs no disk
    read_bytes = 0
    real_read = os.read

    def counting_read(fd: int, n: int) -> bytes:
        nonlocal read_bytes
        chunk = real_read(fd, n)
        read_bytes += len(chunk)
        return chunk

    monkeypatch.setattr(os, "read", counting_read)
    with pytest.raises(SandboxError, match=r"big.png is 50 MiB; the limit is 1.0 MiB"):
        read(big, allowed, limit=1024 * 1024)
    assert read_bytes == 0


@linux_only
def test_a_file_that_says_it_is_empty_is_read_at_most_to_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """/proc files report size 0 but have content: the read stops at limit + 1 bytes."""
    requested: list[int] = []
    real_read = os.read

    def recording_read(fd: int, n: int) -> bytes:
        requested.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", recording_read)
    with pytest.raises(SandboxError, match="larger than the"):
        read_checked_sync("/proc/self/status", allowed_dirs=["/proc"], limit=100)
    assert sum(requested) <= 101


def test_bad_characters_in_a_path_are_clear_errors(allowed: Path) -> None:
    with pytest.raises(SandboxError, match=r"'images\[0\]': .* contains a NUL character"):
        read(f"{allowed}/a\0b.png", allowed)
    with pytest.raises(SandboxError, match="cannot be part of a file name"):
        read(f"{allowed}/\ud800.png", allowed)
    with pytest.raises(SandboxError, match="too long"):
        read(f"{allowed}/{'x' * 5000}.png", allowed)


def test_the_descriptor_is_closed_after_use(allowed: Path) -> None:
    (allowed / "a.png").write_bytes(b"inside")
    with open_checked_sync(allowed / "a.png", allowed_dirs=[allowed], limit=100) as opened:
        fd = opened.fd
        assert os.read(fd, 100) == b"inside"
    with pytest.raises(OSError):
        os.fstat(fd)


# -- through the resolver ------------------------------------------------------------------------------


@pytest.fixture
async def resolver(sim: Simulator, tmp_path: Path, allowed: Path) -> AsyncIterator[ImageResolver]:
    async def no_task(task_id: str) -> TaskRecord | None:
        return None

    async with RunAPIClient(SIM_KEY, sim.base_url) as client:
        yield ImageResolver(
            client,
            ImageStore(tmp_path / "library"),
            allowed_dirs=[allowed],
            max_bytes=1024 * 1024,
            find_task=no_task,
        )


async def test_the_resolver_never_uploads_a_file_from_outside(
    resolver: ImageResolver, racing_dir: Path, sim: Simulator
) -> None:
    urls: set[str] = set()
    refused = 0
    for i in range(300):
        ref = racing_dir.as_uri() if i % 2 else str(racing_dir)
        try:
            urls.update(await resolver.resolve([ref]))
        except ImageReferenceError as exc:
            assert "'images[0]'" in str(exc)
            refused += 1
    # Only the inside picture was ever read: one upload (the cache serves the rest), one URL.
    assert len(uploads(sim)) == 1 and len(urls) == 1
    async with httpx.AsyncClient() as http:
        assert (await http.get(urls.pop())).content == png_bytes((32, 24), "blue")
    assert 0 < refused < 300


async def test_resolver_errors_name_the_entry(resolver: ImageResolver, allowed: Path, sim: Simulator) -> None:
    os.mkfifo(allowed / "pipe.png")
    (allowed / "good.png").write_bytes(png_bytes((32, 24), "green"))
    cases = {
        str(allowed / "pipe.png"): "is a FIFO, not a regular file",
        (allowed / "pipe.png").as_uri(): "is a FIFO, not a regular file",
        f"file://{allowed}/a%00b.png": "NUL character",
        f"file://{allowed}/%ff.png": "no such file",
        str(allowed): "is a directory",
    }
    for ref, needle in cases.items():
        with anyio.fail_after(3), pytest.raises(ImageReferenceError) as caught:
            await resolver.resolve([str(allowed / "good.png"), ref])
        assert str(caught.value).startswith("'images[1]'") and needle in str(caught.value), str(caught.value)
    assert uploads(sim) == []
