"""The image library: ids, sidecars that lie, downloads that are not images, bombs, and bounded previews."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.lowlevel
import httpx
import pytest
from PIL import Image, ImageFile

from runapi_mcp.client import DownloadResult, RunAPIClient, RunAPIError
from runapi_mcp.simulator import Simulator
from runapi_mcp.tasks.images import (
    IMAGE_URI_PREFIX,
    ImageFileError,
    ImageNotFoundError,
    ImageStore,
    NotAnImageError,
    Preview,
    PreviewUnavailableError,
    image_id_for,
    inspect_image,
    valid_image_id,
)
from runapi_mcp.tasks.previews import PixelBudget, PreviewSkipped, make_previews
from runapi_mcp.tasks.records import ImageRecord, TaskRecord
from runapi_mcp.tasks.references import ImageReferenceError, ImageResolver
from tests.support import SIM_KEY, png_bytes, zero_png

pytestmark = pytest.mark.anyio


# -- test pictures ------------------------------------------------------------------------------------


BOMB = zero_png(60000, 60000, bit_depth=1)


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    return zero_png(20000, 14000, color_type=2, channels=3)


def test_the_test_pictures_are_what_they_say() -> None:
    small = zero_png(300, 200, color_type=2, channels=3)
    with Image.open(io.BytesIO(small)) as img:
        img.load()
        assert img.size == (300, 200) and img.getextrema() == ((0, 0), (0, 0), (0, 0))
    assert len(BOMB) < 1_000_000


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any pixel is decoded."""

    def refuse(self: Any, *args: Any) -> Any:
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)  # every decode from a file goes through here


# -- a store and a fake image host --------------------------------------------------------------------


