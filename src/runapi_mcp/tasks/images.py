"""The local image library: every output is downloaded here, outliving RunAPI's 7-day URLs."""

from __future__ import annotations

import io
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from PIL import Image, UnidentifiedImageError

from runapi_mcp.client import RunAPIClient
from runapi_mcp.tasks.records import ImageRecord, TaskRecord

IMAGE_URI_PREFIX = "runapi://images/"
_FORMATS = {
    "PNG": ("image/png", ".png"),
    "JPEG": ("image/jpeg", ".jpg"),
    "WEBP": ("image/webp", ".webp"),
    "GIF": ("image/gif", ".gif"),
    "BMP": ("image/bmp", ".bmp"),
    "TIFF": ("image/tiff", ".tiff"),
}
_SAFE = re.compile(r"[^A-Za-z0-9_-]+")
# Pillow refuses images above ~179 MP by default; 8x upscales of 4K stay below this.
Image.MAX_IMAGE_PIXELS = 300_000_000


class ImageFileError(ValueError):
    """A file that is not a readable image."""


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mime_type: str
    extension: str


@dataclass(frozen=True)
class Preview:
    data: bytes
    mime_type: str
    width: int
    height: int


def _fit(size: tuple[int, int], edge: int) -> tuple[int, int]:
    """``size`` scaled so its long side is ``edge``."""
    scale = edge / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def image_id_for(task_id: str, index: int) -> str:
    return f"{_SAFE.sub('-', task_id)[:80]}-{index}"


def inspect_image(data_or_path: bytes | Path) -> ImageInfo:
    """Size and type of an image, read from its header (blocking: call in a thread)."""
    try:
        source = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
        with Image.open(source) as img:
            fmt = img.format or ""
            width, height = img.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageFileError(f"not a readable image ({exc.__class__.__name__})") from None
    mime, ext = _FORMATS.get(fmt, (f"image/{fmt.lower() or 'octet-stream'}", f".{fmt.lower() or 'bin'}"))
    return ImageInfo(width=width, height=height, mime_type=mime, extension=ext)


class ImageStore:
    """Files under ``root``: ``<image id>.<ext>`` with a ``.json`` sidecar of the task's metadata."""

    def __init__(self, root: Path, *, max_bytes: int = 200 * 1024 * 1024) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._preview_dir = root / ".previews"
        self._lock = threading.Lock()

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._preview_dir.mkdir(parents=True, exist_ok=True)

    async def download(self, client: RunAPIClient, record: TaskRecord, index: int, url: str) -> ImageRecord:
        """Stream one output to disk, name it by its real format, and write the metadata sidecar."""
        image_id = image_id_for(record.task_id, index)
        await anyio.to_thread.run_sync(self.ensure)
        partial = self.root / f"{image_id}.download"
        result = await client.download(url, partial, max_bytes=self.max_bytes)
        info = await anyio.to_thread.run_sync(inspect_image, partial)
        final = self.root / f"{image_id}{info.extension}"
        await anyio.Path(partial).rename(final)
        image = self.undownloaded(record.task_id, index, url).model_copy(
            update={
                "path": str(final),
                "width": info.width,
                "height": info.height,
                "mime_type": info.mime_type,
                "bytes": result.bytes_written,
            }
        )
        await self._write_sidecar(final, record, image)
        return image

    @staticmethod
    def undownloaded(task_id: str, index: int, url: str) -> ImageRecord:
        """The record of an output known only by its RunAPI URL (not, or not yet, in the library)."""
        image_id = image_id_for(task_id, index)
        return ImageRecord(id=image_id, task_id=task_id, index=index, uri=IMAGE_URI_PREFIX + image_id, url=url)

    async def _write_sidecar(self, final: Path, record: TaskRecord, image: ImageRecord) -> None:
        meta: dict[str, Any] = {
            "image": image.model_dump(),
            "task_id": record.task_id,
            "model": record.model,
            "service": record.service,
            "action": record.action,
            "prompt": record.prompt,
            "request": record.request,
            "created_at": record.created_at,
            "completed_at": record.completed_at,
        }
        await anyio.Path(final.with_suffix(".json")).write_text(json.dumps(meta, indent=2, default=str))

    def find(self, image_id: str) -> ImageRecord | None:
        """An image by id, read from its sidecar (works for images of earlier runs too)."""
        if not image_id or _SAFE.search(image_id):
            return None
        sidecar = self.root / f"{image_id}.json"
        try:
            meta = json.loads(sidecar.read_text("utf-8"))
            image = ImageRecord.model_validate(meta["image"])
        except (OSError, ValueError, KeyError):
            return None
        if image.path is None or not Path(image.path).is_file():
            return None
        return image

    def preview(self, image: ImageRecord, max_edge: int = 1024, max_bytes: int = 300_000) -> Preview:
        """A small JPEG (PNG when transparent) of ``image``, cached on disk (blocking: call in a thread)."""
        assert image.path is not None
        cache = self._preview_dir / f"{image.id}-{max_edge}-{max_bytes}"
        with self._lock:
            for suffix, mime in ((".jpg", "image/jpeg"), (".png", "image/png")):
                hit = cache.with_suffix(suffix)
                if hit.is_file():
                    with Image.open(hit) as cached:
                        return Preview(hit.read_bytes(), mime, cached.width, cached.height)
        with Image.open(image.path) as src:
            has_alpha = src.mode in ("RGBA", "LA") or (src.mode == "P" and "transparency" in src.info)
            # This runs between "RunAPI finished" and "the client has the picture": shrink before
            # converting, and let Pillow box-reduce first (a 4K PNG: ~105 ms instead of ~185 ms).
            src.draft("RGBA" if has_alpha else "RGB", (max_edge, max_edge))  # JPEG: decode at a smaller scale
            src.thumbnail((max_edge, max_edge), Image.Resampling.LANCZOS, reducing_gap=1.5)
            img = src.convert("RGBA" if has_alpha else "RGB")
        edge = max_edge
        while True:
            thumb = img if edge >= max(img.size) else img.resize(_fit(img.size, edge), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            if has_alpha:
                thumb.save(buf, "PNG", compress_level=6)
                mime, suffix = "image/png", ".png"
            else:
                thumb.save(buf, "JPEG", quality=82)
                mime, suffix = "image/jpeg", ".jpg"
            if buf.tell() <= max_bytes or edge <= 256:
                break
            edge = int(edge * 0.75)
        data = buf.getvalue()
        self._preview_dir.mkdir(parents=True, exist_ok=True)
        cache.with_suffix(suffix).write_bytes(data)
        return Preview(data, mime, thumb.width, thumb.height)