class FakeHost:
    """Stands in for RunAPIClient.download: serves fixed bytes per URL, writes them like the client does."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    async def download(
        self, url: str, dest: Path, *, max_bytes: int = 0, deadline_s: float | None = None
    ) -> DownloadResult:
        data = self.files[url]
        if not data:
            raise NotAnImageError("The image download from the host was empty", summary="")
        await anyio.Path(dest).write_bytes(data)
        return DownloadResult(path=dest, bytes_written=len(data), content_type="image/png")


def record_for(task_id: str) -> TaskRecord:
    return TaskRecord(
        task_id=task_id, idempotency_key="k", model="gpt-image-2", service="gpt_image_2", action="t", route="/r"
    )


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    s = ImageStore(tmp_path / "images")
    s.ensure()
    return s


async def download(store: ImageStore, task_id: str, data: bytes, index: int = 0) -> ImageRecord:
    host = FakeHost({"https://cdn.example/out.png": data})
    return await store.download(cast(RunAPIClient, host), record_for(task_id), index, "https://cdn.example/out.png")


def library_files(store: ImageStore) -> list[str]:
    return sorted(p.name for p in store.root.iterdir() if p.name != ".previews")


# -- ids ----------------------------------------------------------------------------------------------


async def test_task_ids_that_differ_late_get_different_images(store: ImageStore) -> None:
    a, b = "t" * 90 + "A", "t" * 90 + "B"
    assert image_id_for(a, 0) != image_id_for(b, 0)
    first = await download(store, a, png_bytes(color="red"))
    second = await download(store, b, png_bytes(color="blue"))
    assert first.id != second.id and first.path != second.path
    assert (await store.read_image(first.id)).data == png_bytes(color="red")
    assert (await store.read_image(second.id)).data == png_bytes(color="blue")
    assert len([n for n in library_files(store) if n.endswith(".png")]) == 2


@pytest.mark.parametrize(
    "task_id", ["abc", "a/b", "../../etc/passwd", "x y", "é", "-", "", "a" * 500, "%2e%2e", "a\nb", "task.id:1"]
)
def test_ids_are_safe_file_names_and_uri_segments(task_id: str) -> None:
    image_id = image_id_for(task_id, 3)
    assert valid_image_id(image_id) and image_id.endswith("-3") and len(image_id) <= 64
    assert not image_id.startswith(("-", ".")) and "/" not in image_id
    assert image_id != image_id_for(task_id + "x", 3) and image_id != image_id_for(task_id, 4)


# -- lying sidecars and planted files -----------------------------------------------------------------


@pytest.mark.parametrize("target", ["/etc/passwd", "/proc/self/environ"])
async def test_a_sidecar_never_chooses_the_file(store: ImageStore, target: str) -> None:
    image_id = image_id_for("planted", 0)
    sidecar = {"image": {"id": image_id, "task_id": "planted", "index": 0, "uri": "x", "path": target}}
    (store.root / f"{image_id}.json").write_text(json.dumps(sidecar))
    assert store.find(image_id) is None  # no image file of its own: not in the library
    with pytest.raises(ImageNotFoundError):
        await store.read_image(image_id)
    # With an image file of its own, the sidecar's path is ignored.
    (store.root / f"{image_id}.png").write_bytes(png_bytes())
    found = store.find(image_id)
    assert found is not None and found.path == str(store.root / f"{image_id}.png")
    assert (await store.read_image(image_id)).data == png_bytes()


async def test_a_planted_symlink_is_never_served(store: ImageStore) -> None:
    image_id = image_id_for("linked", 0)
    (store.root / f"{image_id}.png").symlink_to("/etc/passwd")
    (store.root / f"{image_id}.json").write_text(json.dumps({"image": {"path": "/etc/passwd"}}))
    assert store.find(image_id) is None and await store.lookup(image_id) is None
    with pytest.raises(ImageNotFoundError):
        await store.read_image(image_id)
    assert image_id not in [i.id for i in await store.list_images()]
    record = ImageRecord(id=image_id, task_id="linked", index=0, uri="u", path=str(store.root / f"{image_id}.png"))
    [skipped] = await make_previews(store, record_for("linked").model_copy(update={"images": [record]}), 512, 10**6)
    assert isinstance(skipped, PreviewSkipped) and "not in the library" in skipped.reason


async def test_a_non_image_under_an_image_name_is_not_served(store: ImageStore) -> None:
    image_id = image_id_for("disguised", 0)
    (store.root / f"{image_id}.png").write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(ImageNotFoundError, match="not a readable image"):
        await store.read_image(image_id)
    (store.root / f"{image_id}.png").write_bytes(b"\xff\xd8\xff" + b"\0" * 100)  # a .png that is a JPEG
    with pytest.raises(ImageNotFoundError):
        await store.read_image(image_id)


@pytest.mark.parametrize(
    "sidecar",
    [
        b"not json",
        b"[" * 100_000,
        b"{}",
        b'{"image": 5}',
        b'{"image": {"width": "wide", "height": -3, "index": true, "url": "file:///etc/passwd", "created_at": "x"}}',
        b'{"image": {"mime_type": "text/html", "bytes": 1e309, "task_id": ["x"]}}',
        json.dumps({"image": {"url": "https://ok.example/" + "x" * 10_000}}).encode(),
        b" " * (300 * 1024),
    ],
)
async def test_a_broken_sidecar_is_ignored(store: ImageStore, sidecar: bytes) -> None:
    image_id = image_id_for("hostile", 2)
    (store.root / f"{image_id}.png").write_bytes(png_bytes())
    (store.root / f"{image_id}.json").write_bytes(sidecar)
    found = store.find(image_id)
    assert found is not None
    assert found.mime_type == "image/png" and found.path == str(store.root / f"{image_id}.png")
    assert found.url is None and found.width is None and found.index == 2
    assert found.uri == IMAGE_URI_PREFIX + image_id


async def test_a_fifo_or_link_as_sidecar_does_not_hang(store: ImageStore) -> None:
    image_id = image_id_for("fifo", 0)
    (store.root / f"{image_id}.png").write_bytes(png_bytes())
    os.mkfifo(store.root / f"{image_id}.json")
    with anyio.fail_after(3):
        assert await store.lookup(image_id) is not None
    other = image_id_for("link", 0)
    (store.root / f"{other}.png").write_bytes(png_bytes())
    (store.root / f"{other}.json").symlink_to(store.root / f"{image_id}.json")
    with anyio.fail_after(3):
        assert await store.lookup(other) is not None


async def test_bad_ids_find_nothing(store: ImageStore) -> None:
    for image_id in ["", "..", "../images/x", "a/b", "a\0b", "x" * 200, ".previews", "a.png"]:
        assert store.find(image_id) is None
        with pytest.raises(ImageNotFoundError):
            await store.read_image(image_id)


async def test_a_download_writes_the_image_and_a_sidecar(store: ImageStore) -> None:
    image = await download(store, "task-1", png_bytes((80, 60)))
    assert image.width == 80 and image.height == 60 and image.mime_type == "image/png"
    assert library_files(store) == [f"{image.id}.json", f"{image.id}.png"]
    found = store.find(image.id)
    assert found is not None and found.task_id == "task-1" and found.url == "https://cdn.example/out.png"
    assert found.width == 80 and found.height == 60
    assert [i.id for i in await store.list_images()] == [image.id]


async def test_a_planted_sidecar_symlink_is_replaced_not_followed(store: ImageStore, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (store.root / f"{image_id_for('task-2', 0)}.json").symlink_to(victim)
    await download(store, "task-2", png_bytes())
    assert victim.read_text() == "keep me"


# -- downloads that are not images --------------------------------------------------------------------

NOT_IMAGES = {
    "html": (b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", "the image host sent an HTML page"),
    "html-late": (b"\n\n  <HTML><head><title>x</title>", "an HTML page"),
    "svg": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "an SVG drawing"),
    "json": (b'{"error": "expired"}', "a JSON document"),
    "text": (b"Access denied\n", "sent text, not an image"),
    "binary": (os.urandom(2000).replace(b"\x89", b"\0"), "not a readable image"),
    "truncated-png": (png_bytes((300, 300), "red")[:-40], "truncated"),
    "truncated-header": (png_bytes()[:20], "not a readable image"),
    "zeros": (b"\0" * 500, "zero bytes"),
    "empty": (b"", "empty"),
}


@pytest.mark.parametrize("name", list(NOT_IMAGES))
async def test_downloads_that_are_not_images_are_refused(store: ImageStore, name: str) -> None:
    data, needle = NOT_IMAGES[name]
    with pytest.raises(RunAPIError) as caught:
        await download(store, "task-x", data)
    assert isinstance(caught.value, NotAnImageError) and needle in str(caught.value), str(caught.value)
    assert library_files(store) == []


def test_inspection_reads_headers_only(no_decoding: None, huge_png: bytes) -> None:
    info = inspect_image(BOMB)
    assert (info.width, info.height, info.mime_type) == (60000, 60000, "image/png")
    assert inspect_image(huge_png).pixels == 280_000_000
    for fmt, size in (("JPEG", (40, 30)), ("WEBP", (41, 31)), ("GIF", (42, 32)), ("BMP", (43, 33)), ("TIFF", (44, 34))):
        data = png_bytes(size, "red", fmt=fmt)
        assert (inspect_image(data, complete=True).width, inspect_image(data).height) == size
    with pytest.raises(ImageFileError, match="it is text"):
        inspect_image(b"hello")


# -- bombs and huge outputs ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bomb", "huge"])
async def test_bombs_and_huge_outputs_are_kept_without_a_preview(
    store: ImageStore, huge_png: bytes, no_decoding: None, kind: str
) -> None:
    data = BOMB if kind == "bomb" else huge_png
    size = "60000x60000" if kind == "bomb" else "20000x14000"
    image = await download(store, f"task-{kind}", data)
    assert f"{image.width}x{image.height}" == size and store.find(image.id) is not None
    record = record_for(f"task-{kind}").model_copy(update={"images": [image], "status": "completed"})
    [skipped] = await make_previews(store, record, 1024, 600_000)
    assert isinstance(skipped, PreviewSkipped)
    assert skipped.reason == f"{size} is over the 40 MP preview limit; open the file instead"
    with pytest.raises(PreviewUnavailableError, match="preview limit") as caught:
        await anyio.to_thread.run_sync(store.preview, image, 1024, 300_000)
    assert isinstance(caught.value, OSError)  # what server/app.py catches today


async def test_a_corrupt_image_gets_a_skipped_preview(store: ImageStore) -> None:
    image = await download(store, "task-corrupt", png_bytes((200, 200), "red"))
    path = Path(image.path or "")
    data = bytearray(path.read_bytes())
    idat = data.index(b"IDAT")
    data[idat + 8 : idat + 40] = os.urandom(32)  # garbage inside the compressed pixels
    path.write_bytes(bytes(data))
    record = record_for("task-corrupt").model_copy(update={"images": [image]})
    [skipped] = await make_previews(store, record, 1024, 600_000)
    assert isinstance(skipped, PreviewSkipped) and "could not be decoded" in skipped.reason


async def test_previews_are_made_cached_and_keep_transparency(store: ImageStore) -> None:
    opaque = await download(store, "task-p", png_bytes((1600, 900), "orange"), 0)
    clear = await download(store, "task-p", png_bytes((300, 300), (0, 0, 0, 0), mode="RGBA"), 1)
    missing = store.undownloaded("task-p", 2, "https://cdn.example/gone.png")
    record = record_for("task-p").model_copy(update={"images": [opaque, clear, missing]})
    first = await make_previews(store, record, 512, 600_000)
    jpeg, png, skipped = first
    assert isinstance(jpeg, Preview) and jpeg.mime_type == "image/jpeg" and (jpeg.width, jpeg.height) == (512, 288)
    assert isinstance(png, Preview) and png.mime_type == "image/png"
    assert isinstance(skipped, PreviewSkipped) and "not downloaded" in skipped.reason
    assert len(list((store.root / ".previews").iterdir())) == 2
    assert await make_previews(store, record, 512, 600_000) == first  # from the cache
    assert store.preview(opaque, 512, 300_000) == jpeg


async def test_a_planted_preview_cache_entry_is_ignored(store: ImageStore) -> None:
    image = await download(store, "task-c", png_bytes((100, 100)))
    (store.root / ".previews" / f"{image.id}-256-300000.jpg").symlink_to("/etc/passwd")
    preview = await anyio.to_thread.run_sync(store.preview, image, 256, 300_000)
    assert preview.mime_type == "image/jpeg" and preview.data.startswith(b"\xff\xd8")
    assert Path("/etc/passwd").read_bytes()[:4] != b"\xff\xd8\xff\xe0"


# -- the decode budget --------------------------------------------------------------------------------


async def test_decodes_in_flight_stay_within_the_pixel_budget(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several tasks with several images each: the pixels decoding at once never exceed the budget."""
    budget = PixelBudget(2_500_000)
    active = 0
    peak = 0
    render = store.render_preview

    def tracking_render(image: ImageRecord, max_edge: int, max_bytes: int, max_pixels: int) -> Preview:
        nonlocal active, peak
        active += max_pixels
        peak = max(peak, active)
        try:
            return render(image, max_edge, max_bytes, max_pixels)
        finally:
            active -= max_pixels

    monkeypatch.setattr(store, "render_preview", tracking_render)
    records = []
    for t in range(3):
        images = [await download(store, f"task-{t}", png_bytes((1200, 1000), "navy"), i) for i in range(3)]
        records.append(record_for(f"task-{t}").model_copy(update={"images": images}))
    results: list[list[Preview | PreviewSkipped]] = []

    async def previews_of(record: TaskRecord) -> None:
        results.append(await make_previews(store, record, 256, 600_000, budget=budget))

    async with anyio.create_task_group() as tg:
        for record in records:
            tg.start_soon(previews_of, record)
    assert all(isinstance(p, Preview) for r in results for p in r)
    assert 1_200_000 <= peak <= 2_500_000 and budget.in_use == 0


async def test_the_budget_is_first_come_first_served_and_survives_cancellation() -> None:
    budget = PixelBudget(100)
    order: list[str] = []

    done = anyio.Event()

    async def use(name: str, pixels: int) -> None:
        async with budget.hold(pixels):
            order.append(name)
            await done.wait()

    # Each task, started, runs at the next checkpoint until it waits: holding its pixels, or in the queue.
    async with anyio.create_task_group() as tg:
        tg.start_soon(use, "a", 60)
        await anyio.lowlevel.checkpoint()
        tg.start_soon(use, "big", 90)  # waits for a
        await anyio.lowlevel.checkpoint()
        tg.start_soon(use, "small", 10)  # fits beside a, but must not overtake big
        await anyio.lowlevel.checkpoint()
        assert order == ["a"] and budget.in_use == 60
        done.set()
    assert order == ["a", "big", "small"] and budget.in_use == 0

    async with budget.hold(100):
        with anyio.move_on_after(0.02):
            async with budget.hold(50):
                pytest.fail("got pixels that were all in use")
    assert budget.in_use == 0
    async with budget.hold(1000):  # larger than the whole budget: runs alone
        assert budget.in_use == 100


# -- the whole point: peak memory ---------------------------------------------------------------------

_RSS_SCRIPT = textwrap.dedent(
    """
    import sys, anyio
    from pathlib import Path
    from runapi_mcp.tasks.images import ImageStore
    from runapi_mcp.tasks.previews import make_previews
    from runapi_mcp.tasks.records import ImageRecord, TaskRecord

    store = ImageStore(Path(sys.argv[1]))
    names = sys.argv[2:]
    images = [ImageRecord(id=n, task_id="t", index=i, uri="u", path=str(store.root / f"{n}.png"))
              for i, n in enumerate(names)]
    record = TaskRecord(task_id="t", idempotency_key="k", model="m", service="s", action="a", route="/r",
                        images=images)
    def peak_kib():
        # VmHWM starts afresh with this program; ru_maxrss would carry the forking parent's peak over exec.
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

    before = peak_kib()
    out = anyio.run(make_previews, store, record, 1024, 600_000)
    print(before, peak_kib(), [type(p).__name__ for p in out])
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="reads VmHWM from /proc")
def test_peak_memory_stays_low_whatever_upstream_returns(tmp_path: Path, huge_png: bytes) -> None:
    root = tmp_path / "images"
    root.mkdir()
    names = []
    for n in range(4):
        (root / f"huge-{n}.png").write_bytes(huge_png)
        names.append(f"huge-{n}")
    (root / "bomb.png").write_bytes(BOMB)
    big = zero_png(6000, 6000, color_type=6, channels=4)  # 36 MP RGBA: 144 MB decoded, twice
    for n in range(2):
        (root / f"big-{n}.png").write_bytes(big)
    names += ["bomb", "big-0", "big-1"]
    result = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(root), *names], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    before_kib, peak_kib, kinds = result.stdout.split(" ", 2)
    assert kinds.strip() == str(["PreviewSkipped"] * 5 + ["Preview"] * 2)
    # One 36 MP RGBA decode at a time (two would be 72 MP, over the 64 MP budget): ~150-300 MB over the baseline.
    assert int(peak_kib) < 600 * 1024, f"peak RSS {int(peak_kib) // 1024} MiB (baseline {int(before_kib) // 1024})"


# -- edits of library images ----------------------------------------------------------------------------


async def test_edits_upload_old_library_images_read_by_id(store: ImageStore, sim: Simulator) -> None:
    image = await download(store, "task-old", png_bytes((50, 40), "purple"))
    old = image.model_copy(update={"created_at": time.time() - 2 * 86400})  # its RunAPI URL is too old to reuse
    linked = image_id_for("task-linked", 0)
    (store.root / f"{linked}.png").symlink_to(Path(image.path or ""))

    async def find_task(task_id: str) -> TaskRecord | None:
        return record_for(task_id).model_copy(update={"status": "completed", "images": [old]})

    async with RunAPIClient(SIM_KEY, sim.base_url) as client:
        resolver = ImageResolver(client, store, allowed_dirs=[], max_bytes=1 << 20, find_task=find_task)
        [url] = await resolver.resolve(["task-old"])
        async with httpx.AsyncClient() as http:
            assert (await http.get(url)).content == png_bytes((50, 40), "purple")
        with pytest.raises(ImageReferenceError, match=r"'images\[0\]': no image"):
            await resolver.resolve([IMAGE_URI_PREFIX + linked])
